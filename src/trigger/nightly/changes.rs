//! What a build changed, read back for the trigger's summaries: the package changes step `sbom`
//! wrote into a build's result document (against the previous image of its template), from the
//! team's `results/`. The nightly summary names what each template's last build changed, and a
//! rebuild because the base moved names what the base brought.

use super::super::{Settings, TriggerError};
use super::history::read_json;
use crate::aws::Clients;
use crate::team::Team;
use serde_json::Value;

/// Change lines an entry of a summary carries (a result holds up to 200 per comparison; a
/// summary of many templates stays readable, and the result has them all).
pub const SUMMARY_LINES: usize = 20;

/// The package changes in result document `doc` against the previous image of its template
/// ("openssl 3.0.13 → 3.0.14"), at most [`SUMMARY_LINES`] and then "… and N more"; `None` when
/// the build compared with no previous image (its first, or no SBOM). Pure.
pub fn lines_of(doc: &Value) -> Option<Vec<String>> {
    let previous = &crate::sbom::result_outputs(doc)?["changes"]["previous"];
    let lines: Vec<String> = previous["lines"]
        .as_array()?
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect();
    let more = lines.len().saturating_sub(SUMMARY_LINES);
    let mut out: Vec<String> = lines.into_iter().take(SUMMARY_LINES).collect();
    if more > 0 {
        out.push(format!("… and {more} more (in the build's result)"));
    }
    Some(out)
}

/// The package changes build `build_id` of `team` made (see [`lines_of`]), read from its result
/// document; with `ami`, only when that result made this AMI (a build id another team's image
/// names is not this team's build). `None` when unknown: no such result, not one the trigger
/// may read (only nightly builds' results: `results/nightly-*`), or no comparison. Side
/// effects: one S3 GetObject. A read that fails is logged, never an error.
pub async fn of_build(
    clients: &Clients,
    settings: &Settings,
    team: &Team,
    build_id: &str,
    ami: Option<&str>,
) -> Option<Vec<String>> {
    if !build_id.starts_with("nightly-") || build_id.contains('/') {
        return None;
    }
    let key = team.key(&format!("results/{build_id}.json"));
    let doc: Result<Option<Value>, TriggerError> = read_json(clients, settings, &key).await;
    let doc = match doc {
        Ok(d) => d?,
        Err(e) => {
            tracing::warn!(build_id, error = %e, "could not read the build's changes");
            return None;
        }
    };
    if let Some(ami) = ami {
        let made = doc["artifacts"]
            .as_object()
            .is_some_and(|a| a.values().any(|v| v["ami_id"] == ami));
        if !made {
            return None;
        }
    }
    lines_of(&doc)
}

/// `lines` in a reason: "; it brought a, b" (the first three, then how many more), or "; it
/// changed no package". Pure.
pub fn in_reason(lines: &[String]) -> String {
    match lines {
        [] => "; it changed no package".to_owned(),
        [a, b, c, rest @ ..] if !rest.is_empty() => {
            format!("; it brought {a}, {b}, {c} and {} more", rest.len())
        }
        all => format!("; it brought {}", all.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_are_read_from_the_sbom_step() {
        let doc = |lines: Value| json!({"steps": [{"name": "mount"}, {"name": "sbom", "outputs": {"changes": {"previous": {"ami": "ami-1", "lines": lines}}}}]});
        assert_eq!(
            lines_of(&doc(json!(["kiln-probe 1.0-1 → 1.1-1"]))),
            Some(vec!["kiln-probe 1.0-1 → 1.1-1".to_owned()])
        );
        let many: Vec<String> = (0..25).map(|i| format!("+ p{i} 1")).collect();
        let got = lines_of(&doc(json!(many))).unwrap();
        assert_eq!(got.len(), SUMMARY_LINES + 1);
        assert!(got[SUMMARY_LINES].contains("and 5 more"), "{got:?}");
        assert_eq!(
            lines_of(&json!({"steps": [{"name": "sbom", "outputs": {}}]})),
            None
        );
        assert_eq!(lines_of(&json!({})), None);
        let l = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(in_reason(&[]), "; it changed no package");
        assert_eq!(in_reason(&l(&["a", "b"])), "; it brought a, b");
        assert_eq!(
            in_reason(&l(&["a", "b", "c", "d", "e"])),
            "; it brought a, b, c and 2 more"
        );
    }
}
