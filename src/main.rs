//! The `kiln` command line: parses flags, sets up logging, and hands off to the library.
//! `anyhow` is used here, at the binary's edge, and nowhere in the library.

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use kiln::aws::{AwsSettings, Clients};
use kiln::backend::Backend;
use kiln::checkpoint;
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
        /// Keep a checkpoint journal in this bucket (`checkpoints/<build-id>.json`), as a worker
        /// does: a run with the same --build-id after a crash resumes the build, and a second run
        /// while the first holds the lease refuses to start.
        #[arg(long, env = "KILN_CHECKPOINT_BUCKET")]
        checkpoint_bucket: Option<String>,
        /// Print the result document as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run builds from an SQS queue (on builder instances); publishes results to S3 and a queue.
    Worker(WorkerArgs),
    /// Send a build request: uploads a local template (with the files beside it) or names an
    /// s3:// one; prints the build id; --wait prints the result.
    Submit(SubmitArgs),
    /// Remove what finished, failed or abandoned builds left (found by the kiln:build-id tag).
    Gc {
        /// The bucket holding the builds' journals (checkpoints/).
        #[arg(long, env = "KILN_BUCKET")]
        bucket: String,
        /// Also look in these regions (AMI copies).
        #[arg(long = "region")]
        regions: Vec<String>,
        /// Only builds whose id matches this pattern (`*` any characters, `?` one; as EC2's tag
        /// filters): `nightly-*`.
        #[arg(long, default_value = "*")]
        build_id: String,
        /// Only resources at least this old (Go duration: 30m, 24h); abandoned builds must have
        /// lost their lease this long ago.
        #[arg(long, default_value = "1h")]
        older_than: String,
        /// Print what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show a build's result, or its log so far while it runs.
    Status {
        /// The bucket holding results and logs.
        #[arg(long, env = "KILN_BUCKET")]
        bucket: String,
        /// The build id.
        build_id: String,
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

/// `kiln submit`'s arguments.
#[derive(Debug, Args)]
struct SubmitArgs {
    /// The request queue URL.
    #[arg(long, env = "KILN_QUEUE")]
    queue: String,
    /// The bucket to upload a local template to (and to read results from).
    #[arg(long, env = "KILN_BUCKET")]
    bucket: String,
    /// Template variables.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Only this build.
    #[arg(long)]
    only: Vec<String>,
    /// The build id (idempotency key); generated when absent.
    #[arg(long)]
    build_id: Option<String>,
    /// Build again even if this id finished.
    #[arg(long)]
    force: bool,
    /// Wait for the result, print it, and exit non-zero when the build failed.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value = "3600")]
    timeout: u64,
    /// A local template file, or s3://bucket/key.
    template: String,
}

/// `kiln worker`'s settings: flags, then `KILN_*` variables, then the TOML file.
#[derive(Debug, Args)]
struct WorkerArgs {
    /// A TOML file with the settings below (flags and variables override it).
    #[arg(long, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// The request queue URL.
    #[arg(long, env = "KILN_QUEUE")]
    queue: Option<String>,
    /// The result queue URL.
    #[arg(long, env = "KILN_RESULT_QUEUE")]
    result_queue: Option<String>,
    /// A trusted template bucket (repeatable); the first also holds results, logs and checkpoints.
    #[arg(long = "bucket", env = "KILN_BUCKETS", value_delimiter = ',')]
    buckets: Vec<String>,
    /// Builds at once.
    #[arg(long, env = "KILN_CONCURRENCY")]
    concurrency: Option<usize>,
    /// ebs or loop.
    #[arg(long, env = "KILN_BACKEND")]
    backend: Option<String>,
    /// The loop backend's state directory.
    #[arg(long, env = "KILN_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds running builds get after SIGTERM before they are cancelled.
    #[arg(long, env = "KILN_DRAIN_TIMEOUT")]
    drain_timeout: Option<u64>,
    /// Seconds each heartbeat keeps a message invisible.
    #[arg(long, env = "KILN_VISIBILITY")]
    visibility: Option<u64>,
    /// Seconds before a retryable failure is tried again.
    #[arg(long, env = "KILN_RETRY_DELAY")]
    retry_delay: Option<u64>,
    /// The Auto Scaling group of this instance (scale-in protection, the termination hook).
    #[arg(long, env = "KILN_AUTO_SCALING_GROUP")]
    auto_scaling_group: Option<String>,
    /// The group's termination lifecycle hook.
    #[arg(long, env = "KILN_LIFECYCLE_HOOK")]
    lifecycle_hook: Option<String>,
}

impl WorkerArgs {
    fn config(&self) -> anyhow::Result<kiln::worker::WorkerConfig> {
        let mut table: toml::Table = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                text.parse()
                    .with_context(|| format!("parsing {}", p.display()))?
            }
            None => toml::Table::new(),
        };
        let mut set = |k: &str, v: toml::Value| {
            table.insert(k.to_owned(), v);
        };
        if let Some(q) = &self.queue {
            set("queue", q.clone().into());
        }
        if let Some(q) = &self.result_queue {
            set("result_queue", q.clone().into());
        }
        if !self.buckets.is_empty() {
            set(
                "buckets",
                toml::Value::Array(self.buckets.iter().map(|b| b.clone().into()).collect()),
            );
        }
        if let Some(c) = self.concurrency {
            set("concurrency", (c as i64).into());
        }
        if let Some(b) = &self.backend {
            set("backend", b.clone().into());
        }
        if let Some(d) = &self.state_dir {
            set("state_dir", d.display().to_string().into());
        }
        if let Some(d) = self.drain_timeout {
            set("drain_timeout_s", (d as i64).into());
        }
        if let Some(d) = self.visibility {
            set("visibility_s", (d as i64).into());
        }
        if let Some(d) = self.retry_delay {
            set("retry_delay_s", (d as i64).into());
        }
        if let Some(g) = &self.auto_scaling_group {
            set("auto_scaling_group", g.clone().into());
        }
        if let Some(h) = &self.lifecycle_hook {
            set("lifecycle_hook", h.clone().into());
        }
        toml::Value::Table(table)
            .try_into()
            .context("worker settings (a queue and at least one bucket are required)")
    }
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

/// The lease of a `kiln build --checkpoint-bucket` run, renewed every third of it. `kiln build` has
/// no queue visibility to match, so the number is a compromise: a run with the same build id after
/// a crash waits at most a minute, and two renewals may fail before the lease lapses.
const BUILD_LEASE_S: u64 = 60;

/// Takes the build's journal for this `kiln build` run: a new one, or a crashed run's (resumed).
/// Fails when a live run holds it or the build finished. Side effect: writes the journal.
async fn acquire_journal(
    clients: &Clients,
    bucket: &str,
    id: &str,
) -> anyhow::Result<checkpoint::JournalHandle> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let owner = checkpoint::Owner {
        instance_id: host,
        worker_id: format!("kiln-build-{}", std::process::id()),
    };
    let at = format!("s3://{bucket}/{}", checkpoint::key(id));
    match checkpoint::acquire(&clients.s3, bucket, id, &owner, BUILD_LEASE_S)
        .await
        .with_context(|| format!("--checkpoint-bucket: reading or creating {at}"))?
    {
        checkpoint::Acquired::Fresh(j) => Ok(j),
        checkpoint::Acquired::TakenOver(j) => {
            eprintln!(
                "==> {id}: resuming attempt {} of this build ({at})",
                j.journal().attempt
            );
            Ok(j)
        }
        checkpoint::Acquired::Held(o, until) => bail!(
            "build {id} is running in {} on {} (lease for {} s more, {at}); wait for it, or use another --build-id",
            o.worker_id,
            o.instance_id,
            until.saturating_sub(checkpoint::now())
        ),
        checkpoint::Acquired::Finished(status) => bail!(
            "build {id} already finished ({status}, {at}); use another --build-id to build again"
        ),
    }
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
    checkpoint_bucket: Option<&str>,
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
        let plan_cancel = cancel.child_token();
        let handed_over = CancellationToken::new();
        let journal = match checkpoint_bucket {
            Some(bucket) => {
                let j = Arc::new(acquire_journal(&clients, bucket, &id).await?);
                let on_lost = checkpoint::hand_over(&id, handed_over.clone(), plan_cancel.clone());
                let recorder = Arc::new(checkpoint::JournalRecorder::new(
                    Arc::clone(&j),
                    Arc::clone(&on_lost),
                ));
                let renew_stop = CancellationToken::new();
                let renewal = checkpoint::spawn_renewal(
                    Arc::clone(&j),
                    std::time::Duration::from_secs(BUILD_LEASE_S / 3),
                    on_lost,
                    renew_stop.clone(),
                );
                Some((j, recorder, renewal, renew_stop))
            }
            None => None,
        };
        let options = BuildOptions {
            build_id: id.clone(),
            backend: backend.clone(),
            on_error,
            lock_dir: kiln::host::lock::LOCK_DIR.into(),
            sink: sink.clone(),
            recorder: match &journal {
                Some((_, r, _, _)) => Arc::clone(r) as Arc<dyn pipeline::state::Recorder>,
                None => Arc::new(MemoryRecorder::default()),
            },
            attempt: journal.as_ref().map_or(1, |(j, ..)| j.journal().attempt),
            // Without a journal every run is a generation of its own.
            generation: journal.as_ref().map_or_else(
                || uuid::Uuid::new_v4().simple().to_string(),
                |(j, ..)| j.journal().generation,
            ),
            handed_over: handed_over.clone(),
        };
        let post = plan.post_processors.clone();
        let result = pipeline::run(plan, masker.clone(), clients, options, plan_cancel).await;
        if let Some((j, recorder, renewal, renew_stop)) = journal {
            renew_stop.cancel();
            let _ = renewal.await;
            let written = if handed_over.is_cancelled() {
                Ok(())
            } else if cancel.is_cancelled() {
                match recorder.flush().await {
                    Ok(()) => j.release().await,
                    Err(e) => Err(e),
                }
            } else if result.status == Status::Succeeded {
                recorder.finish("succeeded").await
            } else {
                recorder.finish("failed").await
            };
            if let Err(e) = written {
                eprintln!("Warning: checkpoint of {id}: {e}");
            }
        }
        if handed_over.is_cancelled() {
            eprintln!("==> {id}: another run took this build over and finishes it");
        }
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

async fn worker(args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    kiln::worker::run(cfg, clients, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let SubmitArgs {
        queue,
        bucket,
        vars,
        only,
        build_id,
        force,
        wait,
        timeout,
        template,
    } = args;
    let (force, wait, timeout) = (*force, *wait, *timeout);
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    let build_id = build_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let location = if let Some(rest) = template.strip_prefix("s3://") {
        let (b, k) = rest.split_once('/').context("expected s3://bucket/key")?;
        kiln::worker::request::TemplateLocation {
            bucket: b.to_owned(),
            key: k.to_owned(),
            version_id: None,
        }
    } else {
        let path = std::path::Path::new(template);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let name = path
            .file_name()
            .context("the template path has no file name")?
            .to_string_lossy()
            .into_owned();
        // Not under the trigger's `templates/` prefix: an upload there would start a second build.
        let prefix = format!("submissions/{build_id}");
        // The template and the files beside it (scripts, uploads), as the worker fetches them.
        let files = kiln::worker::fetch::template_files(path).map_err(anyhow::Error::msg)?;
        for f in files {
            let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
            let body = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            clients
                .s3
                .put_object()
                .bucket(bucket)
                .key(format!("{prefix}/{rel}"))
                .body(body.into())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "uploading {}: {}",
                        f.display(),
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    )
                })?;
        }
        kiln::worker::request::TemplateLocation {
            bucket: bucket.to_owned(),
            key: format!("{prefix}/{name}"),
            version_id: None,
        }
    };
    let mut variables = std::collections::BTreeMap::new();
    for v in vars {
        let (k, val) = v.split_once('=').context("--var expects NAME=VALUE")?;
        variables.insert(k.to_owned(), val.to_owned());
    }
    let req = kiln::worker::request::BuildRequest {
        version: kiln::worker::request::REQUEST_VERSION,
        build_id: Some(build_id.clone()),
        template: location,
        variables,
        only: only.to_vec(),
        force,
        bake: None,
    };
    clients
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body(serde_json::to_string(&req)?)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "sending to {queue}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })?;
    println!("{build_id}");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        if let Some(text) =
            read_object(&clients, bucket, &kiln::worker::result_key(&build_id)).await?
        {
            println!("{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            return Ok(if v["status"] == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "no result for {build_id} within {timeout} s (kiln status {build_id} shows its progress)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn read_object(clients: &Clients, bucket: &str, key: &str) -> anyhow::Result<Option<String>> {
    match clients.s3.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => Ok(Some(
            String::from_utf8_lossy(&o.body.collect().await?.into_bytes()).into_owned(),
        )),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "s3://{bucket}/{key}: {}",
            aws_sdk_s3::error::DisplayErrorContext(&e)
        )),
    }
}

async fn status(bucket: &str, build_id: &str) -> anyhow::Result<ExitCode> {
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    if let Some(text) = read_object(&clients, bucket, &kiln::worker::result_key(build_id)).await? {
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{text}");
        return Ok(ExitCode::SUCCESS);
    }
    match read_object(&clients, bucket, &kiln::worker::log_key(build_id)).await? {
        Some(log) => {
            let _ = write!(
                std::io::stdout(),
                "{build_id}: running; its log so far:\n{log}"
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "{build_id}: no result and no log in s3://{bucket}: not started yet, or unknown"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn gc(
    bucket: &str,
    regions: &[String],
    build_id: &str,
    older_than: &str,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let secs = kiln::template::provisioner::parse_duration(older_than)
        .with_context(|| format!("--older-than {older_than}: use a duration such as 30m or 24h"))?;
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    let actions = kiln::gc::run(
        &clients,
        bucket,
        regions,
        build_id,
        std::time::Duration::from_secs_f64(secs),
        dry_run,
    )
    .await;
    let mut failed = false;
    for a in &actions {
        failed |= !(a.outcome == "deleted" || a.outcome == "would delete");
        let _ = writeln!(
            std::io::stdout(),
            "{} {} (build {}): {}; {}",
            a.kind,
            a.id,
            a.build_id,
            a.reason,
            a.outcome
        );
    }
    if actions.is_empty() {
        let _ = writeln!(std::io::stdout(), "nothing to collect");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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
        other => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
            Ok(rt) => rt.block_on(async {
                match other {
                    Command::Build {
                        template,
                        backend,
                        state_dir,
                        on_error,
                        build_id,
                        checkpoint_bucket,
                        json,
                    } => {
                        build(
                            template,
                            *backend,
                            state_dir,
                            *on_error,
                            build_id.clone(),
                            checkpoint_bucket.as_deref(),
                            *json,
                        )
                        .await
                    }
                    Command::Worker(args) => worker(args).await,
                    Command::Submit(args) => submit(args).await,
                    Command::Status { bucket, build_id } => status(bucket, build_id).await,
                    Command::Gc {
                        bucket,
                        regions,
                        build_id,
                        older_than,
                        dry_run,
                    } => gc(bucket, regions, build_id, older_than, *dry_run).await,
                    Command::Validate { .. } | Command::Inspect { .. } => Ok(ExitCode::FAILURE),
                }
            }),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
