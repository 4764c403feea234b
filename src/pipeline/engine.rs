//! The step engine: runs steps in order, records each one's outputs, and on failure, panic or
//! cancellation unwinds the undos of the steps that ran (the failed one included, since it may
//! have created something before failing) in reverse. An undo that fails is logged with the ids of
//! what it leaves behind, and the unwinding goes on.

use super::result::{Artifact, BuildResult, Failure, RESULT_VERSION, Status, StepRecord};
use super::state::BuildState;
use super::steps::{self, StepId};
use super::{Build, BuildOptions, OnError, StepError};
use crate::aws::Clients;
use crate::ec2::wait::Polling;
use crate::template::{Masker, Plan};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::time::Instant;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Fault injection for crash tests: `KILN_FAULT_CRASH_AFTER=<step>` kills the process with
/// SIGKILL right after that step's outputs are written to the recorder's store (the journal), as
/// a dying instance would.
async fn crash_if_asked(step: StepId, recorder: &dyn super::state::Recorder) {
    if std::env::var("KILN_FAULT_CRASH_AFTER").is_ok_and(|s| s == step.name()) {
        // Bounded: a journal that cannot be written must not hang the fault hook.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), recorder.written()).await;
        tracing::warn!(
            step = step.name(),
            "KILN_FAULT_CRASH_AFTER: killing this process"
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Why a cancelled build stopped: another worker took it over, or it was cancelled.
fn stopped(options: &BuildOptions) -> StepError {
    if options.handed_over.is_cancelled() {
        StepError::HandedOver
    } else {
        StepError::Cancelled
    }
}

/// See [`super::run`].
pub async fn run(
    plan: Plan,
    masker: Masker,
    clients: Clients,
    options: BuildOptions,
    cancel: CancellationToken,
) -> BuildResult {
    let started = OffsetDateTime::now_utc();
    let clock = Instant::now();
    let polling = Polling::from_env(
        plan.config
            .aws_polling
            .as_ref()
            .and_then(|p| p.delay_seconds),
        plan.config
            .aws_polling
            .as_ref()
            .and_then(|p| p.max_attempts),
    );
    let region = clients.region().to_owned();
    let mut b = Build {
        id: options.build_id.clone(),
        team: options.team.clone(),
        plan,
        clients,
        region,
        backend: options.backend.clone(),
        polling,
        cancel: cancel.clone(),
        lock_dir: options.lock_dir.clone(),
        masker,
        sink: options.sink.clone(),
        state: BuildState::default(),
        started,
        attempt: options.attempt.max(1),
        generation: options.generation.clone(),
        template_ref: options.template_ref.clone(),
        bake_key: options.bake_key.clone(),
        sbom: options.sbom.clone(),
        template_name: options.template_name.clone(),
        channels: options.channels.clone(),
    };
    let plan_steps = steps::plan_steps(&b.plan.config, b.backend.is_direct());
    let mut records = Vec::new();
    let mut ran: Vec<StepId> = Vec::new();
    let mut failure: Option<(StepId, StepError)> = None;
    for step in plan_steps {
        if steps::skipped(step, &b) {
            if let Some(r) = earlier_record(step, &options.earlier) {
                records.push(r);
            }
            continue;
        }
        if cancel.is_cancelled() {
            failure = Some((step, stopped(&options)));
            break;
        }
        let span = tracing::info_span!("step", build_id = %b.id, step = step.name());
        let t0 = Instant::now();
        let at = rfc3339(OffsetDateTime::now_utc());
        (b.sink)("kiln", &format!("==> {}", step.title()));
        let outcome = AssertUnwindSafe(steps::run(step, &mut b))
            .catch_unwind()
            .instrument(span)
            .await;
        let outcome = outcome.unwrap_or_else(|p| Err(StepError::Panic(panic_message(p))));
        // Nothing a step started in the image outlives it (daemons a postinst started).
        steps::after_step(&b).await;
        ran.push(step);
        match outcome {
            Ok(outputs) => {
                let duration = t0.elapsed().as_secs_f64();
                tracing::info!(build_id = %b.id, step = step.name(), duration_s = duration, "step done");
                (b.sink)(
                    "kiln",
                    &format!("    {} done in {duration:.1} s", step.name()),
                );
                options.recorder.record(&b.id, step.name(), &outputs).await;
                crash_if_asked(step, options.recorder.as_ref()).await;
                records.push(StepRecord {
                    name: step.name().to_owned(),
                    started_at: at,
                    duration_s: duration,
                    outputs,
                });
            }
            Err(e) => {
                let e = if cancel.is_cancelled() {
                    stopped(&options)
                } else {
                    e
                };
                tracing::error!(build_id = %b.id, step = step.name(), error = %b.masker.mask(&e.to_string()), "step failed");
                records.push(StepRecord {
                    name: step.name().to_owned(),
                    started_at: at,
                    duration_s: t0.elapsed().as_secs_f64(),
                    outputs: serde_json::json!({"error": b.masker.mask(&e.to_string())}),
                });
                failure = Some((step, e));
                break;
            }
        }
    }

    // Unwind: undos must finish even though the build's token may be cancelled.
    b.cancel = CancellationToken::new();
    let failed = failure.is_some();
    // Handed over: what the new owner reuses (snapshot, AMIs, copies) is not undone.
    let handed_over = options.handed_over.is_cancelled();
    let mut left_behind = Vec::new();
    if failed && options.on_error == OnError::Abort {
        left_behind = steps::inventory(&b);
        // Kept on purpose: a worker's start-up sweep on this host must leave it alone.
        if let Some(lock) = &b.state.device_lock {
            let note = crate::host::lock::DeviceLock::read_note(&b.lock_dir, lock.name())
                .unwrap_or_default();
            if let Err(e) = lock.note(&format!("{}{note}", crate::host::lock::KEPT)) {
                tracing::warn!(build_id = %b.id, error = %e, "could not mark the device lock as kept");
            }
        }
        for item in &left_behind {
            (b.sink)("kiln", &format!("left in place (--on-error=abort): {item}"));
        }
    } else {
        for step in ran.iter().rev() {
            if !steps::undo_applies(*step, failed && !handed_over) {
                continue;
            }
            let span = tracing::info_span!("undo", build_id = %b.id, step = step.name());
            let outcome = AssertUnwindSafe(steps::undo(*step, &mut b))
                .catch_unwind()
                .instrument(span)
                .await;
            let outcome = outcome.unwrap_or_else(|p| Err(StepError::Panic(panic_message(p))));
            if let Err(e) = outcome {
                let left = steps::inventory_of(*step, &b);
                let msg = format!(
                    "undo of {} failed: {}; left behind: {}",
                    step.name(),
                    b.masker.mask(&e.to_string()),
                    if left.is_empty() {
                        "nothing known".to_owned()
                    } else {
                        left.join(", ")
                    }
                );
                tracing::error!(build_id = %b.id, step = step.name(), left_behind = ?left, "{msg}");
                (b.sink)("kiln", &msg);
                left_behind.push(msg);
            }
        }
    }

    let finished = OffsetDateTime::now_utc();
    let artifacts = if failed {
        Default::default()
    } else {
        b.state
            .images
            .iter()
            .map(|(region, img)| {
                let files = img
                    .snapshot_ids
                    .iter()
                    .filter_map(|s| b.backend.snapshot_file(s))
                    .map(|p| p.display().to_string())
                    .collect();
                (
                    region.clone(),
                    Artifact {
                        ami_id: img.ami_id.clone(),
                        snapshot_ids: img.snapshot_ids.clone(),
                        snapshot_files: files,
                    },
                )
            })
            .collect()
    };
    BuildResult {
        version: RESULT_VERSION,
        build_id: b.id.clone(),
        build_name: b.plan.name.clone(),
        status: if failed {
            Status::Failed
        } else {
            Status::Succeeded
        },
        backend: b.backend.name().to_owned(),
        region: b.region.clone(),
        source_ami: b.state.source.as_ref().map(|s| s.id.clone()),
        artifacts,
        steps: records,
        error: failure.map(|(step, e)| Failure {
            step: step.name().to_owned(),
            message: b.masker.mask(&e.to_string()),
            retryable: e.is_retryable(),
        }),
        left_behind,
        started_at: rfc3339(started),
        finished_at: rfc3339(finished),
        duration_s: clock.elapsed().as_secs_f64(),
        bake_key: None,
    }
}

/// The record of `step` an earlier attempt made (its last), for a resumed attempt that skips the
/// step: its outputs with `"resumed": true`, no duration of this attempt's. Pure.
fn earlier_record(step: StepId, earlier: &[(String, serde_json::Value)]) -> Option<StepRecord> {
    let (_, outputs) = earlier.iter().rev().find(|(n, _)| n == step.name())?;
    let mut outputs = outputs.clone();
    if let Some(o) = outputs.as_object_mut() {
        o.insert("resumed".into(), serde_json::Value::Bool(true));
    }
    Some(StepRecord {
        name: step.name().to_owned(),
        started_at: String::new(),
        duration_s: 0.0,
        outputs,
    })
}
