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
        backend,
        channels,
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
    let variables = variables_of(vars)?;
    let (location, builds) = if let Some(rest) = template.strip_prefix("s3://") {
        let (b, k) = rest.split_once('/').context("expected s3://bucket/key")?;
        let location = kiln::worker::request::TemplateLocation {
            bucket: b.to_owned(),
            key: k.to_owned(),
            version_id: None,
            root: None,
        };
        (location, Vec::new())
    } else {
        upload(&clients, args, &build_id, &variables).await?
    };
    // One request per selected build (the worker builds one build per request), each with its
    // own build id and result; a template of one build keeps the build id as given.
    let requests: Vec<(String, Vec<String>)> = if builds.len() > 1 {
        let ids = kiln::template_store::build_ids(&build_id, &builds).with_context(|| {
            format!("the build id {build_id} is too long for one build id per build of the template (at most 128 characters with the build's name)")
        })?;
        ids.into_iter()
            .zip(builds.iter().map(|b| vec![b.clone()]))
            .collect()
    } else {
        vec![(build_id.clone(), only.to_vec())]
    };
    for (id, only) in &requests {
        let req = kiln::worker::request::BuildRequest {
            version: kiln::worker::request::REQUEST_VERSION,
            build_id: Some(id.clone()),
            template: location.clone(),
            variables: variables.clone(),
            only: only.clone(),
            except: except.to_vec(),
            force,
            bake: None,
            backend: *backend,
            channels: channels.clone(),
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
                    "sending the request for {id} to {queue}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
        println!("{id}");
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    // Every result, printed as it arrives; exit 1 when any build failed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let mut waiting: Vec<&str> = requests.iter().map(|(id, _)| id.as_str()).collect();
    let mut failed = false;
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for id in waiting {
            match read_object(&clients, bucket, &kiln::worker::result_key(team, id)).await? {
                Some(text) => {
                    println!("{text}");
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    failed |= v["status"] != "succeeded";
                }
                None => still.push(id),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "no result for {} within {timeout} s (kiln status {} shows its progress)",
                waiting.join(", "),
                waiting[0]
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Uploads the local template `args.template` and its files (see
/// [`kiln::worker::fetch::template_files`]) to `submissions/<build_id>/` in the team's part of the
/// bucket, at their paths below the root (the working directory when the template is inside it,
/// else the template's folder), and returns where the template is and the names of the builds
/// it selects (loaded locally, offline, with the root as its working directory).
async fn upload(
    clients: &Clients,
    args: &SubmitArgs,
    build_id: &str,
    variables: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<(kiln::worker::request::TemplateLocation, Vec<String>)> {
    let path = std::path::Path::new(&args.template);
    // Not under the trigger's `templates/` prefix: an upload there would start a second build.
    let prefix = args.team.key(&format!("submissions/{build_id}"));
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let abs = std::path::absolute(path).with_context(|| format!("reading {}", path.display()))?;
    let root = kiln::worker::fetch::submit_root(&abs, &cwd).map_err(anyhow::Error::msg)?;
    if root != cwd {
        eprintln!(
            "kiln submit: {} is outside the working directory: its folder {} stands for the working directory (relative paths in it resolve from there)",
            path.display(),
            root.display()
        );
    }
    let inputs = kiln::template::Inputs {
        vars: variables.clone().into_iter().collect(),
        only: args.only.to_vec(),
        except: args.except.to_vec(),
        cwd: root.clone(),
        ..kiln::template::Inputs::default()
    };
    let loaded = kiln::template::load(&kiln::template::directory_of(&abs), &inputs);
    let referenced: Vec<std::path::PathBuf> =
        loaded.plans.iter().flat_map(|p| p.local_files()).collect();
    let set = kiln::worker::fetch::template_files(&abs, &root, &referenced)
        .map_err(anyhow::Error::msg)?;
    let rel = |f: &std::path::Path| {
        f.strip_prefix(&root).ok().map(|r| {
            r.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
    };
    let template_rel = rel(&abs).context("the template is outside its root")?;
    for f in &set.files {
        let Some(key_rel) = rel(f) else {
            eprintln!(
                "kiln submit: {} is outside {} and is not uploaded; the worker looks for it at that path",
                f.display(),
                root.display()
            );
            continue;
        };
        let body = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        clients
            .s3
            .put_object()
            .bucket(&args.bucket)
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
    let location = kiln::worker::request::TemplateLocation {
        bucket: args.bucket.to_owned(),
        key: format!("{prefix}/{template_rel}"),
        version_id: None,
        root: Some(prefix.clone()),
    };
    Ok((
        location,
        loaded.plans.iter().map(|p| p.name.clone()).collect(),
    ))
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
        // What changed, for people (stdout stays the document).
        if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) {
            for line in kiln::pipeline::result::changes_text(&doc) {
                eprintln!("{line}");
            }
        }
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
