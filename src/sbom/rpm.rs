//! rpm's database: `rpmdb.sqlite` (Fedora 33 and later, RHEL 9, Amazon Linux 2023), read with a
//! bundled SQLite from a private read-only copy, and Berkeley DB's `Packages` (Amazon Linux 2,
//! RHEL 7 and 8), parsed as bytes (`rpm/bdb.rs`); each value is a header (`rpm/header.rs`). The
//! ndb format (`Packages.db`: openSUSE) is recognised and named in the inventory's note, not read.

mod bdb;
mod header;

use super::{ImageFiles, MAX_PACKAGES, Package, SbomError, read_bounded};

/// Where rpm keeps its SQLite database: the classic place, and the one rpm 4.16 moved it to.
pub(super) const SQLITE_PATHS: [&str; 2] = [
    "/var/lib/rpm/rpmdb.sqlite",
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
];
/// Where rpm keeps its Berkeley DB database (the same two places).
pub(super) const BDB_PATHS: [&str; 2] = ["/var/lib/rpm/Packages", "/usr/lib/sysimage/rpm/Packages"];
/// Bytes of a Berkeley DB `Packages` kiln reads at most (into memory): Amazon Linux 2's is
/// about 20 MiB minimal and 100 MiB for a large server (its pages are mostly empty); 384 MiB,
/// as for `rpmdb.sqlite`, bounds what several builds on one builder hold at once.
const MAX_BDB: u64 = 384 * 1024 * 1024;
/// The formats kiln recognises but does not read, where they live, and who uses them.
const UNREAD: [(&str, &str); 2] = [
    ("/var/lib/rpm/Packages.db", "ndb format (openSUSE)"),
    ("/usr/lib/sysimage/rpm/Packages.db", "ndb format (openSUSE)"),
];

/// What [`read`] found.
pub(super) enum Found {
    /// The database read and its packages.
    Read(String, Vec<Package>),
    /// A database kiln did not read, and why (for the inventory's note).
    Unread(String),
    /// No rpm database.
    Nothing,
}

/// Reads the first rpm database found. Side effects: a private temporary copy of
/// `rpmdb.sqlite` on the host, removed before it returns.
pub(super) fn read(files: &dyn ImageFiles) -> Result<Found, SbomError> {
    for path in SQLITE_PATHS {
        if files.read(path, 0)?.is_some() {
            return read_sqlite(files, path);
        }
    }
    for path in BDB_PATHS {
        if files.read(path, 0)?.is_some() {
            return read_bdb(files, path);
        }
    }
    for (path, what) in UNREAD {
        if files.read(path, 0)?.is_some() {
            return Ok(Found::Unread(format!(
                "the RPM database at {path} is in {what}, which kiln does not read yet"
            )));
        }
    }
    Ok(Found::Nothing)
}

/// The packages of the Berkeley DB database at `path` (gpg-pubkey entries left out).
fn read_bdb(files: &dyn ImageFiles, path: &str) -> Result<Found, SbomError> {
    let Some(bytes) = read_bounded(files, path, MAX_BDB)? else {
        return Err(SbomError::bad(path, "it disappeared while kiln read it"));
    };
    let values = bdb::values(&bytes, header::MAX_HEADER_BLOB, MAX_PACKAGES)
        .map_err(|e| SbomError::bad(path, e))?;
    drop(bytes);
    let mut out = Vec::new();
    for (i, blob) in values.iter().enumerate() {
        add_package(&mut out, path, &format!("value {} (a header)", i + 1), blob)?;
    }
    Ok(Found::Read(path.to_owned(), out))
}

/// Adds the package header `blob` of database `path` describes to `out` (none for a
/// `gpg-pubkey`); a header that cannot be read is an error naming `what` it is.
fn add_package(
    out: &mut Vec<Package>,
    path: &str,
    what: &str,
    blob: &[u8],
) -> Result<(), SbomError> {
    if let Some(p) =
        header::package(blob).map_err(|d| SbomError::bad(path, format!("{what}: {d}")))?
    {
        out.push(p);
    }
    Ok(())
}

#[cfg(not(feature = "builder"))]
fn read_sqlite(_files: &dyn ImageFiles, path: &str) -> Result<Found, SbomError> {
    Ok(Found::Unread(format!(
        "the RPM database at {path} was not read: this kiln was built without the `builder` feature, which brings SQLite"
    )))
}

#[cfg(feature = "builder")]
fn read_sqlite(files: &dyn ImageFiles, path: &str) -> Result<Found, SbomError> {
    let pkgs = sqlite::packages(files, path)?;
    Ok(Found::Read(path.to_owned(), pkgs))
}

#[cfg(feature = "builder")]
mod sqlite {
    //! The SQLite side: the private copy, the locked-down connection, the rows.

    use super::header::MAX_HEADER_BLOB;
    use crate::sbom::{ImageFiles, MAX_PACKAGES, Package, SbomError, read_bounded};
    use rusqlite::{Connection, OpenFlags, config::DbConfig, limits::Limit, types::ValueRef};
    use std::path::PathBuf;

    /// Bytes of `rpmdb.sqlite` kiln reads at most (into memory, then a private copy): a Fedora
    /// workstation's (about 2,500 packages) is under 200 MiB, a minimal Amazon Linux 2023's
    /// about 30 MiB; 384 MiB leaves room for a large server and bounds what several builds on one
    /// builder hold at once.
    const MAX_RPMDB: u64 = 384 * 1024 * 1024;

    /// The magic string every SQLite 3 database starts with.
    const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

    /// A private copy of the database on the host (mode 0600, a new name made with `O_EXCL`),
    /// removed when dropped.
    struct TempCopy(PathBuf);

    impl TempCopy {
        fn new(bytes: &[u8]) -> Result<Self, SbomError> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let path = std::env::temp_dir().join(format!(
                "kiln-rpmdb-{}.sqlite",
                uuid::Uuid::new_v4().simple()
            ));
            let io = |source| SbomError::Io {
                path: path.display().to_string(),
                source,
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            let copy = TempCopy(path.clone());
            f.write_all(bytes).map_err(io)?;
            Ok(copy)
        }
    }

    impl Drop for TempCopy {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The packages in the database at `path` (gpg-pubkey entries left out).
    pub(super) fn packages(files: &dyn ImageFiles, path: &str) -> Result<Vec<Package>, SbomError> {
        let Some(mut bytes) = read_bounded(files, path, MAX_RPMDB)? else {
            return Err(SbomError::bad(path, "it disappeared while kiln read it"));
        };
        if !bytes.starts_with(SQLITE_MAGIC) {
            return Err(SbomError::bad(path, "not a SQLite 3 database"));
        }
        // Bytes 18 and 19 are the write and read versions: 2 is WAL mode, which would make
        // SQLite create `-wal` and `-shm` files beside the copy. The copy has no WAL to replay
        // (rpm checkpoints on close), so it is read in the rollback-journal mode, 1.
        for b in bytes.iter_mut().skip(18).take(2) {
            if *b == 2 {
                *b = 1;
            }
        }
        let copy = TempCopy::new(&bytes)?;
        drop(bytes);
        let conn = open(&copy, path)?;
        rows(&conn, path)
    }

    /// Opens the copy read-only with everything a crafted schema could use turned off.
    fn open(copy: &TempCopy, path: &str) -> Result<Connection, SbomError> {
        let e = |e| sql_error(path, e);
        let conn = Connection::open_with_flags(
            &copy.0,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(e)?;
        // Extension loading is off unless asked for (rusqlite's `load_extension` feature is
        // not enabled). No views or triggers (`Packages` must be a table), only innocuous
        // functions in the schema, defensive mode, no value longer than a header can be.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
            .map_err(e)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
            .map_err(e)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)
            .map_err(e)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
            .map_err(e)?;
        let max_len = i32::try_from(MAX_HEADER_BLOB.min(MAX_ROW_BYTES)).unwrap_or(i32::MAX);
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_len)
            .map_err(e)?;
        conn.execute_batch(
            "PRAGMA trusted_schema=OFF; PRAGMA cell_size_check=ON; PRAGMA query_only=ON;",
        )
        .map_err(e)?;
        check_schema(&conn, path)?;
        Ok(conn)
    }

    /// The largest value kiln lets SQLite make (a row's header blob): rpm's own headers are
    /// tens of KiB, a few MiB for packages with tens of thousands of files.
    const MAX_ROW_BYTES: u64 = 16 * 1024 * 1024;

    /// `Packages` must be a plain table of stored columns: a virtual table (FTS and the like) or
    /// a generated column would compute values (`zeroblob`, `replace`, ... are innocuous
    /// functions, and still make hundreds of MiB from a few bytes of schema).
    fn check_schema(conn: &Connection, path: &str) -> Result<(), SbomError> {
        let e = |e| sql_error(path, e);
        let mut stmt = conn
            .prepare("SELECT type, coalesce(sql, '') FROM sqlite_schema WHERE name = 'Packages'")
            .map_err(e)?;
        let defs: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        let plain = matches!(defs.as_slice(), [(kind, sql)] if kind == "table"
            && !sql.trim_start().to_ascii_uppercase().starts_with("CREATE VIRTUAL"));
        if !plain {
            return Err(SbomError::bad(
                path,
                "`Packages` is not a plain table (rpm makes one; a view, a virtual table or none is not an rpm database)",
            ));
        }
        let mut stmt = conn.prepare("PRAGMA table_xinfo(Packages)").map_err(e)?;
        let hidden: Vec<i64> = stmt
            .query_map([], |r| r.get::<_, i64>(6))
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        if hidden.iter().any(|h| *h != 0) {
            return Err(SbomError::bad(
                path,
                "`Packages` has generated or hidden columns (rpm's has none)",
            ));
        }
        Ok(())
    }

    /// Every row's header, as packages.
    fn rows(conn: &Connection, path: &str) -> Result<Vec<Package>, SbomError> {
        let e = |e| sql_error(path, e);
        let mut stmt = conn.prepare("SELECT hnum, blob FROM Packages").map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        let mut out = Vec::new();
        let mut seen = 0usize;
        while let Some(row) = rows.next().map_err(e)? {
            seen += 1;
            if seen > MAX_PACKAGES {
                return Err(SbomError::bad(
                    path,
                    format!("more than {MAX_PACKAGES} packages"),
                ));
            }
            let hnum: i64 = row.get(0).map_err(e)?;
            let ValueRef::Blob(blob) = row.get_ref(1).map_err(e)? else {
                return Err(SbomError::bad(
                    path,
                    format!("package {hnum}: its header is not a blob"),
                ));
            };
            super::add_package(&mut out, path, &format!("package {hnum}'s header"), blob)?;
        }
        Ok(out)
    }

    /// SQLite's errors: the host's (I/O, memory) are retryable, the rest is the database's.
    fn sql_error(path: &str, e: rusqlite::Error) -> SbomError {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(SystemIoFailure | OutOfMemory | DiskFull | CannotOpen) => SbomError::Io {
                path: path.to_owned(),
                source: std::io::Error::other(e),
            },
            _ => SbomError::bad(path, format!("reading it with SQLite: {e}")),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::header;
        use super::*;
        use crate::sbom::tests::TempDir;
        use crate::sbom::{DirFiles, PackageKind};

        /// Writes an rpmdb.sqlite with rpm's schema holding these blobs, into `root`.
        pub(crate) fn rpmdb(t: &TempDir, rel: &str, blobs: &[Vec<u8>]) {
            let path = t.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);",
            )
            .unwrap();
            for b in blobs {
                conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [b])
                    .unwrap();
            }
        }

        /// The private copy exists while it is used and is gone after.
        #[test]
        fn rpm_temp_copy_is_private_and_removed() {
            use std::os::unix::fs::PermissionsExt;
            let copy = TempCopy::new(b"data").unwrap();
            let path = copy.0.clone();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            drop(copy);
            assert!(!path.exists());
        }

        #[test]
        fn rpm_sqlite_packages_and_no_gpg_pubkey() {
            let t = TempDir::new("rpmdb");
            let blobs = [header::gpg_pubkey(), header::sample()];
            rpmdb(&t, "root/usr/lib/sysimage/rpm/rpmdb.sqlite", &blobs);
            std::fs::create_dir_all(t.0.join("root/var/lib")).unwrap();
            std::os::unix::fs::symlink("../../usr/lib/sysimage/rpm", t.0.join("root/var/lib/rpm"))
                .unwrap();
            let files = DirFiles(t.0.join("root"));
            let super::super::Found::Read(db, pkgs) = super::super::read(&files).unwrap() else {
                panic!("not read");
            };
            assert_eq!(db, "/var/lib/rpm/rpmdb.sqlite");
            assert_eq!(pkgs.len(), 1);
            assert_eq!(pkgs[0].name, "openssl-libs");
            assert_eq!(pkgs[0].version, "1:3.0.8-1.amzn2023.0.14");
            assert_eq!(pkgs[0].kind, PackageKind::Rpm);
            let inv = crate::sbom::inventory(&files).unwrap();
            assert_eq!(inv.packages, pkgs);
            assert_eq!(inv.note, None);
        }

        #[test]
        fn rpm_sqlite_bad_rows_are_errors() {
            let t = TempDir::new("rpmdb-bad");
            let mut truncated = header::sample();
            truncated.truncate(30);
            rpmdb(&t, "root/var/lib/rpm/rpmdb.sqlite", &[truncated]);
            let e = super::super::read(&DirFiles(t.0.join("root")))
                .err()
                .unwrap();
            assert!(e.to_string().contains("package 1's header"), "{e}");
            assert!(!e.is_retryable());

            let t = TempDir::new("rpmdb-notsql");
            t.write(
                "root/var/lib/rpm/rpmdb.sqlite",
                "not sqlite at all, just text",
            );
            let e = super::super::read(&DirFiles(t.0.join("root")))
                .err()
                .unwrap();
            assert!(e.to_string().contains("not a SQLite 3 database"), "{e}");

            let t = TempDir::new("rpmdb-view");
            let path = t.0.join("root/var/lib/rpm/rpmdb.sqlite");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            Connection::open(&path)
                .unwrap()
                .execute_batch("CREATE VIEW Packages AS SELECT 1 AS hnum, zeroblob(100) AS blob;")
                .unwrap();
            let e = super::super::read(&DirFiles(t.0.join("root")))
                .err()
                .unwrap();
            assert!(e.to_string().contains("not a plain table"), "{e}");

            // A generated column would make hundreds of MiB from a few bytes of schema.
            let t = TempDir::new("rpmdb-generated");
            let path = t.0.join("root/var/lib/rpm/rpmdb.sqlite");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            Connection::open(&path)
                .unwrap()
                .execute_batch(
                    "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, x INTEGER, blob BLOB AS (zeroblob(x)));
                     INSERT INTO Packages (hnum, x) VALUES (1, 100000000);",
                )
                .unwrap();
            let e = super::super::read(&DirFiles(t.0.join("root")))
                .err()
                .unwrap();
            assert!(e.to_string().contains("generated"), "{e}");

            // So would a virtual table.
            let t = TempDir::new("rpmdb-virtual");
            let path = t.0.join("root/var/lib/rpm/rpmdb.sqlite");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            Connection::open(&path)
                .unwrap()
                .execute_batch("CREATE VIRTUAL TABLE Packages USING rtree(hnum, a, b);")
                .unwrap();
            let e = super::super::read(&DirFiles(t.0.join("root")))
                .err()
                .unwrap();
            assert!(e.to_string().contains("not a plain table"), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sbom::tests::TempDir;
    use crate::sbom::{DirFiles, PackageKind};
    use std::path::Path;

    /// Writes a Berkeley DB hash database at `path` with Berkeley DB's own `db_load`: keys 1, 2,
    /// ... (rpm's header numbers, 4 bytes) and `blobs` as values; `big_endian` as a big-endian
    /// host would; pages of 512 bytes, so a header of a few KiB spans several overflow pages.
    fn db_load(path: &Path, blobs: &[Vec<u8>], big_endian: bool) {
        use std::io::Write;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("\\{x:02x}")).collect::<String>();
        let mut text = String::new();
        for (i, b) in blobs.iter().enumerate() {
            let key = (i as u32 + 1).to_le_bytes();
            text.push_str(&format!("{}\n{}\n", hex(&key), hex(b)));
        }
        let order = if big_endian { "4321" } else { "1234" };
        let child = std::process::Command::new("db_load")
            .args(["-T", "-t", "hash", "-c", "db_pagesize=512", "-c"])
            .arg(format!("db_lorder={order}"))
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn();
        let mut child = child.unwrap_or_else(|e| {
            panic!("db_load (Berkeley DB's) could not run ({e}); install it: apt-get install -y db-util (scripts/setup does)")
        });
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "db_load failed");
    }

    /// A header of several KiB (a long description): stored on overflow pages.
    fn big() -> Vec<u8> {
        let description = "kiln ".repeat(1000);
        header::encode(
            &[
                (1000, "big-package"),
                (1001, "2.0"),
                (1002, "3.amzn2"),
                (1022, "x86_64"),
                (1005, &description),
            ],
            &[],
        )
    }

    #[test]
    fn rpm_berkeley_db_packages_in_both_byte_orders() {
        for big_endian in [false, true] {
            let t = TempDir::new("rpm-bdb");
            let blobs = [header::sample(), header::gpg_pubkey(), big()];
            db_load(&t.0.join("root/var/lib/rpm/Packages"), &blobs, big_endian);
            let files = DirFiles(t.0.join("root"));
            let Found::Read(db, mut pkgs) = read(&files).unwrap() else {
                panic!("not read");
            };
            assert_eq!(db, "/var/lib/rpm/Packages");
            pkgs.sort_by(|a, b| a.name.cmp(&b.name));
            let names: Vec<(&str, &str)> = pkgs
                .iter()
                .map(|p| (p.name.as_str(), p.version.as_str()))
                .collect();
            assert_eq!(
                names,
                [
                    ("big-package", "2.0-3.amzn2"),
                    ("openssl-libs", "1:3.0.8-1.amzn2023.0.14")
                ],
                "big-endian: {big_endian}"
            );
            assert!(pkgs.iter().all(|p| p.kind == PackageKind::Rpm));
            let inv = crate::sbom::inventory(&files).unwrap();
            assert_eq!(inv.note, None);
            assert_eq!(inv.databases, ["/var/lib/rpm/Packages"]);
        }
    }

    #[test]
    fn rpm_berkeley_db_crafted_files_are_errors() {
        let t = TempDir::new("rpm-bdb-bad");
        let path = t.0.join("Packages");
        db_load(&path, &[big()], false);
        let good = std::fs::read(&path).unwrap();
        assert_eq!(
            bdb::values(&good, header::MAX_HEADER_BLOB, MAX_PACKAGES)
                .unwrap()
                .len(),
            1
        );
        let page = |n: usize| &good[n * 512..(n + 1) * 512];
        let pages = good.len() / 512;
        let overflow = (1..pages)
            .find(|n| page(*n)[25] == 7)
            .expect("an overflow page");
        let set_u32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());

        // An overflow page whose next page is itself: an error, not a loop.
        let mut looped = good.clone();
        set_u32(&mut looped, overflow * 512 + 16, overflow as u32);
        let e = bdb::values(&looped, header::MAX_HEADER_BLOB, MAX_PACKAGES).unwrap_err();
        assert!(e.contains("longer than") || e.contains("loops"), "{e}");
        // A next page past the end of the file.
        let mut past = good.clone();
        set_u32(&mut past, overflow * 512 + 16, 1_000_000);
        let e = bdb::values(&past, header::MAX_HEADER_BLOB, MAX_PACKAGES).unwrap_err();
        assert!(
            e.contains("past the end") || e.contains("longer than"),
            "{e}"
        );
        // Many entries naming the one overflow chain: copied once per entry, they would add up
        // to far more than the file (memory and time from a few bytes): an error.
        let hash = (1..pages)
            .find(|n| page(*n)[25] == 13 || page(*n)[25] == 2)
            .expect("a hash page");
        let at = |i: usize| hash * 512 + 26 + 2 * i;
        let (key, data) = (
            u16::from_le_bytes([good[at(0)], good[at(0) + 1]]),
            u16::from_le_bytes([good[at(1)], good[at(1) + 1]]),
        );
        let mut shared = good.clone();
        let pairs = 40u16;
        shared[hash * 512 + 20..hash * 512 + 22].copy_from_slice(&(2 * pairs).to_le_bytes());
        for i in 0..pairs as usize {
            shared[at(2 * i)..at(2 * i) + 2].copy_from_slice(&key.to_le_bytes());
            shared[at(2 * i + 1)..at(2 * i + 1) + 2].copy_from_slice(&data.to_le_bytes());
        }
        let e = bdb::values(&shared, header::MAX_HEADER_BLOB, MAX_PACKAGES).unwrap_err();
        assert!(e.contains("more than the file holds"), "{e}");
        let e = bdb::values(&good, header::MAX_HEADER_BLOB, 0).unwrap_err();
        assert!(e.contains("more than 0 values"), "{e}");
        // A value longer than a header may be.
        let e = bdb::values(&good, 100, MAX_PACKAGES).unwrap_err();
        assert!(e.contains("more than an rpm header"), "{e}");
        // A page size Berkeley DB never uses, and text.
        let mut size = good.clone();
        set_u32(&mut size, 20, 1000);
        assert!(
            bdb::values(&size, header::MAX_HEADER_BLOB, MAX_PACKAGES)
                .unwrap_err()
                .contains("page size")
        );
        assert!(
            bdb::values(b"just some text that is long enough", 10, MAX_PACKAGES)
                .unwrap_err()
                .contains("not a Berkeley DB")
        );
        // In an image: the error names the file.
        let t = TempDir::new("rpm-bdb-image");
        let at = t.0.join("root/usr/lib/sysimage/rpm/Packages");
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, &looped).unwrap();
        let e = read(&DirFiles(t.0.join("root"))).err().unwrap();
        assert!(
            e.to_string().contains("/usr/lib/sysimage/rpm/Packages"),
            "{e}"
        );
        assert!(!e.is_retryable());
    }
}
