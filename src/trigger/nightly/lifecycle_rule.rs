//! A template's lifecycle rule and what it decides, without AWS: the rule is the template
//! object's S3 user metadata `kiln-lifecycle` (`keep=3,deprecate=30d,deregister=90d`), and
//! [`decide`] says which of the template's images in one region are deprecated or deregistered
//! on a given day. `lifecycle.rs` reads the images and channels and does what is decided.

use time::OffsetDateTime;

/// The user-metadata key (S3 sends it as `x-amz-meta-kiln-lifecycle`).
pub const METADATA_KEY: &str = "kiln-lifecycle";
/// The most images a rule keeps per channel: SSM keeps a parameter's last 100 versions, so a
/// channel cannot say which images it held before those.
pub const KEEP_MAX: u32 = 100;
/// The longest age a rule names: EC2 deprecates at most 10 years ahead, and no image kiln made
/// is older than that.
pub const DAYS_MAX: u32 = 3650;
/// What `keep` is when the rule does not say: the newest image of each build is never touched.
pub const KEEP_DEFAULT: u32 = 1;

/// A template's lifecycle rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The images kept whatever their age: the `keep` newest of the template's build, and the
    /// `keep` latest each of its channels pointed at (at least 1: the image a channel points at
    /// now is never touched).
    pub keep: u32,
    /// Images not kept are deprecated (EC2 EnableImageDeprecation) once this many days old.
    pub deprecate_after: Option<u32>,
    /// Images not kept are deregistered, with the snapshots their build made, once this many
    /// days old.
    pub deregister_after: Option<u32>,
}

fn problem(value: &str, what: String) -> String {
    format!(
        "the template's S3 metadata {METADATA_KEY} = {value:?}: {what}; upload it again with --metadata {METADATA_KEY}=keep=3,deprecate=30d,deregister=90d"
    )
}

/// The rule in a `kiln-lifecycle` value: `keep=N`, `deprecate=Dd` and `deregister=Ed` separated
/// by commas (the `d` is optional; spaces around parts are ignored). At least one of
/// `deprecate` and `deregister`; `deregister` not before `deprecate`. An error names the
/// metadata, the part and the fix. Pure.
pub fn parse(value: &str) -> Result<Rule, String> {
    let mut rule = Rule {
        keep: KEEP_DEFAULT,
        deprecate_after: None,
        deregister_after: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(problem(
                value,
                format!("{part:?} is not name=value (keep, deprecate or deregister)"),
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        if seen.contains(&k) {
            return Err(problem(value, format!("{k} is given twice")));
        }
        seen.push(k);
        let number = |v: &str, max: u32, unit: &str| -> Result<u32, String> {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| problem(value, format!("{k}={v}: expected 0 to {max}{unit}")))
        };
        match k {
            "keep" => {
                let n = number(v, KEEP_MAX, "")?;
                if n == 0 {
                    return Err(problem(
                        value,
                        "keep=0: at least the image each channel points at is kept (keep=1 or more)"
                            .into(),
                    ));
                }
                rule.keep = n;
            }
            "deprecate" => {
                rule.deprecate_after =
                    Some(number(v.strip_suffix('d').unwrap_or(v), DAYS_MAX, " days")?)
            }
            "deregister" => {
                rule.deregister_after =
                    Some(number(v.strip_suffix('d').unwrap_or(v), DAYS_MAX, " days")?)
            }
            other => {
                return Err(problem(
                    value,
                    format!("{other:?} is not a rule (keep, deprecate or deregister)"),
                ));
            }
        }
    }
    match (rule.deprecate_after, rule.deregister_after) {
        (None, None) => Err(problem(
            value,
            "it says neither deprecate nor deregister, so it would do nothing".into(),
        )),
        (Some(d), Some(e)) if e < d => Err(problem(
            value,
            format!("deregister={e}d comes before deprecate={d}d"),
        )),
        _ => Ok(rule),
    }
}

/// One image of a template's build, as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The AMI id.
    pub ami: String,
    /// When EC2 registered it (`None`: unknown, and such an image is never acted on).
    pub created: Option<OffsetDateTime>,
    /// Whether it is deprecated already, or will be within a day (a deprecation time set later
    /// than that, as Packer's `deprecate_at` sets one, is brought forward).
    pub deprecated: bool,
    /// Whether `kiln revoke` withdrew it (`kiln:revoked`): it takes none of the `keep` newest
    /// places, so a good image is not dropped for it.
    pub revoked: bool,
}

/// One channel of the build: the images it pointed at, newest first (its parameter's history,
/// each image once; the first is the one it points at now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The parameter.
    pub name: String,
    /// Images, newest first.
    pub held: Vec<String>,
}

/// What is done to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// EnableImageDeprecation.
    Deprecate,
    /// DeregisterImage, and its build's snapshots deleted.
    Deregister,
}

/// One image the rule acts on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The AMI.
    pub ami: String,
    /// What is done.
    pub action: Action,
    /// Why, for the summary.
    pub reason: String,
}

/// What `rule` does on `now` to `images` (one build's, in one region, newest first) whose
/// channels are `channels`, and the images it keeps. An image kept is never acted on; one of
/// unknown age neither; an image old enough to be deregistered is deregistered (not also
/// deprecated); one deprecated already is not deprecated again. Pure.
pub fn decide(
    rule: &Rule,
    images: &[Image],
    channels: &[Channel],
    now: OffsetDateTime,
) -> (Vec<Decision>, Vec<String>) {
    let keep = rule.keep as usize;
    let mut kept: Vec<String> = images
        .iter()
        .filter(|i| !i.revoked)
        .take(keep)
        .map(|i| i.ami.clone())
        .collect();
    for c in channels {
        for ami in c.held.iter().take(keep) {
            if !kept.contains(ami) {
                kept.push(ami.clone());
            }
        }
    }
    let channel_names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    let why_not_kept = if channel_names.is_empty() {
        format!("not among the {keep} newest unrevoked")
    } else {
        format!(
            "not among the {keep} newest unrevoked nor the {keep} latest of {}",
            channel_names.join(", ")
        )
    };
    let mut out = Vec::new();
    for image in images.iter().filter(|i| !kept.contains(&i.ami)) {
        let Some(created) = image.created else {
            continue;
        };
        let age = (now - created).whole_days();
        let past = |days: Option<u32>| days.filter(|d| age >= i64::from(*d));
        let (action, limit, verb) = if let Some(e) = past(rule.deregister_after) {
            (Action::Deregister, e, "deregister")
        } else if let Some(d) = past(rule.deprecate_after)
            && !image.deprecated
        {
            (Action::Deprecate, d, "deprecate")
        } else {
            continue;
        };
        out.push(Decision {
            ami: image.ami.clone(),
            action,
            reason: format!("{age} days old ({verb} after {limit}), {why_not_kept}"),
        });
    }
    (out, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_read_with_their_fix() {
        assert_eq!(
            parse("keep=3, deprecate=30d,deregister=90").unwrap(),
            Rule {
                keep: 3,
                deprecate_after: Some(30),
                deregister_after: Some(90)
            }
        );
        assert_eq!(parse("deprecate=0").unwrap().keep, KEEP_DEFAULT);
        for (bad, says) in [
            ("keep=3", "neither deprecate nor deregister"),
            ("keep=0,deprecate=1", "keep=0"),
            ("keep=-1,deprecate=1", "keep=-1"),
            (
                "deprecate=30d,deregister=10d",
                "deregister=10d comes before deprecate=30d",
            ),
            ("deprecate=30,deprecate=40", "deprecate is given twice"),
            ("delete=3", "\"delete\" is not a rule"),
            ("deprecate", "not name=value"),
            ("deprecate=99999", "0 to 3650 days"),
            ("keep=101,deprecate=1", "0 to 100"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.contains(says) && e.contains(METADATA_KEY) && e.contains("--metadata"),
                "{bad}: {e}"
            );
        }
    }

    fn day(n: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(n)
    }

    fn image(ami: &str, created: i64) -> Image {
        Image {
            ami: ami.into(),
            created: Some(day(created)),
            deprecated: false,
            revoked: false,
        }
    }

    #[test]
    fn the_newest_and_the_channels_latest_are_kept() {
        let rule = parse("keep=2,deprecate=30d,deregister=90d").unwrap();
        // Newest first: a (day 100) .. f (day 0).
        let mut images = vec![
            image("a", 100),
            image("b", 99),
            image("c", 60),
            image("d", 50),
            image("e", 5),
            image("f", 0),
        ];
        images[3].deprecated = true;
        let prod = Channel {
            name: "/kiln/t/x/prod".into(),
            held: vec!["f".into(), "b".into()],
        };
        let (acts, kept) = decide(&rule, &images, &[prod], day(101));
        assert_eq!(kept, vec!["a", "b", "f"]);
        let got: Vec<(&str, Action)> = acts.iter().map(|d| (d.ami.as_str(), d.action)).collect();
        // c: 41 days, deprecated; d: 51 days, deprecated already; e: 96 days, deregistered.
        assert_eq!(
            got,
            vec![("c", Action::Deprecate), ("e", Action::Deregister)]
        );
        assert!(
            acts[1]
                .reason
                .starts_with("96 days old (deregister after 90)"),
            "{}",
            acts[1].reason
        );
        assert!(
            acts[1].reason.contains("/kiln/t/x/prod"),
            "{}",
            acts[1].reason
        );
        // Nothing of unknown age, nothing kept, whatever the day.
        let unknown = Image {
            ami: "u".into(),
            created: None,
            deprecated: false,
            revoked: false,
        };
        let (acts, _) = decide(&rule, &[image("a", 0), unknown], &[], day(1000));
        assert!(acts.is_empty(), "{acts:?}");
        // A revoked image takes no place among the newest: the one after it is kept instead.
        let mut newest = image("n", 100);
        newest.revoked = true;
        let (acts, kept) = decide(
            &parse("keep=1,deregister=10").unwrap(),
            &[newest, image("o", 50)],
            &[],
            day(200),
        );
        assert_eq!(kept, vec!["o"]);
        assert_eq!(acts.len(), 1);
        assert_eq!(
            (acts[0].ami.as_str(), acts[0].action),
            ("n", Action::Deregister)
        );
        // The age limit is inclusive: 30 days old is deprecated by deprecate=30d, 29 is not.
        let rule = parse("keep=1,deprecate=30d").unwrap();
        let (acts, _) = decide(&rule, &[image("k", 100), image("x", 0)], &[], day(30));
        assert_eq!(acts.len(), 1);
        let (acts, _) = decide(&rule, &[image("k", 100), image("x", 0)], &[], day(29));
        assert!(acts.is_empty());
    }
}
