//! The verdict gc passes on a build and on each of its resources: the journal's judgement of its
//! own generation (succeeded, failed, abandoned, running, or no journal) and, per resource, that
//! judgement only when the resource's `kiln:generation` tag names the journal's generation.

use crate::aws::Clients;
use crate::checkpoint;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fate {
    /// Running with a live lease, or too young to judge: leave everything.
    Keep,
    /// Succeeded: its AMIs and the snapshots they map stay; volumes, other snapshots and the
    /// journal go.
    Succeeded,
    /// Failed or abandoned: everything goes.
    Gone,
    /// No journal: its AMIs (and the snapshots they map) stay, volumes and other snapshots go.
    NoJournal,
    /// Made by another generation than the journal's: the journal says nothing about it, so it
    /// stays (as with `Keep`), and gc logs why.
    OtherGeneration,
}

impl Fate {
    /// Whether nothing of the build (of this generation) may go.
    pub(super) fn keeps_all(self) -> bool {
        matches!(self, Fate::Keep | Fate::OtherGeneration)
    }
}

/// A build's journal as gc read it: the verdict on the journal's own generation, and which
/// generation that is (`None` without a readable journal: then there is nothing to compare, and
/// the verdict holds for every resource of the build).
#[derive(Debug, Clone)]
pub(super) struct Journaled {
    pub(super) fate: Fate,
    pub(super) why: String,
    pub(super) generation: Option<String>,
}

/// The verdict on one resource of a build whose journal reads `journal`, made by `generation`
/// (its `kiln:generation` tag, `""` without one): the journal's verdict when the generations are
/// the same, else [`Fate::OtherGeneration`] with a reason naming both. No side effects.
pub(super) fn verdict(journal: &Journaled, generation: &str) -> (Fate, String) {
    let name = |g: &str| {
        if g.is_empty() {
            "no generation (made before generations existed)".to_owned()
        } else {
            format!("generation {g}")
        }
    };
    match &journal.generation {
        Some(current) if current != generation => (
            Fate::OtherGeneration,
            format!(
                "kept: made by {}, but the journal is {}'s ({}); another run under this build id \
                 made it and nothing durable says how that run ended",
                name(generation),
                name(current),
                journal.why
            ),
        ),
        _ => (journal.fate, journal.why.clone()),
    }
}

/// Reads build `build_id`'s journal and judges the journal's own generation: succeeded, failed,
/// abandoned (no owner heard of for `older_than`), running, or no journal. Side effects: reads S3.
pub(super) async fn read_journal(
    clients: &Clients,
    bucket: &str,
    team: &crate::team::Team,
    build_id: &str,
    older_than: Duration,
) -> Journaled {
    let now = checkpoint::now();
    let age = older_than.as_secs();
    let (fate, why, generation) =
        match checkpoint::read_dated(&clients.s3, bucket, team, build_id).await {
            Ok(Some((j, _, written))) => {
                // Abandoned: no owner heard of for `older_than`, counted from the lease's end or the
                // journal's last write, whichever is later (a released lease is 0: a drained or
                // retried build whose next attempt has not started yet is not abandoned).
                let since = j.lease_expires.max(written.unwrap_or(0));
                let (fate, why) = match j.status.as_str() {
                    "succeeded" => (Fate::Succeeded, "the build succeeded".to_owned()),
                    "failed" => (Fate::Gone, "the build failed".to_owned()),
                    _ if since + age <= now => (
                        Fate::Gone,
                        format!("no owner heard of for {} s", now.saturating_sub(since)),
                    ),
                    _ => (Fate::Keep, "the build is running".to_owned()),
                };
                (fate, why, Some(j.generation))
            }
            Ok(None) => (
                Fate::NoJournal,
                "no journal (a `kiln build` run, or a finished build's journal already collected)"
                    .to_owned(),
                None,
            ),
            Err(e) => (Fate::Keep, format!("journal unreadable: {e}"), None),
        };
    Journaled {
        fate,
        why,
        generation,
    }
}

#[cfg(test)]
mod tests {
    use super::{Fate, Journaled, verdict};

    fn journal(fate: Fate, generation: Option<&str>) -> Journaled {
        Journaled {
            fate,
            why: "the build failed".to_owned(),
            generation: generation.map(str::to_owned),
        }
    }

    #[test]
    fn the_journal_judges_only_its_own_generation() {
        let failed = journal(Fate::Gone, Some("g2"));
        assert_eq!(verdict(&failed, "g2").0, Fate::Gone, "its own generation");
        let (fate, why) = verdict(&failed, "g1");
        assert_eq!(fate, Fate::OtherGeneration, "an earlier generation: {why}");
        assert!(fate.keeps_all());
        assert!(
            why.contains("generation g1") && why.contains("generation g2"),
            "the reason names both generations: {why}"
        );
        // Made before generations existed, judged by a journal that has one: kept.
        assert_eq!(verdict(&failed, "").0, Fate::OtherGeneration);
        for f in [Fate::Succeeded, Fate::Keep] {
            assert_eq!(
                verdict(&journal(f, Some("g2")), "g1").0,
                Fate::OtherGeneration
            );
        }
    }

    #[test]
    fn without_a_generation_to_compare_the_journal_verdict_holds() {
        // A journal and resources from before generations: today's verdict.
        assert_eq!(verdict(&journal(Fate::Gone, Some("")), "").0, Fate::Gone);
        // A journal from before generations, a resource of a run that has one: kept.
        assert_eq!(
            verdict(&journal(Fate::Gone, Some("")), "g1").0,
            Fate::OtherGeneration
        );
        // No journal (or an unreadable one): its verdict for every generation.
        for g in ["", "g1"] {
            assert_eq!(
                verdict(&journal(Fate::NoJournal, None), g).0,
                Fate::NoJournal
            );
            assert_eq!(verdict(&journal(Fate::Keep, None), g).0, Fate::Keep);
        }
    }
}
