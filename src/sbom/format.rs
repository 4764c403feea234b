//! The SBOM document formats: which one ([`Format`]), the document's identity ([`DocMeta`]),
//! [`render`] and its inverse [`packages_of`], and the helpers both formats share.

use super::{Inventory, MAX_PACKAGES, Package, SbomError};
use serde_json::Value;

/// Entries a document may list at most when read back: the packages an inventory may hold,
/// and room for its kernels and OS.
const MAX_DOC_ENTRIES: usize = MAX_PACKAGES + 2_000;

/// An SBOM document format.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// SPDX 2.3 JSON.
    #[default]
    Spdx,
    /// CycloneDX 1.5 JSON.
    Cyclonedx,
}

impl Format {
    /// The file name suffix documents of this format take: `spdx.json` or `cdx.json`.
    pub fn file_suffix(&self) -> &str {
        match self {
            Format::Spdx => "spdx.json",
            Format::Cyclonedx => "cdx.json",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    /// `spdx` or `cyclonedx` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "spdx" => Ok(Format::Spdx),
            "cyclonedx" => Ok(Format::Cyclonedx),
            _ => Err(format!(
                "unknown SBOM format {s:?}: expected spdx or cyclonedx"
            )),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Spdx => "spdx",
            Format::Cyclonedx => "cyclonedx",
        })
    }
}

/// A document's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// The document's name (the AMI name, or the build id).
    pub name: String,
    /// A unique URI for it, e.g. `https://kiln.invalid/sbom/<build-id>`.
    pub namespace: String,
    /// When it was made, RFC 3339 (`2024-05-01T12:00:00Z`), passed in so tests are
    /// deterministic.
    pub created: String,
}

/// The SBOM document of an inventory: SPDX 2.3 or CycloneDX 1.5 JSON, with one entry per
/// package and per kernel (named `linux-kernel`) under the operating system. The same inputs
/// give the same document. No side effects.
pub fn render(inv: &Inventory, format: Format, meta: &DocMeta) -> Value {
    match format {
        Format::Spdx => super::spdx::render(inv, meta),
        Format::Cyclonedx => super::cyclonedx::render(inv, meta),
    }
}

/// The packages a document made by [`render`] lists (either format, told apart by
/// `spdxVersion` or `bomFormat`), kernels included as `linux-kernel` packages, the operating
/// system left out; sorted like [`Inventory::packages`], so that it equals
/// [`super::all_packages`] of the rendered inventory. An unknown document is an error naming what
/// it lacks. No side effects.
pub fn packages_of(doc: &Value) -> Result<Vec<Package>, SbomError> {
    let mut pkgs = if doc.get("spdxVersion").is_some() {
        super::spdx::packages_of(doc)?
    } else if doc.get("bomFormat").and_then(Value::as_str) == Some("CycloneDX") {
        super::cyclonedx::packages_of(doc)?
    } else {
        return Err(doc_error(
            "",
            "neither SPDX (no \"spdxVersion\") nor CycloneDX (no \"bomFormat\": \"CycloneDX\")",
        ));
    };
    // Kernels take the kind of the image's package manager, as `all_packages` gives them.
    let kind = super::kernel_kind(&pkgs);
    for p in pkgs.iter_mut().filter(|p| p.name == super::KERNEL_PACKAGE) {
        p.kind = kind;
    }
    super::sort_packages(&mut pkgs);
    Ok(pkgs)
}

pub(super) fn doc_error(pointer: &str, detail: impl Into<String>) -> SbomError {
    SbomError::Document {
        pointer: pointer.to_owned(),
        detail: detail.into(),
    }
}

/// The array at `key` of `doc`, at most [`MAX_DOC_ENTRIES`] long.
pub(super) fn entries<'a>(doc: &'a Value, key: &str) -> Result<&'a [Value], SbomError> {
    let list = doc
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| doc_error("", format!("no \"{key}\" array")))?;
    if list.len() > MAX_DOC_ENTRIES {
        return Err(doc_error(
            &format!("/{key}"),
            format!("more than {MAX_DOC_ENTRIES} entries"),
        ));
    }
    Ok(list)
}

/// The string at `key` of `v`, or an error naming its pointer.
pub(super) fn required<'a>(v: &'a Value, pointer: &str, key: &str) -> Result<&'a str, SbomError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| doc_error(&format!("{pointer}/{key}"), "missing, or not a string"))
}

/// Whether `license` is a valid SPDX license expression of listed licenses (no `LicenseRef-`,
/// which would need its text in the document): those go into SPDX's `licenseDeclared` and
/// CycloneDX's `expression`; anything else is kept as text.
pub(super) fn is_spdx_expression(license: &str) -> bool {
    !license.contains("Ref-") && license.len() <= 1024 && spdx::Expression::parse(license).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_and_suffixes() {
        assert_eq!("spdx".parse::<Format>(), Ok(Format::Spdx));
        assert_eq!("CycloneDX".parse::<Format>(), Ok(Format::Cyclonedx));
        let e = "xml".parse::<Format>().unwrap_err();
        assert!(e.contains("spdx") && e.contains("cyclonedx"), "{e}");
        assert_eq!(Format::Spdx.file_suffix(), "spdx.json");
        assert_eq!(Format::Cyclonedx.file_suffix(), "cdx.json");
        assert_eq!(Format::default(), Format::Spdx);
    }

    #[test]
    fn spdx_expressions_are_told_from_free_text() {
        assert!(is_spdx_expression("MIT"));
        assert!(is_spdx_expression(
            "GPL-2.0-or-later AND (MIT OR Apache-2.0)"
        ));
        assert!(!is_spdx_expression("GPL-2+"));
        assert!(!is_spdx_expression("BSD-3-clause and GPL"));
        assert!(!is_spdx_expression("LicenseRef-foo"));
        assert!(!is_spdx_expression(""));
    }

    #[test]
    fn unknown_documents_name_what_they_lack() {
        let e = packages_of(&serde_json::json!({"hello": 1})).unwrap_err();
        assert!(e.to_string().contains("spdxVersion"), "{e}");
        let e = packages_of(&serde_json::json!({"spdxVersion": "SPDX-2.3"})).unwrap_err();
        assert!(e.to_string().contains("\"packages\""), "{e}");
        let e = packages_of(&serde_json::json!({"bomFormat": "CycloneDX"})).unwrap_err();
        assert!(e.to_string().contains("\"components\""), "{e}");
        assert!(!e.is_retryable());
    }
}
