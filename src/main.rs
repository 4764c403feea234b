//! The `kiln` command line: parses flags, sets up logging, and hands off to the library.
//! `anyhow` is used here, at the binary's edge, and nowhere in the library.

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use kiln::observe::{self, LogFormat};
use kiln::template::{self, Inputs, Loaded};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Show the resolved build(s): source, target, volume, mounts, copied files, provisioners.
    Inspect {
        #[command(flatten)]
        template: TemplateArgs,
        /// Print the resolved plan as JSON (sensitive values masked).
        #[arg(long)]
        json: bool,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity =
        i8::try_from(cli.verbose).unwrap_or(i8::MAX) - i8::try_from(cli.quiet).unwrap_or(i8::MAX);
    observe::init(cli.log_format, verbosity);
    let result = match &cli.command {
        Command::Validate { template, json } => validate(template, *json),
        Command::Inspect { template, json } => inspect(template, *json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
