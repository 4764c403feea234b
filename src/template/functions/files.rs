//! Packer's filesystem functions: `file`, `fileset`, `pathexpand`, `templatefile` (paths relative
//! to the working directory).
//!
//! A template names files on the host that evaluates it, a worker that hosts other teams' builds:
//! they are read through [`read_text`], which reads regular files only (a FIFO cannot hang it, a
//! device cannot stream into it), at most [`limits::MAX_FILE_BYTES`], and never from under
//! `/proc`, `/sys` or `/dev` (the worker's environment, memory and devices), checked on the path
//! with every link resolved, before and after opening it.

use super::limits;
use super::{in_cwd, s};
use hcl::Value;
use hcl::eval::{Context, Evaluate, FuncDef, ParamType};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Files `fileset` lists at most: a template's folder, not a file system.
const MAX_FILESET: usize = 10_000;

/// Directory entries `fileset` looks at at most (files and directories), and how deep it goes:
/// ten times [`MAX_FILESET`], and as deep as Linux follows links in one path (40).
const MAX_WALK: usize = 100_000;
const MAX_DEPTH: usize = 40;

/// The host's own file systems, which no template function reads or lists: process state
/// (`/proc/self/environ` is the worker's environment), kernel state, and device nodes.
pub const HOST_ONLY: &[&str] = &["/proc", "/sys", "/dev"];

/// Linux's `O_NONBLOCK` (the same on x86-64 and arm64): opening a FIFO for reading with it
/// returns at once instead of waiting for a writer.
const O_NONBLOCK: i32 = 0o4000;
#[cfg(feature = "builder")]
const _: () = assert!(O_NONBLOCK == libc::O_NONBLOCK);

/// How to fix a refused read, for the error messages.
const FIX: &str = "keep the data in a regular file next to the template (at most 16 MiB), or pass it as a variable";

/// `path` with every link resolved, refused when it lies under one of [`HOST_ONLY`].
fn host_checked(f: &str, shown: &str, path: &Path) -> Result<PathBuf, String> {
    let real =
        std::fs::canonicalize(path).map_err(|e| format!("{f}: cannot read \"{shown}\": {e}"))?;
    if let Some(dir) = HOST_ONLY.iter().find(|d| real.starts_with(d)) {
        return Err(format!(
            "{f}: \"{shown}\" ({}) is under {dir}, which templates may not read: {FIX}",
            real.display()
        ));
    }
    if let Some(root) = super::file_root()
        && !real.starts_with(&root)
    {
        return Err(format!(
            "{f}: \"{shown}\" is outside the template's folder, and this pool does not let the team's templates read builder-host files (host_features): {FIX}"
        ));
    }
    Ok(real)
}

/// What a file type is called in an error message.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Whether the opened file is still outside [`HOST_ONLY`] (a link swapped in after the path was
/// checked): what `/proc/self/fd` says the descriptor names.
fn opened_outside(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(p) => !HOST_ONLY.iter().any(|d| p.starts_with(d)),
        Err(_) => true, // no procfs: the checks on the path stand
    }
}

/// The text of the regular file `shown` (relative to the working directory) for function `f`:
/// refused when it is not a regular file, lies under `/proc`, `/sys` or `/dev`, is larger than
/// [`limits::MAX_FILE_BYTES`] or is not UTF-8.
pub(super) fn read_text(f: &str, shown: &str) -> Result<String, String> {
    let real = host_checked(f, shown, &in_cwd(shown))?;
    let cannot = |e: std::io::Error| format!("{f}: cannot read \"{shown}\": {e}");
    // Before opening: a device node is never opened at all.
    let before = std::fs::metadata(&real).map_err(cannot)?;
    if !before.is_file() {
        return Err(format!(
            "{f}: \"{shown}\" is {}; kiln reads regular files only: {FIX}",
            kind(before.file_type())
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(&real)
        .map_err(cannot)?;
    // After opening: the same checks on what was opened, in case the path changed in between.
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() || !opened_outside(&file) {
        return Err(format!(
            "{f}: \"{shown}\" changed into something other than a regular file while kiln opened it: {FIX}"
        ));
    }
    let too_big = || {
        format!(
            "{f}: \"{shown}\" is larger than kiln's limit of {} MiB for a file a template reads: {FIX}",
            limits::MAX_FILE_BYTES >> 20
        )
    };
    if meta.len() > limits::MAX_FILE_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(limits::MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > limits::MAX_FILE_BYTES {
        return Err(too_big());
    }
    limits::spend(f, bytes.len())?;
    String::from_utf8(bytes).map_err(|_| format!("{f}: \"{shown}\" is not UTF-8 text: {FIX}"))
}

/// `pat` (a `fileset` glob: `*` within a component, `**` any components, `?`, `{a,b}`
/// alternatives) as an anchored regular expression, which matches in linear time whatever the
/// pattern.
fn glob_regex(pat: &str) -> Result<regex::Regex, String> {
    let mut re = String::from("^");
    let mut chars = pat.chars().peekable();
    let mut depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `**/`: any directories, or none; a trailing `**`: anything below.
                if chars.peek() == Some(&'/') {
                    chars.next();
                    re.push_str("(?:.*/)?");
                } else {
                    re.push_str(".*");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '{' => {
                depth += 1;
                re.push_str("(?:");
            }
            '}' if depth > 0 => {
                depth -= 1;
                re.push(')');
            }
            ',' if depth > 0 => re.push('|'),
            other => re.push_str(&regex::escape(other.encode_utf8(&mut [0; 4]))),
        }
    }
    if depth > 0 {
        return Err(format!("fileset: \"{pat}\" has a `{{` without its `}}`"));
    }
    re.push('$');
    regex::Regex::new(&re)
        .map_err(|e| format!("fileset: \"{pat}\" is not a pattern kiln can use: {e}"))
}

/// Whether `name` (a `/`-separated relative path) matches glob `pat`.
#[cfg(test)]
fn glob(pat: &str, name: &str) -> bool {
    glob_regex(pat).is_ok_and(|re| re.is_match(name))
}

/// The files under `dir` (relative to `root`), following links to directories outside
/// [`HOST_ONLY`], within [`MAX_FILESET`], [`MAX_WALK`] and [`MAX_DEPTH`].
fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    seen: &mut usize,
    out: &mut Vec<String>,
) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("fileset: {}: {e}", dir.display()))?;
    for e in entries.flatten() {
        *seen += 1;
        if *seen > MAX_WALK || depth > MAX_DEPTH {
            return Err(format!(
                "fileset: {} holds more than {MAX_WALK} entries or is deeper than {MAX_DEPTH} directories; name a smaller folder",
                root.display()
            ));
        }
        let p = e.path();
        let is_link = e.file_type().is_ok_and(|t| t.is_symlink());
        if p.is_dir() {
            if is_link && host_checked("fileset", &p.display().to_string(), &p).is_err() {
                continue;
            }
            walk(root, &p, depth + 1, seen, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
            if out.len() > MAX_FILESET {
                return Err(format!(
                    "fileset: more than {MAX_FILESET} files under {}",
                    root.display()
                ));
            }
        }
    }
    Ok(())
}

/// Terraform's `fileset(path, pattern)`: the files under `path` matching `pattern`, sorted.
fn fileset(path: &str, pattern: &str) -> Result<Value, String> {
    let root = in_cwd(path);
    let re = glob_regex(pattern)?;
    let mut all = Vec::new();
    if root.is_dir() {
        host_checked("fileset", path, &root)?;
        walk(&root, &root, 0, &mut 0, &mut all)?;
    }
    let mut hits: Vec<String> = all.into_iter().filter(|f| re.is_match(f)).collect();
    hits.sort();
    Ok(Value::Array(hits.into_iter().map(Value::from).collect()))
}

/// Terraform's `templatefile(path, vars)`: the file rendered as an HCL template with `vars`
/// (and the functions, but not `templatefile` itself: a template that renders itself would
/// recurse until the stack overflows, so it is refused, as Terraform does).
fn templatefile(path: &str, vars: &Value) -> Result<Value, String> {
    let text = read_text("templatefile", path)?;
    let template: hcl::Template = text
        .parse()
        .map_err(|e| format!("templatefile: {path}: {e}"))?;
    let mut ctx = Context::new();
    super::declare(&mut ctx, false);
    ctx.declare_func(
        "templatefile",
        FuncDef::builder().variadic_param(ParamType::Any).build(|_| {
            Err("templatefile: a template rendered by templatefile cannot call templatefile (as in Terraform)".into())
        }),
    );
    match vars {
        Value::Object(vars) => {
            for (k, v) in vars {
                ctx.declare_var(k.as_str(), v.clone());
            }
        }
        Value::Null => {}
        other => return Err(format!("templatefile: vars must be a map, got {other}")),
    }
    let out = template
        .evaluate(&ctx)
        .map_err(|e| format!("templatefile: {path}: {e}"))?;
    limits::string_len("templatefile", out.len())?;
    limits::charge("templatefile", Value::from(out))
}

/// Declares the functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "file",
        FuncDef::builder()
            .param(ParamType::String)
            .build(|a| read_text("file", &s(&a[0])).map(Value::from)),
    );
    ctx.declare_func(
        "fileset",
        FuncDef::builder()
            .params([ParamType::String, ParamType::String])
            .build(|a| fileset(&s(&a[0]), &s(&a[1]))),
    );
    ctx.declare_func(
        "pathexpand",
        FuncDef::builder().param(ParamType::String).build(|a| {
            let p = s(&a[0]);
            let home = super::env_var("HOME");
            Ok(Value::from(match p.strip_prefix('~') {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{home}{rest}"),
                _ => p,
            }))
        }),
    );
    ctx.declare_func(
        "templatefile",
        FuncDef::builder()
            .params([ParamType::String, ParamType::Any])
            .build(|a| templatefile(&s(&a[0]), &a[1])),
    );
    super::dates::declare(ctx);
}

#[cfg(test)]
mod tests {
    use super::super::{eval, set_cwd};
    use hcl::Value;
    use std::time::{Duration, Instant};

    /// A directory of its own, removed when dropped; the thread's working directory.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!("kiln-files-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).expect("temp dir");
            set_cwd(&p);
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn refused(expr: &str, want: &[&str]) {
        let t = Instant::now();
        let e = eval(expr).expect_err(expr);
        for w in want {
            assert!(e.contains(w), "{expr}: {e}");
        }
        assert!(e.contains("regular file"), "{expr}: the fix is named: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{expr} took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn host_files_are_never_read() {
        // /dev/zero used to grow the process until the OOM killer came.
        refused(r#"file("/dev/zero")"#, &["file", "/dev/zero", "under /dev"]);
        refused(
            r#"templatefile("/dev/zero", {})"#,
            &["templatefile", "/dev/zero"],
        );
        // The worker's environment.
        refused(
            r#"file("/proc/self/environ")"#,
            &["file", "/proc/self/environ", "under /proc"],
        );
        refused(r#"file("/sys/class")"#, &["under /sys"]);
        refused(r#"file("/proc/../proc/self/environ")"#, &["under /proc"]);
    }

    #[test]
    fn links_fifos_and_big_files_are_refused() {
        let d = Dir::new();
        std::os::unix::fs::symlink("/proc/self/environ", d.0.join("env")).expect("symlink");
        refused(r#"file("env")"#, &["\"env\"", "under /proc"]);
        std::os::unix::fs::symlink("/dev", d.0.join("devices")).expect("symlink");
        refused(r#"file("devices/zero")"#, &["under /dev"]);
        let fifo = d.0.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        // Used to wait forever for a writer.
        refused(r#"file("fifo")"#, &["\"fifo\"", "a FIFO"]);
        refused(r#"templatefile("fifo", {})"#, &["a FIFO"]);
        refused(r#"file(".")"#, &["a directory"]);
        let big = std::fs::File::create(d.0.join("big")).expect("create");
        big.set_len(super::limits::MAX_FILE_BYTES + 1)
            .expect("sparse file");
        refused(r#"file("big")"#, &["\"big\"", "larger than", "16 MiB"]);
    }

    #[test]
    fn regular_files_still_read_and_templatefile_does_not_recurse() {
        let d = Dir::new();
        std::fs::write(d.0.join("hello.txt"), "hello\n").expect("write");
        std::fs::write(d.0.join("t.tpl"), "Hi ${name}: ${file(\"hello.txt\")}").expect("write");
        std::fs::write(d.0.join("self.tpl"), "${templatefile(\"self.tpl\", {})}").expect("write");
        std::os::unix::fs::symlink(d.0.join("hello.txt"), d.0.join("link")).expect("symlink");
        assert_eq!(eval(r#"file("hello.txt")"#), Ok(Value::from("hello\n")));
        assert_eq!(eval(r#"file("link")"#), Ok(Value::from("hello\n")));
        assert_eq!(
            eval(r#"templatefile("t.tpl", { name = "x" })"#),
            Ok(Value::from("Hi x: hello\n"))
        );
        // Used to recurse until the stack overflowed (SIGSEGV, not even a panic).
        let e = eval(r#"templatefile("self.tpl", {})"#).expect_err("recursion");
        assert!(e.contains("cannot call templatefile"), "{e}");
    }

    #[test]
    fn fileset_stays_out_of_host_directories() {
        let d = Dir::new();
        std::fs::create_dir_all(d.0.join("a/b")).expect("dirs");
        std::fs::write(d.0.join("a/b/x.sh"), "").expect("write");
        std::os::unix::fs::symlink("/proc", d.0.join("a/proc")).expect("symlink");
        assert_eq!(
            eval(r#"fileset(".", "**/*.sh")"#),
            Ok(Value::Array(vec![Value::from("a/b/x.sh")]))
        );
        assert_eq!(eval(r#"length(fileset(".", "**"))"#), Ok(Value::from(1u64)));
        let e = eval(r#"fileset("/proc/self", "*")"#).expect_err("/proc");
        assert!(e.contains("under /proc"), "{e}");
    }

    #[test]
    fn globs() {
        assert!(super::glob("*.txt", "a.txt"));
        assert!(!super::glob("*.txt", "d/a.txt"));
        assert!(super::glob("**/*.txt", "d/e/a.txt"));
        assert!(super::glob("**/*.txt", "a.txt"));
        assert!(super::glob("{a,b}.sh", "b.sh"));
        assert!(super::glob("f?.sh", "f1.sh"));
        assert!(!super::glob("f?.sh", "f/.sh"));
        assert!(super::glob("a.{x,y{1,2}}", "a.y2"));
        assert!(super::glob("a+b(c).txt", "a+b(c).txt"));
        assert!(super::glob("**", "a/b/c.txt"));
        assert!(super::glob("a/**", "a/b/c.txt"));
        assert!(!super::glob("a/**", "b/c.txt"));
    }

    /// Many stars against a long name: exponential for a backtracking matcher, linear here.
    #[test]
    fn glob_stars_are_linear() {
        let pat = format!("{}b", "*a".repeat(30));
        let name = "a".repeat(200);
        let t = Instant::now();
        assert!(!super::glob(&pat, &name));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
