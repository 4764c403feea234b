//! What belongs to a template, and its files in S3.
//!
//! A template's files are its **own folder** (everything below it) when the template is alone in
//! that folder or is a directory template (several `*.pkr.hcl` files loaded together); in a
//! **flat** folder (`templates/web.json` next to `templates/db.json`) they are the template file
//! plus exactly the files it references ([`crate::template::Plan::local_files`]: scripts, upload
//! sources, playbooks, roles, bind mount sources), found by loading the template offline. The
//! worker fetches that set, the trigger hashes it into the bake key and `kiln submit` uploads it,
//! within the limits a worker fetches ([`crate::request::MAX_TEMPLATE_FILES`] and
//! [`crate::request::MAX_TEMPLATE_BYTES`]). A flat folder may hold any number of templates.

use crate::request::{MAX_TEMPLATE_BYTES, MAX_TEMPLATE_FILES};
use std::path::Path;

/// The file names of templates (as the trigger recognises them).
pub const TEMPLATE_SUFFIXES: &[&str] = &[".pkr.hcl", ".pkr.json", ".json"];

/// Most pages (of 1000 keys) read when listing a flat folder's own entries.
const MAX_FOLDER_PAGES: usize = 100;

/// Why a template's files cannot be listed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ListError {
    /// What failed, naming the bucket and prefix.
    pub message: String,
    /// Whether trying again could help (S3 failed) or not (too many files).
    pub retryable: bool,
}

/// Which files belong to a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The template's folder is its own: every file below it.
    Folder,
    /// The folder holds other templates: the template file and the files it references.
    Flat,
}

/// Whether `name` looks like a template file.
pub fn is_template_name(name: &str) -> bool {
    TEMPLATE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The layout of the template file `name` among `siblings`, the names of the files directly in
/// its folder (the template's own name may be among them): [`Layout::Folder`] when it is a
/// directory template (two or more `*.pkr.hcl` files) or no other template file is there,
/// otherwise [`Layout::Flat`]. Pure.
pub fn layout<'a>(name: &str, siblings: impl IntoIterator<Item = &'a str>) -> Layout {
    let others: Vec<&str> = siblings
        .into_iter()
        .filter(|s| *s != name && is_template_name(s))
        .collect();
    let hcl = |s: &str| s.ends_with(".pkr.hcl");
    if hcl(name) && others.iter().any(|s| hcl(s)) {
        return Layout::Folder;
    }
    if others.is_empty() {
        Layout::Folder
    } else {
        Layout::Flat
    }
}

/// A template's files in S3, as far as listing tells.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// The working-directory prefix (`a/b/` for `a/b/t.json`, the request's `root`); `None` at
    /// the top of the bucket.
    pub prefix: Option<String>,
    /// Its layout ([`Layout::Folder`] for a request with a `root`: `kiln submit` uploaded the set).
    pub layout: Layout,
    /// The keys to fetch, the template first: every file below the prefix for a folder; the
    /// template alone for a flat folder (its references come after it is loaded:
    /// [`reference_keys`]).
    pub keys: Vec<(String, u64)>,
}

impl Listing {
    /// The listing as `(prefix, keys)`, the shape [`crate::trigger::bake::list`] answers with.
    pub fn into_pair(self) -> (Option<String>, Vec<String>) {
        (self.prefix, self.keys.into_iter().map(|(k, _)| k).collect())
    }
}

fn s3_error(bucket: &str, p: &str, e: impl std::fmt::Display) -> ListError {
    ListError {
        message: format!("listing s3://{bucket}/{p}: {e}"),
        retryable: true,
    }
}

fn too_many(bucket: &str, p: &str) -> ListError {
    ListError {
        message: format!(
            "the template's files under s3://{bucket}/{p} are more than {MAX_TEMPLATE_FILES} files or {MAX_TEMPLATE_BYTES} bytes: put the template in a directory of its own, with only what it uses"
        ),
        retryable: false,
    }
}

/// Lists the files of the template `key` in `bucket`: below `root` when given (`kiln submit`
/// uploads a template with the files it references, relative to the working directory),
/// otherwise by the template's [`Layout`] in its own folder.
///
/// Side effects: ListObjectsV2 calls (the folder's own entries, then, for a folder of its own,
/// everything below it). Safe to call again.
pub async fn list(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    root: Option<&str>,
) -> Result<Listing, ListError> {
    let root = root
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty());
    let folder = key.rsplit_once('/').map(|(p, _)| format!("{p}/"));
    let layout = match (root, &folder) {
        (Some(_), _) => Layout::Folder,
        (None, None) => Layout::Flat,
        (None, Some(f)) => {
            let names = folder_entries(s3, bucket, f).await?;
            let name = &key[f.len()..];
            layout(name, names.iter().map(|n| n.as_str()))
        }
    };
    let prefix = root.map(|r| format!("{r}/")).or(folder);
    let mut keys = vec![(key.to_owned(), 0)];
    let (Layout::Folder, Some(p)) = (layout, &prefix) else {
        return Ok(Listing {
            prefix,
            layout,
            keys,
        });
    };
    let listed = list_below(s3, bucket, p).await?;
    if listed.len() > MAX_TEMPLATE_FILES
        || listed.iter().map(|(_, s)| *s).sum::<u64>() > MAX_TEMPLATE_BYTES
    {
        return Err(too_many(bucket, p));
    }
    keys.extend(listed.into_iter().filter(|(k, _)| k != key));
    Ok(Listing {
        prefix,
        layout,
        keys,
    })
}

/// Up to `MAX_TEMPLATE_FILES + 1` files below `p` (no folder markers), with their sizes.
async fn list_below(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    p: &str,
) -> Result<Vec<(String, u64)>, ListError> {
    let out = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(p)
        .max_keys(MAX_TEMPLATE_FILES as i32 + 1)
        .send()
        .await
        .map_err(|e| s3_error(bucket, p, aws_sdk_s3::error::DisplayErrorContext(&e)))?;
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| {
            let k = o.key()?;
            (!k.ends_with('/')).then(|| (k.to_owned(), o.size().unwrap_or(0).max(0) as u64))
        })
        .collect())
}

/// The names of the files directly in folder `f` (not below it).
async fn folder_entries(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    f: &str,
) -> Result<Vec<String>, ListError> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(f)
        .delimiter("/")
        .into_paginator()
        .send();
    let mut names = Vec::new();
    let mut read = 0;
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| s3_error(bucket, f, aws_sdk_s3::error::DisplayErrorContext(&e)))?;
        names.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key()?.strip_prefix(f).map(str::to_owned)),
        );
        read += 1;
        if read >= MAX_FOLDER_PAGES {
            // Thousands of entries: certainly not a folder of one template's own.
            break;
        }
    }
    Ok(names)
}

/// The template's listing as `(prefix, keys)` (see [`list`]).
pub async fn keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    root: Option<&str>,
) -> Result<(Option<String>, Vec<String>), ListError> {
    list(s3, bucket, key, root).await.map(Listing::into_pair)
}

/// The keys of the files and directories `references` (paths relative to the working directory
/// `prefix`, from the template's offline load) that `have` does not hold yet, with their sizes:
/// a reference is the key itself or, for a directory, every key below it. References that leave
/// the prefix (`..`, absolute paths) are skipped: the worker looks for them on its host. Errors
/// when `have` and these together are more than a worker fetches.
///
/// Side effects: one ListObjectsV2 per reference not yet held. Safe to call again.
pub async fn reference_keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: Option<&str>,
    references: &[String],
    have: &[(String, u64)],
) -> Result<Vec<(String, u64)>, ListError> {
    let p = prefix.unwrap_or("");
    let mut all: Vec<(String, u64)> = have.to_vec();
    let mut out = Vec::new();
    for r in references {
        if relative(None, r).is_none() {
            continue;
        }
        let exact = format!("{p}{r}");
        let below = format!("{exact}/");
        let held = |k: &str| k == exact || k.starts_with(&below);
        if all.iter().any(|(k, _)| held(k)) {
            continue;
        }
        let listed = list_below(s3, bucket, &exact).await?;
        let found: Vec<(String, u64)> = listed.into_iter().filter(|(k, _)| held(k)).collect();
        all.extend(found.iter().cloned());
        out.extend(found);
        if all.len() > MAX_TEMPLATE_FILES
            || all.iter().map(|(_, s)| *s).sum::<u64>() > MAX_TEMPLATE_BYTES
        {
            return Err(too_many(bucket, p));
        }
    }
    Ok(out)
}

/// The files a loaded template references (see [`crate::template::Plan::local_files`]) as paths
/// relative to its working directory `cwd`, `/`-separated; those elsewhere are left out. Pure.
pub fn references_below(loaded: &crate::template::Loaded, cwd: &Path) -> Vec<String> {
    let mut out: Vec<String> = loaded
        .plans
        .iter()
        .flat_map(|p| p.local_files())
        .filter_map(|f| {
            let rel = f.strip_prefix(cwd).ok()?;
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            (!parts.is_empty()).then(|| parts.join("/"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `key`'s path below `prefix`, or `None` when it would leave the template's directory (`..`,
/// empty components).
pub fn relative(prefix: Option<&str>, key: &str) -> Option<String> {
    let rel = match prefix {
        Some(p) => key.strip_prefix(p).unwrap_or(key).to_owned(),
        None => key.to_owned(),
    };
    (!rel.split('/').any(|c| c == ".." || c.is_empty())).then_some(rel)
}

/// A build name as a build id's suffix: letters, digits, `-`, `_` and `.` kept, anything else
/// `-`, at most 40 characters (`amazon-chroot.x86` stays `amazon-chroot.x86`). Pure.
pub fn build_slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    s.trim_matches('-').to_owned()
}

/// The build id of each of `builds` (a template's build names) for one request per build:
/// `<base>-<build_slug(name)>`, made unique with `-2`, `-3`... when two names give one slug.
/// `None` when a build id would be longer than a request allows (128). Pure.
pub fn build_ids(base: &str, builds: &[String]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for b in builds {
        let stem = format!("{base}-{}", build_slug(b));
        let mut id = stem.clone();
        let mut n = 1;
        while out.contains(&id) {
            n += 1;
            id = format!("{stem}-{n}");
        }
        if id.len() > 128 {
            return None;
        }
        out.push(id);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        use Layout::*;
        let cases: &[(&str, &[&str], Layout)] = &[
            ("app.json", &["app.json", "app.sh"], Folder),
            ("app.json", &[], Folder),
            ("web.json", &["web.json", "db.json", "web.sh"], Flat),
            ("web.pkr.hcl", &["web.pkr.hcl", "db.json"], Flat),
            ("a.pkr.hcl", &["a.pkr.hcl", "b.pkr.hcl", "vars.txt"], Folder),
            ("a.pkr.hcl", &["a.pkr.hcl", "b.pkr.json"], Flat),
            ("x.pkr.json", &["x.pkr.json", "notes.txt"], Folder),
        ];
        for (name, siblings, want) in cases {
            assert_eq!(
                layout(name, siblings.iter().copied()),
                *want,
                "{name} {siblings:?}"
            );
        }
    }

    #[test]
    fn build_ids_per_build() {
        let names = ["amazon-chroot.x86", "amazon-chroot.arm", "a/b", "a b"].map(String::from);
        assert_eq!(
            build_ids("golden", &names).expect("short"),
            [
                "golden-amazon-chroot.x86",
                "golden-amazon-chroot.arm",
                "golden-a-b",
                "golden-a-b-2"
            ]
        );
        assert_eq!(build_ids(&"x".repeat(120), &names), None);
    }

    #[test]
    fn relative_keys() {
        assert_eq!(relative(Some("t/"), "t/a/b.sh").as_deref(), Some("a/b.sh"));
        assert_eq!(relative(Some("t/"), "t/../x"), None);
        assert_eq!(relative(None, "a//b"), None);
    }
}
