//! One RPM header blob as `rpmdb.sqlite` stores it (rpm's `headerExport`): big-endian `il` (index
//! entries) and `dl` (data bytes), `il` entries of 16 bytes (tag, type, offset, count), then `dl`
//! bytes of data. Every count and offset is checked against the blob before it is used.

use crate::sbom::{Package, PackageKind};

/// Index entries a header has at most: rpm's own `HEADER_TAGS_MAX` (lib/header_internal.h).
pub(crate) const HEADER_TAGS_MAX: u32 = 0x0000_ffff;
/// Data bytes a header has at most: rpm's own `HEADER_DATA_MAX` (256 MiB - 1).
pub(crate) const HEADER_DATA_MAX: u32 = 0x0fff_ffff;
/// Bytes of the largest header blob: the two counts, the largest index and the largest data.
pub(crate) const MAX_HEADER_BLOB: u64 = 8 + 16 * HEADER_TAGS_MAX as u64 + HEADER_DATA_MAX as u64;

const TAG_NAME: i32 = 1000;
const TAG_VERSION: i32 = 1001;
const TAG_RELEASE: i32 = 1002;
const TAG_EPOCH: i32 = 1003;
const TAG_LICENSE: i32 = 1014;
const TAG_ARCH: i32 = 1022;
const TAG_SOURCERPM: i32 = 1044;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

/// The index and data of a header, their sizes checked.
struct Header<'a> {
    index: &'a [u8],
    data: &'a [u8],
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn parse(blob: &[u8]) -> Result<Header<'_>, String> {
    let (Some(il), Some(dl)) = (be32(blob, 0), be32(blob, 4)) else {
        return Err(format!("{} bytes: too short for a header", blob.len()));
    };
    if il == 0 || il > HEADER_TAGS_MAX {
        return Err(format!("{il} index entries (1 to {HEADER_TAGS_MAX})"));
    }
    if dl > HEADER_DATA_MAX {
        return Err(format!("{dl} data bytes (at most {HEADER_DATA_MAX})"));
    }
    // Both bounded above, so this fits in usize on any 32- or 64-bit host.
    let index_end = 8 + 16 * il as usize;
    let data_end = index_end + dl as usize;
    let (Some(index), Some(data)) = (blob.get(8..index_end), blob.get(index_end..data_end)) else {
        return Err(format!(
            "{} bytes, but its counts ({il} entries, {dl} data bytes) need {data_end}",
            blob.len()
        ));
    };
    Ok(Header { index, data })
}

impl Header<'_> {
    /// The (type, offset, count) of the first entry with `tag`.
    fn entry(&self, tag: i32) -> Option<(u32, usize, u32)> {
        self.index.chunks_exact(16).find_map(|e| {
            let t = be32(e, 0)? as i32;
            (t == tag).then_some(())?;
            let offset = be32(e, 8)?;
            Some((be32(e, 4)?, offset as usize, be32(e, 12)?))
        })
    }

    /// The string (or first string of an array) of `tag`; `None` when the header lacks it.
    fn string(&self, tag: i32) -> Result<Option<String>, String> {
        let Some((ty, offset, _)) = self.entry(tag) else {
            return Ok(None);
        };
        if ![TYPE_STRING, TYPE_STRING_ARRAY, TYPE_I18NSTRING].contains(&ty) {
            return Err(format!("tag {tag} has type {ty}, not a string"));
        }
        let rest = self
            .data
            .get(offset..)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| format!("tag {tag}'s offset {offset} is past the data"))?;
        let string = rest
            .split(|&b| b == 0)
            .next()
            .filter(|s| s.len() < rest.len())
            .ok_or_else(|| format!("tag {tag}'s string runs past the data"))?;
        Ok(Some(String::from_utf8_lossy(string).into_owned()))
    }

    /// The first integer of `tag` (INT32); `None` when the header lacks it.
    fn int32(&self, tag: i32) -> Result<Option<u32>, String> {
        let Some((ty, offset, count)) = self.entry(tag) else {
            return Ok(None);
        };
        if ty != TYPE_INT32 || count == 0 {
            return Err(format!(
                "tag {tag} has type {ty} and count {count}, not INT32"
            ));
        }
        be32(self.data, offset)
            .map(Some)
            .ok_or_else(|| format!("tag {tag}'s offset {offset} is past the data"))
    }
}

/// The package a header describes; `None` for the `gpg-pubkey` pseudo-packages (imported keys).
pub(crate) fn package(blob: &[u8]) -> Result<Option<Package>, String> {
    let h = parse(blob)?;
    let name = h.string(TAG_NAME)?.filter(|n| !n.is_empty());
    let name = name.ok_or("no name (tag 1000)")?;
    if name == "gpg-pubkey" {
        return Ok(None);
    }
    let version = h.string(TAG_VERSION)?.ok_or("no version (tag 1001)")?;
    let mut evr = match h.int32(TAG_EPOCH)? {
        Some(epoch) => format!("{epoch}:{version}"),
        None => version,
    };
    if let Some(release) = h.string(TAG_RELEASE)?.filter(|r| !r.is_empty()) {
        evr = format!("{evr}-{release}");
    }
    Ok(Some(Package {
        name,
        version: evr,
        arch: h.string(TAG_ARCH)?.filter(|a| !a.is_empty()),
        source: h.string(TAG_SOURCERPM)?.filter(|s| !s.is_empty()),
        license: h.string(TAG_LICENSE)?.filter(|l| !l.is_empty()),
        kind: PackageKind::Rpm,
    }))
}

/// Encodes a header blob as rpm does (string and INT32 entries only): for tests.
#[cfg(test)]
pub(crate) fn encode(strings: &[(i32, &str)], ints: &[(i32, u32)]) -> Vec<u8> {
    let mut index = Vec::new();
    let mut data = Vec::new();
    for &(tag, v) in ints {
        while data.len() % 4 != 0 {
            data.push(0);
        }
        let e = [tag as u32, TYPE_INT32, data.len() as u32, 1];
        index.extend(e.iter().flat_map(|x| x.to_be_bytes()));
        data.extend(v.to_be_bytes());
    }
    for &(tag, s) in strings {
        let e = [tag as u32, TYPE_STRING, data.len() as u32, 1];
        index.extend(e.iter().flat_map(|x| x.to_be_bytes()));
        data.extend(s.as_bytes());
        data.push(0);
    }
    let mut out = Vec::new();
    out.extend(((index.len() / 16) as u32).to_be_bytes());
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(index);
    out.extend(data);
    out
}

/// A sample package's header: openssl-libs 1:3.0.8-1.amzn2023.0.14.
#[cfg(test)]
pub(crate) fn sample() -> Vec<u8> {
    encode(
        &[
            (TAG_NAME, "openssl-libs"),
            (TAG_VERSION, "3.0.8"),
            (TAG_RELEASE, "1.amzn2023.0.14"),
            (TAG_ARCH, "x86_64"),
            (TAG_LICENSE, "Apache-2.0"),
            (TAG_SOURCERPM, "openssl-3.0.8-1.amzn2023.0.14.src.rpm"),
        ],
        &[(TAG_EPOCH, 1)],
    )
}

/// The header of an imported key (`gpg-pubkey`), which is no package.
#[cfg(test)]
pub(crate) fn gpg_pubkey() -> Vec<u8> {
    encode(
        &[
            (TAG_NAME, "gpg-pubkey"),
            (TAG_VERSION, "d832c631"),
            (TAG_RELEASE, "5e6a2c4e"),
        ],
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_header_fields_and_epoch() {
        let p = package(&sample()).unwrap().unwrap();
        assert_eq!(p.name, "openssl-libs");
        assert_eq!(p.version, "1:3.0.8-1.amzn2023.0.14");
        assert_eq!(p.arch.as_deref(), Some("x86_64"));
        assert_eq!(p.license.as_deref(), Some("Apache-2.0"));
        assert_eq!(
            p.source.as_deref(),
            Some("openssl-3.0.8-1.amzn2023.0.14.src.rpm")
        );
        assert_eq!(package(&gpg_pubkey()).unwrap(), None);
        let no_epoch = encode(
            &[(TAG_NAME, "a"), (TAG_VERSION, "1"), (TAG_RELEASE, "2")],
            &[],
        );
        assert_eq!(package(&no_epoch).unwrap().unwrap().version, "1-2");
    }

    /// Every way a blob can lie about its sizes is an error, never a panic.
    #[test]
    fn rpm_header_adversarial_blobs_are_errors() {
        let good = sample();
        for cut in [0, 3, 7, 8, 20, good.len() - 1] {
            let e = package(&good[..cut]).unwrap_err();
            assert!(e.contains("bytes"), "cut at {cut}: {e}");
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
        assert!(package(&huge).unwrap_err().contains("index entries"));
        let mut huge_dl = good.clone();
        huge_dl[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(package(&huge_dl).unwrap_err().contains("data bytes"));
        let mut zero = good.clone();
        zero[..4].copy_from_slice(&0u32.to_be_bytes());
        assert!(package(&zero).is_err());
        // Every entry's offset pointed past the data (the epoch's first).
        let il = be32(&good, 0).unwrap() as usize;
        for i in 0..il {
            let mut bad = good.clone();
            let at = 8 + 16 * i + 8;
            bad[at..at + 4].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
            let e = package(&bad).unwrap_err();
            assert!(e.contains("past the data"), "entry {i}: {e}");
        }
        // A string with no terminating NUL before the data ends.
        let mut unterminated = encode(&[(TAG_NAME, "abc")], &[]);
        unterminated.pop();
        let n = unterminated.len();
        unterminated[4..8].copy_from_slice(&((n - 8 - 16) as u32).to_be_bytes());
        assert!(package(&unterminated).unwrap_err().contains("runs past"));
        // A name of the wrong type.
        let mut wrong = encode(&[(TAG_NAME, "abc")], &[]);
        wrong[12..16].copy_from_slice(&TYPE_INT32.to_be_bytes());
        assert!(package(&wrong).unwrap_err().contains("not a string"));
        assert!(package(&encode(&[(TAG_VERSION, "1")], &[])).is_err());
    }
}
