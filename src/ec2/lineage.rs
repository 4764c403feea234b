//! Where an image came from and what was built on it: the ancestry tags every AMI kiln registers
//! carries (`kiln:parent-ami`, and where kiln built the parent `kiln:parent-build-id` and
//! `kiln:parent-bake-key`; the build's own `kiln:template`, `kiln:bake-key` and `kiln:sbom`), the
//! previous image of the same template, and the chain up and down from one AMI (`kiln lineage`).
//! Read only: nothing here creates, tags or deletes.

use super::{Ec2Error, TAG_BUILD_ID, api};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, Image, ImageState, Tag};
use std::collections::{BTreeMap, BTreeSet};

/// The AMI the image was built from.
pub const TAG_PARENT_AMI: &str = "kiln:parent-ami";
/// The build id of the parent, when kiln built it (its own `kiln:build-id`).
pub const TAG_PARENT_BUILD_ID: &str = "kiln:parent-build-id";
/// The bake key of the parent, when kiln built it from a bake (its own `kiln:bake-key`).
pub const TAG_PARENT_BAKE_KEY: &str = "kiln:parent-bake-key";
/// The bake key of the request that built the image (builds `kiln-trigger` asked for).
pub const TAG_BAKE_KEY: &str = "kiln:bake-key";
/// Which template and build made the image (the same value across rebuilds of one template).
pub const TAG_TEMPLATE: &str = "kiln:template";
/// The template's name in channel parameters (`crate::channels::template_name`).
pub const TAG_TEMPLATE_NAME: &str = "kiln:template-name";
/// Why the image was revoked (`kiln revoke --reason`).
pub const TAG_REVOKED: &str = "kiln:revoked";
/// Where the image's SBOM is (`s3://bucket/key`, or `file://` for a local `kiln build`).
pub const TAG_SBOM: &str = "kiln:sbom";
/// EC2 tag values are at most 256 characters.
pub const TAG_VALUE_MAX: usize = 256;
/// How many generations `lineage` follows up, and how many images it lists below: a bound on
/// the calls a cycle of hand-made tags, or a huge family, could cost (EC2 accounts hold a few
/// thousand AMIs at most by default: 50,000 is the public-AMI quota ceiling).
pub const LINEAGE_MAX: usize = 1000;

/// A tag's value.
pub fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// A value cut to what a tag holds: longer values keep their start and end around a hash, so two
/// different long values stay different. Pure.
pub fn tag_value(v: &str) -> String {
    if v.len() <= TAG_VALUE_MAX {
        return v.to_owned();
    }
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(v.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let head: String = v.chars().take(100).collect();
    let tail: String = {
        let t: Vec<char> = v.chars().rev().take(100).collect();
        t.into_iter().rev().collect()
    };
    format!("{head}…{}…{tail}", &hash[..16])
}

/// The ancestry tags of an image built from `source` (its id and tags; `None` for
/// `from_scratch`), trusting the source's kiln tags only when this account owns the source
/// (`own`: anyone can put a `kiln:build-id` tag on an image they share). Pure.
pub fn ancestry_tags(
    source: Option<(&str, &BTreeMap<String, String>)>,
    own: bool,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some((id, tags)) = source else {
        return out;
    };
    out.insert(TAG_PARENT_AMI.to_owned(), id.to_owned());
    if own {
        if let Some(b) = tags.get(TAG_BUILD_ID) {
            out.insert(TAG_PARENT_BUILD_ID.to_owned(), tag_value(b));
        }
        if let Some(k) = tags.get(TAG_BAKE_KEY) {
            out.insert(TAG_PARENT_BAKE_KEY.to_owned(), tag_value(k));
        }
    }
    out
}

/// This account's available images of `template` in `team`, newest first, without those of
/// build `except`. Read only.
pub async fn images_of_template(
    ec2: &Client,
    region: &str,
    team: &str,
    template: &str,
    except: &str,
) -> Result<Vec<Image>, Ec2Error> {
    let mut images = team_images(ec2, region, team, &literal(template)).await?;
    images.retain(|i| tag(i.tags(), TAG_BUILD_ID) != Some(except));
    Ok(images)
}

/// This account's available images of `team` whose `kiln:template` matches `pattern` (an EC2
/// filter value: `*` and `?` are wildcards; see [`literal`]), newest first (the id breaks a tie
/// within a second). Read only.
pub async fn team_images(
    ec2: &Client,
    region: &str,
    team: &str,
    pattern: &str,
) -> Result<Vec<Image>, Ec2Error> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(filter(&format!("tag:{TAG_TEMPLATE}"), pattern))
        .filters(filter(
            &format!("tag:{}", crate::team::TAG_TEAM),
            &literal(team),
        ))
        .send()
        .await
        .map_err(api("DescribeImages", pattern, region))?;
    let mut images: Vec<Image> = out
        .images
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.state() == Some(&ImageState::Available))
        .collect();
    // RFC 3339 times in UTC sort as text.
    images
        .sort_by(|a, b| (b.creation_date(), b.image_id()).cmp(&(a.creation_date(), a.image_id())));
    Ok(images)
}

/// `v` as an EC2 filter value that matches only itself: EC2 takes `*` and `?` as wildcards,
/// escaped by a backslash (a template key may hold either). Pure.
pub fn literal(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// One image in a lineage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// The AMI id.
    pub ami: String,
    /// Its name, when it could be described.
    pub name: Option<String>,
    /// Its kiln build id (`None`: kiln did not build it, or it is gone).
    pub build_id: Option<String>,
    /// Its template (`kiln:template`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Its template's name in channel parameters (`kiln:template-name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    /// The parent AMI it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Deprecated, deregistered or missing: why not to launch it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// An image's chain up to the first image kiln did not build, and every image built on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lineage {
    /// The image asked about.
    pub image: Member,
    /// Its parent, the parent's parent, ... (the last is the first kiln did not build, or one
    /// that is gone).
    pub ancestors: Vec<Member>,
    /// Every image built on it, breadth first (children before grandchildren).
    pub descendants: Vec<Member>,
}

fn member(ami: &str, image: Option<&Image>) -> Member {
    let t = |k| image.and_then(|i| tag(i.tags(), k)).map(str::to_owned);
    Member {
        ami: ami.to_owned(),
        name: image.and_then(|i| i.name().map(str::to_owned)),
        build_id: t(TAG_BUILD_ID),
        template: t(TAG_TEMPLATE),
        template_name: t(TAG_TEMPLATE_NAME),
        parent: t(TAG_PARENT_AMI),
        state: match image {
            None => Some("not found (deregistered, or not visible to this account)".into()),
            Some(i) if i.deprecation_time().is_some() => Some(format!(
                "deprecated at {}",
                i.deprecation_time().unwrap_or("")
            )),
            Some(_) => None,
        },
    }
}

/// Image `ami` and its ancestors (parent first) up through `kiln:parent-ami` while kiln built
/// the image: the upward half of [`lineage`]. Read only; at most [`LINEAGE_MAX`] images, and a
/// cycle of hand-made tags stops where it repeats.
pub async fn ancestors(
    ec2: &Client,
    region: &str,
    ami: &str,
) -> Result<(Member, Vec<Member>), Ec2Error> {
    let first = super::images::describe(ec2, region, ami).await?;
    let image = member(ami, first.as_ref());
    let mut seen = BTreeSet::from([ami.to_owned()]);
    let mut ancestors = Vec::new();
    let mut up = image.clone();
    while up.build_id.is_some() && ancestors.len() < LINEAGE_MAX {
        let Some(parent) = up.parent.clone() else {
            break;
        };
        if !seen.insert(parent.clone()) {
            break;
        }
        let found = super::images::describe(ec2, region, &parent).await?;
        up = member(&parent, found.as_ref());
        ancestors.push(up.clone());
    }
    Ok((image, ancestors))
}

/// The lineage of `ami` in `region`: up through `kiln:parent-ami` while kiln built the image,
/// down through the images of this account that name it as their parent. Read only; at most
/// [`LINEAGE_MAX`] images each way, and a cycle of hand-made tags stops where it repeats.
pub async fn lineage(ec2: &Client, region: &str, ami: &str) -> Result<Lineage, Ec2Error> {
    let (image, ancestors) = ancestors(ec2, region, ami).await?;
    let mut seen: BTreeSet<String> = std::iter::once(ami.to_owned())
        .chain(ancestors.iter().map(|a| a.ami.clone()))
        .collect();
    let mut descendants = Vec::new();
    let mut queue = std::collections::VecDeque::from([ami.to_owned()]);
    while let Some(next) = queue.pop_front() {
        for child in children(ec2, region, &next).await? {
            let id = child.image_id().unwrap_or_default().to_owned();
            if descendants.len() >= LINEAGE_MAX || !seen.insert(id.clone()) {
                continue;
            }
            descendants.push(member(&id, Some(&child)));
            queue.push_back(id);
        }
    }
    Ok(Lineage {
        image,
        ancestors,
        descendants,
    })
}

/// Whether this account owns image `ami` (DescribeImages with owner `self`). Read only.
pub async fn owned_by_self(ec2: &Client, region: &str, ami: &str) -> Result<bool, Ec2Error> {
    match ec2
        .describe_images()
        .owners("self")
        .image_ids(ami)
        .send()
        .await
    {
        Ok(o) => Ok(!o.images().is_empty()),
        Err(e) => {
            let err = api("DescribeImages", ami, region)(e);
            if err.is_not_found() {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// This account's images whose `kiln:parent-ami` is `ami`, oldest first. Read only.
pub async fn children(ec2: &Client, region: &str, ami: &str) -> Result<Vec<Image>, Ec2Error> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(filter(&format!("tag:{TAG_PARENT_AMI}"), ami))
        .send()
        .await
        .map_err(api("DescribeImages", ami, region))?;
    let mut images = out.images.unwrap_or_default();
    images.sort_by(|a, b| a.creation_date.cmp(&b.creation_date));
    Ok(images)
}

impl Lineage {
    /// The lineage as lines for a terminal: ancestors from the oldest, the image marked, then
    /// its descendants indented under their parents. Pure.
    pub fn text(&self) -> String {
        let show = |m: &Member| {
            let mut s = m.ami.clone();
            if let Some(n) = &m.name {
                s.push_str(&format!(" {n}"));
            }
            match &m.build_id {
                Some(b) => s.push_str(&format!(" (kiln build {b})")),
                None => s.push_str(" (not built by kiln)"),
            }
            if let Some(st) = &m.state {
                s.push_str(&format!(" [{st}]"));
            }
            s
        };
        let mut out = String::new();
        for a in self.ancestors.iter().rev() {
            out.push_str(&format!("  {}\n", show(a)));
        }
        out.push_str(&format!("* {}\n", show(&self.image)));
        let mut depth: BTreeMap<&str, usize> = BTreeMap::from([(self.image.ami.as_str(), 0)]);
        for d in &self.descendants {
            let level = d
                .parent
                .as_deref()
                .and_then(|p| depth.get(p))
                .map_or(1, |l| l + 1);
            depth.insert(d.ami.as_str(), level);
            out.push_str(&format!("{}└ {}\n", "  ".repeat(level), show(d)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_match_only_themselves() {
        assert_eq!(literal("s3://b/t/a*?.json#x"), "s3://b/t/a\\*\\?.json#x");
        assert_eq!(literal("a\\b"), "a\\\\b");
        assert_eq!(literal("plain"), "plain");
    }

    #[test]
    fn a_long_value_stays_distinct_within_a_tag() {
        let a = format!("{}a{}", "x".repeat(300), "y".repeat(10));
        let b = format!("{}b{}", "x".repeat(300), "y".repeat(10));
        assert!(tag_value(&a).len() <= TAG_VALUE_MAX);
        assert_ne!(tag_value(&a), tag_value(&b));
        assert_eq!(tag_value("short"), "short");
    }

    #[test]
    fn a_parent_of_another_account_is_named_but_its_kiln_tags_are_not_trusted() {
        let tags = BTreeMap::from([
            (TAG_BUILD_ID.to_owned(), "b1".to_owned()),
            (TAG_BAKE_KEY.to_owned(), "k1".to_owned()),
        ]);
        let mine = ancestry_tags(Some(("ami-1", &tags)), true);
        assert_eq!(mine.get(TAG_PARENT_AMI).map(String::as_str), Some("ami-1"));
        assert_eq!(
            mine.get(TAG_PARENT_BUILD_ID).map(String::as_str),
            Some("b1")
        );
        assert_eq!(
            mine.get(TAG_PARENT_BAKE_KEY).map(String::as_str),
            Some("k1")
        );
        let theirs = ancestry_tags(Some(("ami-1", &tags)), false);
        assert_eq!(theirs.len(), 1, "{theirs:?}");
        assert!(ancestry_tags(None, true).is_empty());
    }
}
