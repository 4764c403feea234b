//! Package URLs (purl): `pkg:deb/debian/openssl@3.0.14-1?arch=amd64&distro=debian-12`, with
//! the spec's percent-encoding, and the little kiln reads back from one (type and arch).

use super::{KERNEL_PACKAGE, Os, Package};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What stays unencoded in a purl's namespace, name, version and qualifier values: letters,
/// digits and `.-_~` (so `+` becomes `%2B`, `:` `%3A`).
const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, KEEP).to_string()
}

/// The purl of a package of the image: `pkg:<type>/<os id>/<name>@<version>` with the `arch`
/// and `distro` (`<id>-<version_id>`) qualifiers, sorted by key as the spec asks.
pub(super) fn of(p: &Package, os: Option<&Os>) -> String {
    let mut out = format!("pkg:{}/", p.kind.purl_type());
    if let Some(os) = os {
        out.push_str(&enc(&os.id.to_lowercase()));
        out.push('/');
    }
    out.push_str(&enc(&p.name));
    out.push('@');
    out.push_str(&enc(&p.version));
    let mut quals = Vec::new();
    if let Some(arch) = &p.arch {
        quals.push(format!("arch={}", enc(arch)));
    }
    if let Some(os) = os {
        let distro = match &os.version_id {
            Some(v) => format!("{}-{v}", os.id),
            None => os.id.clone(),
        };
        quals.push(format!("distro={}", enc(&distro)));
    }
    if !quals.is_empty() {
        out.push('?');
        out.push_str(&quals.join("&"));
    }
    out
}

/// A kernel's purl: `pkg:generic/linux-kernel@<version>` (no package manager owns the version).
pub(super) fn kernel(version: &str) -> String {
    format!("pkg:generic/{KERNEL_PACKAGE}@{}", enc(version))
}

/// A purl's type and its `arch` qualifier (decoded); `None` when it is no purl.
pub(super) fn parse(purl: &str) -> Option<(String, Option<String>)> {
    let rest = purl.strip_prefix("pkg:")?;
    let (ty, rest) = rest.trim_start_matches('/').split_once('/')?;
    let rest = rest.split('#').next().unwrap_or_default();
    let arch = rest.split_once('?').and_then(|(_, q)| {
        q.split('&').find_map(|kv| {
            let v = kv.strip_prefix("arch=")?;
            Some(percent_decode_str(v).decode_utf8_lossy().into_owned())
        })
    });
    Some((ty.to_ascii_lowercase(), arch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::PackageKind;

    #[test]
    fn purls_encode_plus_and_epoch_colon() {
        let os = Os {
            id: "debian".into(),
            version_id: Some("12".into()),
            pretty_name: None,
        };
        let p = Package {
            name: "libstdc++6".into(),
            version: "1:12.2.0-14+deb12u1".into(),
            arch: Some("amd64".into()),
            source: None,
            license: None,
            kind: PackageKind::Deb,
        };
        let purl = of(&p, Some(&os));
        assert_eq!(
            purl,
            "pkg:deb/debian/libstdc%2B%2B6@1%3A12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12"
        );
        assert_eq!(parse(&purl), Some(("deb".into(), Some("amd64".into()))));
        let rpm = Package {
            kind: PackageKind::Rpm,
            arch: None,
            ..p
        };
        assert_eq!(
            of(&rpm, None),
            "pkg:rpm/libstdc%2B%2B6@1%3A12.2.0-14%2Bdeb12u1"
        );
        assert_eq!(
            kernel("6.1.0-28-cloud-amd64"),
            "pkg:generic/linux-kernel@6.1.0-28-cloud-amd64"
        );
        assert_eq!(parse("not a purl"), None);
    }
}
