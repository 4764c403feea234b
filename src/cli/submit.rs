//! `kiln submit` and `kiln status`: a build request from the command line, and a build's
//! result or log so far.

use super::SubmitArgs;
use anyhow::{Context as _, bail};
use kiln::aws::{AwsSettings, Clients};
use std::io::Write;
use std::process::ExitCode;

pub(crate) async fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let SubmitArgs {
        queue,
        team,
        bucket,
        vars,
        only,
        except,
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
            root: None,
        }
    } else {
        let path = std::path::Path::new(template);
        // Not under the trigger's `templates/` prefix: an upload there would start a second build.
        let prefix = team.key(&format!("submissions/{build_id}"));
        // The working directory is the root: the template and every file it references, at
        // their paths relative to it, as the worker lays them out and resolves them.
        let cwd = std::env::current_dir().context("reading the working directory")?;
        let rel = |f: &std::path::Path| {
            std::path::absolute(f)
                .ok()
                .and_then(|a| a.strip_prefix(&cwd).ok().map(|r| r.display().to_string()))
        };
        let template_rel = rel(path).with_context(|| {
            format!(
                "{template} is outside the working directory: run kiln submit from a directory that holds the template and its files (as you would run packer build)"
            )
        })?;
        let inputs = kiln::template::Inputs {
            vars: variables_of(vars)?.into_iter().collect(),
            only: only.to_vec(),
            except: except.to_vec(),
            ..kiln::template::Inputs::default()
        };
        let loaded = kiln::template::load(&kiln::template::directory_of(path), &inputs);
        let referenced: Vec<std::path::PathBuf> =
            loaded.plans.iter().flat_map(|p| p.local_files()).collect();
        let files =
            kiln::worker::fetch::template_files(path, &referenced).map_err(anyhow::Error::msg)?;
        for f in files {
            let Some(key_rel) = rel(&f) else {
                eprintln!(
                    "kiln submit: {} is outside the working directory and is not uploaded; the worker looks for it at that path",
                    f.display()
                );
                continue;
            };
            let body = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            clients
                .s3
                .put_object()
                .bucket(bucket)
                .key(format!("{prefix}/{key_rel}"))
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
            key: format!("{prefix}/{template_rel}"),
            version_id: None,
            root: Some(prefix.clone()),
        }
    };
    let variables = variables_of(vars)?;
    let req = kiln::worker::request::BuildRequest {
        version: kiln::worker::request::REQUEST_VERSION,
        build_id: Some(build_id.clone()),
        template: location,
        variables,
        only: only.to_vec(),
        except: except.to_vec(),
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
            read_object(&clients, bucket, &kiln::worker::result_key(team, &build_id)).await?
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

pub(crate) async fn read_object(
    clients: &Clients,
    bucket: &str,
    key: &str,
) -> anyhow::Result<Option<String>> {
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

pub(crate) async fn status(
    bucket: &str,
    team: &kiln::team::Team,
    build_id: &str,
) -> anyhow::Result<ExitCode> {
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    if let Some(text) =
        read_object(&clients, bucket, &kiln::worker::result_key(team, build_id)).await?
    {
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{text}");
        return Ok(ExitCode::SUCCESS);
    }
    match read_object(&clients, bucket, &kiln::worker::log_key(team, build_id)).await? {
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

/// `--var NAME=VALUE` pairs.
fn variables_of(vars: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut variables = std::collections::BTreeMap::new();
    for v in vars {
        let (k, val) = v.split_once('=').context("--var expects NAME=VALUE")?;
        variables.insert(k.to_owned(), val.to_owned());
    }
    Ok(variables)
}
