//! The bake key: what an image is made from, hashed. A template's files (the template and every
//! file beside it), its variables, the source image each of its builds resolves to now (a
//! `source_ami_filter` with `most_recent` is evaluated again against EC2, so a newer base AMI
//! changes the key) and kiln's version. Equal keys mean a rebuild would make the same image.

use super::TriggerError;
use crate::aws::Clients;
use crate::request::Bake;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Lowercase hex of SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lists the template `key`'s directory in `bucket` (see [`crate::template_store::keys`]): a
/// listing that is too large is [`TriggerError::Template`], an S3 failure [`TriggerError::Io`].
pub async fn list(
    clients: &Clients,
    bucket: &str,
    key: &str,
) -> Result<(Option<String>, Vec<String>), TriggerError> {
    crate::template_store::keys(&clients.s3, bucket, key, None)
        .await
        .map_err(|e| {
            if e.retryable {
                TriggerError::Io(e.message)
            } else {
                TriggerError::Template(e.message)
            }
        })
}

/// Fetches the template `key` (at `version_id`) and the files beside it from `bucket` into `dir`,
/// and computes its [`Bake`]. `listed` is the directory's listing from [`list`] (of `key` or of
/// any file beside it). Errors name the file or the call that failed; a template that does not
/// parse is [`TriggerError::Template`].
pub async fn compute(
    clients: &Clients,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    variables: &BTreeMap<String, String>,
    dir: &Path,
    listed: &(Option<String>, Vec<String>),
) -> Result<Bake, TriggerError> {
    let s3 = &clients.s3;
    let (prefix, keys) = listed;
    // (relative path, SHA-256 of the content), sorted: the template's files, whatever order S3
    // lists them in.
    let mut files = Vec::new();
    let mut template_path = None;
    for k in keys {
        let Some(rel) = crate::template_store::relative(prefix.as_deref(), k) else {
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
        files.push((rel, sha256_hex(&bytes)));
    }
    files.sort();
    let template_path = template_path.ok_or_else(|| {
        TriggerError::Template(format!("the template s3://{bucket}/{key} does not exist"))
    })?;
    let template_hash = sha256_hex(
        files
            .iter()
            .map(|(p, h)| format!("{p}\t{h}\n"))
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
