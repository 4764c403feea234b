//! The `kiln` command line: parses flags, sets up logging, and hands off to the library.
//! `anyhow` is used here, at the binary's edge, and nowhere in the library. Each subcommand
//! lives in a module of `cli/`.

mod cli;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use kiln::observe::{self, LogFormat};
use kiln::pipeline::OnError;
use kiln::template::{self, Inputs, Loaded};
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
    /// Build the template's AMI(s) with the chroot method, like `packer build`.
    Build {
        #[command(flatten)]
        template: TemplateArgs,
        #[command(flatten)]
        flags: BuildFlags,
    },
    /// Run builds from an SQS queue (on builder instances); publishes results to S3 and a queue.
    Worker(WorkerArgs),
    /// Send a build request: uploads a local template (with the files beside it and those it
    /// references, relative to the working directory) or names an s3:// one; prints the build id;
    /// --wait prints the result.
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
        /// The team whose build it is (its results and logs are under `teams/<team>/`).
        #[arg(long, env = "KILN_TEAM", default_value = kiln::team::DEFAULT_TEAM, value_parser = parse_team)]
        team: kiln::team::Team,
        /// The build id.
        build_id: String,
    },
    /// Show an image's lineage: its parents up to the first image kiln did not build, and every
    /// image built on it (by the `kiln:parent-ami` tags of this account's images).
    Lineage {
        /// The AMI id.
        ami: String,
        /// Print the lineage as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Point a channel of the image's template at the image (the SSM parameter
    /// `/kiln/<team>/<template>/<channel>`), in this region and each --region.
    Promote {
        /// The AMI id (in this region).
        ami: String,
        /// The channel to point at it.
        #[arg(long)]
        to: String,
        /// Only when this channel holds the image now (dev -> prod).
        #[arg(long)]
        from: Option<String>,
        /// Also the same build's image in these regions.
        #[arg(long = "region")]
        regions: Vec<String>,
    },
    /// Withdraw an image: deprecate it now, tag it kiln:revoked, remove it from every channel;
    /// the same for every image built on it (asked first on a terminal, or with --descendants).
    Revoke {
        /// The AMI id (in this region).
        ami: String,
        /// Why (kept in the kiln:revoked tag).
        #[arg(long)]
        reason: String,
        /// Also revoke every image built on it, without asking.
        #[arg(long)]
        descendants: bool,
        /// Also the same builds' images in these regions.
        #[arg(long = "region")]
        regions: Vec<String>,
    },
    /// Show the resolved build(s): source, target, volume, mounts, copied files, provisioners.
    Inspect {
        #[command(flatten)]
        template: TemplateArgs,
        /// Print the resolved plan as JSON (sensitive values masked).
        #[arg(long)]
        json: bool,
    },
    /// Check a mounted image root against what its AMI registration promises (a template's
    /// fields, or flags): ENA and NVMe drivers, boot loader, architecture, fstab, IMDSv2. Exits 1
    /// when a finding is an error.
    Lint(LintArgs),
}

/// `kiln submit`'s arguments.
#[derive(Debug, Args)]
struct SubmitArgs {
    /// The request queue URL.
    #[arg(long, env = "KILN_QUEUE")]
    queue: String,
    /// The team whose queue `--queue` is: the template is uploaded under its `submissions/`
    /// and the result read from its results.
    #[arg(long, env = "KILN_TEAM", default_value = kiln::team::DEFAULT_TEAM, value_parser = parse_team)]
    team: kiln::team::Team,
    /// The bucket to upload a local template to (and to read results from).
    #[arg(long, env = "KILN_BUCKET")]
    bucket: String,
    /// Template variables.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Only these builds (comma-separated or repeated; globs), as Packer's -only.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// All builds but these (comma-separated or repeated; globs), as Packer's -except.
    #[arg(long, value_delimiter = ',')]
    except: Vec<String>,
    /// The build id (idempotency key); generated when absent.
    #[arg(long)]
    build_id: Option<String>,
    /// Build again even if this id finished.
    #[arg(long)]
    force: bool,
    /// Where the build's data lives, if not the worker's setting: ebs (a volume attached to the
    /// builder) or direct (the EBS direct APIs, no volume).
    #[arg(long, value_parser = parse_request_backend)]
    backend: Option<kiln::request::RequestBackend>,
    /// Publish the AMIs to this channel when the build succeeds (repeatable): the SSM parameter
    /// `/kiln/<team>/<template>/<channel>` in each region.
    #[arg(long = "channel")]
    channels: Vec<String>,
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
    /// ebs (the default) or loop.
    #[arg(long, env = "KILN_BACKEND")]
    backend: Option<String>,
    /// The loop backend's state directory.
    #[arg(long, env = "KILN_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    devices: DeviceFlags,
    /// Seconds running builds get after SIGTERM before they are cancelled.
    #[arg(long, env = "KILN_DRAIN_TIMEOUT")]
    drain_timeout: Option<u64>,
    /// Seconds each heartbeat keeps a message invisible.
    #[arg(long, env = "KILN_VISIBILITY")]
    visibility: Option<u64>,
    /// Seconds before a retryable failure is tried again.
    #[arg(long, env = "KILN_RETRY_DELAY")]
    retry_delay: Option<u64>,
    /// Most seconds a duplicate delivery of a running build is parked before it looks again (≤ 900).
    #[arg(long, env = "KILN_DUPLICATE_PARK")]
    duplicate_park: Option<u64>,
    /// Seconds a build may run before it is cancelled and fails as timed out.
    #[arg(long, env = "KILN_BUILD_TIMEOUT")]
    build_timeout: Option<u64>,
    /// The Auto Scaling group of this instance (scale-in protection, the termination hook).
    #[arg(long, env = "KILN_AUTO_SCALING_GROUP")]
    auto_scaling_group: Option<String>,
    /// The group's termination lifecycle hook.
    #[arg(long, env = "KILN_LIFECYCLE_HOOK")]
    lifecycle_hook: Option<String>,
}

/// A `--team` value, checked against the team name rule.
fn parse_team(s: &str) -> Result<kiln::team::Team, String> {
    kiln::team::Team::new(s).map_err(|e| e.to_string())
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
        if let Some(n) = &self.devices.device_naming {
            set("device_naming", format!("{n:?}").to_lowercase().into());
        }
        if let Some(d) = &self.devices.device_dir {
            set("device_dir", d.display().to_string().into());
        }
        if let Some(s) = self.devices.device_timeout {
            set("device_timeout_s", (s as i64).into());
        }
        if let Some(d) = self.drain_timeout {
            set("drain_timeout_s", (d as i64).into());
        }
        if let Some(d) = self.visibility {
            set("visibility_s", (d as i64).into());
        }
        if let Some(d) = self.build_timeout {
            set("build_timeout_s", (d as i64).into());
        }
        if let Some(d) = self.duplicate_park {
            set("duplicate_park_s", (d as i64).into());
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

/// `kiln lint`'s arguments: the promises come from `--template` (its one selected build), and
/// the flags override them.
#[derive(Debug, Args)]
struct LintArgs {
    /// Take the registration's fields from this template (one build; see --only).
    #[arg(long)]
    template: Option<PathBuf>,
    /// Template variables: --var name=value (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Template variable files (repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    var_files: Vec<PathBuf>,
    /// The template's build to lint for, as Packer's -only.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// ami_architecture: x86_64, arm64, i386, x86_64_mac, arm64_mac (default x86_64).
    #[arg(long)]
    arch: Option<String>,
    /// boot_mode: legacy-bios, uefi or uefi-preferred.
    #[arg(long)]
    boot_mode: Option<String>,
    /// ena_support = true.
    #[arg(long)]
    ena: bool,
    /// imds_support: v2.0.
    #[arg(long)]
    imds_support: Option<String>,
    /// The instance type the image is for (a Xen type needs no NVMe); default: Nitro.
    #[arg(long)]
    instance_type: Option<String>,
    /// The image's disk (block device or raw image file) for the partition, boot loader and
    /// fstab checks.
    #[arg(long)]
    device: Option<PathBuf>,
    /// Turn a check off (repeatable; see the README's "Image lint").
    #[arg(long = "skip", value_name = "CHECK")]
    skip: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The image's root directory (a mounted image, or an unpacked tree).
    root: PathBuf,
}

/// Where volume data lives.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackendKind {
    /// Real EBS attachments on an EC2 builder instance.
    Ebs,
    /// Sparse files on loop devices next to kiln, EC2's volumes holding nothing: the `qemu`
    /// boot-test method's local data; never a pool.
    Loop,
    /// No volume: the source snapshot read with the EBS direct APIs into a local file, only the
    /// changed blocks written to a child snapshot in every region.
    Direct,
}

/// `--backend` of `kiln submit`: the backends a request may ask for.
fn parse_request_backend(s: &str) -> Result<kiln::request::RequestBackend, String> {
    match s {
        "ebs" => Ok(kiln::request::RequestBackend::Ebs),
        "direct" => Ok(kiln::request::RequestBackend::Direct),
        other => Err(format!(
            "backend {other:?}: a request may ask for ebs or direct (loop is never a pool's)"
        )),
    }
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
    /// Only the named builds (comma-separated or repeated; globs), as Packer's -only.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// All builds but these (comma-separated or repeated; globs), as Packer's -except.
    #[arg(long, value_delimiter = ',')]
    except: Vec<String>,
    /// The template: a Packer JSON file, a .pkr.hcl/.pkr.json file, or a directory of .pkr.hcl files.
    template: PathBuf,
}

impl TemplateArgs {
    fn load(&self) -> anyhow::Result<Loaded> {
        Ok(template::load(&self.template, &self.inputs()?))
    }

    /// The load's inputs: variables, var files, `--only`/`--except`; checks the template exists.
    fn inputs(&self) -> anyhow::Result<Inputs> {
        let mut inputs = Inputs::default();
        for v in &self.vars {
            let Some((k, val)) = v.split_once('=') else {
                bail!("--var {v}: expected NAME=VALUE");
            };
            inputs.vars.push((k.to_owned(), val.to_owned()));
        }
        inputs.var_files = self.var_files.clone();
        inputs.only = self.only.clone();
        inputs.except = self.except.clone();
        if !self.template.exists() {
            bail!("{}: no such file or directory", self.template.display());
        }
        Ok(inputs)
    }
}

/// How attached volumes appear on this host (the ebs backend), for `kiln build` and the worker.
#[derive(Debug, Clone, clap::Args)]
struct DeviceFlags {
    /// How this host names attached EBS volumes: auto (NVMe when the host's own disks are),
    /// xen (/dev/xvdf, /dev/sdf) or nitro (/dev/nvmeXn1 by the volume id).
    #[arg(long, env = "KILN_DEVICE_NAMING")]
    device_naming: Option<kiln::backend::Naming>,
    /// The host's device directory (default /dev).
    #[arg(long, env = "KILN_DEVICE_DIR")]
    device_dir: Option<PathBuf>,
    /// Seconds a device node may take to appear after EC2 reports the attachment (default 60).
    #[arg(long, env = "KILN_DEVICE_TIMEOUT")]
    device_timeout: Option<u64>,
}

impl DeviceFlags {
    /// The settings these flags give, over the defaults.
    fn devices(&self) -> kiln::backend::Devices {
        let mut d = kiln::backend::Devices::default();
        if let Some(n) = self.device_naming {
            d.naming = n;
        }
        if let Some(dir) = &self.device_dir {
            d.dir = dir.clone();
        }
        if let Some(s) = self.device_timeout {
            d.node_timeout = std::time::Duration::from_secs(s);
        }
        d
    }
}

/// `kiln build`'s options besides the template.
#[derive(Debug, clap::Args)]
struct BuildFlags {
    /// Where volume data lives: real EBS attachments (the default; locally, the emulator's),
    /// the EBS direct APIs and a local file (direct), or sparse files on loop devices (the
    /// `qemu` boot test's local data).
    #[arg(long, value_enum, default_value = "ebs", env = "KILN_BACKEND")]
    backend: BackendKind,
    /// The loop backend's directory for volume and snapshot files, and the direct backend's for
    /// its cache of source snapshots and working images.
    #[arg(long, default_value = "/var/lib/kiln", env = "KILN_STATE_DIR")]
    state_dir: PathBuf,
    #[command(flatten)]
    devices: DeviceFlags,
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
    /// Boot the new image before registering it (the template's `boot_test` block, or its
    /// defaults: a login prompt within 5 minutes).
    #[arg(long)]
    boot_test: bool,
    /// Print the result document as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The SBOM's format: SPDX 2.3 JSON or CycloneDX 1.5 JSON.
    #[arg(long, value_enum, default_value = "spdx", env = "KILN_SBOM_FORMAT")]
    sbom_format: kiln::sbom::Format,
    /// Publish the AMIs to this channel when the build succeeds (repeatable): the SSM parameter
    /// `/kiln/<team>/<template>/<channel>` in each region (the template's name is its file name
    /// without the extension, with `.<build>` when it has several builds).
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Where the SBOM is written (`<build-id>.spdx.json` or `.cdx.json`; default
    /// `<state-dir>/sbom`); with --checkpoint-bucket it goes to that bucket's `sboms/`.
    #[arg(long, env = "KILN_SBOM_DIR")]
    sbom_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(cli::packer_style_args(std::env::args_os()));
    let mut verbosity =
        i8::try_from(cli.verbose).unwrap_or(i8::MAX) - i8::try_from(cli.quiet).unwrap_or(i8::MAX);
    // `kiln build` on a terminal: the Packer-style `==>` lines are the progress view, so the log
    // lines that repeat them wait for -v (files, pipes and JSON logs keep them).
    if matches!(cli.command, Command::Build { .. })
        && cli.log_format == LogFormat::Text
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
    {
        verbosity -= 1;
    }
    observe::init(cli.log_format, verbosity);
    let result = match &cli.command {
        Command::Validate { template, json } => cli::template::validate(template, *json),
        Command::Inspect { template, json } => cli::template::inspect(template, *json),
        Command::Lint(args) => cli::lint::lint(args),
        other => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
            Ok(rt) => rt.block_on(async {
                match other {
                    Command::Build { template, flags } => cli::build::build(template, flags).await,
                    Command::Worker(args) => cli::worker::worker(args).await,
                    Command::Submit(args) => cli::submit::submit(args).await,
                    Command::Status {
                        bucket,
                        team,
                        build_id,
                    } => cli::submit::status(bucket, team, build_id).await,
                    Command::Lineage { ami, json } => cli::lineage::lineage(ami, *json).await,
                    Command::Promote {
                        ami,
                        to,
                        from,
                        regions,
                    } => cli::lineage::promote(ami, to, from.as_deref(), regions).await,
                    Command::Revoke {
                        ami,
                        reason,
                        descendants,
                        regions,
                    } => cli::lineage::revoke(ami, reason, *descendants, regions).await,
                    Command::Gc {
                        bucket,
                        regions,
                        build_id,
                        older_than,
                        dry_run,
                    } => cli::gc::gc(bucket, regions, build_id, older_than, *dry_run).await,
                    Command::Validate { .. } | Command::Inspect { .. } | Command::Lint(_) => {
                        Ok(ExitCode::FAILURE)
                    }
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
