//! What changed between two package lists (an image and its parent, two builds of a template):
//! packages added, removed, and changed in version, keyed by (name, arch).

use super::Package;
use super::os::version_cmp;
use std::collections::{BTreeMap, BTreeSet};

/// The difference between two package lists.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Changes {
    /// Packages only the new list has.
    pub added: Vec<Package>,
    /// Packages only the old list has.
    pub removed: Vec<Package>,
    /// Packages in both with another version.
    pub changed: Vec<Change>,
}

/// One package whose version changed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// Its name.
    pub name: String,
    /// Its architecture, if any.
    pub arch: Option<String>,
    /// The old version.
    pub from: String,
    /// The new version.
    pub to: String,
}

type Key = (String, Option<String>);

/// Groups packages by (name, arch): each key's packages by version.
fn by_key(pkgs: &[Package]) -> BTreeMap<Key, BTreeMap<&str, &Package>> {
    let mut out: BTreeMap<Key, BTreeMap<&str, &Package>> = BTreeMap::new();
    for p in pkgs {
        out.entry((p.name.clone(), p.arch.clone()))
            .or_default()
            .insert(p.version.as_str(), p);
    }
    out
}

/// The difference from `old` to `new`, keyed by (name, arch) (an arch of `None` matches only
/// `None`). A key with several versions (kernels, rpm's parallel-installed packages) pairs its
/// vanished and new versions, in version order, as changes; the rest are added or removed.
/// Every list is sorted by name (then arch, then version). No side effects.
pub fn changes(old: &[Package], new: &[Package]) -> Changes {
    let (old, new) = (by_key(old), by_key(new));
    let keys: BTreeSet<&Key> = old.keys().chain(new.keys()).collect();
    let mut out = Changes::default();
    let empty = BTreeMap::new();
    for key in keys {
        let before = old.get(key).unwrap_or(&empty);
        let after = new.get(key).unwrap_or(&empty);
        let mut gone: Vec<&Package> = before
            .iter()
            .filter(|(v, _)| !after.contains_key(*v))
            .map(|(_, p)| *p)
            .collect();
        let mut came: Vec<&Package> = after
            .iter()
            .filter(|(v, _)| !before.contains_key(*v))
            .map(|(_, p)| *p)
            .collect();
        gone.sort_by(|a, b| version_cmp(&a.version, &b.version));
        came.sort_by(|a, b| version_cmp(&a.version, &b.version));
        for (from, to) in gone.iter().zip(&came) {
            out.changed.push(Change {
                name: key.0.clone(),
                arch: key.1.clone(),
                from: from.version.clone(),
                to: to.version.clone(),
            });
        }
        let paired = gone.len().min(came.len());
        out.removed
            .extend(gone.iter().skip(paired).map(|p| (*p).clone()));
        out.added
            .extend(came.iter().skip(paired).map(|p| (*p).clone()));
    }
    out
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// One line per difference, sorted by name: `openssl 3.0.13 → 3.0.14`, `+ curl 7.88.1-10`,
    /// `- foo 1.0`; the arch is appended in parentheses (`libc6 2.36-9 → 2.36-10 (i386)`) only
    /// when two lines share a name. No side effects.
    pub fn lines(&self) -> Vec<String> {
        let mut entries: Vec<(&str, &Option<String>, String)> = Vec::new();
        for c in &self.changed {
            entries.push((
                &c.name,
                &c.arch,
                format!("{} {} → {}", c.name, c.from, c.to),
            ));
        }
        for p in &self.added {
            entries.push((&p.name, &p.arch, format!("+ {} {}", p.name, p.version)));
        }
        for p in &self.removed {
            entries.push((&p.name, &p.arch, format!("- {} {}", p.name, p.version)));
        }
        entries.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &entries {
            *count.entry(e.0).or_default() += 1;
        }
        entries
            .iter()
            .map(|(name, arch, line)| match arch {
                Some(a) if count.get(name).copied().unwrap_or(0) > 1 => format!("{line} ({a})"),
                _ => line.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::PackageKind;

    fn p(name: &str, version: &str, arch: Option<&str>) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: arch.map(Into::into),
            source: None,
            license: None,
            kind: PackageKind::Deb,
        }
    }

    #[test]
    fn changes_added_removed_changed() {
        let old = [
            p("openssl", "3.0.13", None),
            p("foo", "1.0", None),
            p("libc6", "2.36-9", Some("amd64")),
            p("libc6", "2.36-9", Some("i386")),
            p("same", "1", None),
        ];
        let new = [
            p("openssl", "3.0.14", None),
            p("curl", "7.88.1-10", None),
            p("libc6", "2.36-10", Some("amd64")),
            p("libc6", "2.36-10", Some("i386")),
            p("same", "1", None),
        ];
        let c = changes(&old, &new);
        assert_eq!(c.added, [p("curl", "7.88.1-10", None)]);
        assert_eq!(c.removed, [p("foo", "1.0", None)]);
        assert_eq!(c.changed.len(), 3);
        assert_eq!(
            c.changed[2],
            Change {
                name: "openssl".into(),
                arch: None,
                from: "3.0.13".into(),
                to: "3.0.14".into(),
            }
        );
        assert_eq!(
            c.lines(),
            [
                "+ curl 7.88.1-10",
                "- foo 1.0",
                "libc6 2.36-9 → 2.36-10 (amd64)",
                "libc6 2.36-9 → 2.36-10 (i386)",
                "openssl 3.0.13 → 3.0.14",
            ]
        );
        assert!(!c.is_empty());
        assert!(changes(&old, &old).is_empty());
        assert_eq!(changes(&old, &old).lines(), Vec::<String>::new());
    }

    /// An arch of None matches only None: a package that gained an arch is removed and added.
    #[test]
    fn changes_keyed_by_name_and_arch() {
        let c = changes(&[p("a", "1", None)], &[p("a", "1", Some("amd64"))]);
        assert_eq!(c.added.len(), 1);
        assert_eq!(c.removed.len(), 1);
        assert_eq!(c.lines(), ["- a 1", "+ a 1 (amd64)"]);
    }

    /// Several versions under one key (kernels): kept ones are no change, the rest pair up.
    #[test]
    fn changes_of_parallel_versions() {
        let k = |v| p("linux-kernel", v, None);
        let c = changes(
            &[k("6.1.0-27"), k("6.1.0-28")],
            &[k("6.1.0-28"), k("6.1.0-29")],
        );
        assert_eq!(c.lines(), ["linux-kernel 6.1.0-27 → 6.1.0-29"]);
        let c = changes(
            &[k("6.1.0-9"), k("6.1.0-10")],
            &[k("6.1.0-11"), k("6.1.0-12")],
        );
        assert_eq!(
            c.lines(),
            [
                "linux-kernel 6.1.0-9 → 6.1.0-11",
                "linux-kernel 6.1.0-10 → 6.1.0-12"
            ]
        );
        let c = changes(&[k("6.1.0-28")], &[k("6.1.0-28"), k("6.1.0-29")]);
        assert_eq!(c.lines(), ["+ linux-kernel 6.1.0-29"]);
    }
}
