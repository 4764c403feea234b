//! The subcommands of `kiln`, one module each: each parses what `main` hands it and calls the
//! library.

pub(crate) mod build;
pub(crate) mod gc;
pub(crate) mod lineage;
pub(crate) mod lint;
pub(crate) mod progress;
pub(crate) mod submit;
pub(crate) mod template;
pub(crate) mod worker;

pub(crate) use super::{BackendKind, BuildFlags, LintArgs, SubmitArgs, TemplateArgs, WorkerArgs};

/// Packer's single-dash flags (`-only=amazon-chroot`, `-var 'k=v'`, `-var-file=f`, `-except`,
/// `-on-error=abort`) as kiln's double-dash ones, so commands from a repository's
/// README or Makefile run unchanged. Other arguments pass through as they are.
pub(crate) fn packer_style_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    /// Packer's flags that kiln has under the same name.
    const PACKER_FLAGS: [&str; 5] = ["only", "except", "var", "var-file", "on-error"];
    args.into_iter()
        .map(|a| {
            let Some(s) = a.to_str() else { return a };
            let Some(rest) = s.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
                return a;
            };
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            if PACKER_FLAGS.contains(&name) {
                format!("-{s}").into()
            } else {
                a
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn packer_flags_become_kilns() {
        let got = super::packer_style_args(
            [
                "kiln",
                "build",
                "-only=amazon-chroot",
                "-var",
                "a=b",
                "-v",
                "--json",
                "x.json",
            ]
            .map(std::ffi::OsString::from),
        );
        let got: Vec<_> = got
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "kiln",
                "build",
                "--only=amazon-chroot",
                "--var",
                "a=b",
                "-v",
                "--json",
                "x.json"
            ]
        );
    }
}
