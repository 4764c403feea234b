//! The bake key: what an image is made from, hashed. A template's files (its folder, or in a flat
//! folder the template and the files it references: see [`crate::template_store`]), its variables, the source image each of its builds resolves to now (a
//! `source_ami_filter` with `most_recent` is evaluated again against EC2, so a newer base AMI
//! changes the key) and kiln's version. Equal keys mean a rebuild would make the same image.

use super::TriggerError;
use crate::aws::Clients;
use crate::request::Bake;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// A boxed, type-erased future: kiln-trigger's runtime future stays within the compiler's
/// layout depth.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Lowercase hex of SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lists the template `key`'s files in `bucket` (see [`crate::template_store::list`]): its
/// folder's files when the folder is its own, the template alone in a flat folder (its
/// references are added by [`compute`]). A listing that is too large is
/// [`TriggerError::Template`], an S3 failure [`TriggerError::Io`].
pub async fn list(
    clients: &Clients,
    bucket: &str,
    key: &str,
) -> Result<(Option<String>, Vec<String>), TriggerError> {
    // Boxed, as below: the listing's future would deepen every caller's.
    let listing: BoxFuture<'_, _> =
        Box::pin(crate::template_store::keys(&clients.s3, bucket, key, None));
    listing.await.map_err(list_error)
}

fn list_error(e: crate::template_store::ListError) -> TriggerError {
    if e.retryable {
        TriggerError::Io(e.message)
    } else {
        TriggerError::Template(e.message)
    }
}

/// The files of template `key` in `bucket`, as `(relative path, key)` sorted by path: what the
/// worker fetches for it and the bake key hashes (its folder, or in a flat folder the template
/// and the files it references; see [`crate::template_store`]). Fetches them into `dir` (the
/// template evaluated offline names its references). For the trigger's fan-out and summaries.
///
/// Side effects: S3 lists and reads; files written under `dir`.
pub async fn files(
    clients: &Clients,
    bucket: &str,
    key: &str,
    dir: &Path,
) -> Result<Vec<(String, String)>, TriggerError> {
    let listed = list(clients, bucket, key).await?;
    let variables = BTreeMap::new();
    let fetched: BoxFuture<'_, _> = Box::pin(fetch_all(
        clients, bucket, key, None, &variables, dir, &listed,
    ));
    let fetched = fetched.await?;
    Ok(fetched.files.into_iter().map(|f| (f.rel, f.key)).collect())
}

/// The names of the builds template `key` declares that kiln runs (its `amazon-chroot` builds,
/// as `--only` and a request's `only` take them: `amazon-chroot.x86`, `NAME`), in template order,
/// loaded offline (with `variables`) from `dir` after [`files`] or [`compute`] fetched it there
/// (`prefix` is the listing's, `listed.0`). Empty when the template does not load far enough to
/// name its builds. For one request per build (`only` set to one name, build id
/// `<id>-<build_slug(name)>`: [`build_ids`]), as `kiln submit` sends them. Reads files only.
pub fn builds(
    dir: &Path,
    key: &str,
    prefix: Option<&str>,
    variables: &BTreeMap<String, String>,
) -> Vec<String> {
    let Some(rel) = crate::template_store::relative(prefix, key) else {
        return Vec::new();
    };
    let template = dir.join(rel);
    let inputs = crate::template::Inputs {
        vars: variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: dir.to_path_buf(),
        file_root: Some(dir.to_path_buf()),
        ..crate::template::Inputs::default()
    };
    crate::template::load(&crate::template::directory_of(&template), &inputs)
        .plans
        .iter()
        .map(|p| p.name.clone())
        .collect()
}

pub use crate::template_store::{build_ids, build_slug};

/// One fetched file of a template.
struct Fetched {
    rel: String,
    key: String,
    sha256: String,
}

/// A template's fetched files, sorted by path, and the template's local path.
struct FetchedAll {
    files: Vec<Fetched>,
    template: std::path::PathBuf,
}

/// The files the template at `template` references below `dir`, evaluated offline.
fn references(template: &Path, variables: &BTreeMap<String, String>, dir: &Path) -> Vec<String> {
    let inputs = crate::template::Inputs {
        vars: variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: dir.to_path_buf(),
        file_root: Some(dir.to_path_buf()),
        ..crate::template::Inputs::default()
    };
    let loaded = crate::template::load(&crate::template::directory_of(template), &inputs);
    crate::template_store::references_below(&loaded, dir)
}

/// Where a template's files come from: the template `key` (at `version_id`) in `bucket`, its
/// working-directory `prefix`.
struct Source<'a> {
    clients: &'a Clients,
    bucket: &'a str,
    key: &'a str,
    version_id: Option<&'a str>,
    prefix: Option<&'a str>,
}

/// Fetches `keys` into `dir` at their paths below the prefix.
async fn fetch_keys(
    src: &Source<'_>,
    keys: &[String],
    dir: &Path,
    out: &mut Vec<Fetched>,
) -> Result<Option<std::path::PathBuf>, TriggerError> {
    let Source {
        clients,
        bucket,
        key,
        version_id,
        prefix,
    } = *src;
    let s3 = &clients.s3;
    let mut template_path = None;
    for k in keys {
        let Some(rel) = crate::template_store::relative(prefix, k) else {
            continue;
        };
        let mut get = s3.get_object().bucket(bucket).key(k);
        if k == key
            && let Some(v) = version_id
        {
            get = get.version_id(v);
        }
        let obj = get
            .send()
            .await
            .map_err(|e| TriggerError::aws(format!("fetching s3://{bucket}/{k}"), &e))?;
        let bytes = obj
            .body
            .collect()
            .await
            .map_err(|e| TriggerError::Io(format!("reading s3://{bucket}/{k}: {e}")))?
            .into_bytes();
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| TriggerError::Io(format!("creating {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, &bytes)
            .map_err(|e| TriggerError::Io(format!("writing {}: {e}", path.display())))?;
        if k == key {
            template_path = Some(path);
        }
        out.push(Fetched {
            rel,
            key: k.clone(),
            sha256: sha256_hex(&bytes),
        });
    }
    Ok(template_path)
}

/// Fetches the listed files, then the files the template references that the listing did not
/// hold (a template in a flat folder names them; see [`crate::template_store`]).
async fn fetch_all(
    clients: &Clients,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    variables: &BTreeMap<String, String>,
    dir: &Path,
    listed: &(Option<String>, Vec<String>),
) -> Result<FetchedAll, TriggerError> {
    let (prefix, keys) = listed;
    let prefix = prefix.as_deref();
    let mut files = Vec::new();
    let src = Source {
        clients,
        bucket,
        key,
        version_id,
        prefix,
    };
    let template = fetch_keys(&src, keys, dir, &mut files)
        .await?
        .ok_or_else(|| {
            TriggerError::Template(format!("the template s3://{bucket}/{key} does not exist"))
        })?;
    // The template, evaluated offline, names the files it reads from its working directory
    // (nothing of the evaluation is held across an await).
    let references = references(&template, variables, dir);
    let have: Vec<(String, u64)> = files.iter().map(|f| (f.key.clone(), 0)).collect();
    let more =
        crate::template_store::reference_keys(&clients.s3, bucket, prefix, &references, &have)
            .await
            .map_err(list_error)?;
    let more: Vec<String> = more.into_iter().map(|(k, _)| k).collect();
    fetch_keys(&src, &more, dir, &mut files).await?;
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(FetchedAll { files, template })
}

/// Fetches the template `key` (at `version_id`) and its files (see [`crate::template_store`]:
/// its folder, or in a flat folder the template and the files it references) from `bucket` into
/// `dir`, and computes its [`Bake`] over exactly those files. `listed` is the listing from
/// [`list`] (of `key`, or of any file of a directory template). Errors name the file or the
/// call that failed; a template that does not parse is [`TriggerError::Template`].
///
/// The future is boxed: nested in the Lambda runtime's, it would exceed the compiler's depth.
pub fn compute<'a>(
    clients: &'a Clients,
    bucket: &'a str,
    key: &'a str,
    version_id: Option<&'a str>,
    variables: &'a BTreeMap<String, String>,
    dir: &'a Path,
    listed: &'a (Option<String>, Vec<String>),
) -> BoxFuture<'a, Result<Bake, TriggerError>> {
    Box::pin(compute_unboxed(
        clients, bucket, key, version_id, variables, dir, listed,
    ))
}

async fn compute_unboxed(
    clients: &Clients,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    variables: &BTreeMap<String, String>,
    dir: &Path,
    listed: &(Option<String>, Vec<String>),
) -> Result<Bake, TriggerError> {
    let fetched = fetch_all(clients, bucket, key, version_id, variables, dir, listed).await?;
    let template_path = fetched.template;
    // (relative path, SHA-256 of the content), sorted: the template's files, whatever order S3
    // lists them in.
    let template_hash = sha256_hex(
        fetched
            .files
            .iter()
            .map(|f| format!("{}\t{}\n", f.rel, f.sha256))
            .collect::<String>()
            .as_bytes(),
    );
    let variables_hash = sha256_hex(
        serde_json::to_string(variables)
            .unwrap_or_default()
            .as_bytes(),
    );
    // A team's template reads only its team's secrets and parameters, here as on the worker.
    let team = crate::team::Team::of_key(key);
    let scope = if team.is_default() {
        crate::team::DataScope::unrestricted()
    } else {
        crate::team::DataScope::of_team(&team, None)
    };
    let file_root = (!team.is_default()).then(|| dir.to_path_buf());
    let source_amis =
        resolve_sources(clients, &template_path, variables, &scope, file_root).await?;
    let kiln_version = env!("CARGO_PKG_VERSION").to_owned();
    let key = sha256_hex(
        format!(
            "template {template_hash}\nvariables {variables_hash}\nsources {}\nkiln {kiln_version}\n",
            source_amis.join(",")
        )
        .as_bytes(),
    );
    Ok(Bake {
        key,
        template_hash,
        variables_hash,
        source_amis,
        kiln_version,
    })
}

/// The source image each build of the template resolves to now (`scratch` for from_scratch).
async fn resolve_sources(
    clients: &Clients,
    template: &Path,
    variables: &BTreeMap<String, String>,
    scope: &crate::team::DataScope,
    file_root: Option<std::path::PathBuf>,
) -> Result<Vec<String>, TriggerError> {
    let inputs = crate::template::Inputs {
        vars: variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        // The fetched template directory stands for the working directory, as on the worker.
        cwd: template.parent().map(Path::to_path_buf).unwrap_or_default(),
        file_root,
        ..crate::template::Inputs::default()
    };
    let dir = crate::template::directory_of(template);
    let loaded = crate::template::load(&dir, &inputs);
    // A source image often comes from a Parameter Store parameter (AWS's public "latest AMI"
    // parameters): the bake key must follow it.
    let loaded = crate::data_sources::complete(&dir, &inputs, loaded, clients.config(), scope)
        .await
        .map_err(|e| TriggerError::Aws {
            what: "reading the template's data sources".into(),
            message: e.to_string(),
        })?;
    if loaded.has_errors() {
        let dir = template
            .parent()
            .map(|d| format!("{}/", d.display()))
            .unwrap_or_default();
        let errors: Vec<String> = loaded
            .errors()
            .map(|d| loaded.masker.mask(&d.to_string().replace(&dir, "")))
            .collect();
        return Err(TriggerError::Template(format!(
            "the template is invalid:\n{}",
            errors.join("\n")
        )));
    }
    let mut out = Vec::new();
    for plan in &loaded.plans {
        let c = &plan.config;
        let region = c
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| clients.region().to_owned());
        let source = match (&c.source_ami, &c.source_ami_filter) {
            _ if c.from_scratch => "scratch".to_owned(),
            (Some(id), _) if !id.is_empty() => id.clone(),
            (_, Some(f)) => {
                let ec2 = clients.ec2_in(&region);
                let image = crate::ec2::images::find_source(&ec2, &region, f)
                    .await
                    .map_err(|e| TriggerError::Source(format!("{}: {e}", plan.name)))?;
                image.image_id.unwrap_or_default()
            }
            _ => "none".to_owned(),
        };
        out.push(source);
    }
    Ok(out)
}
