//! Crash injection: the worker is killed (SIGKILL) after every step and in the middle of a long
//! one; a new worker (on this host or on a second builder host) finishes the build with exactly one
//! AMI per region, and nothing is left: no volume, orphan snapshot, mount, loop device or lock.
//! Every crash test uses a fixed AMI name, as production templates do. Also: the same request
//! delivered many times to two workers runs once.

use crate::support::{
    Emulator, assert_volume_gone_from_host, emulator_script, tagged, track_result, unique,
    with_janitor,
};
use crate::worker::{
    Setup, request, result, result_messages, send, setup, start_worker, start_worker_with,
    stop_worker, upload, wait_for_log,
};

use serde_json::Value;
use std::time::{Duration, Instant};

pub(crate) const COPY_REGION: &str = "us-west-2";

pub(crate) fn request_with_regions(id: &str, s: &Setup, key: &str, pause: u32) -> String {
    let mut v: Value = serde_json::from_str(&request(id, &s.bucket, key, pause)).expect("request");
    v["variables"]["regions"] = Value::String(format!("[\"{COPY_REGION}\"]"));
    v.to_string()
}

/// Like [`request_with_regions`], with a fixed AMI name (as production templates have: a resumed
/// attempt finds its own AMI under the name and must not take it for a conflict).
pub(crate) fn request_fixed_name(id: &str, s: &Setup, key: &str, pause: u32) -> String {
    let mut v: Value =
        serde_json::from_str(&request_with_regions(id, s, key, pause)).expect("request");
    v["variables"]["name"] = Value::String(format!("golden-1.2.3-{id}"));
    v.to_string()
}

/// Waits for a worker to exit by itself (killed by its fault hook, or stopped by a pool notice);
/// its log.
pub(crate) fn wait_exit(mut w: crate::worker::WorkerProc, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if w.exited() {
            let log = w.log();
            let _ = crate::worker::stop_worker(w);
            return log;
        }
        if Instant::now() >= deadline {
            let log = w.log();
            drop(w);
            panic!("the worker did not exit by itself:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Exactly one AMI per region and nothing else of the build left.
pub(crate) async fn assert_one_ami_and_nothing_left(id: &str, doc: &Value, bucket: &str) {
    let emu = Emulator::get();
    for region in [emu.region(), COPY_REGION] {
        let left = tagged(region, id).await;
        let imgs = &left.images;
        assert_eq!(
            imgs.len(),
            1,
            "{id}: exactly one AMI in {region}: {:?}",
            imgs.iter().map(|i| i.image_id()).collect::<Vec<_>>()
        );
        assert_eq!(
            imgs[0].image_id(),
            doc["artifacts"][region]["ami_id"].as_str(),
            "{id}: the result names it"
        );
        let mapped: Vec<String> = imgs[0]
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id().map(str::to_owned)))
            .collect();
        for s in &left.snapshots {
            assert!(
                mapped.iter().any(|m| Some(m.as_str()) == s.snapshot_id()),
                "{id}: orphan snapshot {:?} in {region}",
                s.snapshot_id()
            );
        }
        assert!(
            left.volumes.is_empty(),
            "{id}: volumes left in {region}: {:?}",
            left.volumes
        );
    }
    // Every attempt's volume (from the journal): no file, no loop device, no mount left.
    let emu_s3 = Emulator::get().clients(Emulator::get().region()).await.s3;
    let journal = emu_s3
        .get_object()
        .bucket(bucket)
        .key(format!("checkpoints/{id}.json"))
        .send()
        .await
        .expect("journal");
    let journal: Value = serde_json::from_slice(
        &journal
            .body
            .collect()
            .await
            .expect("journal body")
            .into_bytes(),
    )
    .expect("journal JSON");
    assert_eq!(journal["status"], "succeeded", "{journal:#}");
    let volumes = volumes_in(&journal);
    assert!(
        !volumes.is_empty(),
        "the journal records the volumes: {journal:#}"
    );
    assert_no_volume_left_on_host(id, &volumes);
}

/// No sparse file and no loop device is left for any of `volumes`.
fn assert_no_volume_left_on_host(id: &str, volumes: &[String]) {
    for v in volumes {
        assert_volume_gone_from_host(id, v);
    }
}

/// Overwrites a build's journal (unconditionally, as another owner's write would).
pub(crate) async fn put_journal(s: &Setup, id: &str, journal: &Value) {
    s.s3.put_object()
        .bucket(&s.bucket)
        .key(format!("checkpoints/{id}.json"))
        .body(journal.to_string().into_bytes().into())
        .send()
        .await
        .expect("put the journal");
}

/// The volumes a journal records.
fn volumes_in(journal: &Value) -> Vec<String> {
    journal["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s[1]["volume_id"].as_str().map(str::to_owned))
        .collect()
}

/// Reads a build's journal document.
pub(crate) async fn journal_of(s: &Setup, id: &str) -> Value {
    let o =
        s.s3.get_object()
            .bucket(&s.bucket)
            .key(format!("checkpoints/{id}.json"))
            .send()
            .await
            .expect("journal");
    serde_json::from_slice(&o.body.collect().await.expect("body").into_bytes()).expect("JSON")
}

/// A worker's extra environment.
type Env = Vec<(String, String)>;

/// Where the crashing worker and the one that resumes run.
#[derive(Clone, Copy)]
enum Hosts {
    /// Both on the default host (Nitro naming).
    Same,
    /// Both on this process's Xen host.
    Xen,
    /// The crash on the default host, the resume on a new Xen host in the region's second zone
    /// (the resumed build's volume must be made there, and found under the other naming).
    SecondZoneXen,
}

async fn crash_and_resume(points: &'static [&'static str], hosts: Hosts) {
    crash_and_resume_with(points, hosts, &[]).await;
}

/// [`crash_and_resume`] with extra template variables in the request.
async fn crash_and_resume_with(
    points: &'static [&'static str],
    hosts: Hosts,
    vars: &'static [(&'static str, &'static str)],
) {
    with_janitor(move |janitor| async move {
        let s = setup(10).await;
        let key = upload(&s, &unique("tpl")).await;
        let second_env = |host: &Value| -> Vec<(String, String)> {
            let get = |k: &str| host[k].as_str().expect("host field").to_owned();
            vec![
                (
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                    get("imds_endpoint"),
                ),
                ("KILN_DEVICE_DIR".into(), get("dev_dir")),
                ("KILN_DEVICE_NAMING".into(), get("naming")),
            ]
        };
        // The environment of the crashing worker, then of the worker that resumes.
        let (crash_env, host_env): (Env, Env) = match hosts {
            Hosts::Same => (Vec::new(), Vec::new()),
            Hosts::Xen => (
                crate::support::host_env("xen"),
                crate::support::host_env("xen"),
            ),
            Hosts::SecondZoneXen => {
                let host: Value = serde_json::from_str(&emulator_script(&[
                    "host",
                    &unique("host2"),
                    &format!("{}b", Emulator::get().region()),
                    "--naming",
                    "xen",
                ]))
                .expect("host");
                (Vec::new(), second_env(&host))
            }
        };
        for point in points {
            let id = unique(&format!("crash-{point}"));
            let mut req: Value =
                serde_json::from_str(&request_fixed_name(&id, &s, &key, 0)).expect("request");
            for (k, v) in vars {
                req["variables"][*k] = Value::String((*v).to_owned());
            }
            send(&s, &req.to_string()).await;
            let mut env: Vec<(&str, &str)> = crash_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            env.push(("KILN_FAULT_CRASH_AFTER", point));
            let crashing = start_worker_with(&s, &["--visibility", "3"], &env);
            let log = wait_exit(crashing, Duration::from_secs(90));
            assert!(
                log.contains("KILN_FAULT_CRASH_AFTER"),
                "{point}: the worker crashed at the step:\n{log}"
            );
            let env: Vec<(&str, &str)> = host_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let next = start_worker_with(&s, &["--visibility", "3"], &env);
            let doc = result(&s, &id, Duration::from_secs(90)).await;
            track_result(&janitor, &doc);
            let (_, log) = stop_worker(next);
            assert_eq!(doc["status"], "succeeded", "{point}: {doc:#}\n{log}");
            let name = doc["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == "pre-validate")
                .map(|s| s["outputs"]["ami_name"].clone());
            assert_eq!(
                name,
                Some(Value::String(format!("golden-1.2.3-{id}"))),
                "{point}: the fixed name was used"
            );
            assert!(
                log.contains("resuming a build an earlier attempt started"),
                "{point}:\n{log}"
            );
            // The SBOM is in the result whichever attempt made it (a resume past the snapshot
            // skips the step, and carries the earlier attempt's outputs).
            let sbom = doc["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == "sbom")
                .map(|s| s["outputs"].clone())
                .unwrap_or_default();
            assert!(sbom["format"].is_string(), "{point}: {doc:#}");
            assert_one_ami_and_nothing_left(&id, &doc, &s.bucket).await;
        }
        let _ = result_messages(&s).await;
    })
    .await;
}

#[tokio::test]
async fn crash_after_each_early_step_then_resume() {
    crash_and_resume(
        &[
            "pre-validate",
            "instance-info",
            "allocate-device",
            "create-volume",
            "attach-volume",
            "pre-mount-commands",
            "mount-device",
            "post-mount-commands",
        ],
        Hosts::Same,
    )
    .await;
}

/// The device steps again on a Xen host, where the node is the letter EC2 was asked for.
#[tokio::test]
async fn crash_after_each_device_step_on_xen_then_resume() {
    crash_and_resume(
        &[
            "allocate-device",
            "attach-volume",
            "pre-mount-commands",
            "mount-device",
        ],
        Hosts::Xen,
    )
    .await;
}

#[tokio::test]
async fn crash_after_each_late_step_then_resume() {
    crash_and_resume(
        &[
            "mount-extra",
            "copy-files",
            "provision",
            "early-cleanup",
            "snapshot",
            "register-image",
            "copy-regions",
            "modify-attributes",
        ],
        Hosts::Same,
    )
    .await;
}

/// `force_deregister` (with `force_delete_snapshot`) removes AMIs of the same name, but not the
/// resumed build's own: after a crash past register-image or copy-regions the build keeps its AMI,
/// its copy and the snapshot it resumes from.
#[tokio::test]
async fn crash_with_force_deregister_then_resume() {
    crash_and_resume_with(
        &["register-image", "copy-regions"],
        Hosts::Same,
        &[("force", "true")],
    )
    .await;
}

#[tokio::test]
async fn crash_then_resume_on_a_second_host() {
    crash_and_resume(&["provision", "snapshot"], Hosts::SecondZoneXen).await;
}

/// The provisioner's sleep in [`crash_in_the_middle_of_provisioning_then_resume`]: no other test
/// sleeps this long, so its process is found by its command line.
const MIDCRASH_SLEEP_S: u32 = 27;

/// Processes running `/bin/busybox sleep SECONDS` (the in-image provisioner's).
fn sleeping(seconds: u32) -> Vec<String> {
    let want = format!("/bin/busybox\0sleep\0{seconds}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// SIGKILL of the worker in the middle of a long provisioner: the provisioner's process in the
/// image dies with the worker at once (it does not sleep on against the volume the next attempt
/// reclaims), and the resumed build succeeds.
#[tokio::test]
async fn crash_in_the_middle_of_provisioning_then_resume() {
    with_janitor(|janitor| async move {
        let s = setup(10).await;
        let key = upload(&s, &unique("tpl")).await;
        let id = unique("midcrash");
        send(&s, &request_with_regions(&id, &s, &key, MIDCRASH_SLEEP_S)).await;
        let w = start_worker(&s, &["--visibility", "3"]);
        wait_for_log(&s, &id).await;
        let start = std::time::Instant::now();
        while sleeping(MIDCRASH_SLEEP_S).is_empty() && start.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !sleeping(MIDCRASH_SLEEP_S).is_empty(),
            "the provisioner's sleep started"
        );
        let mut w = w.take();
        let _ = w.kill();
        let _ = w.wait();
        let killed = std::time::Instant::now();
        while !sleeping(MIDCRASH_SLEEP_S).is_empty() && killed.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            sleeping(MIDCRASH_SLEEP_S).is_empty(),
            "the provisioner still runs after its worker was killed: {:?}",
            sleeping(MIDCRASH_SLEEP_S)
        );
        // The next attempt must not sleep 25 s again for the test to be quick; it does, so allow it.
        let next = start_worker(&s, &["--visibility", "3"]);
        let doc = result(&s, &id, Duration::from_secs(120)).await;
        track_result(&janitor, &doc);
        let (_, log) = stop_worker(next);
        assert_eq!(doc["status"], "succeeded", "{doc:#}\n{log}");
        assert!(
            log.contains("killed a process left running in the chroot")
                || log.contains("left by a dead build"),
            "{log}"
        );
        assert_one_ami_and_nothing_left(&id, &doc, &s.bucket).await;
    })
    .await;
}

/// The same request five times, two workers receiving at once: one build, one AMI, five equal
/// results.
#[tokio::test]
async fn duplicate_deliveries_build_once() {
    with_janitor(|janitor| async move {
        let s = setup(10).await;
        let key = upload(&s, &unique("tpl")).await;
        let id = unique("dup");
        for _ in 0..5 {
            send(&s, &request_with_regions(&id, &s, &key, 1)).await;
        }
        // Leases long enough that a loaded machine never lets a live build's lease lapse.
        let a = start_worker(&s, &["--visibility", "10", "--concurrency", "3"]);
        let b = start_worker(&s, &["--visibility", "10", "--concurrency", "3"]);
        let doc = result(&s, &id, Duration::from_secs(90)).await;
        track_result(&janitor, &doc);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut all = Vec::new();
        while all.len() < 5 && Instant::now() < deadline {
            all.extend(result_messages(&s).await);
        }
        let (_, la) = stop_worker(a);
        let (_, lb) = stop_worker(b);
        assert_eq!(
            all.len(),
            5,
            "every request got a result: {all:#?}\n{la}\n{lb}"
        );
        for r in &all {
            assert_eq!(
                r["artifacts"], doc["artifacts"],
                "the same result: {}",
                r["error"]
            );
        }
        let builds = la.matches("==> Creating the root volume").count()
            + lb.matches("==> Creating the root volume").count();
        assert_eq!(builds, 1, "one build ran:\n{la}\n{lb}");
        assert_one_ami_and_nothing_left(&id, &doc, &s.bucket).await;
    })
    .await;
}

/// A worker whose build another worker took over while it ran (the journal changed under it, as
/// when a stalled host's lease lapses) stops within a heartbeat: it undoes its own volume, loop
/// device and mounts, and leaves the journal, the message and the result to the new owner.
#[tokio::test]
async fn a_build_taken_over_under_a_running_worker_stops() {
    with_janitor(|_janitor| async move {
        let s = setup(10).await;
        let key = upload(&s, &unique("tpl")).await;
        let id = unique("lost");
        // Provisioning sleeps far longer than the test waits: only the takeover can end it.
        send(&s, &request(&id, &s.bucket, &key, 600)).await;
        let w = start_worker(&s, &["--visibility", "6"]);
        wait_for_log(&s, &id).await;
        let mut journal = journal_of(&s, &id).await;
        let volumes = volumes_in(&journal);
        assert!(!volumes.is_empty(), "the volume is journaled: {journal:#}");
        // What a takeover writes: a new owner, a new lease, the next attempt.
        let other =
            serde_json::json!({"instance_id": "i-0fffffffffffffff0", "worker_id": "the-new-owner"});
        journal["owner"] = other.clone();
        journal["lease_expires"] = Value::from(kiln::checkpoint::now() + 3600);
        journal["attempt"] = Value::from(journal["attempt"].as_u64().unwrap_or(1) + 1);
        put_journal(&s, &id, &journal).await;
        // The heartbeat (every 2 s) finds the journal changed; the undo then deletes the volume.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = tagged(Emulator::get().region(), &id).await.volumes;
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the worker kept building after losing the build: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (_, log) = stop_worker(w);
        assert!(
            log.contains("another worker took this build over")
                && log.contains("stopped: another worker owns this build now")
                && !log.contains("undo of"),
            "{log}"
        );
        assert_no_volume_left_on_host(&id, &volumes);
        let after = journal_of(&s, &id).await;
        assert_eq!(
            after["owner"], other,
            "the new owner's journal is untouched: {after:#}"
        );
        assert_eq!(after["status"], "running", "{after:#}");
        assert!(
            s.s3.get_object()
                .bucket(&s.bucket)
                .key(format!("results/{id}.json"))
                .send()
                .await
                .is_err(),
            "no result published by the attempt that lost the build"
        );
        assert!(result_messages(&s).await.is_empty(), "no result message");
    })
    .await;
}

/// `kiln build --checkpoint-bucket`: a run killed in the middle is refused a second run while its
/// lease lives, then (the lease lapsed) resumed by a run with the same --build-id, with exactly one
/// AMI per region and nothing left; a finished build id is refused.
#[tokio::test]
async fn kiln_build_with_a_journal_resumes_after_a_crash() {
    with_janitor(|janitor| async move {
        let s = setup(10).await;
        let dir = std::env::temp_dir().join(unique("build-journal"));
        std::fs::create_dir_all(&dir).expect("template dir");
        let template = dir.join("bb.pkr.hcl");
        std::fs::write(&template, crate::worker::TEMPLATE).expect("template");
        std::fs::write(dir.join("greeting.txt"), "hi\n").expect("file");
        let id = unique("build-journal");
        let emu = Emulator::get();
        let run = |crash: Option<&str>| {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
            c.args(["build", "--backend", "ebs", "--json", "--build-id", &id])
                .args(["--checkpoint-bucket", &s.bucket])
                .args(["--var", &format!("regions=[\"{COPY_REGION}\"]")])
                .arg(&template)
                .current_dir(&dir);
            for (k, v) in &emu.vars {
                c.env(k, v);
            }
            if let Some(step) = crash {
                c.env("KILN_FAULT_CRASH_AFTER", step);
            }
            let out = c.output().expect("kiln build");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        // Killed with the volume attached and mounted, in the middle of the build.
        let (ok, _, err) = run(Some("provision"));
        assert!(!ok && err.contains("KILN_FAULT_CRASH_AFTER"), "{err}");
        let mut journal = journal_of(&s, &id).await;
        assert_eq!(journal["status"], "running", "{journal:#}");
        let (ok, _, err) = run(None);
        assert!(
            !ok && err.contains("is running in kiln-build-"),
            "a live lease is respected:\n{err}"
        );
        // The lease lapses (60 s after the crash); the next run resumes.
        journal["lease_expires"] = Value::from(0);
        put_journal(&s, &id, &journal).await;
        let (ok, out, err) = run(None);
        let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        track_result(&janitor, &doc);
        assert!(ok && err.contains("resuming attempt 2"), "{doc:#}\n{err}");
        assert_one_ami_and_nothing_left(&id, &doc, &s.bucket).await;
        let (ok, _, err) = run(None);
        assert!(!ok && err.contains("already finished (succeeded"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// `kiln gc`: volumes of finished builds, everything of failed ones, journals of finished ones go;
/// the AMI of a succeeded build and anything of a running build stay; a build without a journal
/// keeps its AMI but not its volume or unmapped snapshot; a second run (the succeeded build's journal
/// now gone) still keeps its AMI. `--dry-run` deletes nothing; `--build-id` leaves other builds be.
#[tokio::test]
async fn gc_collects_what_finished_and_failed_builds_left() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let c = emu.clients(&region).await;
        let bucket = unique("gc");
        c.s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket");
        // Every build of this test shares a stem, so gc (run with `--build-id {stem}-*`) never
        // touches another test's builds; `outside` does not match and must stay.
        let stem = unique("gc");
        let [ok_build, failed_build, running_build, no_journal, outside] =
            ["ok", "failed", "running", "nojournal", "outside"].map(|k| {
                if k == "outside" {
                    format!("{stem}x")
                } else {
                    format!("{stem}-{k}")
                }
            });
        let journal = |build: &str, status: &str, lease: u64| {
            serde_json::json!({"build_id": build, "owner": null, "lease_expires": lease,
                "attempt": 1, "status": status, "steps": []})
            .to_string()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs();
        for (b, st, lease) in [
            (&ok_build, "succeeded", 0),
            (&failed_build, "failed", 0),
            (&running_build, "running", now + 3600),
            (&outside, "failed", 0),
        ] {
            c.s3.put_object()
                .bucket(&bucket)
                .key(format!("checkpoints/{b}.json"))
                .body(journal(b, st, lease).into_bytes().into())
                .send()
                .await
                .expect("journal");
        }
        let mut ids = std::collections::BTreeMap::new();
        for b in [&ok_build, &failed_build, &running_build, &no_journal, &outside] {
            // The second snapshot is mapped by no image.
            let (vol, snaps, ami) =
                crate::support::tagged_build_resources(&c.ec2, &janitor, &region, b, 2).await;
            ids.insert(b.clone(), (vol, snaps[0].clone(), snaps[1].clone(), ami));
        }
        let pattern = format!("{stem}-*");
        let gc = |dry: bool| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
            cmd.args(["gc", "--bucket", &bucket, "--older-than", "0s"]);
            cmd.args(["--build-id", &pattern]);
            if dry {
                cmd.arg("--dry-run");
            }
            for (k, v) in &emu.vars {
                cmd.env(k, v);
            }
            let out = cmd.output().expect("kiln gc");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        };
        let exists = |kind: &'static str, id: String| {
            let ec2 = c.ec2.clone();
            async move {
                match kind {
                    "volume" => ec2
                        .describe_volumes()
                        .volume_ids(id)
                        .send()
                        .await
                        .is_ok_and(|o| !o.volumes().is_empty()),
                    "snapshot" => ec2
                        .describe_snapshots()
                        .snapshot_ids(id)
                        .send()
                        .await
                        .is_ok_and(|o| !o.snapshots().is_empty()),
                    _ => ec2
                        .describe_images()
                        .image_ids(id)
                        .send()
                        .await
                        .is_ok_and(|o| !o.images().is_empty()),
                }
            }
        };
        // (volume, mapped snapshot, unmapped snapshot, image) -> does each exist?
        let state = |b: &String| {
            let (v, s, u, a) = ids[b].clone();
            let exists = &exists;
            async move {
                [
                    exists("volume", v).await,
                    exists("snapshot", s).await,
                    exists("snapshot", u).await,
                    exists("image", a).await,
                ]
            }
        };
        let dry = gc(true);
        assert!(dry.contains("would delete"), "{dry}");
        for b in [&ok_build, &failed_build, &running_build, &no_journal, &outside] {
            assert_eq!(state(b).await, [true; 4], "--dry-run deleted some of {b}:\n{dry}");
        }
        for round in 1..=2 {
            let out = gc(false);
            assert_eq!(state(&failed_build).await, [false; 4], "round {round}: the failed build's resources are gone:\n{out}");
            assert_eq!(state(&ok_build).await, [false, true, false, true], "round {round}: a succeeded build keeps its AMI and its snapshot, nothing else:\n{out}");
            assert_eq!(state(&no_journal).await, [false, true, false, true], "round {round}: a build without a journal keeps its AMI and its snapshot, nothing else:\n{out}");
            assert_eq!(state(&running_build).await, [true; 4], "round {round}: a running build is untouched:\n{out}");
            assert_eq!(state(&outside).await, [true; 4], "round {round}: a build --build-id does not match is untouched:\n{out}");
            let journals: Vec<String> = c
                .s3
                .list_objects_v2()
                .bucket(&bucket)
                .prefix("checkpoints/")
                .send()
                .await
                .expect("list")
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            let mut want = vec![
                format!("checkpoints/{running_build}.json"),
                format!("checkpoints/{outside}.json"),
            ];
            want.sort();
            assert_eq!(journals, want, "round {round}:\n{out}");
        }
    })
    .await;
}
