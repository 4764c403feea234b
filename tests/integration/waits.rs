//! Real builds with the emulator's delays on (volumes creating, attachments attaching, snapshots
//! and images pending: the waits are exercised, not answered at the first poll), and SIGTERM in
//! the middle of a wait. Each test has a region of its own, so its delays slow nobody else.

use crate::pipeline::{Tpl, busybox, kiln_command};
use crate::support::{Emulator, emulator_script, repo_root, tagged, track_result, unique, with_janitor};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Sets `delays` in `region` and clears them when dropped, also when the test fails.
struct Delays(&'static str);

impl Delays {
    fn set(region: &'static str, delays: &[&str]) -> Self {
        let mut args = vec!["delays", region];
        args.extend_from_slice(delays);
        emulator_script(&args);
        Delays(region)
    }
}

impl Drop for Delays {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("scripts/emulator"))
            .args(["delays", self.0])
            .status();
    }
}

/// A builder host in `region` (zone a); returns its IMDS endpoint.
fn host_in(region: &str) -> String {
    let host: Value = serde_json::from_str(&emulator_script(&[
        "host",
        &unique("waits"),
        &format!("{region}a"),
    ]))
    .expect("host");
    host["imds_endpoint"].as_str().expect("imds").to_owned()
}

/// What build `id` has left in `region`: (volumes, snapshots, images).
async fn left_in(region: &str, id: &str) -> (usize, usize, usize) {
    let t = tagged(region, id).await;
    (t.volumes.len(), t.snapshots.len(), t.images.len())
}

/// Every resource stays creating or pending for a while: the build waits for each and succeeds,
/// and the AMI maps the snapshot it made; nothing else of the build is left.
#[tokio::test]
async fn a_build_waits_out_slow_resources() {
    const REGION: &str = "eu-west-1";
    with_janitor(|janitor| async move {
        let _delays = Delays::set(
            REGION,
            &["volume=2", "attachment=1", "snapshot=3", "image=2"],
        );
        let imds = host_in(REGION);
        let tpl = Tpl::new();
        let t = tpl.write("bb.pkr.hcl", &busybox(&unique("slow"), "", ""));
        let id = unique("slow");
        let out = kiln_command(&t, &["--build-id".to_owned(), id.clone()])
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)
            .output()
            .expect("kiln build");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no result ({e}):\n{stderr}"));
        track_result(&janitor, &doc);
        assert!(out.status.success(), "{stderr}\n{doc:#}");
        assert_eq!(doc["region"], REGION);
        let art = &doc["artifacts"][REGION];
        let ami = art["ami_id"].as_str().expect("ami");
        let snapshot = art["snapshot_ids"][0].as_str().expect("snapshot");
        let ec2 = Emulator::get().clients(REGION).await.ec2;
        let image = ec2
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .expect("DescribeImages")
            .images()
            .first()
            .cloned()
            .expect("the AMI");
        assert_eq!(image.state().map(|s| s.as_str()), Some("available"));
        let root = image
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some("/dev/xvda"))
            .and_then(|m| m.ebs())
            .and_then(|e| e.snapshot_id());
        assert_eq!(root, Some(snapshot), "the AMI maps the new snapshot");
        assert_eq!(left_in(REGION, &id).await, (0, 1, 1), "only the AMI and its snapshot");
    })
    .await;
}

/// SIGTERM while the build waits for its snapshot (pending for minutes): the wait stops, the
/// build is undone (the pending snapshot and the volume deleted) and `kiln build` exits non-zero
/// with a result that says it was cancelled.
#[tokio::test]
async fn sigterm_during_a_wait_stops_it_and_undoes_the_build() {
    const REGION: &str = "eu-central-1";
    with_janitor(|janitor| async move {
        let _delays = Delays::set(REGION, &["snapshot=600"]);
        let imds = host_in(REGION);
        let tpl = Tpl::new();
        let t = tpl.write("bb.pkr.hcl", &busybox(&unique("term"), "", ""));
        let id = unique("term");
        let mut child = kiln_command(&t, &["--build-id".to_owned(), id.clone()])
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln build");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        // Wait (on the log, with a generous deadline) until the build waits for its snapshot.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    let _ = child.kill();
                    panic!("the build never reached its snapshot");
                });
            if line.contains("Creating a snapshot") {
                break;
            }
        }
        // The snapshot exists and is pending: the build is inside its wait.
        let deadline = Instant::now() + Duration::from_secs(60);
        while left_in(REGION, &id).await.1 == 0 {
            assert!(Instant::now() < deadline, "no snapshot was made");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        // Far less than the snapshot's 600 s: the wait was cancelled, not waited out.
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kiln build did not stop on SIGTERM during a wait");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let out = child.wait_with_output().expect("output");
        let log = reader.join().unwrap_or_default();
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no result ({e}):\n{log}"));
        track_result(&janitor, &doc);
        assert!(!out.status.success(), "{log}");
        assert_eq!(doc["status"], "failed", "{doc:#}");
        assert_eq!(doc["error"]["step"], "snapshot", "{doc:#}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cancel")),
            "{doc:#}"
        );
        assert_eq!(
            left_in(REGION, &id).await,
            (0, 0, 0),
            "the pending snapshot and the volume are gone:\n{log}"
        );
    })
    .await;
}
