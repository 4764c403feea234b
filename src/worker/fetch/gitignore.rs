//! A small `.gitignore` reader for `kiln submit`'s walk of a template's folder: the patterns of
//! every `.gitignore` from the repository's root (the nearest folder above holding `.git`) down to
//! the folder walked, and the repository's `.git/info/exclude`, with git's rules: `#` comments,
//! `!` negation, a trailing `/` for directories only, a pattern with a `/` anchored to its
//! file's folder (otherwise matched at any depth), `*`, `?`, `[...]` and `**`; the last matching
//! pattern wins. Global excludes (`core.excludesFile`) are not read.

use std::path::{Path, PathBuf};

/// One pattern of a `.gitignore` file.
#[derive(Debug, Clone)]
struct Rule {
    /// The folder the pattern is relative to.
    base: PathBuf,
    regex: regex::Regex,
    negate: bool,
    dir_only: bool,
}

/// The patterns in force in a folder.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<Rule>,
}

impl Ignore {
    /// The patterns in force in `dir` (absolute): the repository's exclude file and every
    /// `.gitignore` from its root down to `dir`; outside a repository, every `.gitignore` from
    /// `top` (the submit's root) down to `dir`. Unreadable files are skipped.
    pub fn for_dir(dir: &Path, top: &Path) -> Self {
        let mut chain: Vec<&Path> = dir.ancestors().collect();
        if let Some(i) = chain.iter().position(|d| d.join(".git").exists()) {
            chain.truncate(i + 1);
        } else if let Some(i) = chain.iter().position(|d| *d == top) {
            chain.truncate(i + 1);
        } else {
            chain.truncate(1);
        }
        chain.reverse();
        let mut out = Self::default();
        if let Some(repo) = chain.first() {
            out.read(repo, &repo.join(".git/info/exclude"));
        }
        for d in chain {
            out.read(d, &d.join(".gitignore"));
        }
        out
    }

    /// These patterns and those of `dir`'s own `.gitignore` (for a folder below).
    pub fn enter(&self, dir: &Path) -> Self {
        let mut out = self.clone();
        out.read(dir, &dir.join(".gitignore"));
        out
    }

    fn read(&mut self, base: &Path, file: &Path) {
        let Ok(text) = std::fs::read_to_string(file) else {
            return;
        };
        self.rules
            .extend(text.lines().filter_map(|l| parse(base, l)));
    }

    /// Whether `path` (absolute; `is_dir` for a folder) is ignored.
    pub fn ignored(&self, path: &Path, is_dir: bool) -> bool {
        let mut ignored = false;
        for r in &self.rules {
            if r.dir_only && !is_dir {
                continue;
            }
            let Ok(rel) = path.strip_prefix(&r.base) else {
                continue;
            };
            let rel = rel.to_string_lossy();
            if !rel.is_empty() && r.regex.is_match(&rel) {
                ignored = !r.negate;
            }
        }
        ignored
    }
}

/// One line of a `.gitignore` in `base` as a rule; `None` for blanks, comments and patterns that
/// do not compile.
fn parse(base: &Path, line: &str) -> Option<Rule> {
    let mut p = line.trim_end_matches([' ', '\t', '\r']);
    if p.is_empty() || p.starts_with('#') {
        return None;
    }
    let negate = p.starts_with('!');
    if negate {
        p = &p[1..];
    }
    if p.starts_with("\\#") || p.starts_with("\\!") {
        p = &p[1..];
    }
    let dir_only = p.ends_with('/');
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        return None;
    }
    let anchored = p.contains('/');
    let p = p.trim_start_matches('/');
    let body = glob_regex(p);
    let re = if anchored {
        format!("^{body}$")
    } else {
        format!("^(?:.*/)?{body}$")
    };
    Some(Rule {
        base: base.to_path_buf(),
        regex: regex::Regex::new(&re).ok()?,
        negate,
        dir_only,
    })
}

/// A gitignore glob as a regular expression body.
fn glob_regex(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at_start = i == 0 || chars[i - 1] == '/';
        if c == '*' && chars.get(i + 1) == Some(&'*') && at_start {
            match chars.get(i + 2) {
                // `**/`: any folders, or none.
                Some('/') => {
                    out.push_str("(?:.*/)?");
                    i += 3;
                    continue;
                }
                // A trailing `**`: everything inside.
                None => {
                    out.push_str(".*");
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        match c {
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '\\' if i + 1 < chars.len() => {
                i += 1;
                out.push_str(&regex::escape(&chars[i].to_string()));
            }
            '[' => match chars[i + 1..].iter().position(|&c| c == ']') {
                Some(len) if len > 0 => {
                    let class: String = chars[i + 1..i + 1 + len].iter().collect();
                    let class = match class.strip_prefix('!') {
                        Some(rest) => format!("^{rest}"),
                        None => class,
                    };
                    out.push('[');
                    out.push_str(&class.replace('\\', "\\\\").replace('[', "\\["));
                    out.push(']');
                    i += len + 1;
                }
                _ => out.push_str("\\["),
            },
            c => out.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_rules() {
        let base = Path::new("/r");
        let rules: Vec<Rule> = [
            "# comment",
            "",
            "target/",
            "*.key",
            "!keep.key",
            "/build",
            "docs/*.tmp",
            "**/cache/**",
            "a/**/z",
            "log[0-9].txt",
        ]
        .iter()
        .filter_map(|l| parse(base, l))
        .collect();
        let ig = Ignore { rules };
        let cases: &[(&str, bool, bool)] = &[
            ("/r/target", true, true),
            ("/r/target", false, false),
            ("/r/sub/target", true, true),
            ("/r/x.key", false, true),
            ("/r/sub/x.key", false, true),
            ("/r/keep.key", false, false),
            ("/r/build", true, true),
            ("/r/sub/build", true, false),
            ("/r/docs/a.tmp", false, true),
            ("/r/docs/sub/a.tmp", false, false),
            ("/r/x/cache/y", false, true),
            ("/r/a/z", false, true),
            ("/r/a/b/c/z", false, true),
            ("/r/log1.txt", false, true),
            ("/r/logx.txt", false, false),
            ("/r/app.json", false, false),
        ];
        for (p, dir, want) in cases {
            assert_eq!(ig.ignored(Path::new(p), *dir), *want, "{p} dir={dir}");
        }
    }
}
