//! How long waits took before, per kind of wait and class (a volume's source and size, an image's
//! region): in this process, and in a small file on the builder (`wait-history.json` in the state
//! directory) so that a fresh `kiln build` starts from what earlier runs observed. `schedule.rs`
//! turns the shortest recent duration into where dense polling starts.
//!
//! The file is a cache, never a source of truth: a missing, unreadable or corrupted file (or one of
//! another version) is no history, and a failed write only loses the sample. Several processes
//! share it: updates are read-modify-write under an exclusive lock on `<file>.lock`, and the new
//! content is renamed into place, so a reader sees the old or the new file, never a torn one.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The history file's name in the state directory.
pub const FILE_NAME: &str = "wait-history.json";
/// Overrides the history file's path (`off` or empty: no file, in-process history only).
pub const ENV_FILE: &str = "KILN_WAIT_HISTORY";
/// Durations kept per key: the schedule trusts the shortest of them, so one unusually slow wait
/// does not make the next three late, and a change of regime is forgotten after three waits.
pub const SAMPLES: usize = 3;
/// Keys kept in the file (the least recently updated are dropped): kinds x classes x regions
/// stay far below this; the bound keeps a file that is read at every wait small.
const MAX_KEYS: usize = 256;
/// The file's format; another version is no history.
const VERSION: u32 = 1;
/// The longest duration worth keeping: the longest wait's deadline (image copies, 30 min).
const MAX_SECONDS: f64 = 1800.0;

/// Why the history file could not be read or written (logged, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading, locking, writing or renaming failed.
    #[error("wait history {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file is not this version's JSON.
    #[error("wait history {path}: not a version {VERSION} history: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Store {
    version: u32,
    waits: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Entry {
    /// The most recent durations in seconds, oldest first.
    seconds: Vec<f64>,
    /// When the entry was last updated (Unix seconds), to drop the stalest keys.
    updated: u64,
}

/// The file, when one is used.
static FILE: Mutex<Option<PathBuf>> = Mutex::new(None);
/// This process's own observations (the history when there is no file or it cannot be read).
static MEMORY: Mutex<Option<HashMap<String, Vec<f64>>>> = Mutex::new(None);

/// Uses `<state_dir>/wait-history.json`, or the path in `KILN_WAIT_HISTORY` (`off`: none), as the
/// history shared with later runs. Called once at start by `kiln build` and `kiln worker`.
pub fn use_state_dir(state_dir: &Path) {
    let path = match std::env::var(ENV_FILE) {
        Ok(v) if v.is_empty() || v == "off" => None,
        Ok(v) => Some(PathBuf::from(v)),
        Err(_) => Some(state_dir.join(FILE_NAME)),
    };
    use_file(path);
}

/// Uses `path` as the history file (`None`: in-process history only).
pub fn use_file(path: Option<PathBuf>) {
    if let Ok(mut f) = FILE.lock() {
        *f = path;
    }
}

fn file() -> Option<PathBuf> {
    FILE.lock().ok().and_then(|f| f.clone())
}

/// The recent durations of waits with `key` (seconds, oldest first): the file's when there is
/// one and it holds the key, else this process's own.
pub fn recent(key: &str) -> Vec<f64> {
    if let Some(path) = file() {
        match read(&path) {
            Ok(store) => {
                if let Some(e) = store.waits.get(key) {
                    return e.seconds.clone();
                }
            }
            Err(e) => tracing::debug!(error = %e, "no wait history from the file"),
        }
    }
    MEMORY
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(key).cloned()))
        .unwrap_or_default()
}

/// Records that a wait with `key` took `seconds`, in this process and in the file.
pub fn record(key: &str, seconds: f64) {
    if !(seconds.is_finite() && (0.0..=MAX_SECONDS).contains(&seconds)) {
        return;
    }
    if let Ok(mut m) = MEMORY.lock() {
        push(
            m.get_or_insert_with(HashMap::new)
                .entry(key.to_owned())
                .or_default(),
            seconds,
        );
    }
    if let Some(path) = file()
        && let Err(e) = update(&path, key, seconds)
    {
        tracing::warn!(error = %e, "wait history not saved: the next run starts without it");
    }
}

fn push(samples: &mut Vec<f64>, seconds: f64) {
    samples.push(seconds);
    let excess = samples.len().saturating_sub(SAMPLES);
    samples.drain(..excess);
}

/// The file's history; a missing file is an empty one.
fn read(path: &Path) -> Result<Store, HistoryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Store::default()),
        Err(source) => {
            return Err(HistoryError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let format = |message: String| HistoryError::Format {
        path: path.to_owned(),
        message,
    };
    let mut store: Store = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    if store.version != VERSION {
        return Err(format(format!("version {}", store.version)));
    }
    // Whatever else wrote it, only plausible durations count.
    for e in store.waits.values_mut() {
        e.seconds
            .retain(|s| s.is_finite() && (0.0..=MAX_SECONDS).contains(s));
        let excess = e.seconds.len().saturating_sub(SAMPLES);
        e.seconds.drain(..excess);
    }
    store.waits.retain(|_, e| !e.seconds.is_empty());
    Ok(store)
}

/// Adds a sample under the lock; a corrupted file is replaced.
fn update(path: &Path, key: &str, seconds: f64) -> Result<(), HistoryError> {
    let io = |source| HistoryError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let lock_path = path.with_extension("json.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    // Held for a read and a small write; released when `lock` is dropped.
    lock.lock().map_err(io)?;
    let mut store = read(path).unwrap_or_default();
    store.version = VERSION;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let entry = store.waits.entry(key.to_owned()).or_default();
    push(&mut entry.seconds, seconds);
    entry.updated = now;
    while store.waits.len() > MAX_KEYS {
        let stalest = store
            .waits
            .iter()
            .min_by_key(|(_, e)| e.updated)
            .map(|(k, _)| k.clone());
        match stalest {
            Some(k) => store.waits.remove(&k),
            None => break,
        };
    }
    let text = serde_json::to_vec_pretty(&store).map_err(|e| HistoryError::Format {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kiln-history-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(FILE_NAME)
    }

    #[test]
    fn the_file_keeps_the_last_samples_per_key() {
        let path = temp("keep");
        for s in [1.0, 2.0, 3.0, 4.0] {
            update(&path, "volume [blank]", s).expect("update");
        }
        update(&path, "image [r]", 9.0).expect("update");
        let store = read(&path).expect("read");
        assert_eq!(store.waits["volume [blank]"].seconds, vec![2.0, 3.0, 4.0]);
        assert_eq!(store.waits["image [r]"].seconds, vec![9.0]);
    }

    #[test]
    fn missing_corrupted_or_foreign_files_are_no_history_and_get_replaced() {
        let path = temp("bad");
        assert!(read(&path).expect("missing").waits.is_empty());
        std::fs::write(
            &path,
            "{\"version\": 1, \"waits\": {\"k\": {\"seconds\": [1.0",
        )
        .unwrap();
        assert!(matches!(read(&path), Err(HistoryError::Format { .. })));
        std::fs::write(&path, "{\"version\": 7, \"waits\": {}}").unwrap();
        assert!(matches!(read(&path), Err(HistoryError::Format { .. })));
        std::fs::write(
            &path,
            "{\"version\": 1, \"waits\": {\"k\": {\"seconds\": [-1, 1e9, 2.5], \"updated\": 0}}}",
        )
        .unwrap();
        assert_eq!(read(&path).expect("read").waits["k"].seconds, vec![2.5]);
        std::fs::write(&path, "garbage").unwrap();
        update(&path, "k", 1.5).expect("update replaces it");
        assert_eq!(read(&path).expect("read").waits["k"].seconds, vec![1.5]);
    }

    #[test]
    fn concurrent_writers_never_tear_the_file() {
        let path = temp("concurrent");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for j in 0..20 {
                        update(&path, &format!("k{i}"), f64::from(j)).expect("update");
                        read(&path).expect("a whole file");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let store = read(&path).expect("read");
        assert_eq!(store.waits.len(), 8, "no update lost under the lock");
        assert!(
            store
                .waits
                .values()
                .all(|e| e.seconds == vec![17.0, 18.0, 19.0])
        );
    }

    #[test]
    fn the_number_of_keys_is_bounded() {
        let path = temp("bounded");
        let mut store = Store {
            version: VERSION,
            waits: BTreeMap::new(),
        };
        for i in 0..MAX_KEYS {
            store.waits.insert(
                format!("k{i:03}"),
                Entry {
                    seconds: vec![1.0],
                    updated: 10 + i as u64,
                },
            );
        }
        std::fs::write(&path, serde_json::to_vec(&store).unwrap()).unwrap();
        update(&path, "new", 2.0).expect("update");
        let store = read(&path).expect("read");
        assert_eq!(store.waits.len(), MAX_KEYS);
        assert!(!store.waits.contains_key("k000"), "the stalest key went");
        assert!(store.waits.contains_key("new"));
    }
}
