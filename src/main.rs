//! The `kiln` command line: parses flags, sets up logging, and hands off to the library.
//! `anyhow` is used here, at the binary's edge, and nowhere in the library.

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use kiln::aws::{AwsSettings, Clients};
use kiln::backend::Backend;
use kiln::observe::{self, LogFormat};
use kiln::pipeline::{self, BuildOptions, OnError, result::Status, state::MemoryRecorder};
use kiln::template::{self, Inputs, Loaded};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// kiln bakes AMIs the fast way: Packer amazon-chroot builds as a queue-driven service.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    /// Log format: text for a terminal, json for daemons.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "KILN_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log output (repeat for less).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a template: every error with its file, line and field (exit 1), or "The configuration is valid.".
    Validate {
        #[command(flatten)]
        template: TemplateArgs,
        /// Print a machine-readable list of errors and warnings.
        #[arg(long)]
        json: bool,
    },
    /// Build the template's AMI(s) with the chroot method, like `packer build`.
    Build {
        #[command(flatten)]
        template: TemplateArgs,
        /// Where volume data lives: real EBS attachments, or sparse files on loop devices (local).
        #[arg(long, value_enum, default_value = "ebs", env = "KILN_BACKEND")]
        backend: BackendKind,
        /// The loop backend's directory for volume and snapshot files.
        #[arg(long, default_value = "/var/lib/kiln", env = "KILN_STATE_DIR")]
        state_dir: PathBuf,
        /// On failure: undo everything (cleanup) or leave it in place and list it (abort).
        #[arg(long, value_enum, default_value = "cleanup")]
        on_error: OnError,
        /// The build id (idempotency key); generated when absent.
        #[arg(long)]
        build_id: Option<String>,
        /// Print the result document as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show the resolved build(s): source, target, volume, mounts, copied files, provisioners.
    Inspect {
        #[command(flatten)]
        template: TemplateArgs,
        /// Print the resolved plan as JSON (sensitive values masked).
        #[arg(long)]
        json: bool,
    },
}

/// Where volume data lives.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackendKind {
    /// Real EBS attachments on an EC2 builder instance.
    Ebs,
    /// Sparse files on loop devices (development, tests, the local demo).
    Loop,
}

/// The arguments every command that reads a template takes.
#[derive(Debug, Args)]
struct TemplateArgs {
    /// Set a variable: --var name=value (repeatable; later wins).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Read variables from a file (JSON, or .pkrvars.hcl for HCL2 templates; repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    var_files: Vec<PathBuf>,
    /// Only the named builds (comma-separated or repeated), as Packer's -only.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The template: a Packer JSON file, a .pkr.hcl/.pkr.json file, or a directory of .pkr.hcl files.
    template: PathBuf,
}

impl TemplateArgs {
    fn load(&self) -> anyhow::Result<Loaded> {
        let mut inputs = Inputs::default();
        for v in &self.vars {
            let Some((k, val)) = v.split_once('=') else {
                bail!("--var {v}: expected NAME=VALUE");
            };
            inputs.vars.push((k.to_owned(), val.to_owned()));
        }
        inputs.var_files = self.var_files.clone();
        inputs.only = self.only.clone();
        if !self.template.exists() {
            bail!("{}: no such file or directory", self.template.display());
        }
        Ok(template::load(&self.template, &inputs))
    }
}

fn print_warnings(loaded: &Loaded) {
    let mut err = std::io::stderr().lock();
    for w in loaded.warnings() {
        let _ = writeln!(err, "Warning: {}", loaded.masker.mask(&w.to_string()));
    }
}

fn print_errors(loaded: &Loaded) {
    let mut err = std::io::stderr().lock();
    let n = loaded.errors().count();
    let _ = writeln!(err, "Error: {n} error(s) occurred:\n");
    for e in loaded.errors() {
        let _ = writeln!(err, "* {}", loaded.masker.mask(&e.to_string()));
    }
}

fn diagnostics_json(loaded: &Loaded) -> serde_json::Value {
    let list = |it: &mut dyn Iterator<Item = &template::Diagnostic>| -> Vec<serde_json::Value> {
        it.map(|d| {
            let mut v = serde_json::to_value(d).unwrap_or_default();
            if let Some(m) = v.get_mut("message") {
                *m = serde_json::Value::String(loaded.masker.mask(&d.message));
            }
            v
        })
        .collect()
    };
    serde_json::json!({
        "valid": !loaded.has_errors(),
        "errors": list(&mut loaded.errors()),
        "warnings": list(&mut loaded.warnings()),
    })
}

fn validate(args: &TemplateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let loaded = args.load()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&diagnostics_json(&loaded))?
        );
    } else {
        print_warnings(&loaded);
        if loaded.has_errors() {
            print_errors(&loaded);
        } else {
            println!("The configuration is valid.");
        }
    }
    Ok(if loaded.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn inspect(args: &TemplateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let loaded = args.load()?;
    print_warnings(&loaded);
    if loaded.has_errors() {
        print_errors(&loaded);
        return Ok(ExitCode::FAILURE);
    }
    if json {
        let text = serde_json::to_string_pretty(&loaded.plans).context("serializing the plan")?;
        println!("{}", loaded.masker.mask(&text));
    } else {
        for (i, plan) in loaded.plans.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", template::inspect::render(plan, &loaded.masker));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels `token` on the first SIGINT or SIGTERM (the build then unwinds its undos).
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("signal received: cancelling the build and cleaning up");
        token.cancel();
    });
}

async fn build(
    args: &TemplateArgs,
    backend: BackendKind,
    state_dir: &std::path::Path,
    on_error: OnError,
    build_id: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = args.load()?;
    print_warnings(&loaded);
    if loaded.has_errors() {
        print_errors(&loaded);
        return Ok(ExitCode::FAILURE);
    }
    let backend = match backend {
        BackendKind::Ebs => Backend::Ebs,
        BackendKind::Loop => Backend::Loop {
            state_dir: state_dir.to_owned(),
        },
    };
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    let masker = loaded.masker.clone();
    let sink_masker = masker.clone();
    let sink: kiln::host::command::Sink = Arc::new(move |source: &str, line: &str| {
        let line = sink_masker.mask(line);
        if source == "kiln" {
            eprintln!("{line}");
        } else {
            eprintln!("    {source}: {line}");
        }
    });
    let several = loaded.plans.len() > 1;
    let mut results = Vec::new();
    for plan in loaded.plans.clone() {
        let c = &plan.config;
        let settings = AwsSettings {
            region: c.region.clone(),
            endpoint_url: None,
            static_credentials: c.access_key.clone().zip(c.secret_key.clone()),
        };
        let config = kiln::aws::load(&settings).await?;
        let clients = Clients::new(&config);
        let id = match (&build_id, several) {
            (Some(id), false) => id.clone(),
            (Some(id), true) => format!("{id}-{}", plan.name.replace('.', "-")),
            (None, _) => uuid::Uuid::new_v4().to_string(),
        };
        eprintln!(
            "==> {}: kiln build {id} ({} backend, {})",
            plan.name,
            backend.name(),
            clients.region()
        );
        let options = BuildOptions {
            build_id: id,
            backend: backend.clone(),
            on_error,
            lock_dir: kiln::host::lock::LOCK_DIR.into(),
            sink: sink.clone(),
            recorder: Arc::new(MemoryRecorder::default()),
        };
        let post = plan.post_processors.clone();
        let result = pipeline::run(plan, masker.clone(), clients, options, cancel.clone()).await;
        for pp in &post {
            if result.status == Status::Succeeded
                && let Err(e) = pipeline::result::write_manifest(&result, pp)
            {
                eprintln!("Warning: manifest {}: {e}", pp.output);
            }
        }
        results.push(result);
        if cancel.is_cancelled() {
            break;
        }
    }
    let ok = results.iter().all(|r| r.status == Status::Succeeded);
    if json {
        let text = if several {
            serde_json::to_string_pretty(&results)?
        } else {
            serde_json::to_string_pretty(&results[0])?
        };
        println!("{}", masker.mask(&text));
    } else {
        eprintln!("==> Builds finished.");
        for r in &results {
            match (&r.status, &r.error) {
                (Status::Succeeded, _) => {
                    println!("--> {}: AMIs were created:", r.build_name);
                    for (region, a) in &r.artifacts {
                        println!("{region}: {}", a.ami_id);
                    }
                }
                (_, Some(e)) => println!(
                    "--> {}: failed in step {}: {}",
                    r.build_name, e.step, e.message
                ),
                _ => println!("--> {}: failed", r.build_name),
            }
            for l in &r.left_behind {
                println!("    left behind: {l}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity =
        i8::try_from(cli.verbose).unwrap_or(i8::MAX) - i8::try_from(cli.quiet).unwrap_or(i8::MAX);
    observe::init(cli.log_format, verbosity);
    let result = match &cli.command {
        Command::Validate { template, json } => validate(template, *json),
        Command::Inspect { template, json } => inspect(template, *json),
        Command::Build {
            template,
            backend,
            state_dir,
            on_error,
            build_id,
            json,
        } => {
            match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(build(
                    template,
                    *backend,
                    state_dir,
                    *on_error,
                    build_id.clone(),
                    *json,
                )),
                Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
