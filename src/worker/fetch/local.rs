//! The local files `kiln submit` uploads for a template: the same set a worker fetches and the
//! trigger hashes (see [`crate::template_store`]), never `.git`, a cache directory (one holding
//! `CACHEDIR.TAG`, as cargo's `target/` does) or anything `.gitignore`d in the folders it walks.

use super::gitignore::Ignore;
use super::{MAX_TEMPLATE_BYTES, MAX_TEMPLATE_FILES};
use crate::template_store::Layout;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What `kiln submit` uploads for a template.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitFiles {
    /// The folder that stands for the working directory: the process's when the template is
    /// inside it, otherwise the template's own folder. Files are uploaded at their paths below it.
    pub root: PathBuf,
    /// The template's layout in its folder (a repository's root, holding `.git`, is never a
    /// template's own folder).
    pub layout: Layout,
    /// The files, absolute, the template first.
    pub files: Vec<PathBuf>,
}

/// The root for the template `path`: `cwd` when the template is inside it, otherwise the
/// template's folder (a worker can lay out only files below one root). Both absolute.
pub fn submit_root(path: &Path, cwd: &Path) -> Result<PathBuf, String> {
    let abs = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if abs.starts_with(cwd) {
        return Ok(cwd.to_path_buf());
    }
    abs.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no folder", path.display()))
}

/// The files of the local template `path` (absolute) below `root`, as a worker fetches them:
/// its folder when the folder is its own (alone in it, or a directory template), otherwise the
/// template (every `*.pkr.hcl` of a directory template) and the files and directories it
/// references (`referenced`, absolute: [`crate::template::Plan::local_files`]). Referenced files
/// come along even when ignored (the template asks for them); walked folders skip `.git`, cache
/// directories and ignored entries. Errors, naming the folder, when there are more files or
/// bytes than a worker fetches ([`MAX_TEMPLATE_FILES`], [`MAX_TEMPLATE_BYTES`]).
pub fn template_files(
    path: &Path,
    root: &Path,
    referenced: &[PathBuf],
) -> Result<SubmitFiles, String> {
    let folder = path
        .parent()
        .ok_or_else(|| format!("{} has no folder", path.display()))?;
    let names: Vec<String> = std::fs::read_dir(folder)
        .map_err(|e| format!("reading {}: {e}", folder.display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let layout = if folder.join(".git").exists() {
        Layout::Flat
    } else {
        crate::template_store::layout(&name, names.iter().map(String::as_str))
    };
    let mut acc = Acc {
        folder,
        files: vec![path.to_path_buf()],
        seen: BTreeSet::from([path.to_path_buf()]),
        bytes: std::fs::metadata(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len(),
    };
    match layout {
        Layout::Folder => acc.walk(folder, &Ignore::for_dir(folder, root))?,
        Layout::Flat if crate::template::directory_of(path) != path => {
            // A directory template's files are its folder's `*.pkr.hcl` files.
            for n in names.iter().filter(|n| n.ends_with(".pkr.hcl")) {
                acc.add(&folder.join(n))?;
            }
        }
        Layout::Flat => {}
    }
    for r in referenced {
        if acc.seen.contains(r) {
            continue;
        }
        if r.is_dir() {
            acc.walk(r, &Ignore::for_dir(r, root))?;
        } else if r.is_file() {
            acc.add(r)?;
        }
    }
    Ok(SubmitFiles {
        root: root.to_path_buf(),
        layout,
        files: acc.files,
    })
}

/// The files gathered so far.
struct Acc<'a> {
    folder: &'a Path,
    files: Vec<PathBuf>,
    seen: BTreeSet<PathBuf>,
    bytes: u64,
}

impl Acc<'_> {
    fn add(&mut self, p: &Path) -> Result<(), String> {
        if !self.seen.insert(p.to_path_buf()) {
            return Ok(());
        }
        let meta = std::fs::metadata(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        self.bytes += meta.len();
        self.files.push(p.to_path_buf());
        if self.files.len() > MAX_TEMPLATE_FILES || self.bytes > MAX_TEMPLATE_BYTES {
            return Err(format!(
                "the files of the template in {} are more than {MAX_TEMPLATE_FILES} files or {MAX_TEMPLATE_BYTES} bytes, more than a worker fetches: put the template (and only what it uses) in a directory of its own",
                self.folder.display()
            ));
        }
        Ok(())
    }

    /// Every file below `dir`, depth first, without `.git`, cache directories, ignored entries
    /// or links to folders.
    fn walk(&mut self, dir: &Path, ignore: &Ignore) -> Result<(), String> {
        let mut stack = vec![(dir.to_path_buf(), ignore.clone())];
        while let Some((d, ig)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&d)
                .map_err(|e| format!("reading {}: {e}", d.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("reading {}: {e}", d.display()))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                if e.file_name() == ".git" {
                    continue;
                }
                let t = e
                    .file_type()
                    .map_err(|e| format!("reading {}: {e}", p.display()))?;
                if t.is_dir() {
                    if !ig.ignored(&p, true) && !p.join("CACHEDIR.TAG").exists() {
                        let inner = ig.enter(&p);
                        stack.push((p, inner));
                    }
                } else if (t.is_file() || (t.is_symlink() && p.is_file())) && !ig.ignored(&p, false)
                {
                    self.add(&p)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("kiln-{name}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&d).expect("dir");
            Self(d)
        }
        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
            std::fs::write(&p, text).expect("write");
            p
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rels(s: &SubmitFiles, root: &Path) -> Vec<String> {
        s.files
            .iter()
            .map(|f| {
                f.strip_prefix(root)
                    .expect("below root")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_folder_of_its_own_skips_git_caches_and_ignored_files() {
        let t = Tmp::new("submit-folder");
        let template = t.write("packer/t.pkr.hcl", "build {}");
        t.write("packer/scripts/a.sh", "true");
        t.write(".gitignore", "*.log\n");
        t.write("packer/.gitignore", "secret/\n");
        t.write("packer/run.log", "x");
        t.write("packer/secret/k", "x");
        t.write(
            "packer/cache/CACHEDIR.TAG",
            "Signature: 8a477f597d28d172789f06886806bc55",
        );
        t.write("packer/cache/big", "x");
        t.write(".git/HEAD", "ref");
        t.write("packer/vendor/.git/config", "x");
        let s = template_files(&template, &t.0, &[]).expect("files");
        assert_eq!(s.layout, Layout::Folder);
        assert_eq!(
            rels(&s, &t.0),
            [
                "packer/t.pkr.hcl",
                "packer/.gitignore",
                "packer/scripts/a.sh"
            ]
        );
    }

    #[test]
    fn a_flat_folder_or_a_repository_root_gives_the_template_and_its_references() {
        let t = Tmp::new("submit-flat");
        let web = t.write("web.json", "{}");
        t.write("db.json", "{}");
        let script = t.write("scripts/web.sh", "true");
        t.write("scripts/db.sh", "true");
        t.write("files/a", "x");
        t.write("files/b.key", "x");
        t.write(".gitignore", "*.key\ntarget/\n");
        let bin = t.write("target/release/app", "x");
        t.write("target/debug/junk", "x");
        let refs = [script, t.0.join("files"), bin];
        let s = template_files(&web, &t.0, &refs).expect("files");
        assert_eq!(s.layout, Layout::Flat);
        assert_eq!(
            rels(&s, &t.0),
            [
                "web.json",
                "scripts/web.sh",
                "files/a",
                "target/release/app"
            ]
        );
        // Alone at a repository's root: still only what it references.
        std::fs::remove_file(t.0.join("db.json")).expect("rm");
        std::fs::create_dir_all(t.0.join(".git")).expect("git");
        for i in 0..MAX_TEMPLATE_FILES + 5 {
            t.write(&format!(".git/objects/{i}"), "x");
            t.write(&format!("notes/{i}"), "x");
        }
        let s = template_files(&web, &t.0, &refs[..1]).expect("files");
        assert_eq!(s.layout, Layout::Flat);
        assert_eq!(rels(&s, &t.0), ["web.json", "scripts/web.sh"]);
    }

    #[test]
    fn too_many_files_name_the_folder() {
        let t = Tmp::new("submit-many");
        let template = t.write("t.pkr.hcl", "build {}");
        for i in 0..MAX_TEMPLATE_FILES {
            t.write(&format!("f{i}"), "x");
        }
        let err = template_files(&template, &t.0, &[]).expect_err("too many files");
        assert!(err.contains("more than 200 files"), "{err}");
        assert!(err.contains(&t.0.display().to_string()), "{err}");
    }

    #[test]
    fn the_root_follows_the_template() {
        let cwd = Path::new("/w/repo");
        assert_eq!(
            submit_root(Path::new("/w/repo/packer/a.json"), cwd).as_deref(),
            Ok(cwd)
        );
        assert_eq!(
            submit_root(Path::new("/elsewhere/app.json"), cwd).as_deref(),
            Ok(Path::new("/elsewhere"))
        );
    }
}
