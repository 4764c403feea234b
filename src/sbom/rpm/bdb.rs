//! rpm's Berkeley DB database (`Packages`: Amazon Linux 2, RHEL 7 and 8, CentOS), read as bytes:
//! a hash database whose values are rpm headers (the same blobs `rpmdb.sqlite` holds). No
//! Berkeley DB library runs: the pages are parsed here, every offset and length checked against
//! the page and the file, every overflow chain bounded by the file's page count, so a crafted
//! file is an error, never a loop or a read out of bounds.
//!
//! The layout (Berkeley DB 5.3's `dbinc/db_page.h`, as `rpm --rebuilddb` writes it):
//! - page 0, the hash metadata: magic `0x061561` at byte 12 (in the writing host's byte order,
//!   which tells the order of every other number), page size at 20, the last page at 32;
//! - every page starts with a 26-byte header: next page at 16, entry count at 20, the offset of
//!   the free area (on an overflow page: the bytes it holds) at 22, the page type at 25;
//! - a hash page (types 2 and 13) holds an index of entry offsets after its header, key and value
//!   alternating; a value is stored on the page (`H_KEYDATA`, 1: the bytes after its type up to
//!   the previous entry) or off it (`H_OFFPAGE`, 3: the first overflow page and the total length),
//!   the overflow pages (type 7) chained by their next-page numbers.

/// Berkeley DB's hash magic number.
const HASH_MAGIC: u32 = 0x0006_1561;
/// Its btree magic (rpm never makes one: named in the error).
const BTREE_MAGIC: u32 = 0x0005_3162;
/// The page types read.
const P_HASH_UNSORTED: u8 = 2;
const P_OVERFLOW: u8 = 7;
const P_HASHMETA: u8 = 8;
const P_HASH: u8 = 13;
/// The entry types of a hash page.
const H_KEYDATA: u8 = 1;
const H_OFFPAGE: u8 = 3;
/// Every page's header.
const PAGE_HEADER: usize = 26;
/// Berkeley DB's page sizes: a power of two from 512 bytes to 64 KiB.
const PAGE_MIN: u32 = 512;
const PAGE_MAX: u32 = 65536;

/// The database's byte order (its writer's).
#[derive(Clone, Copy)]
struct Order(bool);

impl Order {
    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let w: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.0 {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        })
    }

    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let w: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.0 {
            u16::from_be_bytes(w)
        } else {
            u16::from_le_bytes(w)
        })
    }
}

/// The database's pages.
struct Db<'a> {
    bytes: &'a [u8],
    order: Order,
    page_size: usize,
    pages: u32,
}

impl<'a> Db<'a> {
    fn page(&self, n: u32) -> Result<&'a [u8], String> {
        let start = (n as usize)
            .checked_mul(self.page_size)
            .ok_or("page number overflows")?;
        self.bytes
            .get(start..start + self.page_size)
            .ok_or_else(|| format!("page {n} is past the end of the file"))
    }
}

/// Every value of the Berkeley DB hash database in `bytes`, in page order: each at most
/// `max_value` bytes, at most `max_values` of them, and together no more than the file holds (in
/// a real database every page belongs to one value; entries naming the same overflow chain over
/// and over would otherwise copy it each time). Pure.
pub(crate) fn values(
    bytes: &[u8],
    max_value: u64,
    max_values: usize,
) -> Result<Vec<Vec<u8>>, String> {
    let magic_le = bytes
        .get(12..16)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    let order = match magic_le {
        Some(HASH_MAGIC) => Order(false),
        Some(m) if m.swap_bytes() == HASH_MAGIC => Order(true),
        Some(m) if m == BTREE_MAGIC || m.swap_bytes() == BTREE_MAGIC => {
            return Err("a Berkeley DB btree, not the hash database rpm writes".into());
        }
        _ => return Err("not a Berkeley DB hash database (no magic number)".into()),
    };
    let page_size = order.u32(bytes, 20).unwrap_or(0);
    if !(PAGE_MIN..=PAGE_MAX).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size} is not Berkeley DB's"));
    }
    if bytes.get(25) != Some(&P_HASHMETA) {
        return Err("page 0 is not hash metadata".into());
    }
    let in_file = u32::try_from(bytes.len() / page_size as usize).unwrap_or(u32::MAX);
    let last = order.u32(bytes, 32).unwrap_or(0);
    let db = Db {
        bytes,
        order,
        page_size: page_size as usize,
        // A last page past the file's end is a truncated file: read what is there.
        pages: last.saturating_add(1).min(in_file),
    };
    let mut out = Vec::new();
    // The bytes the values may still add up to.
    let mut left = bytes.len();
    for n in 1..db.pages {
        let page = db.page(n)?;
        if !matches!(page[25], P_HASH | P_HASH_UNSORTED) {
            continue;
        }
        page_values(&db, n, page, max_value, &mut left, &mut out)?;
        if out.len() > max_values {
            return Err(format!("more than {max_values} values"));
        }
    }
    Ok(out)
}

/// The values of hash page `n` (its odd entries: keys and values alternate).
fn page_values(
    db: &Db<'_>,
    n: u32,
    page: &[u8],
    max_value: u64,
    left: &mut usize,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), String> {
    let entries = db.order.u16(page, 20).unwrap_or(0) as usize;
    let bad = |what: String| format!("page {n}: {what}");
    if PAGE_HEADER + 2 * entries > page.len() {
        return Err(bad(format!("{entries} entries do not fit the page")));
    }
    let offset = |i: usize| db.order.u16(page, PAGE_HEADER + 2 * i).unwrap_or(0) as usize;
    for i in (1..entries).step_by(2) {
        let at = offset(i);
        // An entry runs to the one before it (entries are placed from the page's end down).
        let end = offset(i - 1);
        if at < PAGE_HEADER + 2 * entries || at >= end || end > page.len() {
            return Err(bad(format!("entry {i} at {at}..{end} is outside the page")));
        }
        let item = &page[at..end];
        // Checked before anything is copied: a value's size is known from its entry.
        let size = match item[0] {
            H_KEYDATA => item.len() - 1,
            H_OFFPAGE => db.order.u32(item, 8).unwrap_or(u32::MAX) as usize,
            _ => 0,
        };
        *left = left.checked_sub(size).ok_or_else(|| {
            bad("its values add up to more than the file holds (entries share pages)".into())
        })?;
        match item[0] {
            H_KEYDATA => out.push(item[1..].to_vec()),
            H_OFFPAGE => out.push(overflow(db, item, max_value).map_err(&bad)?),
            // Duplicates (H_DUPLICATE, H_OFFDUP): rpm keys are unique.
            t => {
                return Err(bad(format!(
                    "entry {i} has type {t}, which rpm never writes"
                )));
            }
        }
    }
    Ok(())
}

/// The value an `H_OFFPAGE` entry names: its overflow pages' bytes, in chain order.
fn overflow(db: &Db<'_>, item: &[u8], max_value: u64) -> Result<Vec<u8>, String> {
    let first = db.order.u32(item, 4).ok_or("a short off-page entry")?;
    let length = db.order.u32(item, 8).ok_or("a short off-page entry")?;
    if u64::from(length) > max_value {
        return Err(format!(
            "a value of {length} bytes, more than an rpm header can be"
        ));
    }
    let mut value = Vec::with_capacity((length as usize).min(db.bytes.len()));
    let mut next = first;
    let mut visited = 0u32;
    while next != 0 {
        visited += 1;
        if visited > db.pages {
            return Err(format!("the overflow chain from page {first} loops"));
        }
        let page = db.page(next)?;
        if page[25] != P_OVERFLOW {
            return Err(format!(
                "page {next} of an overflow chain is not an overflow page"
            ));
        }
        let used = db.order.u16(page, 22).unwrap_or(0) as usize;
        let data = page
            .get(PAGE_HEADER..PAGE_HEADER + used)
            .ok_or_else(|| format!("overflow page {next} says it holds {used} bytes"))?;
        value.extend_from_slice(data);
        if value.len() as u64 > u64::from(length) {
            return Err(format!(
                "the overflow chain from page {first} is longer than {length} bytes"
            ));
        }
        next = db.order.u32(page, 16).unwrap_or(0);
    }
    if value.len() as u64 != u64::from(length) {
        return Err(format!(
            "the overflow chain from page {first} holds {} bytes, not {length}",
            value.len()
        ));
    }
    Ok(value)
}
