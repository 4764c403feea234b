//! Just enough FAT (12, 16 and 32) to look a file up on an EFI system partition that is not
//! mounted: the boot sector's layout, directory entries by their 8.3 short names (compared
//! without case, as the firmware does; `EFI/BOOT/BOOTX64.EFI` fits 8.3, so long-name entries are
//! not needed) and cluster chains. Reads go through [`Disk::read_at`]; every count from the
//! partition is bounded, and a chain that loops stops at [`MAX_CHAIN`].

use super::disk::{Disk, Partition};

/// Clusters followed in one chain at most: a directory or file header never needs more, and a
/// looping or absurd chain cannot keep kiln reading.
const MAX_CHAIN: usize = 4096;
/// Bytes of a found file read for its header (a PE header is within the first KiB or so).
const HEAD: usize = 4096;
/// FAT12 has fewer clusters than this, FAT16 fewer than [`FAT16_MAX`] (Microsoft's FAT
/// specification, "FAT type determination").
const FAT12_MAX: u64 = 4085;
/// See [`FAT12_MAX`].
const FAT16_MAX: u64 = 65525;

/// A file found on the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatFile {
    /// Its size in bytes.
    pub size: u32,
    /// Its first bytes (at most [`HEAD`]): enough for a PE header.
    pub head: Vec<u8>,
}

struct Fat<'a> {
    disk: &'a Disk,
    start: u64,
    bytes_per_sector: u64,
    cluster_size: u64,
    fat_offset: u64,
    data_offset: u64,
    root_offset: u64,
    root_entries: u64,
    root_cluster: u32,
    bits: u8,
}

impl<'a> Fat<'a> {
    fn open(disk: &'a Disk, p: &Partition) -> Option<Self> {
        let bs = disk.read_at(p.start, 512)?;
        let u16at = |i: usize| u64::from(u16::from_le_bytes([bs[i], bs[i + 1]]));
        let u32at = |i: usize| u32::from_le_bytes([bs[i], bs[i + 1], bs[i + 2], bs[i + 3]]);
        let bps = u16at(11);
        let spc = u64::from(bs[13]);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) || spc == 0 || !spc.is_power_of_two() {
            return None;
        }
        let reserved = u16at(14);
        let fats = u64::from(bs[16]);
        let root_entries = u16at(17);
        let total = match u16at(19) {
            0 => u64::from(u32at(32)),
            n => n,
        };
        let fat_size = match u16at(22) {
            0 => u64::from(u32at(36)),
            n => n,
        };
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_sector = reserved + fats * fat_size + root_sectors;
        let clusters = total.checked_sub(data_sector)? / spc;
        let bits = if clusters < FAT12_MAX {
            12
        } else if clusters < FAT16_MAX {
            16
        } else {
            32
        };
        Some(Fat {
            disk,
            start: p.start,
            bytes_per_sector: bps,
            cluster_size: bps * spc,
            fat_offset: reserved * bps,
            data_offset: data_sector * bps,
            root_offset: (reserved + fats * fat_size) * bps,
            root_entries,
            root_cluster: if bits == 32 { u32at(44) } else { 0 },
            bits,
        })
    }

    /// The FAT entry of `cluster` (the next cluster), `None` at the chain's end.
    fn next(&self, cluster: u32) -> Option<u32> {
        let c = u64::from(cluster);
        let (off, end) = match self.bits {
            12 => (c + c / 2, 0xff8),
            16 => (c * 2, 0xfff8),
            _ => (c * 4, 0x0fff_fff8),
        };
        let b = self.disk.read_at(self.start + self.fat_offset + off, 4)?;
        let raw = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let v = match self.bits {
            12 if cluster % 2 == 1 => (raw & 0xffff) >> 4,
            12 => raw & 0xfff,
            16 => raw & 0xffff,
            _ => raw & 0x0fff_ffff,
        };
        (v >= 2 && v < end).then_some(v)
    }

    fn cluster(&self, c: u32) -> Option<Vec<u8>> {
        let off = u64::from(c.checked_sub(2)?) * self.cluster_size;
        self.disk.read_at(
            self.start + self.data_offset + off,
            self.cluster_size as usize,
        )
    }

    /// The bytes of a directory: FAT12/16's fixed root, or a cluster chain.
    fn dir(&self, first: u32) -> Vec<u8> {
        if first == 0 {
            let len =
                (self.root_entries * 32).div_ceil(self.bytes_per_sector) * self.bytes_per_sector;
            return self
                .disk
                .read_at(self.start + self.root_offset, len as usize)
                .unwrap_or_default();
        }
        let mut out = Vec::new();
        let mut c = Some(first);
        for _ in 0..MAX_CHAIN {
            let Some(at) = c else { break };
            match self.cluster(at) {
                Some(data) => out.extend(data),
                None => break,
            }
            c = self.next(at);
        }
        out
    }
}

/// An entry's short name as `NAME.EXT`.
fn short_name(e: &[u8]) -> String {
    let base = String::from_utf8_lossy(&e[0..8]).trim_end().to_owned();
    let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_owned();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Looks up `path` (`/EFI/BOOT/BOOTX64.EFI`) on the FAT file system of partition `p`; `None`
/// when the partition holds no FAT or the file is not there.
pub fn find(disk: &Disk, p: &Partition, path: &str) -> Option<FatFile> {
    let fat = Fat::open(disk, p)?;
    let mut dir = if fat.bits == 32 { fat.root_cluster } else { 0 };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, want) in parts.iter().enumerate() {
        let bytes = fat.dir(dir);
        let entry = bytes
            .chunks_exact(32)
            .take_while(|e| e[0] != 0)
            .filter(|e| e[0] != 0xe5 && e[11] & 0x0f != 0x0f && e[11] & 0x08 == 0)
            .find(|e| short_name(e).eq_ignore_ascii_case(want))?;
        let first = (u32::from(u16::from_le_bytes([entry[20], entry[21]])) << 16)
            | u32::from(u16::from_le_bytes([entry[26], entry[27]]));
        let is_dir = entry[11] & 0x10 != 0;
        if i + 1 < parts.len() {
            if !is_dir {
                return None;
            }
            dir = first;
            continue;
        }
        if is_dir {
            return None;
        }
        let size = u32::from_le_bytes([entry[28], entry[29], entry[30], entry[31]]);
        // The first bytes, across clusters when they are small (512-byte clusters are common).
        let want = (size as usize).min(HEAD);
        let mut head = Vec::new();
        let mut c = (size > 0).then_some(first);
        while let Some(at) = c
            && head.len() < want
        {
            match fat.cluster(at) {
                Some(data) => head.extend(data),
                None => break,
            }
            c = fat.next(at);
        }
        head.truncate(want);
        return Some(FatFile { size, head });
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::disk::tests::{Image, write_gpt};
    use super::super::disk::{Disk, ESP_GUID};
    use super::*;

    /// A FAT16 partition at sector 2048 with /EFI/BOOT/BOOTX64.EFI holding `content` (at most
    /// one 2 KiB cluster), written by hand: 512-byte sectors, 4 sectors a cluster, one FAT.
    pub(crate) fn fat16_with_loader(img: &Image, content: &[u8]) {
        let base = 2048 * 512u64;
        let mut bs = vec![0u8; 512];
        bs[11..13].copy_from_slice(&512u16.to_le_bytes());
        bs[13] = 4;
        bs[14..16].copy_from_slice(&1u16.to_le_bytes()); // reserved
        bs[16] = 1; // FATs
        bs[17..19].copy_from_slice(&512u16.to_le_bytes()); // root entries
        bs[19..21].copy_from_slice(&40000u16.to_le_bytes()); // total sectors
        bs[22..24].copy_from_slice(&40u16.to_le_bytes()); // FAT sectors
        bs[0x36..0x3b].copy_from_slice(b"FAT16");
        bs[510] = 0x55;
        bs[511] = 0xaa;
        img.put(base, &bs);
        // FAT: clusters 2 (EFI), 3 (BOOT), 4 (the file) each end their chain.
        let mut fat = vec![0u8; 16];
        for c in 2..5 {
            fat[c * 2..c * 2 + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        }
        img.put(base + 512, &fat);
        let entry = |name: &[u8; 11], attr: u8, cluster: u16, size: u32| {
            let mut e = vec![0u8; 32];
            e[0..11].copy_from_slice(name);
            e[11] = attr;
            e[26..28].copy_from_slice(&cluster.to_le_bytes());
            e[28..32].copy_from_slice(&size.to_le_bytes());
            e
        };
        let root = base + (1 + 40) * 512;
        img.put(root, &entry(b"ESP        ", 0x08, 0, 0));
        img.put(root + 32, &entry(b"EFI        ", 0x10, 2, 0));
        let data = root + 32 * 512; // 512 root entries of 32 bytes
        let cluster = |c: u64| data + (c - 2) * 2048;
        img.put(cluster(2), &entry(b"BOOT       ", 0x10, 3, 0));
        img.put(
            cluster(3),
            &entry(b"BOOTX64 EFI", 0x20, 4, content.len() as u32),
        );
        img.put(cluster(4), content);
    }

    #[test]
    fn finds_the_removable_media_loader() {
        let img = Image::new("fat", 32 << 20);
        write_gpt(
            &img,
            &[(
                ESP_GUID,
                "11111111-2222-3333-4444-555555555555",
                2048,
                45000,
                "",
            )],
        );
        fat16_with_loader(&img, b"MZ\x90\x00\x03\x00");
        let d = Disk::open(&img.0).unwrap();
        let p = &d.partitions[0];
        let f = find(&d, p, "/EFI/BOOT/BOOTX64.EFI").unwrap();
        assert_eq!(f.size, 6);
        assert_eq!(&f.head[..2], b"MZ");
        assert_eq!(find(&d, p, "/efi/boot/bootx64.efi"), Some(f));
        assert_eq!(find(&d, p, "/EFI/BOOT/BOOTAA64.EFI"), None);
        assert_eq!(find(&d, p, "/EFI/BOOT"), None);
        assert_eq!(find(&d, p, "/EFI/BOOT/BOOTX64.EFI/X"), None);
    }
}
