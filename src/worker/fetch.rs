//! Fetching a build's template and its files (see [`crate::template_store`]: its folder, or in a
//! flat folder the template and exactly the files it references) from a trusted S3 bucket into
//! the build's work directory; and, for `kiln submit`, the local files that make up a template,
//! within the same limits (`local.rs`, with `gitignore.rs`).

mod gitignore;
mod local;

use super::Ctx;
use super::request::BuildRequest;
use crate::template_store::Layout;
use std::path::{Path, PathBuf};

pub use crate::request::{MAX_TEMPLATE_BYTES, MAX_TEMPLATE_FILES};
pub use local::{SubmitFiles, submit_root, template_files};

/// The environment a template sees while the worker looks for the files it references (the
/// worker's own allow-list for templates).
const DISCOVERY_ENV: &[&str] = &["HOME", "LANG", "LC_ALL", "PATH", "TZ", "USER"];

/// Downloads the template and its files into `dir`, laid out as below its working-directory
/// prefix (the request's `root`, else the template's folder), so `dir` is the build's working
/// directory; returns the template's path. A template in a flat folder is evaluated offline
/// (off the async threads) to name its references, which are fetched next; an evaluation that
/// fails here is left to the build's own load, which reports it.
pub(super) async fn fetch_template(
    ctx: &Ctx,
    req: &BuildRequest,
    dir: &Path,
) -> Result<PathBuf, (String, bool)> {
    let t = &req.template;
    let s3 = &ctx.clients.s3;
    let listing = crate::template_store::list(s3, &t.bucket, &t.key, t.root.as_deref())
        .await
        .map_err(|e| (e.message, e.retryable))?;
    let prefix = listing.prefix.as_deref();
    let keys: Vec<String> = listing.keys.iter().map(|(k, _)| k.clone()).collect();
    let template_path = fetch_keys(ctx, req, prefix, &keys, dir)
        .await?
        .ok_or_else(|| {
            (
                format!("the template s3://{}/{} does not exist", t.bucket, t.key),
                false,
            )
        })?;
    if listing.layout == Layout::Flat {
        let references = discover(req, dir, &template_path).await;
        let more = crate::template_store::reference_keys(
            s3,
            &t.bucket,
            prefix,
            &references,
            &listing.keys,
        )
        .await
        .map_err(|e| (e.message, e.retryable))?;
        let more: Vec<String> = more.into_iter().map(|(k, _)| k).collect();
        fetch_keys(ctx, req, prefix, &more, dir).await?;
    }
    Ok(template_path)
}

/// The files the template at `template` references below `dir`, from an offline evaluation
/// with the request's variables and build selection; empty when it fails or panics.
async fn discover(req: &BuildRequest, dir: &Path, template: &Path) -> Vec<String> {
    let inputs = crate::template::Inputs {
        vars: req
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        only: req.only.clone(),
        except: req.except.clone(),
        cwd: dir.to_path_buf(),
        env: std::env::vars()
            .filter(|(k, _)| DISCOVERY_ENV.contains(&k.as_str()))
            .collect(),
        file_root: Some(dir.to_path_buf()),
        ..crate::template::Inputs::default()
    };
    let (dir, template) = (dir.to_path_buf(), template.to_path_buf());
    let find = move || {
        crate::template::functions::set_env(&inputs.env);
        let loaded = crate::template::load(&crate::template::directory_of(&template), &inputs);
        crate::template_store::references_below(&loaded, &dir)
    };
    tokio::task::spawn_blocking(find).await.unwrap_or_default()
}

/// Fetches `keys` into `dir` at their paths below `prefix`; the template at the request's
/// version. Returns the template's path when it was among them.
async fn fetch_keys(
    ctx: &Ctx,
    req: &BuildRequest,
    prefix: Option<&str>,
    keys: &[String],
    dir: &Path,
) -> Result<Option<PathBuf>, (String, bool)> {
    let t = &req.template;
    let s3 = &ctx.clients.s3;
    let mut template_path = None;
    for key in keys {
        let Some(rel) = crate::template_store::relative(prefix, key) else {
            continue;
        };
        let mut get = s3.get_object().bucket(&t.bucket).key(key);
        if *key == t.key
            && let Some(v) = &t.version_id
        {
            get = get.version_id(v);
        }
        let obj = match get.send().await {
            Ok(o) => o,
            Err(e) => {
                let missing = matches!(&e, aws_sdk_s3::error::SdkError::ServiceError(s) if s.err().is_no_such_key())
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
                let what = format!("s3://{}/{key}", t.bucket);
                return Err(if missing && *key == t.key {
                    (format!("the template {what} does not exist"), false)
                } else {
                    (
                        format!(
                            "fetching {what}: {}",
                            aws_sdk_s3::error::DisplayErrorContext(&e)
                        ),
                        !missing,
                    )
                });
            }
        };
        let bytes = obj
            .body
            .collect()
            .await
            .map_err(|e| (format!("reading s3://{}/{key}: {e}", t.bucket), true))?
            .into_bytes();
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| (format!("creating {}: {e}", parent.display()), true))?;
        }
        std::fs::write(&path, &bytes)
            .map_err(|e| (format!("writing {}: {e}", path.display()), true))?;
        if *key == t.key {
            template_path = Some(path);
        }
    }
    Ok(template_path)
}
