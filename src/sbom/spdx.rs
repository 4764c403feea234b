//! SPDX 2.3 JSON: the document, one package per installed package and kernel, an
//! operating-system package that the document describes and that contains them all.

use super::format::{DocMeta, doc_error, entries, is_spdx_expression, required};
use super::{Inventory, KERNEL_PACKAGE, Package, PackageKind, SbomError, purl};
use serde_json::{Value, json};

const OS_ID: &str = "SPDXRef-OperatingSystem";
const NOASSERTION: &str = "NOASSERTION";
/// How `sourceInfo` starts (SPDX's own wording for binaries built from a source package).
const SOURCE_PREFIX: &str = "built package from: ";
/// How `comment` starts when it carries a license that is no SPDX expression.
const LICENSE_PREFIX: &str = "declared license: ";

/// An SPDX id: `SPDXRef-Package-<name>-<n>`, the name's characters other than letters, digits,
/// `.` and `-` turned into `-`; `n` keeps ids unique.
fn spdx_id(name: &str, n: usize) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-Package-{clean}-{n}")
}

/// One package; SPDX has no field for the architecture: the purl carries it.
fn package(p: &Package, purl: String, id: String) -> Value {
    let mut v = json!({
        "SPDXID": id,
        "name": p.name,
        "versionInfo": p.version,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": false,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl,
        }],
    });
    if let Some(license) = &p.license {
        if is_spdx_expression(license) {
            v["licenseDeclared"] = json!(license);
        } else {
            v["comment"] = json!(format!("{LICENSE_PREFIX}{license}"));
        }
    }
    if let Some(source) = &p.source {
        v["sourceInfo"] = json!(format!("{SOURCE_PREFIX}{source}"));
    }
    v
}

/// The SPDX document (see [`super::render`]).
pub(super) fn render(inv: &Inventory, meta: &DocMeta) -> Value {
    let os = inv.os.as_ref();
    let mut os_pkg = json!({
        "SPDXID": OS_ID,
        "name": os.map_or("unknown", |o| o.id.as_str()),
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": false,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
    });
    if let Some(v) = os.and_then(|o| o.version_id.as_ref()) {
        os_pkg["versionInfo"] = json!(v);
    }
    if let Some(pretty) = os.and_then(|o| o.pretty_name.as_ref()) {
        os_pkg["description"] = json!(pretty);
    }
    let mut packages = vec![os_pkg];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": OS_ID,
    })];
    let kernel_kind = super::kernel_kind(&inv.packages);
    let kernels = inv
        .kernels
        .iter()
        .map(|v| (super::kernel_package(v, kernel_kind), purl::kernel(v)));
    let all = inv
        .packages
        .iter()
        .map(|p| (p.clone(), purl::of(p, os)))
        .chain(kernels);
    for (n, (p, purl)) in all.enumerate() {
        let id = spdx_id(&p.name, n + 1);
        relationships.push(json!({
            "spdxElementId": OS_ID,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
        packages.push(package(&p, purl, id));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": meta.name,
        "documentNamespace": meta.namespace,
        "creationInfo": {
            "created": meta.created,
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "documentDescribes": [OS_ID],
        "packages": packages,
        "relationships": relationships,
    })
}

/// The packages of an SPDX document (see [`super::packages_of`]).
pub(super) fn packages_of(doc: &Value) -> Result<Vec<Package>, SbomError> {
    let mut out = Vec::new();
    for (i, v) in entries(doc, "packages")?.iter().enumerate() {
        if v.get("primaryPackagePurpose").and_then(Value::as_str) == Some("OPERATING-SYSTEM") {
            continue;
        }
        let at = format!("/packages/{i}");
        let purl = purl_of(v, &at)?;
        let (ty, arch) = purl::parse(purl)
            .ok_or_else(|| doc_error(&format!("{at}/externalRefs"), "not a purl"))?;
        let name = required(v, &at, "name")?;
        let kind = kind_of(&ty, name, &at)?;
        let text = |key: &str, prefix: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .and_then(|s| s.strip_prefix(prefix))
                .map(str::to_owned)
        };
        let declared = text("licenseDeclared", "").filter(|l| l != NOASSERTION);
        out.push(Package {
            name: name.to_owned(),
            version: required(v, &at, "versionInfo")?.to_owned(),
            arch,
            source: text("sourceInfo", SOURCE_PREFIX),
            license: declared.or_else(|| text("comment", LICENSE_PREFIX)),
            kind,
        });
    }
    Ok(out)
}

fn purl_of<'a>(v: &'a Value, at: &str) -> Result<&'a str, SbomError> {
    v.get("externalRefs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|r| r.get("referenceType").and_then(Value::as_str) == Some("purl"))
        .and_then(|r| r.get("referenceLocator"))
        .and_then(Value::as_str)
        .ok_or_else(|| doc_error(&format!("{at}/externalRefs"), "no purl"))
}

/// The package kind of a purl type; kernels (`generic`) get theirs from the document's other
/// packages later.
pub(super) fn kind_of(ty: &str, name: &str, at: &str) -> Result<PackageKind, SbomError> {
    match ty {
        "deb" => Ok(PackageKind::Deb),
        "rpm" => Ok(PackageKind::Rpm),
        "apk" => Ok(PackageKind::Apk),
        "generic" if name == KERNEL_PACKAGE => Ok(PackageKind::Deb),
        other => Err(doc_error(
            at,
            format!("a purl of type {other:?}, not deb, rpm or apk"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_ids_are_sanitized() {
        assert_eq!(spdx_id("libstdc++6", 3), "SPDXRef-Package-libstdc--6-3");
        assert_eq!(spdx_id("a.b-c", 1), "SPDXRef-Package-a.b-c-1");
    }
}
