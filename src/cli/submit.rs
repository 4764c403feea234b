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

pub(crate) async fn status(bucket: &str, build_id: &str) -> anyhow::Result<ExitCode> {
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
