//! The result document of a build: what `kiln build --json` prints and the worker publishes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A build's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still running.
    Running,
    /// Every AMI asked for exists.
    Succeeded,
    /// It failed (see `error`).
    Failed,
}

/// The AMI in one region.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Artifact {
    /// `ami-...`
    pub ami_id: String,
    /// Its snapshots.
    pub snapshot_ids: Vec<String>,
    /// With the loop backend: the files holding the snapshots' data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_files: Vec<String>,
}

/// One step as it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name, e.g. `create-volume`.
    pub name: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// Seconds.
    pub duration_s: f64,
    /// What it produced (ids, paths).
    pub outputs: serde_json::Value,
}

/// Why a build failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// The step that failed.
    pub step: String,
    /// What went wrong (sensitive values masked).
    pub message: String,
    /// Whether retrying could help.
    pub retryable: bool,
}

/// The result document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildResult {
    /// Document version.
    pub version: u32,
    /// The build id.
    pub build_id: String,
    /// The build's name in the template.
    pub build_name: String,
    /// Status.
    pub status: Status,
    /// The backend used.
    pub backend: String,
    /// The build region.
    pub region: String,
    /// The source AMI (absent for from_scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ami: Option<String>,
    /// AMI per region.
    pub artifacts: BTreeMap<String, Artifact>,
    /// Steps in order.
    pub steps: Vec<StepRecord>,
    /// On failure: where and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// Resources left behind (undo failures, or `--on-error=abort`), with their ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_behind: Vec<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Seconds.
    pub duration_s: f64,
    /// The bake key of the request (builds `kiln-trigger` asked for; see `request::Bake`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_key: Option<String>,
}

/// The result document's version.
pub const RESULT_VERSION: u32 = 1;

impl BuildResult {
    /// The image lint's findings: step `lint-image`'s outputs (warnings in a build that went on;
    /// empty when the step did not run or found nothing). An error that failed the build is in
    /// `error` instead. Pure.
    pub fn lint_findings(&self) -> Vec<crate::lint::Finding> {
        self.steps
            .iter()
            .find(|s| s.name == "lint-image")
            .and_then(|s| s.outputs.get("findings"))
            .and_then(|f| serde_json::from_value(f.clone()).ok())
            .unwrap_or_default()
    }
}

/// What changed in a result document's image, for people: step `sbom`'s package changes against
/// the parent image and against the previous image of the template, one line each ("openssl
/// 3.0.13 → 3.0.14"), under a heading naming the image compared with. Empty when the step did
/// not run. Pure.
pub fn changes_text(doc: &serde_json::Value) -> Vec<String> {
    let Some(sbom) = crate::sbom::result_outputs(doc) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(loc) = sbom["location"].as_str() {
        out.push(format!("SBOM: {loc} ({} packages)", sbom["packages"]));
    }
    if let Some(note) = sbom["note"].as_str() {
        out.push(format!("SBOM note: {note}"));
    }
    for (what, title) in [
        ("previous", "since the previous image of this template"),
        ("parent", "against the parent image"),
    ] {
        let c = &sbom["changes"][what];
        if c.is_null() {
            continue;
        }
        let lines: Vec<&str> = c["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str())
            .collect();
        let ami = c["ami"].as_str().unwrap_or("?");
        if lines.is_empty() {
            out.push(format!("No package changes {title} ({ami})."));
        } else {
            out.push(format!("Package changes {title} ({ami}):"));
            out.extend(lines.iter().map(|l| format!("  {l}")));
        }
    }
    out
}

/// Writes (or extends) Packer's manifest file for a finished build, as the `manifest`
/// post-processor does: one entry per build with `artifact_id` `region:ami,...`.
pub fn write_manifest(
    result: &BuildResult,
    pp: &crate::template::provisioner::PostProcessor,
) -> std::io::Result<()> {
    let path = std::path::Path::new(&pp.output);
    let mut doc: serde_json::Value = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({ "builds": [] }));
    let artifact_id = result
        .artifacts
        .iter()
        .map(|(r, a)| format!("{r}:{}", a.ami_id))
        .collect::<Vec<_>>()
        .join(",");
    let entry = serde_json::json!({
        "name": result.build_name,
        "builder_type": "amazon-chroot",
        "build_time": time::OffsetDateTime::now_utc().unix_timestamp(),
        "files": null,
        "artifact_id": artifact_id,
        "packer_run_uuid": result.build_id,
        "custom_data": pp.custom_data,
    });
    if let Some(builds) = doc.get_mut("builds").and_then(|b| b.as_array_mut()) {
        builds.push(entry);
    }
    doc["last_run_uuid"] = serde_json::Value::String(result.build_id.clone());
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
}
