//! What is in an image, read from its own package databases without running anything from the
//! image: the software bill of materials (`kiln sbom`, and a build's SBOM document).
//!
//! This module owns: reading an image's files through [`ImageFiles`] (the mounted image's
//! `ImageFs`, or a plain directory, [`DirFiles`]); the package databases' parsers (`dpkg.rs`:
//! `/var/lib/dpkg/status` and distroless `status.d`, `apk.rs`: `/lib/apk/db/installed`,
//! `rpm.rs`: `rpmdb.sqlite` and its header blobs); the OS and kernels (`os.rs`); the [`Inventory`]
//! of all of them; the SPDX 2.3 and CycloneDX 1.5 JSON documents made from it and the packages
//! read back from them (`format.rs`, `spdx.rs`, `cyclonedx.rs`, `purl.rs`); and the differences
//! between two package lists (`changes.rs`).
//!
//! The image is untrusted input: every size and count read from it is bounded by a named
//! constant, links are resolved inside the image, and bad data is an [`SbomError`], never a
//! panic. Nothing here writes to the image; the only side effect is the RPM reader's private
//! temporary copy of `rpmdb.sqlite`, removed before it returns.

mod apk;
mod changes;
mod cyclonedx;
mod dpkg;
mod files;
mod format;
pub mod os;
mod purl;
mod rpm;
mod spdx;
pub mod store;

pub use changes::{Change, Changes, changes};
pub use files::{DirFiles, ImageFiles};
pub use format::{DocMeta, Format, packages_of, render};

/// Packages an inventory or a document holds at most: more than any distribution's archive
/// offers for one architecture (Debian 12 has about 64,000 binary packages for amd64, Fedora
/// about 70,000), few enough that a crafted database cannot make kiln allocate without end.
pub const MAX_PACKAGES: usize = 200_000;

/// Errors reading an image's packages or an SBOM document.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    /// A file in the image holds something kiln does not accept (bad data: not retryable).
    #[error("{path} in the image: {detail}")]
    BadData {
        /// The path in the image.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The host failed reading a file of the image, or making the RPM reader's temporary copy
    /// (retryable: the host may do better next time).
    #[error("reading {path}: {source}")]
    Io {
        /// The path in the image (or the temporary file on the host).
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the mounted image through `ImageFs` failed.
    #[cfg(feature = "builder")]
    #[error("reading {path}: {source}")]
    Host {
        /// The path in the image.
        path: String,
        /// The host's error.
        #[source]
        source: crate::host::HostError,
    },
    /// An SBOM document given to [`packages_of`] is not one kiln can read.
    #[error("the SBOM document at {pointer}: {detail}")]
    Document {
        /// Where in the document (a JSON pointer, `/packages/3/name`; empty for the whole).
        pointer: String,
        /// What it lacks or what is wrong.
        detail: String,
    },
}

impl SbomError {
    /// Whether trying again could succeed: true for the host's I/O errors, false for bad data
    /// in the image or in a document.
    pub fn is_retryable(&self) -> bool {
        match self {
            SbomError::Io { .. } => true,
            #[cfg(feature = "builder")]
            SbomError::Host { source, .. } => source.is_retryable(),
            SbomError::BadData { .. } | SbomError::Document { .. } => false,
        }
    }

    pub(crate) fn bad(path: &str, detail: impl Into<String>) -> Self {
        SbomError::BadData {
            path: path.to_owned(),
            detail: detail.into(),
        }
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Package {
    /// Its name (`openssl`).
    pub name: String,
    /// Its full version as the package manager writes it (dpkg `1:2.3-4`, rpm
    /// `[epoch:]version-release`, apk `1.2.3-r0`).
    pub version: String,
    /// Its architecture (`amd64`, `x86_64`, `noarch`, `all`), if the database names one.
    pub arch: Option<String>,
    /// The source package: dpkg's `name` or `name (version)`, rpm's source RPM file name, apk's
    /// origin.
    pub source: Option<String>,
    /// Its license as the database (or a Debian machine-readable copyright file) declares it.
    pub license: Option<String>,
    /// Which package manager installed it.
    pub kind: PackageKind,
}

/// A package manager.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    /// dpkg (Debian, Ubuntu).
    Deb,
    /// rpm (Fedora, RHEL, Amazon Linux).
    Rpm,
    /// apk (Alpine).
    Apk,
}

impl PackageKind {
    /// The purl type (`deb`, `rpm`, `apk`).
    pub fn purl_type(self) -> &'static str {
        match self {
            PackageKind::Deb => "deb",
            PackageKind::Rpm => "rpm",
            PackageKind::Apk => "apk",
        }
    }
}

/// The image's operating system, from `/etc/os-release` (else `/usr/lib/os-release`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Os {
    /// `ID` (`debian`, `amzn`, `alpine`); `linux` when the file names none, as os-release says.
    pub id: String,
    /// `VERSION_ID` (`12`, `2023`, `3.20.3`).
    pub version_id: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
}

/// Everything kiln reads about what is installed in an image.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    /// The operating system, if an os-release file says.
    pub os: Option<Os>,
    /// Kernel versions from `/lib/modules/<v>` and `/boot/vmlinuz-<v>` (and `vmlinux-`,
    /// `Image-`, `kernel-`), sorted as `sort -V` does, deduplicated.
    pub kernels: Vec<String>,
    /// Installed packages, sorted by (name, arch, version), deduplicated.
    pub packages: Vec<Package>,
    /// The paths in the image that were read as package databases.
    pub databases: Vec<String>,
    /// Why packages may be missing: no database found, or one kiln does not read.
    pub note: Option<String>,
}

/// Reads the image's OS, kernels and packages. Side effects: none in the image (the RPM reader
/// copies `rpmdb.sqlite` to a private temporary file and removes it). Safe to run twice.
pub fn inventory(files: &dyn ImageFiles) -> Result<Inventory, SbomError> {
    let mut inv = Inventory {
        os: os::os_release(files)?,
        kernels: os::kernels(files)?,
        ..Inventory::default()
    };
    let mut notes = Vec::new();
    if let Some((db, pkgs)) = dpkg::read(files)? {
        inv.databases.push(db);
        inv.packages.extend(pkgs);
    }
    if let Some((db, pkgs)) = apk::read(files)? {
        inv.databases.push(db);
        inv.packages.extend(pkgs);
    }
    match rpm::read(files)? {
        rpm::Found::Read(db, pkgs) => {
            inv.databases.push(db);
            inv.packages.extend(pkgs);
        }
        rpm::Found::Unread(note) => notes.push(note),
        rpm::Found::Nothing => {}
    }
    if inv.databases.is_empty() && notes.is_empty() {
        notes.push(format!(
            "no package database found: looked for {}",
            dpkg::PATHS
                .iter()
                .chain(apk::PATHS.iter())
                .chain(rpm::SQLITE_PATHS.iter())
                .chain(rpm::BDB_PATHS.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if inv.packages.len() > MAX_PACKAGES {
        return Err(SbomError::bad(
            &inv.databases.join(", "),
            format!("more than {MAX_PACKAGES} packages"),
        ));
    }
    sort_packages(&mut inv.packages);
    inv.note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(inv)
}

/// Sorts by (name, arch, version), then the rest, and removes exact duplicates.
pub(crate) fn sort_packages(pkgs: &mut Vec<Package>) {
    pkgs.sort_by(|a, b| {
        (&a.name, &a.arch, &a.version)
            .cmp(&(&b.name, &b.arch, &b.version))
            .then_with(|| a.cmp(b))
    });
    pkgs.dedup();
}

/// The name kernels have as packages.
pub const KERNEL_PACKAGE: &str = "linux-kernel";

/// The inventory's packages and its kernels as packages named [`KERNEL_PACKAGE`] (of the kind of
/// the image's package manager, [`PackageKind::Deb`] when it has none, no arch), so that
/// [`changes`] covers kernels too. Sorted like [`Inventory::packages`]. No side effects.
pub fn all_packages(inv: &Inventory) -> Vec<Package> {
    let kind = kernel_kind(&inv.packages);
    let mut out = inv.packages.clone();
    out.extend(inv.kernels.iter().map(|v| kernel_package(v, kind)));
    sort_packages(&mut out);
    out
}

/// The kind kernels get: the first package's that is not a kernel, else Deb.
pub(crate) fn kernel_kind(pkgs: &[Package]) -> PackageKind {
    pkgs.iter()
        .find(|p| p.name != KERNEL_PACKAGE)
        .map_or(PackageKind::Deb, |p| p.kind)
}

pub(crate) fn kernel_package(version: &str, kind: PackageKind) -> Package {
    Package {
        name: KERNEL_PACKAGE.to_owned(),
        version: version.to_owned(),
        arch: None,
        source: None,
        license: None,
        kind,
    }
}

/// Reads the regular file at `path`, refusing one larger than `max` bytes; `None` when missing.
pub(crate) fn read_bounded(
    files: &dyn ImageFiles,
    path: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, SbomError> {
    let Some(bytes) = files.read(path, max.saturating_add(1))? else {
        return Ok(None);
    };
    if bytes.len() as u64 > max {
        return Err(SbomError::bad(path, format!("larger than {max} bytes")));
    }
    Ok(Some(bytes))
}

/// Step `sbom`'s outputs in a build's result document (`steps[name = "sbom"].outputs`: its
/// location, packages and `changes`), when the step ran. Pure.
pub fn result_outputs(doc: &serde_json::Value) -> Option<&serde_json::Value> {
    doc["steps"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "sbom")
        .map(|s| &s["outputs"])
}

#[cfg(test)]
mod tests;
