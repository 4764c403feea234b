//! `kiln build`: one template in-process, like `packer build`, with an optional checkpoint
//! journal (`--checkpoint-bucket`) and cancellation on SIGINT/SIGTERM.

use super::template::{print_errors, print_warnings};
use super::{BackendKind, BuildFlags, TemplateArgs};
use anyhow::{Context as _, bail};
use kiln::aws::{AwsSettings, Clients};
use kiln::backend::Backend;
use kiln::checkpoint;
use kiln::pipeline::{self, BuildOptions, result::Status, state::MemoryRecorder};
use kiln::template;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The lease of a `kiln build --checkpoint-bucket` run, renewed every third of it. `kiln build` has
/// no queue visibility to match, so the number is a compromise: a run with the same build id after
/// a crash waits at most a minute, and two renewals may fail before the lease lapses.
const BUILD_LEASE_S: u64 = 60;

/// Takes the build's journal for this `kiln build` run: a new one, or a crashed run's (resumed).
/// Fails when a live run holds it or the build finished. Side effect: writes the journal.
pub(crate) async fn acquire_journal(
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
    let at = format!(
        "s3://{bucket}/{}",
        checkpoint::key(&kiln::team::Team::default_team(), id)
    );
    match checkpoint::acquire(
        &clients.s3,
        bucket,
        &kiln::team::Team::default_team(),
        id,
        &owner,
        BUILD_LEASE_S,
    )
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

/// A local template's identity across its builds (`kiln:template`): its absolute path and the
/// build's name, so rebuilding the same file finds its previous image.
fn template_ref(template: &std::path::Path, build: &str) -> String {
    let path = std::fs::canonicalize(template).unwrap_or_else(|_| template.to_owned());
    format!("file://{}#{build}", path.display())
}

/// Cancels `token` on the first SIGINT or SIGTERM (the build then unwinds its undos).
pub(crate) fn cancel_on_signals(token: CancellationToken) {
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

pub(crate) async fn build(args: &TemplateArgs, flags: &BuildFlags) -> anyhow::Result<ExitCode> {
    let BuildFlags {
        backend,
        state_dir,
        devices,
        on_error,
        build_id,
        checkpoint_bucket,
        boot_test,
        json,
        sbom_format,
        sbom_dir,
        channels,
    } = flags;
    let (backend, on_error, json) = (*backend, *on_error, *json);
    let (build_id, checkpoint_bucket) = (build_id.clone(), checkpoint_bucket.as_deref());
    if let Some(id) = &build_id
        && !kiln::request::valid_id(id)
    {
        bail!(
            "--build-id {id:?}: use 1 to 128 letters, digits, '-', '_' or '.' (it names the build's files and S3 keys)"
        );
    }
    // Waits start from what earlier runs on this builder observed (ec2/history.rs).
    kiln::ec2::history::use_state_dir(state_dir);
    let inputs = args.inputs()?;
    let mut loaded = template::load(&args.template, &inputs);
    if !loaded.data_requests.is_empty() {
        // Data sources are read in the builds' region unless their block names one.
        let settings = AwsSettings {
            region: loaded.plans.iter().find_map(|p| p.config.region.clone()),
            ..AwsSettings::default()
        };
        match kiln::aws::load(&settings).await {
            Ok(config) => {
                loaded = kiln::data_sources::complete(
                    &args.template,
                    &inputs,
                    loaded,
                    &config,
                    &kiln::team::DataScope::unrestricted(),
                )
                .await?;
            }
            // The template's own errors (printed below) come before a missing region.
            Err(_) if loaded.has_errors() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if *boot_test {
        for p in &mut loaded.plans {
            p.config.boot_test.get_or_insert_with(Default::default);
        }
    }
    print_warnings(&loaded);
    if loaded.has_errors() {
        print_errors(&loaded);
        return Ok(ExitCode::FAILURE);
    }
    let backend = match backend {
        BackendKind::Ebs => Backend::Ebs(devices.devices()),
        BackendKind::Loop => Backend::Loop {
            state_dir: state_dir.to_owned(),
        },
        BackendKind::Direct => Backend::Direct {
            state_dir: state_dir.to_owned(),
        },
    };
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    let masker = loaded.masker.clone();
    let sink_masker = masker.clone();
    // On a terminal, a progress line for long steps (cli/progress.rs).
    let progress =
        std::io::IsTerminal::is_terminal(&std::io::stderr()).then(super::progress::Progress::start);
    let sink: kiln::host::command::Sink = Arc::new(move |source: &str, line: &str| {
        let line = sink_masker.mask(line);
        match (&progress, source) {
            (Some(p), _) => p.line(source, &line),
            (None, "kiln") => eprintln!("{line}"),
            (None, _) => eprintln!("    {source}: {line}"),
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
            team: kiln::team::Team::default_team(),
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
            template_ref: template_ref(&args.template, &plan.name),
            template_name: kiln::channels::template_name(
                &args
                    .template
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                several.then_some(plan.name.as_str()),
            ),
            channels: channels.clone(),
            earlier: journal
                .as_ref()
                .map(|(j, ..)| j.journal().steps)
                .unwrap_or_default(),
            bake_key: None,
            sbom: kiln::sbom::store::Target {
                location: match checkpoint_bucket {
                    Some(bucket) => kiln::sbom::store::Location::S3 {
                        s3: clients.s3.clone(),
                        bucket: bucket.to_owned(),
                        prefix: kiln::team::Team::default_team().key(kiln::sbom::store::PREFIX),
                    },
                    None => kiln::sbom::store::Location::Dir(
                        sbom_dir.clone().unwrap_or_else(|| state_dir.join("sbom")),
                    ),
                },
                format: *sbom_format,
            },
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
                    for f in r.lint_findings() {
                        println!(
                            "    lint warning [{}] {}: {} (fix: {})",
                            f.check, f.file, f.message, f.fix
                        );
                    }
                    let doc = serde_json::to_value(r).unwrap_or_default();
                    for line in pipeline::result::changes_text(&doc) {
                        println!("    {line}");
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
