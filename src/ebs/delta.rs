//! Which blocks of a local image differ from its parent snapshot: every block that holds data in
//! the file or in the parent is hashed and compared with the parent's checksum (kept from the
//! read). A block equal to the parent's is left alone, and so is a zero block the parent does not
//! have; a block the parent has that is now zeros is written as zeros. With an empty parent map
//! this is a full upload: every block that holds data.

use super::{BLOCK_SIZE, BlockMap, EbsError, checksum};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// The blocks to write: index -> base64 SHA-256 of the block's data now.
pub type Delta = BTreeMap<u64, String>;

/// How many blocks are compared between two looks at the cancellation (64 blocks are 32 MiB
/// hashed: a few tens of milliseconds).
const CANCEL_EVERY: usize = 64;

/// The blocks of `file` that differ from `parent`. Reads only the data extents of `file` and the
/// parent's blocks; blocking (run it off the async threads); stops with `Cancelled` soon after
/// `cancel` fires.
pub fn changed_blocks(
    file: &Path,
    parent: &BlockMap,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Delta, EbsError> {
    let mut candidates: BTreeSet<u64> = parent.blocks.keys().copied().collect();
    for (start, end) in crate::host::sparse::data_ranges(file)? {
        candidates.extend(start / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE));
    }
    let f = std::fs::File::open(file).map_err(EbsError::io("opening", file))?;
    let len = f
        .metadata()
        .map_err(EbsError::io("reading the size of", file))?
        .len();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let mut delta = Delta::new();
    for (n, index) in candidates.into_iter().enumerate() {
        if n % CANCEL_EVERY == 0 && cancel.is_cancelled() {
            return Err(EbsError::Cancelled(format!(
                "the comparison of {} with its parent",
                file.display()
            )));
        }
        let offset = index * BLOCK_SIZE;
        if offset >= len {
            // The parent has a block beyond the file: the image was made smaller, which EBS
            // cannot do (a volume only grows).
            return Err(EbsError::Invalid(format!(
                "{} is {len} bytes, but its parent has data at block {index}: an image cannot be smaller than its parent",
                file.display()
            )));
        }
        buf.fill(0);
        let want = ((len - offset) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..want], offset)
            .map_err(EbsError::io("reading a block of", file))?;
        let zero = buf.iter().all(|b| *b == 0);
        let sum = checksum(&buf);
        match parent.blocks.get(&index) {
            Some(p) if *p == sum => {}
            None if zero => {}
            _ => {
                delta.insert(index, sum);
            }
        }
    }
    Ok(delta)
}

/// Reads block `index` of `file` (zeros past its end).
pub fn read_block(f: &std::fs::File, file: &Path, index: u64) -> Result<Vec<u8>, EbsError> {
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let len = f
        .metadata()
        .map_err(EbsError::io("reading the size of", file))?
        .len();
    let offset = index * BLOCK_SIZE;
    if offset < len {
        let want = ((len - offset) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..want], offset)
            .map_err(EbsError::io("reading a block of", file))?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn only_blocks_that_differ_from_the_parent() {
        let dir = std::env::temp_dir().join(format!("kiln-delta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("img");
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(8 * BLOCK_SIZE).unwrap();
        drop(f);
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        // Block 1: same as the parent; block 3: changed; block 5: new; block 6: written zeros
        // the parent does not have; block 7 the parent has, now a hole.
        for (i, byte) in [(1u64, 1u8), (3, 3), (5, 5)] {
            f.seek(SeekFrom::Start(i * BLOCK_SIZE + 10)).unwrap();
            f.write_all(&[byte; 100]).unwrap();
        }
        f.seek(SeekFrom::Start(6 * BLOCK_SIZE)).unwrap();
        f.write_all(&vec![0u8; BLOCK_SIZE as usize]).unwrap();
        drop(f);
        let same = read_block(&std::fs::File::open(&file).unwrap(), &file, 1).unwrap();
        let mut parent = BlockMap::default();
        parent.blocks.insert(1, checksum(&same));
        parent.blocks.insert(3, checksum(b"old"));
        parent.blocks.insert(7, checksum(b"gone"));
        let none = tokio_util::sync::CancellationToken::new();
        let delta = changed_blocks(&file, &parent, &none).unwrap();
        assert_eq!(delta.keys().copied().collect::<Vec<_>>(), vec![3, 5, 7]);
        assert_eq!(delta[&7], checksum(&vec![0u8; BLOCK_SIZE as usize]));
        // Without a parent: every block that holds data.
        let full = changed_blocks(&file, &BlockMap::default(), &none).unwrap();
        // Cancelled: stops at once.
        none.cancel();
        assert!(matches!(
            changed_blocks(&file, &parent, &none),
            Err(EbsError::Cancelled(_))
        ));
        assert_eq!(full.keys().copied().collect::<Vec<_>>(), vec![1, 3, 5]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
