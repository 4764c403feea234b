//! Real builds with the emulator's delays on (volumes creating, attachments attaching, snapshots
//! and images pending: the waits are exercised, not answered at the first poll), SIGTERM in the
//! middle of a wait, and waits in fresh processes with and without the builder's wait history.
//! Each test has a region of its own, so its delays slow nobody else, and a state directory of its
//! own (loop backend), so its wait history is its own.

use crate::pipeline::{Tpl, busybox};
use crate::support::{
    Emulator, emulator_script, repo_root, tagged, track_result, unique, with_janitor,
};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A state directory of the test's own (volume files and the wait history).
fn state_dir(what: &str) -> PathBuf {
    let dir = PathBuf::from("/var/tmp").join(unique(&format!("kiln-waits-{what}")));
    std::fs::create_dir_all(&dir).expect("state dir");
    dir
}

/// `kiln build --json` of `template` on the loop backend in `state` (its wait history there),
/// on the builder host at `imds` in `region`, with JSON logs on stderr.
fn kiln_command(template: &Path, region: &str, imds: &str, state: &Path, id: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["build", "--backend", "loop", "--json", "--build-id", id])
        .arg("--state-dir")
        .arg(state)
        .arg(template);
    for (k, v) in &Emulator::get().vars {
        c.env(k, v);
    }
    c.env("RUST_LOG", "kiln=info")
        .env("KILN_LOG_FORMAT", "json")
        .env_remove("KILN_WAIT_HISTORY")
        .env("AWS_REGION", region)
        .env("AWS_DEFAULT_REGION", region)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds);
    c.current_dir(template.parent().unwrap_or(Path::new(".")));
    c
}

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

/// A builder host in `region` (zone a); returns its IMDS endpoint. Through the control endpoint:
/// `scripts/emulator host` makes hosts in the default region.
fn host_in(region: &str) -> String {
    let body = serde_json::json!({
        "name": unique("waits"),
        "region": region,
        "az": format!("{region}a"),
        "nodes": false,
    });
    let out = Command::new("curl")
        .args(["-sf", "-X", "POST", "-H", "Content-Type: application/json"])
        .arg(format!("{}/_kiln/hosts", Emulator::get().endpoint()))
        .arg("-d")
        .arg(body.to_string())
        .output()
        .expect("curl");
    let host: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no host ({e}): {}", String::from_utf8_lossy(&out.stderr)));
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
        let state = state_dir("slow");
        let out = kiln_command(&t, REGION, &imds, &state, &id)
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
        assert_eq!(
            left_in(REGION, &id).await,
            (0, 1, 1),
            "only the AMI and its snapshot"
        );
        let _ = std::fs::remove_dir_all(state);
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
        let state = state_dir("term");
        let mut child = kiln_command(&t, REGION, &imds, &state, &id)
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
        let _ = std::fs::remove_dir_all(state);
    })
    .await;
}

/// The `wait done` log records of a build's JSON log, by history key prefix: (polls, whether the
/// wait started from history).
fn waits_done(log: &str, key: &str) -> Vec<(u64, bool)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["fields"].clone())
        .filter(|f| f["message"] == "wait done")
        .filter(|f| f["key"].as_str().is_some_and(|k| k.starts_with(key)))
        .map(|f| (f["polls"].as_u64().unwrap_or(0), !f["history_s"].is_null()))
        .collect()
}

/// One busybox build in `region` on a fresh `kiln build` process; returns its JSON log.
async fn fresh_build(
    janitor: &crate::support::Janitor,
    region: &str,
    imds: &str,
    state: &Path,
) -> String {
    let tpl = Tpl::new();
    let t = tpl.write("bb.pkr.hcl", &busybox(&unique("fresh"), "", ""));
    let id = unique("fresh");
    let out = kiln_command(&t, region, imds, state, &id)
        .output()
        .expect("kiln build");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no result ({e}):\n{log}"));
    track_result(janitor, &doc);
    assert!(out.status.success(), "{log}\n{doc:#}");
    log
}

/// Volume (3 s), attachment (1 s) and image (2 s) waits in fresh `kiln build` processes: the first
/// build has no history, polls with bounded lateness (at most one poll per 0.25 s of waiting, so a
/// call count bounded by the delay) and leaves the history on the builder; the second starts from
/// it and stays within the call budget of `scripts/bench waits` (8 + wait/15). Every wait saw its
/// resource pending before it returned (the delays were in force), and returned at the first
/// ready answer, which the build's next call (AttachVolume needs an available volume, the
/// result an available image) relies on.
#[tokio::test]
async fn waits_in_a_fresh_process_start_from_the_builders_history() {
    const REGION: &str = "us-east-2";
    // (history key, delay in seconds).
    const WAITS: [(&str, f64); 3] = [
        ("volume to become available [blank", 3.0),
        ("volume to attach", 1.0),
        ("image in to become available", 2.0),
    ];
    with_janitor(|janitor| async move {
        let _delays = Delays::set(REGION, &["volume=3", "attachment=1", "image=2"]);
        let imds = host_in(REGION);
        let state = state_dir("fresh");
        let history = state.join("wait-history.json");
        let first = fresh_build(&janitor, REGION, &imds, &state).await;
        for (key, delay) in WAITS {
            let seen = waits_done(&first, key);
            let [(polls, from_history)] = seen[..] else {
                panic!("one {key} wait expected, got {seen:?}:\n{first}");
            };
            assert!(!from_history, "{key}: no history yet");
            // Pauses of at least 0.25 s until the resource is ready, then the ready poll.
            let bound = 2 + (delay / 0.25) as u64;
            assert!(
                (2..=bound).contains(&polls),
                "{key}: {polls} polls (at most {bound})"
            );
        }
        let text = std::fs::read_to_string(&history).expect("the history on the builder");
        let saved: Value = serde_json::from_str(&text).expect("history JSON");
        for (key, _) in WAITS {
            let has = saved["waits"]
                .as_object()
                .is_some_and(|w| w.keys().any(|k| k.starts_with(key)));
            assert!(has, "{key} not in the history:\n{text}");
        }
        let second = fresh_build(&janitor, REGION, &imds, &state).await;
        for (key, delay) in WAITS {
            let seen = waits_done(&second, key);
            let [(polls, from_history)] = seen[..] else {
                panic!("one {key} wait expected, got {seen:?}:\n{second}");
            };
            assert!(from_history, "{key}: started from the history file");
            let budget = (8.0 + delay / 15.0) as u64;
            assert!(
                (2..=budget).contains(&polls),
                "{key}: {polls} polls (budget {budget})"
            );
        }
        let _ = std::fs::remove_dir_all(&state);
    })
    .await;
}
