//! `kiln submit` and `kiln status` against a running worker: a local template directory is
//! uploaded and built, `--wait` returns the result, `status` shows the log while the build runs
//! and the result once it finished, and names an unknown build as such.

use crate::support::{Emulator, tagged, track_result, unique, with_janitor};
use crate::worker::{TEMPLATE, setup, start_worker, stop_worker, wait_for_log};
use serde_json::Value;
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    kiln_in(std::path::Path::new("."), args)
}

/// `kiln ARGS` run in `cwd`.
fn kiln_in(cwd: &std::path::Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).current_dir(cwd);
    for (k, v) in &Emulator::get().vars {
        c.env(k, v);
    }
    c.output().expect("run kiln")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn submit_wait_and_status_against_a_worker() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        // A repository: the template in packer/, the file it uploads in files/, named relative
        // to the repository root, where `kiln submit packer/bb.pkr.hcl` runs (as with Packer).
        let dir = std::env::temp_dir().join(unique("submit"));
        std::fs::create_dir_all(dir.join("packer")).expect("dir");
        std::fs::create_dir_all(dir.join("files")).expect("dir");
        std::fs::write(
            dir.join("packer/bb.pkr.hcl"),
            TEMPLATE.replace(
                "source      = \"greeting.txt\"",
                "source      = \"files/greeting.txt\"",
            ),
        )
        .expect("template");
        std::fs::write(dir.join("files/greeting.txt"), "hi from submit\n").expect("file");
        let template = "packer/bb.pkr.hcl".to_owned();
        let worker = start_worker(&s, &[]);

        // A build that takes a while: `status` shows its log while it runs.
        let slow = unique("slow");
        let out = kiln_in(
            &dir,
            &[
                "submit",
                "--queue",
                &s.queue,
                "--bucket",
                &s.bucket,
                "--build-id",
                &slow,
                "--var",
                "pause=20",
                &template,
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), slow);
        wait_for_log(&s, &slow).await;
        let out = kiln(&["status", "--bucket", &s.bucket, &slow]);
        assert!(out.status.success(), "{}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            shown.contains("running; its log so far") && shown.contains("worker-build-running"),
            "{shown}"
        );

        // --wait returns once the worker published the result; exit 0 for a success.
        let quick = unique("quick");
        let out = kiln_in(
            &dir,
            &[
                "submit",
                "--queue",
                &s.queue,
                "--bucket",
                &s.bucket,
                "--build-id",
                &quick,
                "--wait",
                "--timeout",
                "300",
                &template,
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        for id in [&slow, &quick] {
            let out = kiln(&["status", "--bucket", &s.bucket, id]);
            assert!(out.status.success(), "{}", text(&out));
            let doc: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{id}: status prints the result ({e}): {}", text(&out)));
            track_result(&janitor, &doc);
            assert_eq!(doc["status"], "succeeded", "{doc:#}");
            let ami = doc["artifacts"][Emulator::get().region()]["ami_id"].as_str();
            let images = tagged(Emulator::get().region(), id).await.images;
            assert_eq!(
                images.iter().map(|i| i.image_id()).collect::<Vec<_>>(),
                vec![ami],
                "{id}: the result names the build's one AMI"
            );
            let got = crate::pipeline::read_from_result(&doc, &["/etc/copied"]);
            assert_eq!(
                got[0].as_deref(),
                Some("hi from submit\n"),
                "{id}: the file named relative to the working directory came along"
            );
        }
        let (_, log) = stop_worker(worker);

        let unknown = unique("unknown");
        let out = kiln(&["status", "--bucket", &s.bucket, &unknown]);
        assert!(!out.status.success(), "{}\n{log}", text(&out));
        assert!(
            text(&out).contains("not started yet, or unknown"),
            "{}",
            text(&out)
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
