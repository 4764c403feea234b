//! The build's own disk as firmware and udev see it: the partition table (GPT, or an MBR), each
//! partition's type, PARTUUID and PARTLABEL, and the file system on it (its type, UUID and
//! label, read from the superblock the way `blkid` does for ext2/3/4, XFS, Btrfs, FAT and swap).
//!
//! The disk is kiln's: the build's block device (`/dev/loop3`, `/dev/nvme1n1`) or, for `kiln
//! lint --device`, a raw image file; it is read (never written, never mounted) by offset, so
//! partitions that are not mounted, such as an EFI system partition written with mtools, are
//! seen too. Everything read here is image content and is treated as untrusted: every offset and
//! count is checked against the disk's size and bounded by the named caps below.

use super::LintError;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// GPT entries read at most (the UEFI specification's minimum array is 128; tools never make
/// more than that, and a hostile header cannot make kiln read more).
const MAX_GPT_ENTRIES: u32 = 256;
/// Largest GPT entry size accepted (the specification's entries are 128 bytes; larger ones are
/// allowed in powers of two, and no tool writes more than this).
const MAX_GPT_ENTRY_SIZE: u32 = 1024;
/// Logical sector sizes tried for the GPT header: 512 (EBS, loop devices) and 4096 (4Kn disks).
const SECTOR_SIZES: [u64; 2] = [512, 4096];

/// ESP type GUID (UEFI specification, "EFI System Partition").
pub const ESP_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// BIOS boot partition type GUID (GRUB's core.img on GPT disks).
pub const BIOS_BOOT_GUID: &str = "21686148-6449-6e6f-744e-656564454649";
/// MBR partition type of an EFI system partition.
const MBR_ESP: u8 = 0xef;
/// MBR partition type of GPT's protective entry.
const MBR_PROTECTIVE: u8 = 0xee;

/// A file system found on a partition (or on the whole disk).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSystem {
    /// `ext4`, `xfs`, `btrfs`, `vfat`, `swap`.
    pub kind: &'static str,
    /// As `blkid` prints it: lowercase 8-4-4-4-12, or `ABCD-1234` for FAT.
    pub uuid: Option<String>,
    /// Its label, if any.
    pub label: Option<String>,
}

/// One partition.
#[derive(Debug, Clone, Default)]
pub struct Partition {
    /// 1-based, as in `/dev/loop3p1`.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// GPT type GUID (lowercase), or the MBR type as `0xef`.
    pub type_id: String,
    /// PARTUUID as udev names it.
    pub partuuid: String,
    /// GPT partition name (PARTLABEL).
    pub partlabel: Option<String>,
    /// The file system on it, if one was recognised.
    pub fs: Option<FileSystem>,
}

impl Partition {
    /// Whether this is an EFI system partition (by its type).
    pub fn is_esp(&self) -> bool {
        self.type_id == ESP_GUID || self.type_id == format!("{MBR_ESP:#04x}")
    }
}

/// The disk, opened read-only, and what was found on it.
pub struct Disk {
    /// The device or file.
    pub path: PathBuf,
    file: File,
    /// Its size in bytes.
    pub size: u64,
    /// `gpt`, `dos` or `none` (a file system on the whole disk).
    pub table: &'static str,
    /// Partitions in table order.
    pub partitions: Vec<Partition>,
    /// A file system on the whole disk (no partition table).
    pub whole: Option<FileSystem>,
    /// The first 512 bytes (the MBR: boot code and table).
    pub mbr: Vec<u8>,
}

impl Disk {
    /// Opens `path` (a block device or raw image file) read-only and reads its partition table
    /// and file systems. No side effects.
    pub fn open(path: &Path) -> Result<Self, LintError> {
        use std::io::{Seek, SeekFrom};
        let io = |e: std::io::Error| LintError::Disk {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        let mut file = File::open(path).map_err(io)?;
        let size = file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut d = Disk {
            path: path.to_owned(),
            file,
            size,
            table: "none",
            partitions: Vec::new(),
            whole: None,
            mbr: Vec::new(),
        };
        d.mbr = d.read_at(0, 512).unwrap_or_default();
        if !d.read_gpt() {
            d.read_mbr();
        }
        if d.partitions.is_empty() {
            d.table = "none";
            d.whole = probe(&d, 0, d.size);
        }
        for i in 0..d.partitions.len() {
            let (start, size) = (d.partitions[i].start, d.partitions[i].size);
            d.partitions[i].fs = probe(&d, start, size);
        }
        Ok(d)
    }

    /// `len` bytes at `offset`, or `None` past the end of the disk or on a read error.
    pub fn read_at(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let end = offset.checked_add(len as u64)?;
        if end > self.size {
            return None;
        }
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    /// Every file system on the disk (partitions, or the whole disk).
    pub fn file_systems(&self) -> impl Iterator<Item = &FileSystem> {
        self.partitions
            .iter()
            .filter_map(|p| p.fs.as_ref())
            .chain(self.whole.as_ref())
    }

    fn read_gpt(&mut self) -> bool {
        for sector in SECTOR_SIZES {
            let Some(h) = self.read_at(sector, 92) else {
                continue;
            };
            if &h[0..8] != b"EFI PART" {
                continue;
            }
            let entries_lba = le64(&h, 72);
            let count = le32(&h, 80).min(MAX_GPT_ENTRIES);
            let entry_size = le32(&h, 84);
            if !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size) {
                return false;
            }
            let Some(base) = entries_lba.checked_mul(sector) else {
                return false;
            };
            let Some(all) = self.read_at(base, (count * entry_size) as usize) else {
                return false;
            };
            self.table = "gpt";
            for (i, e) in all.chunks_exact(entry_size as usize).enumerate() {
                let type_id = guid(&e[0..16]);
                if e[0..16].iter().all(|b| *b == 0) {
                    continue;
                }
                let (first, last) = (le64(e, 32), le64(e, 40));
                let name: Vec<u16> = e[56..128]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|c| *c != 0)
                    .collect();
                let name = String::from_utf16_lossy(&name);
                self.partitions.push(Partition {
                    number: i as u32 + 1,
                    start: first.saturating_mul(sector),
                    size: last
                        .saturating_sub(first)
                        .saturating_add(1)
                        .saturating_mul(sector),
                    type_id,
                    partuuid: guid(&e[16..32]),
                    partlabel: (!name.is_empty()).then_some(name),
                    fs: None,
                });
            }
            return true;
        }
        false
    }

    fn read_mbr(&mut self) {
        if self.mbr.len() < 512 || self.mbr[510..512] != [0x55, 0xaa] {
            return;
        }
        // A FAT or NTFS boot sector also ends in 55 AA: a table needs sane entries.
        let signature = le32(&self.mbr, 440);
        let mut parts = Vec::new();
        for i in 0..4 {
            let e = &self.mbr[446 + i * 16..446 + (i + 1) * 16];
            let kind = e[4];
            if e[0] != 0 && e[0] != 0x80 {
                return;
            }
            if kind == 0 || kind == MBR_PROTECTIVE {
                continue;
            }
            let (start, sectors) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
            if start == 0 || sectors == 0 || (start + sectors) * 512 > self.size {
                return;
            }
            parts.push(Partition {
                number: i as u32 + 1,
                start: start * 512,
                size: sectors * 512,
                type_id: format!("{kind:#04x}"),
                partuuid: format!("{signature:08x}-{:02x}", i + 1),
                partlabel: None,
                fs: None,
            });
        }
        if !parts.is_empty() {
            self.table = "dos";
            self.partitions = parts;
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// A GUID as text: the first three fields are little-endian on disk (GPT's mixed-endian form).
pub fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        hex(&b[8..10]),
        hex(&b[10..16])
    )
}

/// A UUID stored in byte order (ext4, XFS, Btrfs, swap), as text.
fn uuid(b: &[u8]) -> Option<String> {
    if b.iter().all(|x| *x == 0) {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex(&b[0..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A NUL- or space-padded label, `None` when empty.
fn label(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim_end().to_owned();
    (!s.is_empty()).then_some(s)
}

/// The file system at `start` (`size` bytes), recognised by its superblock magic.
fn probe(d: &Disk, start: u64, size: u64) -> Option<FileSystem> {
    let at = |off: u64, len: usize| {
        if off + len as u64 > size {
            return None;
        }
        d.read_at(start + off, len)
    };
    if let Some(sb) = at(1024, 256)
        && le16(&sb, 0x38) == 0xef53
    {
        return Some(FileSystem {
            kind: "ext4",
            uuid: uuid(&sb[0x68..0x78]),
            label: label(&sb[0x78..0x88]),
        });
    }
    if let Some(sb) = at(0, 512) {
        if &sb[0..4] == b"XFSB" {
            return Some(FileSystem {
                kind: "xfs",
                uuid: uuid(&sb[32..48]),
                label: label(&sb[108..120]),
            });
        }
        if sb[510..512] == [0x55, 0xaa] {
            let (serial, name) = if &sb[0x52..0x57] == b"FAT32" {
                (0x43, 0x47)
            } else if &sb[0x36..0x39] == b"FAT" {
                (0x27, 0x2b)
            } else {
                (0, 0)
            };
            if serial != 0 {
                let id = le32(&sb, serial);
                return Some(FileSystem {
                    kind: "vfat",
                    uuid: Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff)),
                    label: label(&sb[name..name + 11]).filter(|l| l != "NO NAME"),
                });
            }
        }
    }
    if let Some(sb) = at(0x10000, 0x1000)
        && &sb[0x40..0x48] == b"_BHRfS_M"
    {
        return Some(FileSystem {
            kind: "btrfs",
            uuid: uuid(&sb[0x20..0x30]),
            label: label(&sb[0x12b..0x22b]),
        });
    }
    // Swap: its signature ends the first page (4 KiB, or 64 KiB on arm64 kernels with 64K pages).
    for page in [4096u64, 65536] {
        if at(page - 10, 10).is_some_and(|m| m == b"SWAPSPACE2")
            && let Some(h) = at(1024, 64)
        {
            return Some(FileSystem {
                kind: "swap",
                uuid: uuid(&h[12..28]),
                label: label(&h[28..44]),
            });
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sparse disk image file that removes itself.
    pub(crate) struct Image(pub(crate) PathBuf);
    impl Image {
        pub(crate) fn new(tag: &str, size: u64) -> Self {
            let p = std::env::temp_dir().join(format!(
                "kiln-lint-{tag}-{}-{}.img",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            File::create(&p).unwrap().set_len(size).unwrap();
            Image(p)
        }
        pub(crate) fn put(&self, offset: u64, data: &[u8]) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.0)
                .unwrap();
            f.write_all_at(data, offset).unwrap();
        }
    }
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// GUID text to its on-disk bytes (inverse of [`guid`]).
    pub(crate) fn guid_bytes(s: &str) -> Vec<u8> {
        let h: Vec<u8> = (0..32)
            .map(|i| {
                let t = s.replace('-', "");
                u8::from_str_radix(&t[i * 2..i * 2 + 2], 16).unwrap()
            })
            .take(16)
            .collect();
        let mut out = vec![h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6]];
        out.extend_from_slice(&h[8..16]);
        out
    }

    /// Writes a GPT with `parts` (type GUID, unique GUID, first LBA, last LBA, name).
    pub(crate) fn write_gpt(img: &Image, parts: &[(&str, &str, u64, u64, &str)]) {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        img.put(512, &h);
        for (i, (t, u, first, last, name)) in parts.iter().enumerate() {
            let mut e = vec![0u8; 128];
            e[0..16].copy_from_slice(&guid_bytes(t));
            e[16..32].copy_from_slice(&guid_bytes(u));
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in name.encode_utf16().enumerate() {
                e[56 + j * 2..58 + j * 2].copy_from_slice(&c.to_le_bytes());
            }
            img.put(1024 + i as u64 * 128, &e);
        }
    }

    /// An ext4 superblock's identity at byte offset `at`.
    pub(crate) fn write_ext4(img: &Image, at: u64, uuid: [u8; 16], label: &str) {
        let mut sb = vec![0u8; 256];
        sb[0x38..0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[0x68..0x78].copy_from_slice(&uuid);
        sb[0x78..0x78 + label.len()].copy_from_slice(label.as_bytes());
        img.put(at + 1024, &sb);
    }

    #[test]
    fn gpt_partitions_and_their_file_systems() {
        let img = Image::new("gpt", 8 << 20);
        let part = "0fc63daf-8483-4772-8e79-3d47d8d69e4d";
        write_gpt(
            &img,
            &[
                (
                    ESP_GUID,
                    "11111111-2222-3333-4444-555555555555",
                    2048,
                    4095,
                    "esp",
                ),
                (
                    part,
                    "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                    4096,
                    16383,
                    "root",
                ),
            ],
        );
        let mut vfat = vec![0u8; 512];
        vfat[0x52..0x57].copy_from_slice(b"FAT32");
        vfat[0x43..0x47].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        vfat[0x47..0x52].copy_from_slice(b"ESP        ");
        vfat[510] = 0x55;
        vfat[511] = 0xaa;
        img.put(2048 * 512, &vfat);
        write_ext4(&img, 4096 * 512, [0xab; 16], "root");
        let d = Disk::open(&img.0).unwrap();
        assert_eq!(d.table, "gpt");
        assert_eq!(d.partitions.len(), 2);
        assert!(d.partitions[0].is_esp());
        assert_eq!(
            d.partitions[0].partuuid,
            "11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(d.partitions[1].partlabel.as_deref(), Some("root"));
        let fat = d.partitions[0].fs.clone().unwrap();
        assert_eq!(
            (fat.kind, fat.uuid.as_deref(), fat.label.as_deref()),
            ("vfat", Some("1234-ABCD"), Some("ESP"))
        );
        let ext = d.partitions[1].fs.clone().unwrap();
        assert_eq!(ext.kind, "ext4");
        assert_eq!(
            ext.uuid.as_deref(),
            Some("abababab-abab-abab-abab-abababababab")
        );
        assert_eq!(ext.label.as_deref(), Some("root"));
    }

    #[test]
    fn a_whole_disk_file_system_and_hostile_tables() {
        let img = Image::new("whole", 4 << 20);
        write_ext4(&img, 0, [1; 16], "");
        let d = Disk::open(&img.0).unwrap();
        assert_eq!(d.table, "none");
        assert_eq!(d.whole.clone().unwrap().label, None);
        // A GPT header claiming entries past the end of the disk reads nothing.
        let img = Image::new("hostile", 1 << 20);
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        img.put(512, &h);
        let d = Disk::open(&img.0).unwrap();
        assert!(d.partitions.is_empty());
    }
}
