//! A request's template, from S3 to the one build plan it asks for: fetched into the build's
//! work directory, evaluated off the async threads with an allow-listed environment, its data
//! sources read with the team's clients and within the team's scope, and its host-side features
//! checked against the team's policy.

use super::contain::{panic_if_asked, panic_message, panicked, template_env};
use crate::pipeline::result::BuildResult;
use crate::template::{self, Inputs};
use crate::worker::fetch::fetch_template;
use crate::worker::request::BuildRequest;
use crate::worker::{Ctx, Delivery, early_failure};
use std::path::Path;

/// Loads the template at `dir` off the async threads (evaluation is CPU work, bounded but not
/// instant); a panic in it is the build's failure.
async fn load_blocking(
    build_id: &str,
    dir: &Path,
    inputs: &Inputs,
) -> Result<template::Loaded, Box<BuildResult>> {
    let (dir, inputs) = (dir.to_path_buf(), inputs.clone());
    let load = move || {
        // For `{{env}}` in JSON templates too (HCL's loader sets it itself).
        template::functions::set_env(&inputs.env);
        template::load(&dir, &inputs)
    };
    match tokio::task::spawn_blocking(load).await {
        Ok(l) => Ok(l),
        Err(e) if e.is_panic() => Err(Box::new(panicked(
            build_id,
            "validate",
            &panic_message(e.into_panic()),
        ))),
        Err(e) => Err(Box::new(early_failure(
            build_id,
            "validate",
            e.to_string(),
            true,
        ))),
    }
}

/// Fetches the request's template, fetches its data sources (with the team's clients, within its
/// scope), loads the one build it asks for and checks it against the team's host-feature policy;
/// a failure is the build's result (not retryable when the template is wrong).
pub(super) async fn load_plan(
    ctx: &Ctx,
    d: &Delivery,
    req: &BuildRequest,
    build_id: &str,
    work: &Path,
) -> Result<(crate::template::Plan, crate::template::Masker), Box<BuildResult>> {
    if let Err(e) = std::fs::create_dir_all(work) {
        return Err(Box::new(early_failure(
            build_id,
            "fetch-template",
            format!("creating {}: {e}", work.display()),
            true,
        )));
    }
    let path = match fetch_template(ctx, req, work).await {
        Ok(p) => p,
        Err((m, retryable)) => {
            return Err(Box::new(early_failure(
                build_id,
                "fetch-template",
                m,
                retryable,
            )));
        }
    };
    let inputs = Inputs {
        vars: req
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        only: req.only.clone(),
        except: req.except.clone(),
        cwd: work.to_path_buf(),
        env: template_env(),
        // A team without host features reads only its template's own files.
        file_root: (!d.lane.host_features).then(|| work.to_path_buf()),
        ..Inputs::default()
    };
    // A file of a directory template names the whole directory.
    let dir = template::directory_of(&path);
    panic_if_asked();
    let loaded = load_blocking(build_id, &dir, &inputs).await?;
    let loaded = match crate::data_sources::complete(
        &dir,
        &inputs,
        loaded,
        d.lane.clients.config(),
        &d.lane.data_scope,
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            return Err(Box::new(early_failure(
                build_id,
                "validate",
                e.to_string(),
                e.is_retryable(),
            )));
        }
    };
    if loaded.has_errors() {
        let errors: Vec<String> = loaded
            .errors()
            .map(|d| {
                loaded
                    .masker
                    .mask(&d.to_string().replace(&format!("{}/", work.display()), ""))
            })
            .collect();
        return Err(Box::new(early_failure(
            build_id,
            "validate",
            format!("the template is invalid:\n{}", errors.join("\n")),
            false,
        )));
    }
    if loaded.plans.len() != 1 {
        let names: Vec<&str> = loaded.plans.iter().map(|p| p.name.as_str()).collect();
        return Err(Box::new(early_failure(
            build_id,
            "validate",
            format!(
                "the template has {} builds ({}); set `only` to pick one",
                names.len(),
                names.join(", ")
            ),
            false,
        )));
    }
    let plan = loaded.plans[0].clone();
    if !d.lane.host_features
        && let Some((feature, why)) = crate::template::host_features(&plan, &dir)
            .into_iter()
            .next()
    {
        let e = crate::team::TeamError::HostFeature {
            team: d.lane.team.to_string(),
            feature,
            why,
        };
        return Err(Box::new(early_failure(
            build_id,
            "validate",
            e.to_string(),
            e.is_retryable(),
        )));
    }
    Ok((plan, loaded.masker.clone()))
}
