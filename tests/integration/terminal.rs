//! `kiln build` on a terminal (a pseudo-terminal from util-linux's `script`): Packer-style `==>`
//! lines, a progress line for a step that runs longer than two seconds (redrawn in place, cleared
//! before the next line), and no log lines repeating the `==>` lines; off a terminal, no escape
//! codes at all.

use crate::pipeline::{Tpl, busybox, read_from_result};
use crate::support::{Emulator, track_result, unique, with_janitor};
use std::process::Command;

#[tokio::test]
async fn a_terminal_gets_a_progress_line_for_long_steps() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let tpl = t.write(
            "slow.pkr.hcl",
            &busybox(
                &unique("tty"),
                "",
                r#"provisioner "shell" { inline = ["echo step-started", "sleep 5", "echo slow-step > /etc/slow"] }"#,
            ),
        );
        let result = t.0.join("result.json");
        let emu = Emulator::get();
        let inner = format!(
            "{} build --backend ebs --json {} > {}",
            env!("CARGO_BIN_EXE_kiln"),
            tpl.display(),
            result.display()
        );
        let mut c = Command::new("script");
        c.args(["-qec", &inner, "/dev/null"])
            .current_dir(&t.0)
            .env_remove("RUST_LOG");
        for (k, v) in &emu.vars {
            c.env(k, v);
        }
        let out = c
            .output()
            .expect("script (util-linux's bsdutils: apt-get install -y bsdutils)");
        let tty = String::from_utf8_lossy(&out.stdout).into_owned();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&result).unwrap_or_default())
                .unwrap_or_else(|e| panic!("no result ({e}):\n{tty}"));
        track_result(&janitor, &doc);
        assert!(out.status.success() && doc["status"] == "succeeded", "{tty}");
        assert_eq!(
            read_from_result(&doc, &["/etc/slow"])[0].as_deref(),
            Some("slow-step\n")
        );
        // The progress line: drawn in place for the provision step, with its last output.
        assert!(
            tty.contains("\r\x1b[2K    … Provisioning inside the chroot (2 s)"),
            "no progress line:\n{tty:?}"
        );
        assert!(tty.contains("step-started"), "{tty:?}");
        assert!(tty.contains("==> Creating a snapshot"), "{tty:?}");
        // The log lines repeating the steps wait for -v on a terminal.
        assert!(!tty.contains("step done"), "log lines repeat the steps:\n{tty}");

        // Off a terminal: the same lines, no escape codes.
        let tpl = t.write(
            "plain.pkr.hcl",
            &busybox(&unique("notty"), "", r#"provisioner "shell" { inline = ["sleep 3"] }"#),
        );
        let (ok, doc, stderr) = crate::pipeline::build(&tpl, &[]);
        track_result(&janitor, &doc);
        assert!(ok, "{stderr}");
        assert!(!stderr.contains('\x1b'), "escape codes off a terminal:\n{stderr:?}");
        assert!(stderr.contains("==> Provisioning inside the chroot"));
    })
    .await;
}
