//! dpkg's database: `/var/lib/dpkg/status` (Debian, Ubuntu), or, when it is missing,
//! `/var/lib/dpkg/status.d/<package>` (distroless images: one stanza per file, no `Status`).
//! Licenses come from Debian machine-readable (DEP-5) copyright files, since the status file
//! names none.

use super::{ImageFiles, MAX_PACKAGES, Package, PackageKind, SbomError, read_bounded};

/// The status file.
const STATUS: &str = "/var/lib/dpkg/status";
/// Distroless images' directory of per-package status files.
const STATUS_D: &str = "/var/lib/dpkg/status.d";
/// The databases [`read`] looks for (for the "none found" note).
pub(super) const PATHS: [&str; 1] = [STATUS];

/// Bytes of the status file kiln reads at most: a desktop Ubuntu's is about 4 MiB (3,000
/// packages); 128 MiB allows 30 times as many packages as big as those.
const MAX_STATUS: u64 = 128 * 1024 * 1024;
/// Bytes of one distroless `status.d` file: one package's stanza, a few KiB with its
/// description; 1 MiB is far beyond any.
const MAX_STATUS_D_FILE: u64 = 1024 * 1024;
/// Bytes of a copyright file read for its first `License:` line: DEP-5 puts the header and the
/// `Files: *` stanza first, well within 64 KiB.
const MAX_COPYRIGHT: u64 = 64 * 1024;

/// The packages dpkg installed and the database read; `None` when there is no database.
/// No side effects.
pub(super) fn read(files: &dyn ImageFiles) -> Result<Option<(String, Vec<Package>)>, SbomError> {
    if let Some(bytes) = read_bounded(files, STATUS, MAX_STATUS)? {
        let text = String::from_utf8_lossy(&bytes);
        let pkgs = packages(files, STATUS, &text, true)?;
        return Ok(Some((STATUS.to_owned(), pkgs)));
    }
    let Some(names) = files.list_dir(STATUS_D)? else {
        return Ok(None);
    };
    let mut pkgs = Vec::new();
    for name in names.iter().filter(|n| !n.ends_with(".md5sums")) {
        let path = format!("{STATUS_D}/{name}");
        let Some(bytes) = read_bounded(files, &path, MAX_STATUS_D_FILE)? else {
            continue;
        };
        pkgs.extend(packages(
            files,
            &path,
            &String::from_utf8_lossy(&bytes),
            false,
        )?);
        if pkgs.len() > MAX_PACKAGES {
            return Err(SbomError::bad(
                STATUS_D,
                format!("more than {MAX_PACKAGES} packages"),
            ));
        }
    }
    Ok(Some((STATUS_D.to_owned(), pkgs)))
}

/// The installed packages of one file's stanzas. With `need_status`, only stanzas whose
/// `Status` ends in `installed` count (`install ok installed`, `hold ok installed`); without,
/// a stanza with no `Status` counts too.
fn packages(
    files: &dyn ImageFiles,
    path: &str,
    text: &str,
    need_status: bool,
) -> Result<Vec<Package>, SbomError> {
    let mut out = Vec::new();
    for stanza in stanzas(text) {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        let installed = match field("Status") {
            Some(s) => s.split_whitespace().last() == Some("installed"),
            None => !need_status,
        };
        let (Some(name), Some(version)) = (field("Package"), field("Version")) else {
            continue;
        };
        if !installed || name.is_empty() || version.is_empty() {
            continue;
        }
        if out.len() >= MAX_PACKAGES {
            return Err(SbomError::bad(
                path,
                format!("more than {MAX_PACKAGES} packages"),
            ));
        }
        out.push(Package {
            name: name.to_owned(),
            version: version.to_owned(),
            arch: field("Architecture").map(str::to_owned),
            source: field("Source").and_then(source),
            license: license(files, name)?,
            kind: PackageKind::Deb,
        });
    }
    Ok(out)
}

/// Splits deb822 text into stanzas of (field, value): stanzas end at blank lines; a line
/// starting with a space or tab continues the previous field's value.
pub(super) fn stanzas(text: &str) -> Vec<Vec<(&str, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(&str, String)> = Vec::new();
    // Whether the field the continuation lines belong to is kept.
    let mut keeping = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                if out.len() > MAX_STANZAS {
                    break;
                }
            }
        } else if line.starts_with([' ', '\t']) {
            if keeping && let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            // Only the fields an SBOM uses are kept: a status file of millions of tiny or
            // long fields (Description, Conffiles) costs no more than its packages.
            keeping = KEPT_FIELDS.contains(&k.trim());
            if keeping {
                cur.push((k.trim(), v.trim().to_owned()));
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The status fields an SBOM reads (every other field is skipped while parsing).
const KEPT_FIELDS: [&str; 5] = ["Package", "Status", "Version", "Architecture", "Source"];
/// Stanzas parsed at most: the packages an inventory holds, and as many again of removed ones
/// (`deinstall ok config-files`) a long-lived system keeps.
const MAX_STANZAS: usize = 2 * super::MAX_PACKAGES;

/// `Source: name` or `Source: name (version)`, whitespace normalized.
fn source(v: &str) -> Option<String> {
    let mut words = v.split_whitespace();
    let name = words.next()?;
    let rest = words.collect::<Vec<_>>().join(" ");
    let version = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(str::trim)
        .filter(|r| !r.is_empty());
    Some(match version {
        Some(ver) => format!("{name} ({ver})"),
        None => name.to_owned(),
    })
}

/// Whether `name` is a Debian package name (policy 5.6.1: lower-case letters, digits, `+`, `-`,
/// `.`, starting with a letter or digit), and so safe as a path component.
fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// The first `License:` of the package's copyright file when it is machine-readable (DEP-5).
fn license(files: &dyn ImageFiles, name: &str) -> Result<Option<String>, SbomError> {
    if !valid_name(name) {
        return Ok(None);
    }
    let path = format!("/usr/share/doc/{name}/copyright");
    let bytes = match files.read(&path, MAX_COPYRIGHT) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        // Not a regular file (a directory, a FIFO): no license, not a broken inventory.
        Err(SbomError::BadData { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&bytes);
    if !text
        .trim_start_matches('\u{feff}')
        .starts_with("Format: http")
    {
        return Ok(None);
    }
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("License:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::tests::TempDir;

    const STATUS_SAMPLE: &str = "\
Package: openssl
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 3.0.14-1~deb12u2
Description: Secure Sockets Layer toolkit
 This package contains the openssl binary
 .
 and more.

Package: libstdc++6
Status: hold ok installed
Architecture: amd64
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: half
Status: install ok half-installed
Version: 2.0

Package: tzdata
Status: install ok installed
Architecture: all
Source: tzdata
Version: 2024a-0+deb12u1
";

    #[test]
    fn dpkg_status_keeps_installed_stanzas() {
        let t = TempDir::new("dpkg");
        let root = t.0.join("root");
        t.write("root/var/lib/dpkg/status", STATUS_SAMPLE);
        t.write(
            "root/usr/share/doc/openssl/copyright",
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: x\nLicense: Apache-2.0\n\nLicense: other\n",
        );
        t.write(
            "root/usr/share/doc/tzdata/copyright",
            "Not DEP-5\nLicense: x\n",
        );
        let (db, pkgs) = read(&crate::sbom::DirFiles(root)).unwrap().unwrap();
        assert_eq!(db, "/var/lib/dpkg/status");
        let names: Vec<_> = pkgs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["openssl", "libstdc++6", "tzdata"]);
        assert_eq!(pkgs[0].version, "3.0.14-1~deb12u2");
        assert_eq!(pkgs[0].arch.as_deref(), Some("amd64"));
        assert_eq!(pkgs[0].license.as_deref(), Some("Apache-2.0"));
        assert_eq!(pkgs[0].source, None);
        assert_eq!(pkgs[1].source.as_deref(), Some("gcc-12 (12.2.0-14)"));
        assert_eq!(pkgs[2].source.as_deref(), Some("tzdata"));
        assert_eq!(pkgs[2].license, None);
        assert!(pkgs.iter().all(|p| p.kind == PackageKind::Deb));
    }

    #[test]
    fn stanza_continuation_lines_join_their_field() {
        let s = stanzas(
            "Package: 1\nSource: first\n second\n\tthird\nDescription: x\n long\n\n\n\nPackage: 2\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].len(), 2, "Description is not kept: {s:?}");
        assert_eq!(s[0][1], ("Source", "first\nsecond\nthird".to_owned()));
        assert_eq!(s[1], vec![("Package", "2".to_owned())]);
        // A file of nothing but unknown fields keeps nothing.
        assert!(stanzas(&"a:\n\n".repeat(1000)).is_empty());
    }

    #[test]
    fn distroless_status_d_has_one_file_per_package() {
        let t = TempDir::new("distroless");
        t.write(
            "root/var/lib/dpkg/status.d/base-files",
            "Package: base-files\nVersion: 12.4+deb12u5\nArchitecture: amd64\n",
        );
        t.write(
            "root/var/lib/dpkg/status.d/libc6",
            "Package: libc6\nVersion: 2.36-9+deb12u7\nArchitecture: amd64\nSource: glibc\n",
        );
        t.write("root/var/lib/dpkg/status.d/libc6.md5sums", "abc  lib/x\n");
        let (db, pkgs) = read(&crate::sbom::DirFiles(t.0.join("root")))
            .unwrap()
            .unwrap();
        assert_eq!(db, "/var/lib/dpkg/status.d");
        assert_eq!(pkgs.len(), 2);
        assert_eq!(pkgs[1].name, "libc6");
        assert_eq!(pkgs[1].version, "2.36-9+deb12u7");
        assert_eq!(pkgs[1].source.as_deref(), Some("glibc"));
    }

    #[test]
    fn package_names_that_are_not_debian_names_get_no_license_lookup() {
        assert!(valid_name("libstdc++6"));
        assert!(!valid_name("../../etc"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
    }
}
