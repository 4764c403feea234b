//! Fetching a build's template, and the files beside it, from a trusted S3 bucket into the build's
//! work directory; and, for `kiln submit`, the local files that make up a template, within the
//! same limits.

use super::Ctx;
use super::request::BuildRequest;
use std::path::{Path, PathBuf};

pub use crate::request::{MAX_TEMPLATE_BYTES, MAX_TEMPLATE_FILES};

/// Downloads the template and the files beside it (or below its `root`) into `dir`, laid out as
/// below that prefix, so `dir` is the build's working directory; returns the template's path.
pub(super) async fn fetch_template(
    ctx: &Ctx,
    req: &BuildRequest,
    dir: &Path,
) -> Result<PathBuf, (String, bool)> {
    let t = &req.template;
    let s3 = &ctx.clients.s3;
    let (prefix, keys) = crate::template_store::keys(s3, &t.bucket, &t.key, t.root.as_deref())
        .await
        .map_err(|e| (e.message, e.retryable))?;
    let mut template_path = None;
    for key in keys {
        let Some(rel) = crate::template_store::relative(prefix.as_deref(), &key) else {
            continue;
        };
        let mut get = s3.get_object().bucket(&t.bucket).key(&key);
        if key == t.key
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
                return Err(if missing && key == t.key {
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
        if key == t.key {
            template_path = Some(path);
        }
    }
    template_path.ok_or_else(|| {
        (
            format!("the template s3://{}/{} does not exist", t.bucket, t.key),
            false,
        )
    })
}

/// The files `kiln submit` uploads for the local template `path`: the template first, then every
/// file beside it (recursively), as a worker fetches them, then the files and directories the
/// template references elsewhere (`referenced`, e.g. `scripts/common.sh` from the repository root). Errors when there are more files or
/// bytes than a worker fetches ([`MAX_TEMPLATE_FILES`], [`MAX_TEMPLATE_BYTES`]), naming the
/// directory, instead of uploading a template that could never build.
pub fn template_files(path: &Path, referenced: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut files = vec![path.to_path_buf()];
    let mut bytes = std::fs::metadata(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .len();
    let mut stack = vec![dir.to_path_buf()];
    let abs_dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let beside = |p: &Path| std::path::absolute(p).is_ok_and(|p| p.starts_with(&abs_dir));
    for r in referenced.iter().filter(|r| !beside(r)) {
        if r.is_dir() {
            stack.push(r.clone());
        } else if let Ok(m) = std::fs::metadata(r) {
            bytes += m.len();
            files.push(r.clone());
        }
    }
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("reading {}: {e}", d.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("reading {}: {e}", d.display()))?;
            let p = e.path();
            let meta = e
                .metadata()
                .map_err(|e| format!("reading {}: {e}", p.display()))?;
            if meta.is_dir() {
                stack.push(p);
            } else if p != path {
                bytes += meta.len();
                files.push(p);
            }
        }
        if files.len() > MAX_TEMPLATE_FILES || bytes > MAX_TEMPLATE_BYTES {
            return Err(format!(
                "{} holds more than {MAX_TEMPLATE_FILES} files or {MAX_TEMPLATE_BYTES} bytes, more than a worker fetches: put the template (and only what it uses) in a directory of its own",
                dir.display()
            ));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_files_refuses_a_directory_larger_than_a_worker_fetches() {
        let dir = std::env::temp_dir().join(format!("kiln-submit-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("scripts")).expect("dir");
        let template = dir.join("t.pkr.hcl");
        std::fs::write(&template, "build {}").expect("template");
        std::fs::write(dir.join("scripts/a.sh"), "true").expect("script");
        let files = template_files(&template, &[]).expect("a small directory is fine");
        assert_eq!(files[0], template, "the template comes first");
        assert_eq!(files.len(), 2);
        for i in 0..MAX_TEMPLATE_FILES {
            std::fs::write(dir.join(format!("f{i}")), "x").expect("file");
        }
        let err = template_files(&template, &[]).expect_err("too many files");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("more than 200 files"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }
}
