//! Differential tests against the real Packer (Debian's `packer` 1.6.6, with the amazon-chroot
//! builder built in; scripts/setup installs it): the same legacy JSON template through
//! `packer validate` and `kiln validate` gets the same verdict, and where the README promises
//! Packer's message, kiln's output contains it.

use std::path::Path;
use std::process::Command;

fn run(program: &str, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_LOG", "")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const CHROOT: &str = r#"{"type": "amazon-chroot", "source_ami": "ami-12345678", "ami_name": "kiln-diff-{{timestamp}}""#;

/// (name, template, extra args, valid?, a line Packer prints that kiln must print too)
type Case<'a> = (&'a str, String, Vec<&'a str>, bool, Option<&'a str>);

#[test]
fn packer_and_kiln_agree_on_these_templates() {
    assert!(
        Command::new("packer")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "packer is missing: run scripts/setup (or apt-get install -y packer)"
    );
    let dir = std::env::temp_dir().join(crate::support::unique("packer-diff"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("ok.sh"), "true\n").expect("script");
    let cases: Vec<Case> = vec![
        ("minimal", format!(r#"{{"builders": [{CHROOT}}}]}}"#), vec![], true, None),
        (
            "short-name",
            r#"{"builders": [{"type": "amazon-chroot", "source_ami": "ami-12345678", "ami_name": "x"}]}"#.into(),
            vec![],
            false,
            Some("ami_name must be between 3 and 128 characters long"),
        ),
        (
            "duplicate-key",
            format!(r#"{{"builders": [{CHROOT}, "ami_name": "again"}}]}}"#),
            vec![],
            false,
            Some("template has duplicate field: ami_name"),
        ),
        (
            "other-builder-selected-away",
            format!(
                r#"{{"builders": [{{"type": "amazon-ebs", "name": "ebs", "ami_name": "x"}}, {CHROOT}}}]}}"#
            ),
            vec!["-only=amazon-chroot"],
            true,
            None,
        ),
        (
            "empty-number",
            format!(
                r#"{{"variables": {{"size": ""}}, "builders": [{CHROOT}, "root_volume_size": "{{{{user `size`}}}}"}}]}}"#
            ),
            vec![],
            true,
            None,
        ),
        (
            "undeclared-sensitive",
            format!(r#"{{"sensitive-variables": ["nope"], "builders": [{CHROOT}}}]}}"#),
            vec![],
            true,
            None,
        ),
        (
            "no-source",
            r#"{"builders": [{"type": "amazon-chroot", "ami_name": "kiln-diff"}]}"#.into(),
            vec![],
            false,
            None,
        ),
        (
            "script-relative-to-cwd",
            format!(
                r#"{{"builders": [{CHROOT}}}], "provisioners": [{{"type": "shell", "script": "ok.sh"}}]}}"#
            ),
            vec![],
            true,
            None,
        ),
        (
            "missing-script",
            format!(
                r#"{{"builders": [{CHROOT}}}], "provisioners": [{{"type": "shell", "script": "nope.sh"}}]}}"#
            ),
            vec![],
            false,
            Some("Bad script 'nope.sh'"),
        ),
        (
            "missing-playbook",
            format!(
                r#"{{"builders": [{CHROOT}}}], "provisioners": [{{"type": "ansible", "playbook_file": "x.yml"}}]}}"#
            ),
            vec![],
            false,
            Some("playbook_file: x.yml is invalid: stat x.yml: no such file or directory"),
        ),
        (
            "bad-direction",
            format!(
                r#"{{"builders": [{CHROOT}}}], "provisioners": [{{"type": "file", "source": "ok.sh", "destination": "/x", "direction": "sideways"}}]}}"#
            ),
            vec![],
            false,
            Some("Direction must be one of: download, upload."),
        ),
    ];
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let mut disagreements = Vec::new();
    for (name, text, extra, valid, line) in &cases {
        let file = format!("{name}.json");
        std::fs::write(dir.join(&file), text).expect("template");
        let mut args = vec!["validate"];
        args.extend(extra.iter().copied());
        args.push(&file);
        let (p_ok, p_out) = run("packer", &dir, &args);
        let (k_ok, k_out) = run(kiln, &dir, &args);
        if p_ok != *valid {
            disagreements.push(format!(
                "{name}: packer said {p_ok}, the test expects {valid}:\n{p_out}"
            ));
        }
        if k_ok != p_ok {
            disagreements.push(format!(
                "{name}: packer {p_ok}, kiln {k_ok}\npacker: {p_out}\nkiln: {k_out}"
            ));
        }
        if let Some(l) = line
            && !(p_out.contains(l) && k_out.contains(l))
        {
            disagreements.push(format!(
                "{name}: both should print `{l}`\npacker: {p_out}\nkiln: {k_out}"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n\n"));
}
