//! apk's database (Alpine): `/lib/apk/db/installed`, stanzas of `X:value` lines separated by
//! blank lines (`P` name, `V` version, `A` arch, `L` license, `o` origin, the source package).

use super::{ImageFiles, MAX_PACKAGES, Package, PackageKind, SbomError, read_bounded};

/// The database.
const INSTALLED: &str = "/lib/apk/db/installed";
/// The databases [`read`] looks for (for the "none found" note).
pub(super) const PATHS: [&str; 1] = [INSTALLED];

/// Bytes of the database kiln reads at most: it lists every installed file too (`F:`, `R:`,
/// `Z:` lines), a few MiB for a large Alpine system; 128 MiB is far beyond any.
const MAX_INSTALLED: u64 = 128 * 1024 * 1024;

/// The packages apk installed and the database read; `None` when there is none. No side effects.
pub(super) fn read(files: &dyn ImageFiles) -> Result<Option<(String, Vec<Package>)>, SbomError> {
    let Some(bytes) = read_bounded(files, INSTALLED, MAX_INSTALLED)? else {
        return Ok(None);
    };
    let pkgs = parse(&String::from_utf8_lossy(&bytes))
        .map_err(|detail| SbomError::bad(INSTALLED, detail))?;
    Ok(Some((INSTALLED.to_owned(), pkgs)))
}

/// The packages of the database's text; an error when it holds more than [`MAX_PACKAGES`].
fn parse(text: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    let mut cur = Fields::default();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(p) = std::mem::take(&mut cur).package() {
                if out.len() >= MAX_PACKAGES {
                    return Err(format!("more than {MAX_PACKAGES} packages"));
                }
                out.push(p);
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = Some(value.trim().to_owned()).filter(|v| !v.is_empty());
        match key {
            "P" => cur.name = value,
            "V" => cur.version = value,
            "A" => cur.arch = value,
            "L" => cur.license = value,
            "o" => cur.origin = value,
            _ => {}
        }
    }
    Ok(out)
}

/// One stanza's fields of interest.
#[derive(Default)]
struct Fields {
    name: Option<String>,
    version: Option<String>,
    arch: Option<String>,
    license: Option<String>,
    origin: Option<String>,
}

impl Fields {
    fn package(self) -> Option<Package> {
        Some(Package {
            name: self.name?,
            version: self.version?,
            arch: self.arch,
            source: self.origin,
            license: self.license,
            kind: PackageKind::Apk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apk_installed_stanzas() {
        let text = "\
C:Q1abc=
P:musl
V:1.2.5-r0
A:x86_64
S:412345
L:MIT
o:musl
F:lib
R:ld-musl-x86_64.so.1

C:Q1def=
P:busybox-binsh
V:1.36.1-r29
A:x86_64
L:GPL-2.0-only
o:busybox

P:no-version
A:x86_64
";
        let pkgs = parse(text).unwrap();
        assert_eq!(pkgs.len(), 2);
        assert_eq!(
            pkgs[1],
            Package {
                name: "busybox-binsh".into(),
                version: "1.36.1-r29".into(),
                arch: Some("x86_64".into()),
                source: Some("busybox".into()),
                license: Some("GPL-2.0-only".into()),
                kind: PackageKind::Apk,
            }
        );
        assert_eq!(pkgs[0].name, "musl");
        assert_eq!(pkgs[0].license.as_deref(), Some("MIT"));
    }
}
