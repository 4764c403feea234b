//! Tests of the whole: inventories of sample trees, both documents, and reading them back.

use super::*;
use serde_json::Value;
use std::path::PathBuf;

/// A fresh directory under the system's temporary directory, removed when dropped.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kiln-sbom-test-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `text` at `rel`, making its parents.
    pub(crate) fn write(&self, rel: &str, text: &str) {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn meta() -> DocMeta {
    DocMeta {
        name: "kiln-test-image".into(),
        namespace: "https://kiln.invalid/sbom/build-1".into(),
        created: "2024-05-01T12:00:00Z".into(),
    }
}

/// A Debian-like tree: os-release through a link, two kernels, three packages.
fn debian_tree() -> TempDir {
    let t = TempDir::new("debian");
    t.write(
        "root/usr/lib/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    );
    std::fs::create_dir_all(t.0.join("root/etc")).unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", t.0.join("root/etc/os-release")).unwrap();
    t.write("root/boot/vmlinuz-6.1.0-28-cloud-amd64", "k");
    t.write("root/boot/vmlinuz-0-rescue-abcdef", "k");
    t.write("root/usr/lib/modules/6.1.0-28-cloud-amd64/modules.dep", "");
    t.write("root/usr/lib/modules/6.1.0-9-cloud-amd64/modules.dep", "");
    std::os::unix::fs::symlink("usr/lib", t.0.join("root/lib")).unwrap();
    t.write(
        "root/var/lib/dpkg/status",
        "Package: openssl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 3.0.14-1~deb12u2\n\n\
         Package: libstdc++6\nStatus: install ok installed\nArchitecture: amd64\nSource: gcc-12 (12.2.0-14)\nVersion: 12.2.0-14\n\n\
         Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4+deb12u5\n",
    );
    t.write(
        "root/usr/share/doc/openssl/copyright",
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: Apache-2.0\n",
    );
    t.write(
        "root/usr/share/doc/libstdc++6/copyright",
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-3+ with GCC-exception\n",
    );
    t
}

fn debian_inventory() -> Inventory {
    let t = debian_tree();
    inventory(&DirFiles(t.0.join("root"))).unwrap()
}

#[test]
fn inventory_of_a_debian_tree() {
    let inv = debian_inventory();
    let os = inv.os.clone().unwrap();
    assert_eq!(os.id, "debian");
    assert_eq!(os.version_id.as_deref(), Some("12"));
    assert_eq!(inv.kernels, ["6.1.0-9-cloud-amd64", "6.1.0-28-cloud-amd64"]);
    let names: Vec<_> = inv.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["base-files", "libstdc++6", "openssl"]);
    assert_eq!(inv.databases, ["/var/lib/dpkg/status"]);
    assert_eq!(inv.note, None);
    let all = all_packages(&inv);
    assert_eq!(all.len(), 5);
    assert!(all.iter().any(|p| p.name == KERNEL_PACKAGE
        && p.version == "6.1.0-9-cloud-amd64"
        && p.kind == PackageKind::Deb));
    // Safe to run twice: the same answer.
    assert_eq!(all_packages(&debian_inventory()), all);
}

#[test]
fn inventory_of_an_alpine_tree() {
    let t = TempDir::new("alpine");
    t.write("root/etc/os-release", "ID=alpine\nVERSION_ID=3.20.3\n");
    t.write(
        "root/lib/apk/db/installed",
        "P:musl\nV:1.2.5-r0\nA:x86_64\nL:MIT\no:musl\n\nP:zlib\nV:1.3.1-r1\nA:x86_64\nL:Zlib\no:zlib\n",
    );
    let inv = inventory(&DirFiles(t.0.join("root"))).unwrap();
    assert_eq!(inv.databases, ["/lib/apk/db/installed"]);
    assert_eq!(inv.packages.len(), 2);
    assert_eq!(inv.packages[1].kind, PackageKind::Apk);
    assert_eq!(inv.packages[1].license.as_deref(), Some("Zlib"));
}

#[test]
fn no_database_gives_no_packages_and_a_note() {
    let t = TempDir::new("empty");
    t.write("root/etc/hostname", "x\n");
    let inv = inventory(&DirFiles(t.0.join("root"))).unwrap();
    assert!(inv.packages.is_empty());
    assert_eq!(inv.os, None);
    assert_eq!(
        inv.note.as_deref(),
        Some(
            "no package database found: looked for /var/lib/dpkg/status, /lib/apk/db/installed, \
             /var/lib/rpm/rpmdb.sqlite, /usr/lib/sysimage/rpm/rpmdb.sqlite, /var/lib/rpm/Packages, \
             /usr/lib/sysimage/rpm/Packages"
        )
    );
}

#[test]
fn ndb_rpm_database_is_named_in_the_note() {
    let t = TempDir::new("ndb");
    t.write(
        "root/etc/os-release",
        "ID=opensuse-leap\nVERSION_ID=\"15.5\"\n",
    );
    t.write("root/usr/lib/sysimage/rpm/Packages.db", "RpmP");
    let inv = inventory(&DirFiles(t.0.join("root"))).unwrap();
    assert!(inv.packages.is_empty());
    assert_eq!(
        inv.note.as_deref(),
        Some(
            "the RPM database at /usr/lib/sysimage/rpm/Packages.db is in ndb format (openSUSE), \
             which kiln does not read yet"
        )
    );
}

#[test]
fn a_broken_berkeley_db_rpm_database_is_an_error_naming_it() {
    let t = TempDir::new("bdb");
    t.write("root/etc/os-release", "ID=amzn\nVERSION_ID=\"2\"\n");
    t.write("root/var/lib/rpm/Packages", "\0\0\0\0\x61\x15\x06\0");
    let e = inventory(&DirFiles(t.0.join("root"))).err().unwrap();
    assert!(
        e.to_string().contains("/var/lib/rpm/Packages") && e.to_string().contains("Berkeley DB"),
        "{e}"
    );
}

#[test]
fn oversized_database_is_an_error_not_an_allocation() {
    struct Huge;
    impl ImageFiles for Huge {
        fn read(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, SbomError> {
            Ok((path == "/lib/apk/db/installed").then(|| vec![b'x'; max.min(1 << 28) as usize]))
        }
        fn list_dir(&self, _: &str) -> Result<Option<Vec<String>>, SbomError> {
            Ok(None)
        }
    }
    let e = inventory(&Huge).unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
    assert!(!e.is_retryable());
}

fn spdx_ids(doc: &Value) -> Vec<String> {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["SPDXID"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn spdx_document_fields_ids_and_relationships() {
    let inv = debian_inventory();
    let doc = render(&inv, Format::Spdx, &meta());
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["dataLicense"], "CC0-1.0");
    assert_eq!(doc["SPDXID"], "SPDXRef-DOCUMENT");
    assert_eq!(doc["name"], "kiln-test-image");
    assert_eq!(
        doc["documentNamespace"],
        "https://kiln.invalid/sbom/build-1"
    );
    assert_eq!(doc["creationInfo"]["created"], "2024-05-01T12:00:00Z");
    assert_eq!(
        doc["creationInfo"]["creators"][0],
        format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))
    );
    let ids = spdx_ids(&doc);
    assert_eq!(ids.len(), 1 + 3 + 2);
    let re = regex::Regex::new(r"^SPDXRef-[A-Za-z0-9.-]+$").unwrap();
    assert!(ids.iter().all(|id| re.is_match(id)), "{ids:?}");
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    let pkgs = doc["packages"].as_array().unwrap();
    assert_eq!(pkgs[0]["primaryPackagePurpose"], "OPERATING-SYSTEM");
    assert_eq!(pkgs[0]["name"], "debian");
    assert_eq!(pkgs[0]["versionInfo"], "12");
    let find = |name: &str| pkgs.iter().find(|p| p["name"] == name).unwrap();
    let openssl = find("openssl");
    assert_eq!(openssl["versionInfo"], "3.0.14-1~deb12u2");
    assert_eq!(openssl["downloadLocation"], "NOASSERTION");
    assert_eq!(openssl["licenseConcluded"], "NOASSERTION");
    assert_eq!(openssl["licenseDeclared"], "Apache-2.0");
    assert_eq!(
        openssl["externalRefs"][0],
        serde_json::json!({
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": "pkg:deb/debian/openssl@3.0.14-1~deb12u2?arch=amd64&distro=debian-12",
        })
    );
    let gcc = find("libstdc++6");
    assert_eq!(gcc["licenseDeclared"], "NOASSERTION");
    assert_eq!(
        gcc["comment"],
        "declared license: GPL-3+ with GCC-exception"
    );
    assert_eq!(gcc["sourceInfo"], "built package from: gcc-12 (12.2.0-14)");
    assert_eq!(find(KERNEL_PACKAGE)["versionInfo"], "6.1.0-9-cloud-amd64");
    let rels = doc["relationships"].as_array().unwrap();
    assert_eq!(rels[0]["relationshipType"], "DESCRIBES");
    assert_eq!(rels[0]["relatedSpdxElement"], "SPDXRef-OperatingSystem");
    let contained: Vec<_> = rels[1..]
        .iter()
        .filter(|r| r["relationshipType"] == "CONTAINS")
        .map(|r| r["relatedSpdxElement"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contained, ids[1..]);
    // Deterministic: the same inputs give the same document.
    assert_eq!(render(&inv, Format::Spdx, &meta()), doc);
}

#[test]
fn cyclonedx_document_fields() {
    let inv = debian_inventory();
    let doc = render(&inv, Format::Cyclonedx, &meta());
    assert_eq!(doc["bomFormat"], "CycloneDX");
    assert_eq!(doc["specVersion"], "1.5");
    assert_eq!(doc["version"], 1);
    let serial = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://kiln.invalid/sbom/build-1",
    );
    assert_eq!(doc["serialNumber"], format!("urn:uuid:{serial}"));
    assert_eq!(doc["metadata"]["timestamp"], "2024-05-01T12:00:00Z");
    assert_eq!(doc["metadata"]["tools"]["components"][0]["name"], "kiln");
    assert_eq!(doc["metadata"]["component"]["type"], "operating-system");
    assert_eq!(doc["metadata"]["component"]["name"], "debian");
    assert_eq!(doc["metadata"]["component"]["version"], "12");
    let comps = doc["components"].as_array().unwrap();
    assert_eq!(comps.len(), 5);
    let find = |name: &str| comps.iter().find(|c| c["name"] == name).unwrap();
    let openssl = find("openssl");
    assert_eq!(openssl["type"], "library");
    assert_eq!(
        openssl["licenses"],
        serde_json::json!([{"expression": "Apache-2.0"}])
    );
    let gcc = find("libstdc++6");
    assert_eq!(
        gcc["licenses"],
        serde_json::json!([{"license": {"name": "GPL-3+ with GCC-exception"}}])
    );
    assert_eq!(
        gcc["purl"],
        "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12"
    );
    assert!(
        gcc["properties"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": "kiln:source", "value": "gcc-12 (12.2.0-14)"}))
    );
    let refs: std::collections::BTreeSet<_> = comps
        .iter()
        .map(|c| c["bom-ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs.len(), comps.len());
}

#[test]
fn documents_round_trip_to_packages() {
    let mut inv = debian_inventory();
    inv.packages.push(Package {
        name: "weird name+x".into(),
        version: "1:2.0+b1".into(),
        arch: None,
        source: None,
        license: Some("MIT OR Apache-2.0".into()),
        kind: PackageKind::Deb,
    });
    sort_packages(&mut inv.packages);
    let want = all_packages(&inv);
    for format in [Format::Spdx, Format::Cyclonedx] {
        let doc = render(&inv, format, &meta());
        assert_eq!(packages_of(&doc).unwrap(), want, "{format}");
        // Through text, as a file would carry it.
        let text = serde_json::to_string(&doc).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(packages_of(&back).unwrap(), want, "{format}");
    }
    let none = Inventory::default();
    for format in [Format::Spdx, Format::Cyclonedx] {
        let doc = render(&none, format, &meta());
        assert_eq!(packages_of(&doc).unwrap(), Vec::<Package>::new());
    }
}

#[test]
fn errors_say_whether_to_retry() {
    let io = SbomError::Io {
        path: "/x".into(),
        source: std::io::Error::other("EIO"),
    };
    assert!(io.is_retryable());
    assert!(!SbomError::bad("/x", "bad").is_retryable());
}
