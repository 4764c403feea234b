//! `fstab-device`: every `/etc/fstab` entry that names a file system by `LABEL=`, `UUID=`,
//! `PARTUUID=`, `PARTLABEL=` (or the `/dev/disk/by-*/` link udev makes for them) names one on the
//! build's disk; a missing one makes systemd wait 90 s and drop to the emergency shell. An entry
//! with `nofail` or `noauto`, or a swap entry, does not stop the boot: a warning. When the AMI
//! maps more EBS volumes than the root, a missing file system may be on one of those (kiln reads
//! only the root volume): a warning too. A kernel name such as `/dev/xvda1` or `/dev/nvme0n1p1`
//! depends on the instance type (Xen or NVMe): a warning.

use super::{Lint, LintError};

/// Bytes of `/etc/fstab` read at most (a real one is a few hundred bytes).
const MAX_FSTAB: u64 = 1 << 20;
/// File system types that are not on a disk.
const VIRTUAL: [&str; 14] = [
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "efivarfs",
    "nfs",
    "nfs4",
    "cifs",
    "none",
];

/// One line of fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number.
    pub line: usize,
    /// First field (`LABEL=root`).
    pub spec: String,
    /// Mount point.
    pub file: String,
    /// File system type.
    pub vfstype: String,
    /// Options, split at commas.
    pub options: Vec<String>,
}

/// Undoes fstab's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses fstab text: comments and blank lines skipped, fields split at whitespace. Pure.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Entry {
                line: i + 1,
                spec: unescape(f[0]),
                file: f.get(1).map(|s| unescape(s)).unwrap_or_default(),
                vfstype: f.get(2).copied().unwrap_or("auto").to_owned(),
                options: f
                    .get(3)
                    .map(|o| o.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// What an fstab spec names: (`LABEL`, `root`), or `None` for a kernel name or anything else.
fn tag(spec: &str) -> Option<(&'static str, String)> {
    for (key, dir) in [
        ("LABEL", "label"),
        ("UUID", "uuid"),
        ("PARTUUID", "partuuid"),
        ("PARTLABEL", "partlabel"),
    ] {
        if let Some(v) = spec.strip_prefix(&format!("{key}=")) {
            return Some((key, v.trim_matches('"').to_owned()));
        }
        if let Some(v) = spec.strip_prefix(&format!("/dev/disk/by-{dir}/")) {
            return Some((key, v.to_owned()));
        }
    }
    None
}

/// The values of `key` (`LABEL`, `UUID`, `PARTUUID`, `PARTLABEL`) on the disk.
fn on_disk(disk: &super::Disk, key: &str) -> Vec<String> {
    disk.partitions
        .iter()
        .map(|p| match key {
            "PARTUUID" => Some(p.partuuid.clone()),
            "PARTLABEL" => p.partlabel.clone(),
            _ => None,
        })
        .chain(disk.file_systems().map(|fs| match key {
            "LABEL" => fs.label.clone(),
            "UUID" => fs.uuid.clone(),
            _ => None,
        }))
        .flatten()
        .collect()
}

/// What the disk has instead of `value`, for the message: a value differing only in case, and
/// the values there are.
fn what_is_there(found: &[String], key: &str, value: &str) -> String {
    let case = found
        .iter()
        .find(|v| v.eq_ignore_ascii_case(value))
        .map(|v| {
            format!(" (the disk has {key}={v}, which differs in case: udev's names are exact)")
        })
        .unwrap_or_default();
    if found.is_empty() {
        return format!("{case}; the disk has no {key}");
    }
    let all: Vec<String> = found.iter().map(|v| format!("{key}={v}")).collect();
    format!("{case}; the disk has {}", all.join(", "))
}

/// `fstab-device`.
pub fn check(l: &mut Lint<'_>) -> Result<(), LintError> {
    const ID: &str = "fstab-device";
    const FILE: &str = "/etc/fstab";
    let Some(text) = l.fs.read_head(FILE, MAX_FSTAB)? else {
        l.not_checked(ID, "the image has no /etc/fstab");
        return Ok(());
    };
    let entries = parse(&String::from_utf8_lossy(&text));
    let Some(disk) = l.disk else {
        l.not_checked(
            ID,
            "no disk to find the file systems on (kiln lint --device)",
        );
        return Ok(());
    };
    for e in entries {
        if VIRTUAL.contains(&e.vfstype.as_str()) || e.options.iter().any(|o| o == "bind") {
            continue;
        }
        let Some((key, value)) = tag(&e.spec) else {
            if e.spec.starts_with("/dev/xvd")
                || e.spec.starts_with("/dev/sd")
                || e.spec.starts_with("/dev/nvme")
            {
                l.warn(
                    ID,
                    FILE,
                    format!(
                        "line {}: {} is a kernel device name, which depends on the instance type (/dev/xvda on Xen, /dev/nvme0n1 on Nitro) and on the order devices appear",
                        e.line, e.spec
                    ),
                    "name the file system by LABEL= or UUID= instead".into(),
                );
            }
            continue;
        };
        let found = on_disk(disk, key);
        if found.contains(&value) {
            continue;
        }
        let message = format!(
            "line {}: {} (mounted at {}) names no file system or partition on the image's disk{}",
            e.line,
            e.spec,
            e.file,
            what_is_there(&found, key, &value)
        );
        let fix = "name a file system the image has (blkid on the build's device shows them: UUIDs change with every mkfs, labels do not), or add nofail to the entry's options".to_owned();
        let lenient = e.options.iter().any(|o| o == "nofail" || o == "noauto");
        if lenient || e.vfstype == "swap" {
            l.warn(ID, FILE, message, fix);
        } else if l.promises.other_volumes {
            l.warn(
                ID,
                FILE,
                format!(
                    "{message}; it may be on another volume of the AMI, which kiln does not read"
                ),
                fix,
            );
        } else {
            l.error(
                ID,
                FILE,
                format!("{message}: the boot waits for it and stops in the emergency shell"),
                fix,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fstab_lines() {
        let e = parse(
            "# /etc/fstab\n\nLABEL=root / ext4 defaults 0 1\nUUID=\"ABCD-1234\"  /boot/efi vfat umask=0077,nofail 0 2\nproc /proc proc defaults\n/dev/disk/by-label/my\\040data /srv\\040x ext4\n",
        );
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].line, 3);
        assert_eq!(tag(&e[0].spec), Some(("LABEL", "root".into())));
        assert_eq!(tag(&e[1].spec), Some(("UUID", "ABCD-1234".into())));
        assert_eq!(e[1].options, ["umask=0077", "nofail"]);
        assert_eq!(tag(&e[2].spec), None);
        assert_eq!(tag(&e[3].spec), Some(("LABEL", "my data".into())));
        assert_eq!(e[3].file, "/srv x");
        assert_eq!(
            tag("PARTUUID=0a1b-01"),
            Some(("PARTUUID", "0a1b-01".into()))
        );
        assert_eq!(tag("/dev/xvda1"), None);
    }
}
