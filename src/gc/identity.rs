//! Who made a resource, as gc sees it: a resource's build (its team and id, as one qualified
//! string) and generation from its tags, and the wildcard match that chooses builds alike in
//! EC2's tag filters and among the journals.

use crate::ec2::{TAG_BUILD_ID, TAG_GENERATION};
use crate::team::{TAG_TEAM, Team};
use aws_sdk_ec2::types::Tag;

/// Whether `text` matches `pattern`, where `*` matches any run of characters and `?` any one
/// character: the wildcards of EC2's tag filters, so that journals and resources are chosen alike.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it was tried at (classic linear backtracking).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn tag_of(tags: &[Tag], key: &str) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value().map(str::to_owned))
}

/// Who made a resource, by its id and tags: (id, the build's qualified id (see [`qualified`]),
/// generation; `""` without a generation tag). `None` without an id or a build id.
pub(super) fn made(id: Option<&str>, tags: &[Tag]) -> Option<(String, String, String)> {
    let team = Team::of_tag(tag_of(tags, TAG_TEAM).as_deref());
    Some((
        id?.to_owned(),
        qualified(&team, &tag_of(tags, TAG_BUILD_ID)?),
        tag_of(tags, TAG_GENERATION).unwrap_or_default(),
    ))
}

/// A build's identity as one string: its team's key root and its id (`golden-1` for the default
/// team, `teams/b/golden-1` for team `b`; build ids hold no `/`). Two teams' builds of the same
/// id are two builds, each judged by its own team's journal.
fn qualified(team: &Team, build_id: &str) -> String {
    format!("{}{build_id}", team.key_root())
}

/// The team and build id of a [`qualified`] id.
pub(super) fn unqualified(q: &str) -> (Team, &str) {
    let team = Team::of_key(q);
    let root = team.key_root();
    (team, q.strip_prefix(root.as_str()).unwrap_or(q))
}
