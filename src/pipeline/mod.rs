//! The chroot pipeline: a validated [`Plan`] runs as ordered steps, each with an undo, over typed
//! state; the outcome is a [`BuildResult`] document (shared by `kiln build --json` and the worker).
//!
//! Data flow: template -> plan -> steps (engine.rs, steps/) -> result (result.rs). Steps call the
//! EC2 control plane (`crate::ec2`), the host (`crate::host`) and the backend (`crate::backend`);
//! nothing else here touches AWS or the host directly.

pub mod engine;
pub mod result;
pub mod state;
pub mod steps;

use crate::aws::Clients;
use crate::backend::Backend;
use crate::ec2::Ec2Error;
use crate::ec2::wait::Polling;
use crate::host::HostError;
use crate::host::command::{self, ShellCommand, Sink};
use crate::template::{Masker, Plan, gotmpl};
pub use result::BuildResult;
use state::{BuildState, Recorder};
use std::path::PathBuf;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// What to do with what a failed build created (Packer's `-on-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Undo every step that ran (the default).
    Cleanup,
    /// Leave everything in place and list it.
    Abort,
}

/// An error inside a step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// From EC2 or IMDS.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// From the host (a host operation cancelled becomes [`StepError::Cancelled`]).
    #[error(transparent)]
    Host(HostError),
    /// From the EBS direct APIs or the direct backend's files.
    #[error(transparent)]
    Ebs(crate::ebs::EbsError),
    /// A channel could not be published.
    #[error(transparent)]
    Channel(crate::channels::ChannelError),
    /// The SBOM could not be stored, or the previous one read.
    #[error(transparent)]
    Sbom(crate::sbom::store::StoreError),
    /// The template or the source image cannot be built as asked.
    #[error("{0}")]
    Invalid(String),
    /// The boot test's instance did not show the marker (its console's last lines in `tail`).
    #[error("the boot test failed: {message}\nlast console lines:\n{tail}")]
    Boot {
        /// What happened (instance id, state, time waited).
        message: String,
        /// The console's last lines.
        tail: String,
    },
    /// The build was cancelled (SIGINT/SIGTERM or the worker's drain deadline).
    #[error("the build was cancelled")]
    Cancelled,
    /// Another worker took the build over (its checkpoint journal changed under this attempt):
    /// this attempt stopped and left its snapshot and AMIs to the new owner.
    #[error(
        "another worker took this build over (its checkpoint journal changed); this attempt stopped and left its snapshot and AMIs to it"
    )]
    HandedOver,
    /// A step panicked (a bug in kiln).
    #[error("kiln bug: the step panicked: {0}")]
    Panic(String),
}

impl From<HostError> for StepError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Cancelled(_) => StepError::Cancelled,
            other => StepError::Host(other),
        }
    }
}

impl From<crate::ebs::EbsError> for StepError {
    fn from(e: crate::ebs::EbsError) -> Self {
        match e {
            crate::ebs::EbsError::Cancelled(_) => StepError::Cancelled,
            crate::ebs::EbsError::Host(h) => h.into(),
            other => StepError::Ebs(other),
        }
    }
}

impl StepError {
    /// Whether retrying the build could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Ec2(e) => e.is_retryable(),
            StepError::Host(e) => e.is_retryable(),
            StepError::Ebs(e) => e.is_retryable(),
            StepError::Sbom(e) => e.is_retryable(),
            StepError::Channel(e) => e.is_retryable(),
            StepError::Cancelled => true,
            StepError::HandedOver
            | StepError::Invalid(_)
            | StepError::Panic(_)
            | StepError::Boot { .. } => false,
        }
    }
}

/// How to run a build.
#[derive(Clone)]
pub struct BuildOptions {
    /// The build id (the caller's idempotency key).
    pub build_id: String,
    /// The team the build belongs to: tagged `kiln:team` on everything it makes.
    pub team: crate::team::Team,
    /// Where volume data lives.
    pub backend: Backend,
    /// What to do on failure.
    pub on_error: OnError,
    /// Directory of the per-device lock files.
    pub lock_dir: PathBuf,
    /// Where provisioner output and step lines go (besides `tracing`).
    pub sink: Sink,
    /// Records each step's outputs as it completes (the worker's checkpoint journal).
    pub recorder: Arc<dyn Recorder>,
    /// 1 for a first run; more when resuming a build an earlier attempt started (a crashed or
    /// drained worker): the build then reclaims what that attempt left and reuses its snapshot
    /// and AMI instead of making new ones.
    pub attempt: u32,
    /// The build's generation (see [`crate::ec2::BuildRef`]): from the journal, or a new random
    /// id for a build without one.
    pub generation: String,
    /// Cancelled (with the build's own token) when another worker has taken the build over: the
    /// unwinding then undoes this attempt's volume, attachment, mounts and device lock, but leaves
    /// the snapshot and AMIs, which the new owner finds by their tags and reuses.
    pub handed_over: CancellationToken,
    /// The template's identity across its builds (`kiln:template` on the AMI: the request's
    /// template key, or a local template's path, with the build's name): the previous image of
    /// the same template is found by it. Empty: none (no comparison with a previous image).
    pub template_ref: String,
    /// The request's bake key (`kiln:bake-key` on the AMI), for builds `kiln-trigger` asked for.
    pub bake_key: Option<String>,
    /// Where the SBOM goes, in which format.
    pub sbom: crate::sbom::store::Target,
    /// The template's name in channel parameters (`channels::template_name`; tagged
    /// `kiln:template-name`).
    pub template_name: String,
    /// The channels a successful build publishes its AMIs to (`publish-channels`).
    pub channels: Vec<String>,
    /// What earlier attempts of this build recorded, `(step, outputs)` in order (the journal's):
    /// a resumed attempt's result carries their outputs for the steps it skips (the SBOM's
    /// location and package changes, the lint's findings), marked `"resumed": true`.
    pub earlier: Vec<(String, serde_json::Value)>,
}

/// Everything a step can see: the plan, the AWS clients, the host settings and the typed state.
pub struct Build {
    /// The build id.
    pub id: String,
    /// The build's team (see [`BuildOptions::team`]).
    pub team: crate::team::Team,
    /// The resolved template build.
    pub plan: Plan,
    /// AWS clients (one SdkConfig).
    pub clients: Clients,
    /// The build region.
    pub region: String,
    /// Where volume data lives.
    pub backend: Backend,
    /// Wait settings.
    pub polling: Polling,
    /// Cancelled on SIGINT/SIGTERM; steps stop at their next wait or command.
    pub cancel: CancellationToken,
    /// Per-device lock directory.
    pub lock_dir: PathBuf,
    /// Masks sensitive values in anything shown.
    pub masker: Masker,
    /// Output sink.
    pub sink: Sink,
    /// What the steps made so far.
    pub state: BuildState,
    /// The build's start time.
    pub started: OffsetDateTime,
    /// The attempt number (see [`BuildOptions::attempt`]).
    pub attempt: u32,
    /// The generation (see [`BuildOptions::generation`]).
    pub generation: String,
    /// See [`BuildOptions::template_ref`].
    pub template_ref: String,
    /// See [`BuildOptions::bake_key`].
    pub bake_key: Option<String>,
    /// See [`BuildOptions::sbom`].
    pub sbom: crate::sbom::store::Target,
    /// See [`BuildOptions::template_name`].
    pub template_name: String,
    /// See [`BuildOptions::channels`].
    pub channels: Vec<String>,
}

impl Build {
    /// The build id, generation and team that tags and idempotency tokens name.
    pub fn build_ref(&self) -> crate::ec2::BuildRef {
        crate::ec2::BuildRef {
            id: self.id.clone(),
            generation: self.generation.clone(),
            team: self.team.to_string(),
        }
    }

    /// Renders a template string at build time with placeholder `values`.
    pub fn render(
        &self,
        field: &str,
        s: &str,
        values: &[(&str, String)],
    ) -> Result<String, StepError> {
        if !gotmpl::has_actions(s) {
            return Ok(s.to_owned());
        }
        let ctx = gotmpl::Ctx {
            user: self.plan.variables.clone(),
            env_allowed: false,
            now: self.started,
            build_name: self.plan.name.clone(),
            template_dir: self.plan.template_dir.display().to_string(),
            placeholders: values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some(v.clone())))
                .collect(),
        };
        gotmpl::render(s, &ctx)
            .map(|r| r.text)
            .map_err(|e| StepError::Invalid(format!("{field}: {e}")))
    }

    /// Where the volume is mounted; an error before `attach-volume` chose it.
    pub fn mount_path(&self) -> Result<std::path::PathBuf, StepError> {
        self.state
            .mount_path
            .clone()
            .ok_or_else(|| StepError::Invalid("no mount path".into()))
    }

    /// `{{.Device}}` and `{{.MountPath}}` as far as they are known.
    pub fn device_values(&self) -> Vec<(&'static str, String)> {
        let dev = self
            .state
            .device_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mount = self
            .state
            .mount_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        vec![("Device", dev), ("MountPath", mount)]
    }

    /// `{{.SourceAMI}}` and friends.
    pub fn source_values(&self) -> Vec<(&'static str, String)> {
        let s = self.state.source.clone().unwrap_or_default();
        vec![
            ("SourceAMI", s.id),
            ("SourceAMIName", s.name),
            ("SourceAMICreationDate", s.creation_date),
            ("SourceAMIOwner", s.owner.clone()),
            ("SourceAMIOwnerName", s.owner),
            (
                "SourceAMITags",
                s.tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("BuildRegion", self.region.clone()),
        ]
    }

    /// Runs a host command through `command_wrapper`, output to the sink under `name`.
    pub async fn host_command(
        &self,
        name: &str,
        script: &str,
        env: Vec<(String, String)>,
    ) -> Result<(), StepError> {
        let wrapped = self.render(
            "command_wrapper",
            &self.plan.config.command_wrapper,
            &[("Command", script.to_owned())],
        )?;
        self.run_command(ShellCommand {
            name: name.to_owned(),
            display: wrapped.clone(),
            script: wrapped,
            env,
            valid_exit_codes: vec![0],
        })
        .await
    }

    /// Runs `cmd` (a `/bin/sh -c` child in its own process group, killed on cancellation): its
    /// masked `display` echoed as `$ ...` and its output streamed to the sink under its name.
    pub async fn run_command(&self, mut cmd: ShellCommand) -> Result<(), StepError> {
        cmd.display = self.masker.mask(&cmd.display);
        (self.sink)(&cmd.name, &format!("$ {}", cmd.display));
        Ok(command::run(&cmd, &self.sink, &self.cancel).await?)
    }
}

/// Runs `plan` to completion: steps in order, undos in reverse on failure or cancellation (or
/// always, for the volume and the device lock). Never panics; a panic in a step is a failure.
///
/// Side effects: creates and removes AWS resources, loop devices, mounts; returns what exists.
pub async fn run(
    plan: Plan,
    masker: Masker,
    clients: Clients,
    options: BuildOptions,
    cancel: CancellationToken,
) -> BuildResult {
    engine::run(plan, masker, clients, options, cancel).await
}
