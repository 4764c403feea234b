//! The image's operating system (`os-release`) and its installed kernels (the same places the
//! image linter looks: `/lib/modules/<v>` and the kernel files in `/boot`).

use super::{ImageFiles, Os, SbomError, read_bounded};
use std::cmp::Ordering;

/// Where os-release lives, in the order the os-release(5) manual says to try them.
const OS_RELEASE: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// Bytes of an os-release file kiln reads at most: real ones are under 1 KiB; 64 KiB leaves
/// room for any distribution's extra fields.
const MAX_OS_RELEASE: u64 = 64 * 1024;

/// Prefixes of kernel image files in `/boot` (as `lint::kernels`).
const KERNEL_PREFIXES: [&str; 4] = ["vmlinuz-", "vmlinux-", "Image-", "kernel-"];

/// Kernels kiln lists at most: a `/boot` holds a handful; the bound keeps a crafted
/// `/lib/modules` of thousands of directories from becoming thousands of SBOM entries.
const MAX_KERNELS: usize = 1_000;

/// The OS from the first os-release file found; `None` when there is none. No side effects.
pub(super) fn os_release(files: &dyn ImageFiles) -> Result<Option<Os>, SbomError> {
    for path in OS_RELEASE {
        if let Some(bytes) = read_bounded(files, path, MAX_OS_RELEASE)? {
            return Ok(Some(parse_os_release(&String::from_utf8_lossy(&bytes))));
        }
    }
    Ok(None)
}

/// Parses os-release's `KEY=value` lines (values may be quoted, with backslash escapes).
fn parse_os_release(text: &str) -> Os {
    let mut os = Os::default();
    for line in text.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if line.starts_with('#') {
            continue;
        }
        let value = unquote(value.trim());
        match key.trim() {
            "ID" => os.id = value,
            "VERSION_ID" => os.version_id = Some(value),
            "PRETTY_NAME" => os.pretty_name = Some(value),
            _ => {}
        }
    }
    if os.id.is_empty() {
        os.id = "linux".into();
    }
    os
}

/// A shell-style value: `"a \"b\""` -> `a "b"`, `'x'` -> `x`, else as is.
fn unquote(v: &str) -> String {
    let inner = |q: char| v.strip_prefix(q)?.strip_suffix(q);
    if let Some(single) = inner('\'') {
        return single.to_owned();
    }
    let Some(double) = inner('"') else {
        return v.to_owned();
    };
    let mut out = String::new();
    let mut chars = double.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Installed kernel versions, sorted as `sort -V` does, deduplicated. No side effects.
pub(super) fn kernels(files: &dyn ImageFiles) -> Result<Vec<String>, SbomError> {
    let boot = files.list_dir("/boot")?.unwrap_or_default();
    let modules = files.list_dir("/lib/modules")?.unwrap_or_default();
    let mut versions: Vec<String> = boot
        .iter()
        .filter_map(|n| KERNEL_PREFIXES.iter().find_map(|p| n.strip_prefix(p)))
        // dracut's rescue kernel (`vmlinuz-0-rescue-<machine id>`) is a copy, not a version.
        .filter(|v| !v.starts_with("0-rescue-"))
        .map(str::to_owned)
        .chain(modules)
        .filter(|v| !v.is_empty())
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    versions.dedup();
    if versions.len() > MAX_KERNELS {
        return Err(SbomError::bad(
            "/lib/modules",
            format!("more than {MAX_KERNELS} kernel versions"),
        ));
    }
    Ok(versions)
}

/// Compares versions as `sort -V` does: runs of digits by value, the rest as text (equal runs
/// then by their text, so the order is total). Pure; the image linter's kernels use it too.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(first) = rest.chars().next() {
            let digit = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            out.push((digit, run));
            rest = tail;
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.0, y.0) {
            (true, true) => {
                let (tx, ty) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty))
            }
            _ => x.1.cmp(y.1),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let os = parse_os_release(
            "# comment\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='Debian'\nVERSION_ID=\"12\"\nID=debian\nX=\"a \\\"b\\\"\"\n",
        );
        assert_eq!(
            os,
            Os {
                id: "debian".into(),
                version_id: Some("12".into()),
                pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            }
        );
        assert_eq!(parse_os_release("NAME=x\n").id, "linux");
        assert_eq!(unquote("\"a \\\"b\\\"\""), "a \"b\"");
        assert_eq!(unquote("\""), "\"");
    }

    #[test]
    fn kernel_versions_sort_like_sort_v() {
        let mut v = vec!["6.1.0-10-cloud-amd64", "6.1.0-9-cloud-amd64", "5.10.0-32"];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            ["5.10.0-32", "6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"]
        );
    }
}
