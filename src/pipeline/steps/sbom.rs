//! Step `sbom`: after the provisioners and the linter, while the image is still mounted, what is
//! in it is read from its own package databases (`crate::sbom`: dpkg, RPM, apk, the kernels and
//! the OS release; nothing from the image runs) and written as an SPDX 2.3 or CycloneDX 1.5
//! document where the build's `sbom` target says (next to the result in S3 for a worker), before
//! the snapshot, so the `kiln:sbom` tag `register-image` puts on the AMI names a document that
//! exists. Its outputs, in the result document, say what changed: against the source image
//! (`inventory-source`'s list) and against the previous image of the same template (found by
//! `kiln:template`, its SBOM read back from its `kiln:sbom` location, only from this build's
//! own store). A database kiln cannot read becomes the SBOM's note, not a failed build; a
//! document that cannot be stored fails the step (retryable). Nothing to undo: the document is
//! the build's by id, and a retry overwrites it.

use crate::ec2::lineage::{self, TAG_SBOM};
use crate::host::image_fs::ImageFs;
use crate::pipeline::{Build, StepError};
use crate::sbom::{self, Changes, Inventory, Package};
use std::path::PathBuf;

/// The change lines a result holds per comparison (the counts are always whole; the full lists
/// are the two SBOMs): a large upgrade must not push the result past what a queue message holds
/// (SQS: 256 KiB).
const MAX_CHANGE_LINES: usize = 200;

/// Reads the inventory of the image mounted at `mount` (off the async runtime's threads), and
/// whether its databases could be read. A database that cannot be read is the inventory's note
/// (and no comparison is made with it); only a cancelled or broken read of the mount itself is
/// an error.
pub(super) async fn read_inventory(mount: PathBuf) -> Result<(Inventory, bool), StepError> {
    tokio::task::spawn_blocking(move || {
        let fs = ImageFs::open(&mount)?;
        Ok::<_, crate::host::HostError>(match sbom::inventory(&fs) {
            Ok(inv) => (inv, true),
            Err(e) => (
                Inventory {
                    note: Some(format!("the package databases could not be read: {e}")),
                    ..Inventory::default()
                },
                false,
            ),
        })
    })
    .await
    .map_err(|e| super::invalid(format!("kiln bug: reading the packages stopped: {e}")))?
    .map_err(StepError::from)
}

/// The changes as the result shows them.
fn changes_json(c: &Changes) -> serde_json::Value {
    let mut lines = c.lines();
    if lines.len() > MAX_CHANGE_LINES {
        let more = lines.len() - MAX_CHANGE_LINES;
        lines.truncate(MAX_CHANGE_LINES);
        lines.push(format!("… and {more} more (compare the two SBOMs)"));
    }
    serde_json::json!({
        "added": c.added.len(),
        "removed": c.removed.len(),
        "changed": c.changed.len(),
        "lines": lines,
    })
}

/// The previous image of this build's template (newest first, another build's), with the
/// packages of its SBOM; `None` when there is none, it has no SBOM, or its SBOM is not in this
/// build's own store (the reason is logged).
async fn previous(b: &Build) -> Result<Option<(String, Option<String>, Vec<Package>)>, StepError> {
    if b.template_ref.is_empty() {
        return Ok(None);
    }
    let template = lineage::tag_value(&b.template_ref);
    let images =
        lineage::images_of_template(&b.clients.ec2, &b.region, b.team.as_str(), &template, &b.id)
            .await?;
    let Some(image) = images.first() else {
        return Ok(None);
    };
    let ami = image.image_id().unwrap_or_default().to_owned();
    let build = lineage::tag(image.tags(), crate::ec2::TAG_BUILD_ID).map(str::to_owned);
    let Some(uri) = lineage::tag(image.tags(), TAG_SBOM) else {
        tracing::info!(ami = %ami, "the previous image of the template has no SBOM");
        return Ok(None);
    };
    match b.sbom.get(uri).await {
        Ok(Some(doc)) => match sbom::packages_of(&doc) {
            Ok(p) => Ok(Some((ami, build, p))),
            Err(e) => {
                tracing::warn!(ami = %ami, uri, error = %e, "the previous image's SBOM is unreadable");
                Ok(None)
            }
        },
        Ok(None) => {
            tracing::warn!(ami = %ami, uri, "the previous image's SBOM is not in this build's store");
            Ok(None)
        }
        Err(e) if e.is_retryable() => Err(StepError::Sbom(e)),
        Err(e) => {
            tracing::warn!(ami = %ami, uri, error = %e, "the previous image's SBOM is missing");
            Ok(None)
        }
    }
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let mount = b.mount_path()?;
    let (inv, readable) = read_inventory(mount).await?;
    let packages = sbom::all_packages(&inv);
    let mut changes = serde_json::Map::new();
    if readable && let Some(base) = &b.state.base_packages {
        let c = sbom::changes(base, &packages);
        let mut v = changes_json(&c);
        v["ami"] = b.state.source.as_ref().map(|s| s.id.clone()).into();
        changes.insert("parent".into(), v);
    }
    if readable && let Some((ami, build, old)) = previous(b).await? {
        let c = sbom::changes(&old, &packages);
        let mut v = changes_json(&c);
        v["ami"] = ami.into();
        v["build_id"] = build.into();
        changes.insert("previous".into(), v);
    }
    for (what, c) in &changes {
        for line in c["lines"].as_array().into_iter().flatten() {
            (b.sink)("sbom", &format!("{what}: {}", line.as_str().unwrap_or("")));
        }
    }
    let meta = sbom::DocMeta {
        name: format!("{} (kiln build {})", b.plan.name, b.id),
        namespace: format!(
            "https://kiln.invalid/sbom/{}/{}/{}",
            b.team.as_str(),
            b.id,
            b.generation
        ),
        created: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    let doc = sbom::render(&inv, b.sbom.format, &meta);
    let uri = b.sbom.put(&b.id, &doc).await.map_err(StepError::Sbom)?;
    if let Some(note) = &inv.note {
        (b.sink)("sbom", note);
    }
    (b.sink)(
        "sbom",
        &format!(
            "{} packages{}",
            packages.len(),
            uri.as_deref()
                .map(|u| format!(", SBOM at {u}"))
                .unwrap_or_default()
        ),
    );
    b.state.sbom_uri = uri.clone();
    Ok(serde_json::json!({
        "location": uri,
        "format": b.sbom.format,
        "os": inv.os,
        "kernels": inv.kernels,
        "packages": packages.len(),
        "databases": inv.databases,
        "note": inv.note,
        "changes": changes,
    }))
}
