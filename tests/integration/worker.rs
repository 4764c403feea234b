//! `kiln worker` on the emulator with the ebs backend: builds through the queue, every kind of
//! malformed message, two workers sharing a queue, and SIGTERM draining or cancelling a build.

use crate::support::{Emulator, track_result, unique, with_janitor};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Queues and a bucket of a test's own.
pub(crate) struct Setup {
    pub(crate) queue: String,
    pub(crate) dlq: String,
    pub(crate) results: String,
    pub(crate) bucket: String,
    other_bucket: String,
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) s3: aws_sdk_s3::Client,
}

pub(crate) async fn setup(max_receive: u32) -> Setup {
    let emu = Emulator::get();
    let c = emu.clients(emu.region()).await;
    let name = unique("q");
    let dlq = c
        .sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("dlq")
        .queue_url
        .expect("url");
    let arn = c
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("arn")
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("arn");
    let queue = c
        .sqs
        .create_queue()
        .queue_name(&name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "30",
        )
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max_receive}"}}"#),
        )
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    let results = c
        .sqs
        .create_queue()
        .queue_name(format!("{name}-results"))
        .send()
        .await
        .expect("results")
        .queue_url
        .expect("url");
    let bucket = unique("bucket");
    let other_bucket = unique("untrusted");
    for b in [&bucket, &other_bucket] {
        c.s3.create_bucket().bucket(b).send().await.expect("bucket");
    }
    Setup {
        queue,
        dlq,
        results,
        bucket,
        other_bucket,
        sqs: c.sqs,
        s3: c.s3,
    }
}

/// A worker process that is stopped (SIGTERM, then SIGKILL) when dropped, so a failing test
/// leaves no worker running. Its log goes to a file, not a pipe: a pipe nobody reads until the
/// end fills up (64 KiB) and then stops the worker in the middle of a log line.
pub(crate) struct WorkerProc(Option<Child>, Option<PathBuf>);

impl WorkerProc {
    /// Wraps a worker process started elsewhere (its log, if piped, is read when it stops).
    pub(crate) fn from_child(child: Child) -> Self {
        WorkerProc(Some(child), None)
    }

    /// The process, no longer stopped on drop.
    pub(crate) fn take(mut self) -> Child {
        self.0.take().expect("worker process")
    }

    /// Whether the worker has exited (it is reaped then).
    pub(crate) fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// The log the worker wrote so far.
    pub(crate) fn log(&self) -> String {
        self.1
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for WorkerProc {
    /// A worker still running is stopped and its log removed; after [`WorkerProc::take`] the
    /// log stays for whoever reads it ([`stop_worker`] removes it).
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let _ = stop_worker_child(child, self.1.as_deref());
            if let Some(p) = self.1.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

pub(crate) fn start_worker(s: &Setup, extra: &[&str]) -> WorkerProc {
    start_worker_with(s, extra, &[])
}

/// A worker with extra environment (fault injection, another host's IMDS).
pub(crate) fn start_worker_with(s: &Setup, extra: &[&str], env: &[(&str, &str)]) -> WorkerProc {
    let emu = Emulator::get();
    let log = std::env::temp_dir().join(format!("{}.log", unique("worker-log")));
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args([
        "worker",
        "--queue",
        &s.queue,
        "--result-queue",
        &s.results,
        "--bucket",
        &s.bucket,
        "--backend",
        "ebs",
    ])
    .args(if extra.contains(&"--visibility") {
        &[][..]
    } else {
        &["--visibility", "6"][..]
    })
    .args(extra)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).expect("worker log file"));
    for (k, v) in &emu.vars {
        c.env(k, v);
    }
    c.env("RUST_LOG", "kiln=info").env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    WorkerProc(Some(c.spawn().expect("start kiln worker")), Some(log))
}

/// SIGTERM, then the worker's exit status and log.
pub(crate) fn stop_worker(w: WorkerProc) -> (bool, String) {
    let log = w.1.clone();
    let out = stop_worker_child(w.take(), log.as_deref());
    if let Some(p) = log {
        let _ = std::fs::remove_file(p);
    }
    out
}

fn stop_worker_child(mut child: Child, log: Option<&Path>) -> (bool, String) {
    // Not to a worker already reaped: its pid may be another process's by now.
    if child.try_wait().ok().flatten().is_none() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("worker output");
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(bytes) = log.and_then(|p| std::fs::read(p).ok()) {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    (out.status.success(), text)
}

pub(crate) const TEMPLATE: &str = r#"
variable "pause" {
  default = "0"
}
variable "regions" {
  type    = list(string)
  default = []
}
variable "name" {
  default = "kiln-worker-test-{{uuid}}"
}
variable "users" {
  type    = list(string)
  default = []
}
variable "force" {
  default = false
}
source "amazon-chroot" "bb" {
  from_scratch            = true
  ami_name                = var.name
  ami_regions             = var.regions
  ami_users               = var.users
  force_deregister        = var.force
  force_delete_snapshot   = var.force
  ami_virtualization_type = "hvm"
  root_device_name        = "/dev/xvda"
  root_volume_size        = 1
  copy_files              = []
  chroot_mounts           = [["proc", "proc", "/proc"]]
  ami_block_device_mappings {
    device_name = "/dev/xvda"
  }
  pre_mount_commands = [
    "sfdisk --quiet {{.Device}} <<'PARTS'\nlabel: gpt\n,,L\nPARTS",
    "mkfs.ext4 -q {{.Device}}1",
  ]
  post_mount_commands = [
    "mkdir -p {{.MountPath}}/bin {{.MountPath}}/etc {{.MountPath}}/tmp {{.MountPath}}/proc",
    "cp /bin/busybox {{.MountPath}}/bin/busybox",
    "chroot {{.MountPath}} /bin/busybox ln -s /bin/busybox /bin/sh",
  ]
}
build {
  sources = ["source.amazon-chroot.bb"]
  provisioner "file" {
    source      = "greeting.txt"
    destination = "/etc/greeting"
  }
  provisioner "shell" {
    inline = ["echo worker-build-running", "/bin/busybox sleep ${var.pause}", "/bin/busybox cat /etc/greeting > /etc/copied"]
  }
}
"#;

/// Uploads the template (and the file beside it) under `prefix`; returns the template key.
pub(crate) async fn upload(s: &Setup, prefix: &str) -> String {
    let key = format!("{prefix}/bb.pkr.hcl");
    s.s3.put_object()
        .bucket(&s.bucket)
        .key(&key)
        .body(TEMPLATE.as_bytes().to_vec().into())
        .send()
        .await
        .expect("put template");
    s.s3.put_object()
        .bucket(&s.bucket)
        .key(format!("{prefix}/greeting.txt"))
        .body(b"hi from s3\n".to_vec().into())
        .send()
        .await
        .expect("put file");
    key
}

pub(crate) async fn send(s: &Setup, body: &str) {
    s.sqs
        .send_message()
        .queue_url(&s.queue)
        .message_body(body)
        .send()
        .await
        .expect("send");
}

pub(crate) fn request(build_id: &str, bucket: &str, key: &str, pause: u32) -> String {
    serde_json::json!({"version": 1, "build_id": build_id, "template": {"bucket": bucket, "key": key}, "variables": {"pause": pause.to_string()}}).to_string()
}

/// Waits until `results/<id>.json` exists; returns it.
pub(crate) async fn result(s: &Setup, id: &str, timeout: Duration) -> Value {
    try_result(s, id, timeout)
        .await
        .unwrap_or_else(|| panic!("no result for {id}"))
}

/// Waits until `results/<id>.json` exists; returns it, or `None` after `timeout`.
pub(crate) async fn try_result(s: &Setup, id: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(o) =
            s.s3.get_object()
                .bucket(&s.bucket)
                .key(format!("results/{id}.json"))
                .send()
                .await
        {
            let bytes = o.body.collect().await.expect("body").into_bytes();
            return Some(serde_json::from_slice(&bytes).expect("result JSON"));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every message on the result queue (drained).
pub(crate) async fn result_messages(s: &Setup) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let r = s
            .sqs
            .receive_message()
            .queue_url(&s.results)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive results");
        let msgs = r.messages.unwrap_or_default();
        if msgs.is_empty() {
            return out;
        }
        for m in msgs {
            out.push(
                serde_json::from_str(m.body().unwrap_or("null")).expect("result message JSON"),
            );
            let _ = s
                .sqs
                .delete_message()
                .queue_url(&s.results)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await;
        }
    }
}

#[tokio::test]
async fn builds_through_the_queue_and_malformed_messages() {
    with_janitor(|janitor| async move {
        let s = setup(3).await;
        let key = upload(&s, &unique("tpl")).await;
        let ids: Vec<String> = (0..3).map(|_| unique("qb")).collect();
        for id in &ids {
            send(&s, &request(id, &s.bucket, &key, 0)).await;
        }
        // Every kind of malformed message, plus a missing and an invalid template.
        let bad_key = format!("{}/bad.json", unique("tpl"));
        s.s3.put_object()
            .bucket(&s.bucket)
            .key(&bad_key)
            .body(br#"{"builders": [{"type": "amazon-ebs"}]}"#.to_vec().into())
            .send()
            .await
            .expect("put bad");
        s.s3.put_object()
            .bucket(&s.other_bucket)
            .key("t.json")
            .body(b"{}".to_vec().into())
            .send()
            .await
            .expect("put other");
        let malformed: Vec<(String, &str)> = vec![
            ("this is not json".into(), "not JSON"),
            (
                r#"{"version": 1, "template": {"bucket": 7, "key": "k"}}"#.into(),
                "invalid type",
            ),
            (r#"{"version": 1}"#.into(), "missing field `template`"),
            (
                format!(
                    r#"{{"version": 1, "template": {{"bucket": "b", "key": "{}"}}}}"#,
                    "k".repeat(100_000)
                ),
                "at most",
            ),
            (
                r#"{"version": 9, "template": {"bucket": "b", "key": "k"}}"#.into(),
                "unsupported request version 9",
            ),
            (
                r#"{"version": 1, "template": {"bucket": "b", "key": "k"}, "priority": "high"}"#
                    .into(),
                "unknown field `priority`",
            ),
            (
                request("missing-tpl", &s.bucket, "nope/missing.pkr.hcl", 0),
                "does not exist",
            ),
            (
                request("invalid-tpl", &s.bucket, &bad_key, 0),
                "uses builder type `amazon-ebs`, which kiln does not run",
            ),
            (
                request("untrusted", &s.other_bucket, "t.json", 0),
                "is not trusted by this worker",
            ),
        ];
        for (body, _) in &malformed {
            if body.len() > 256 * 1024 {
                // Larger than SQS accepts: the worker's own limit is checked by the unit tests.
                continue;
            }
            send(&s, body).await;
        }
        let worker = start_worker(&s, &["--concurrency", "2"]);
        for id in &ids {
            let doc = result(&s, id, Duration::from_secs(90)).await;
            track_result(&janitor, &doc);
            assert_eq!(doc["status"], "succeeded", "{doc:#}");
        }
        for (id, want) in [
            ("missing-tpl", "does not exist"),
            ("invalid-tpl", "amazon-ebs"),
            ("untrusted", "not trusted"),
        ] {
            let doc = result(&s, id, Duration::from_secs(30)).await;
            assert_eq!(doc["status"], "failed");
            assert!(
                doc["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(want),
                "{id}: {doc:#}"
            );
            assert_eq!(doc["error"]["retryable"], false);
        }
        // Results arrive on the result queue too, and malformed ones are named by message id.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut all = Vec::new();
        while all.len() < ids.len() + malformed.len() - 1 && Instant::now() < deadline {
            all.extend(result_messages(&s).await);
        }
        let (ok, log) = stop_worker(worker);
        assert!(ok, "the worker exits 0 after SIGTERM:\n{log}");
        for (body, want) in &malformed {
            if body.len() > 256 * 1024 {
                continue;
            }
            assert!(
                all.iter().any(|d| d["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(want)),
                "no failure result saying `{want}` in {all:#?}"
            );
        }
        assert_eq!(
            all.iter().filter(|d| d["status"] == "succeeded").count(),
            ids.len()
        );
        // The log of a build is in S3 and holds the provisioner's output.
        let log =
            s.s3.get_object()
                .bucket(&s.bucket)
                .key(format!("logs/{}.log", ids[0]))
                .send()
                .await
                .expect("log in S3");
        let text = String::from_utf8_lossy(&log.body.collect().await.expect("log").into_bytes())
            .into_owned();
        assert!(text.contains("worker-build-running"), "{text}");
        // The same build id again: the existing result, no second build.
        let worker = start_worker(&s, &[]);
        send(&s, &request(&ids[0], &s.bucket, &key, 0)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut again = Vec::new();
        while again.is_empty() && Instant::now() < deadline {
            again = result_messages(&s).await;
        }
        let (_, log) = stop_worker(worker);
        assert_eq!(again.len(), 1, "{again:#?}");
        assert_eq!(again[0]["build_id"], ids[0].as_str());
        assert_eq!(
            again[0]["artifacts"],
            all.iter()
                .find(|d| d["build_id"] == ids[0].as_str())
                .expect("first result")["artifacts"],
            "the same result"
        );
        assert!(log.contains("already finished"), "{log}");
        assert!(!log.contains("step done"), "no second build ran:\n{log}");
        // The queue is empty: every message was deleted (none visible, none in flight).
        crate::exactly_once::wait_queue_empty(&s, &s.queue, Duration::from_secs(30)).await;
    })
    .await;
}

#[tokio::test]
async fn two_workers_share_a_queue() {
    with_janitor(|janitor| async move {
        let s = setup(3).await;
        let key = upload(&s, &unique("tpl")).await;
        let ids: Vec<String> = (0..4).map(|_| unique("share")).collect();
        for id in &ids {
            send(&s, &request(id, &s.bucket, &key, 1)).await;
        }
        let a = start_worker(&s, &[]);
        let b = start_worker(&s, &[]);
        for id in &ids {
            let doc = result(&s, id, Duration::from_secs(120)).await;
            track_result(&janitor, &doc);
            assert_eq!(doc["status"], "succeeded", "{doc:#}");
        }
        let (_, log_a) = stop_worker(a);
        let (_, log_b) = stop_worker(b);
        let count = |log: &str| log.matches("result published").count();
        assert_eq!(count(&log_a) + count(&log_b), ids.len());
        assert!(
            count(&log_a) >= 1 && count(&log_b) >= 1,
            "both workers built: {} and {}",
            count(&log_a),
            count(&log_b)
        );
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_or_cancels_and_returns_the_message() {
    with_janitor(|janitor| async move {
        // Drain: the running build finishes within the deadline and is published.
        let s = setup(5).await;
        let key = upload(&s, &unique("tpl")).await;
        let id = unique("drain");
        send(&s, &request(&id, &s.bucket, &key, 3)).await;
        let worker = start_worker(&s, &["--drain-timeout", "60"]);
        wait_for_log(&s, &id).await;
        let (ok, log) = stop_worker(worker);
        assert!(ok, "{log}");
        let doc = result(&s, &id, Duration::from_secs(5)).await;
        track_result(&janitor, &doc);
        assert_eq!(
            doc["status"], "succeeded",
            "the build drained: {doc:#}\n{log}"
        );

        // Short deadline: the build is cancelled, undone, and its message visible again at once
        // (the heartbeat made it invisible for 300 s: only a release shows it within 2 s).
        let id = unique("cancel");
        send(&s, &request(&id, &s.bucket, &key, 60)).await;
        let worker = start_worker(&s, &["--drain-timeout", "1", "--visibility", "300"]);
        wait_for_log(&s, &id).await;
        // `ok`: the worker exited by itself (stop_worker kills it only after its deadline).
        let (ok, log) = stop_worker(worker);
        assert!(ok, "{log}");
        assert!(log.contains("drain deadline passed"), "{log}");
        let again = s
            .sqs
            .receive_message()
            .queue_url(&s.queue)
            .wait_time_seconds(2)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .expect("receive");
        let m = again
            .messages()
            .first()
            .expect("the cancelled build's message is visible again");
        assert!(m.body().unwrap_or_default().contains(&id));
        // Nothing of the cancelled build is left.
        let vols = crate::support::tagged(Emulator::get().region(), &id)
            .await
            .volumes;
        assert!(vols.is_empty(), "{vols:?}");
        assert!(
            s.s3.get_object()
                .bucket(&s.bucket)
                .key(format!("results/{id}.json"))
                .send()
                .await
                .is_err(),
            "no result for a returned message"
        );
    })
    .await;
}

/// Waits until the build's provisioner is running (its log in S3 shows it).
pub(crate) async fn wait_for_log(s: &Setup, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(o) =
            s.s3.get_object()
                .bucket(&s.bucket)
                .key(format!("logs/{id}.log"))
                .send()
                .await
        {
            let text = String::from_utf8_lossy(&o.body.collect().await.expect("log").into_bytes())
                .into_owned();
            if text.contains("worker-build-running") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the build {id} never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
