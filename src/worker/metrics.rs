//! The worker's metrics in CloudWatch embedded metric format (EMF): one JSON document per line on
//! stdout, which the CloudWatch agent (or Lambda-style log shipping) turns into metrics without
//! API calls. Namespace `kiln`. Documented in the README ("Running a pool").
//!
//! | metric | unit | dimensions |
//! |---|---|---|
//! | `BuildDuration` | Seconds | `Outcome` (succeeded, failed) |
//! | `QueueWait` (send to start) | Seconds | `Outcome` |
//! | `InFlightBuilds` (when the build ended, itself included) | Count | `Outcome` |
//! | `StepDuration` | Seconds | `Step` |

use crate::pipeline::result::{BuildResult, Status};
use serde_json::{Value, json};
use std::io::Write;

/// The metrics namespace.
pub const NAMESPACE: &str = "kiln";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The EMF documents of one finished build: the build's own, then one per step.
pub fn documents(result: &BuildResult, queue_wait_s: Option<f64>, in_flight: usize) -> Vec<Value> {
    let outcome = match result.status {
        Status::Succeeded => "succeeded",
        Status::Failed => "failed",
        Status::Running => "running",
    };
    let ts = now_ms();
    let mut metrics = vec![
        json!({"Name": "BuildDuration", "Unit": "Seconds"}),
        json!({"Name": "InFlightBuilds", "Unit": "Count"}),
    ];
    let mut build = json!({
        "Outcome": outcome,
        "BuildId": result.build_id,
        "BuildDuration": result.duration_s,
        "InFlightBuilds": in_flight,
    });
    if let Some(w) = queue_wait_s {
        metrics.push(json!({"Name": "QueueWait", "Unit": "Seconds"}));
        build["QueueWait"] = json!(w);
    }
    build["_aws"] = json!({
        "Timestamp": ts,
        "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Outcome"]], "Metrics": metrics}],
    });
    let mut out = vec![build];
    for step in &result.steps {
        out.push(json!({
            "_aws": {
                "Timestamp": ts,
                "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Step"]],
                    "Metrics": [{"Name": "StepDuration", "Unit": "Seconds"}]}],
            },
            "Step": step.name,
            "BuildId": result.build_id,
            "StepDuration": step.duration_s,
        }));
    }
    out
}

/// Writes `documents` to stdout, a line each. Errors (a closed stdout) are ignored: metrics never
/// fail a build.
pub fn emit(documents: &[Value]) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for d in documents {
        let _ = writeln!(out, "{d}");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_follow_the_embedded_metric_format() {
        let mut r = crate::worker::early_failure("b-1", "validate", "bad".into(), false);
        r.duration_s = 2.5;
        r.steps.push(crate::pipeline::result::StepRecord {
            name: "snapshot".into(),
            started_at: String::new(),
            duration_s: 1.25,
            outputs: json!({}),
        });
        let docs = documents(&r, Some(0.5), 2);
        assert_eq!(docs.len(), 2);
        let b = &docs[0];
        assert_eq!(b["Outcome"], "failed");
        assert_eq!(b["BuildDuration"], 2.5);
        assert_eq!(b["QueueWait"], 0.5);
        assert_eq!(b["InFlightBuilds"], 2);
        let cw = &b["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "kiln");
        assert_eq!(cw["Dimensions"], json!([["Outcome"]]));
        // Every metric named in the directive has a value in the document.
        for m in cw["Metrics"].as_array().unwrap() {
            assert!(b.get(m["Name"].as_str().unwrap()).is_some(), "{m}");
        }
        assert_eq!(docs[1]["Step"], "snapshot");
        assert_eq!(docs[1]["StepDuration"], 1.25);
        assert!(b["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    }
}
