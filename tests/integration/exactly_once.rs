//! Exactly once, on the paths the happy tests avoid: a retry after a failure once the AMI was
//! copied, the dead-letter path, a publish that S3 refuses once, a redelivery of a finished build
//! whose result document is gone, a forced rebuild under the same build id, a journal write whose
//! reply was lost, and `kiln gc` next to young, released and attached resources.

use crate::checkpoint::{COPY_REGION, assert_one_ami_and_nothing_left, request_with_regions};
use crate::support::{Emulator, emulator_script, tagged, track_result, unique, with_janitor};
use crate::worker::{
    Setup, result, result_messages, send, setup, start_worker, start_worker_with, stop_worker,
    upload,
};
use kiln::team::Team;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A 12-digit AWS account number no other test uses: an emulator fault that matches it in a
/// request body hits only this test's calls.
fn unique_account() -> String {
    let n = unique("acct");
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    format!("{:0>12}", &digits[digits.len().saturating_sub(12)..])
}

/// Injects an emulator fault (see `scripts/emulator fault`).
fn fault(method: &str, path: &str, status: u16, code: &str, count: u32, body: &str) {
    emulator_script(&[
        "fault",
        method,
        path,
        &status.to_string(),
        code,
        &count.to_string(),
        body,
    ]);
}

/// A request copying to [`COPY_REGION`] whose AMI is shared with `account` (so the build calls
/// ModifyImageAttribute with it).
fn request_shared(id: &str, s: &Setup, key: &str, account: &str) -> String {
    let mut v: Value = serde_json::from_str(&request_with_regions(id, s, key, 0)).expect("request");
    v["variables"]["users"] = Value::String(format!("[\"{account}\"]"));
    v.to_string()
}

/// The queue's visible and in-flight message counts.
async fn queue_depth(s: &Setup, queue: &str) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = s
        .sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    let get = |a: A| {
        out.attributes()
            .and_then(|m| m.get(&a))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        get(A::ApproximateNumberOfMessages),
        get(A::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Waits (up to `timeout`) until `queue` holds no message, visible or in flight.
pub(crate) async fn wait_queue_empty(s: &Setup, queue: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let depth = queue_depth(s, queue).await;
        if depth == (0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} still holds messages (visible, in flight): {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The first failure (retryable, in modify-attributes, after the AMI was copied) is undone in
/// both regions and retried after `retry_delay_s`; the retry copies again under a new client
/// token and succeeds with one AMI per region. A build that keeps failing is retried until
/// `maxReceiveCount`, then its failure is published and its message lands in the dead-letter
/// queue, with nothing of it left in any region.
#[tokio::test]
async fn a_failure_after_the_copies_is_retried_then_dead_lettered() {
    with_janitor(|janitor| async move {
        let s = setup(2).await;
        let key = upload(&s, &unique("tpl")).await;
        let (once, always) = (unique_account(), unique_account());
        let param = |a: &str| format!("LaunchPermission.Add.1.UserId={a}");
        fault("POST", "/", 400, "ResourceLimitExceeded", 1, &param(&once));
        fault(
            "POST",
            "/",
            400,
            "ResourceLimitExceeded",
            1000,
            &param(&always),
        );
        let retried = unique("retried");
        let dead = unique("dead");
        send(&s, &request_shared(&retried, &s, &key, &once)).await;
        send(&s, &request_shared(&dead, &s, &key, &always)).await;
        let w = start_worker(&s, &["--retry-delay", "1", "--concurrency", "2"]);
        // On a timeout the worker's log says where the builds stand.
        let (ok, failed) = match (
            crate::worker::try_result(&s, &retried, Duration::from_secs(180)).await,
            crate::worker::try_result(&s, &dead, Duration::from_secs(180)).await,
        ) {
            (Some(ok), Some(failed)) => (ok, failed),
            (ok, failed) => {
                if let Some(d) = &ok {
                    track_result(&janitor, d);
                }
                let (_, log) = stop_worker(w);
                panic!(
                    "no result for {} ({:?}) or {} ({:?}); the worker's log:\n{log}",
                    retried,
                    ok.map(|d| d["status"].clone()),
                    dead,
                    failed.map(|d| d["status"].clone())
                );
            }
        };
        track_result(&janitor, &ok);
        wait_queue_empty(&s, &s.queue, Duration::from_secs(60)).await;
        let (_, log) = stop_worker(w);
        assert_eq!(ok["status"], "succeeded", "{ok:#}\n{log}");
        assert!(
            log.contains("retryable failure; the message will be tried again"),
            "{log}"
        );
        assert_one_ami_and_nothing_left(&retried, &ok, &s.bucket).await;
        assert_eq!(failed["status"], "failed", "{failed:#}");
        assert_eq!(failed["error"]["step"], "modify-attributes", "{failed:#}");
        assert_eq!(failed["error"]["retryable"], true, "{failed:#}");
        let emu = Emulator::get();
        for region in [emu.region(), COPY_REGION] {
            let left = tagged(region, &dead).await;
            assert!(
                left.images.is_empty() && left.snapshots.is_empty() && left.volumes.is_empty(),
                "{dead}: left in {region}: {:?} {:?} {:?}",
                left.images,
                left.snapshots,
                left.volumes
            );
        }
        // The dead build's message is in the dead-letter queue (SQS moves it there when the
        // receive count passes maxReceiveCount: on the next receive).
        let deadline = Instant::now() + Duration::from_secs(60);
        let in_dlq = loop {
            let out = s
                .sqs
                .receive_message()
                .queue_url(&s.dlq)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive from the DLQ");
            let bodies: Vec<String> = out
                .messages()
                .iter()
                .filter_map(|m| m.body().map(str::to_owned))
                .collect();
            if !bodies.is_empty() || Instant::now() > deadline {
                break bodies;
            }
            // Another receive on the source queue is what moves it.
            let _ = s
                .sqs
                .receive_message()
                .queue_url(&s.queue)
                .wait_time_seconds(1)
                .send()
                .await;
        };
        assert_eq!(in_dlq.len(), 1, "{in_dlq:?}");
        assert!(in_dlq[0].contains(&dead), "{in_dlq:?}");
        let results = result_messages(&s).await;
        let statuses: Vec<(String, String)> = results
            .iter()
            .map(|r| (r["build_id"].to_string(), r["status"].to_string()))
            .collect();
        assert_eq!(
            results
                .iter()
                .filter(|r| r["build_id"] == retried.as_str())
                .count(),
            1,
            "one result for the retried build: {statuses:?}"
        );
    })
    .await;
}

/// S3 refuses the result document once: the worker publishes again and the build is reported as
/// the success it is. Then the result document is lost and the request delivered again: the
/// worker answers with the result its journal kept, and builds nothing.
#[tokio::test]
async fn a_refused_publish_is_retried_and_a_lost_result_is_rebuilt_from_the_journal() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let key = upload(&s, &unique("tpl")).await;
        let id = unique("publish");
        let doc_path = format!("/{}/results/{id}.json", s.bucket);
        fault("PUT", &doc_path, 403, "AccessDenied", 1, "");
        send(&s, &request_with_regions(&id, &s, &key, 0)).await;
        let w = start_worker(&s, &[]);
        let first = result(&s, &id, Duration::from_secs(120)).await;
        track_result(&janitor, &first);
        wait_queue_empty(&s, &s.queue, Duration::from_secs(60)).await;
        assert_eq!(first["status"], "succeeded", "{first:#}");
        let sent = result_messages(&s).await;
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0]["status"], "succeeded", "{sent:?}");
        // The result document is lost; the request comes again.
        s.s3.delete_object()
            .bucket(&s.bucket)
            .key(format!("results/{id}.json"))
            .send()
            .await
            .expect("delete the result");
        send(&s, &request_with_regions(&id, &s, &key, 0)).await;
        let again = result(&s, &id, Duration::from_secs(60)).await;
        wait_queue_empty(&s, &s.queue, Duration::from_secs(60)).await;
        let (_, log) = stop_worker(w);
        assert!(
            log.contains("writing the result document failed; trying again"),
            "{log}"
        );
        assert!(
            log.contains("publishing the result its journal kept"),
            "{log}"
        );
        assert_eq!(again["status"], "succeeded", "{again:#}\n{log}");
        assert_eq!(again["artifacts"], first["artifacts"], "the same AMIs");
        assert_one_ami_and_nothing_left(&id, &first, &s.bucket).await;
    })
    .await;
}

/// `kiln build --build-id X` run again after X finished is a new generation: its volume gets a
/// new client token (the first run's token names a deleted volume) and the build succeeds.
#[tokio::test]
async fn a_second_kiln_build_under_the_same_build_id_makes_its_own_volume() {
    use crate::pipeline::{Tpl, build, busybox};
    with_janitor(|janitor| async move {
        let tpl = Tpl::new();
        let t = tpl.write("bb.pkr.hcl", &busybox("kiln-test-again-{{uuid}}", "", ""));
        let id = unique("again");
        let args = vec!["--build-id".to_owned(), id.clone()];
        let (ok1, doc1, err1) = build(&t, &args);
        track_result(&janitor, &doc1);
        assert!(ok1, "first run:\n{err1}");
        let (ok2, doc2, err2) = build(&t, &args);
        track_result(&janitor, &doc2);
        assert!(ok2, "second run:\n{err2}\n{doc2:#}");
        let volume = |d: &Value| {
            d["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|s| s["outputs"]["volume_id"].as_str().map(str::to_owned))
        };
        assert_ne!(volume(&doc1), volume(&doc2), "each run made its own volume");
        let emu = Emulator::get();
        let images = tagged(emu.region(), &id).await.images;
        assert_eq!(images.len(), 2, "one AMI per run: {images:?}");
        // No volume of either run is left.
        let left = tagged(emu.region(), &id).await;
        assert!(left.volumes.is_empty(), "{:?}", left.volumes);
    })
    .await;
}

/// A compare-and-swap write whose reply was lost (the write went through, the worker saw an
/// error or a retry saw 412) is recognised as the worker's own: the journal still names this
/// owner and attempt. A write by another owner is still a takeover.
#[tokio::test]
async fn an_ambiguous_journal_write_is_recognised_as_the_workers_own() {
    use kiln::checkpoint::{self, Acquired, CheckpointError, Owner};
    let emu = Emulator::get();
    let c = emu.clients(emu.region()).await;
    let bucket = unique("journal");
    c.s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let id = unique("ambiguous");
    let owner = Owner {
        instance_id: "i-ambiguous".into(),
        worker_id: unique("worker"),
    };
    let Ok(Acquired::Fresh(handle)) =
        checkpoint::acquire(&c.s3, &bucket, &Team::default_team(), &id, &owner, 60).await
    else {
        panic!("a fresh journal");
    };
    let put = |j: &checkpoint::Journal| {
        let body = serde_json::to_vec(j).expect("json");
        let s3 = c.s3.clone();
        let (bucket, key) = (bucket.clone(), checkpoint::key(&Team::default_team(), &id));
        async move {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send()
                .await
                .expect("put");
        }
    };
    // This worker's own renewal, written, its reply lost: same owner and attempt.
    let mut own = handle.journal();
    own.lease_expires += 7;
    own.writes += 1;
    put(&own).await;
    handle
        .renew()
        .await
        .expect("the journal is still this worker's: the write stands");
    let (now, _) = checkpoint::read(&c.s3, &bucket, &Team::default_team(), &id)
        .await
        .expect("read")
        .expect("journal");
    assert_eq!(now.owner.as_ref(), Some(&owner));
    assert_eq!(
        now.writes,
        handle.journal().writes,
        "the renewal was written"
    );
    // Another worker took it over: a takeover, as before.
    let mut other = now.clone();
    other.owner = Some(Owner {
        instance_id: "i-other".into(),
        worker_id: unique("other"),
    });
    other.attempt += 1;
    put(&other).await;
    match handle.renew().await {
        Err(CheckpointError::Lost { .. }) => {}
        r => panic!("a takeover must be reported as lost: {r:?}"),
    }
    let _ =
        c.s3.delete_object()
            .bucket(&bucket)
            .key(checkpoint::key(&Team::default_team(), &id))
            .send()
            .await;
}

/// `kiln gc --older-than 1h` leaves a build whose journal was released a moment ago (lease 0,
/// as a drain or a retry leaves it) and a failed build's young AMI; with `--older-than 0s` it
/// still leaves a volume attached to a live instance (a build gc cannot judge is using it).
#[tokio::test]
async fn gc_spares_what_is_young_released_or_attached() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let c = emu.clients(&region).await;
        let bucket = unique("gcyoung");
        c.s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket");
        let stem = unique("gcyoung");
        let [released, failed, attached] =
            ["released", "failed", "attached"].map(|k| format!("{stem}-{k}"));
        for (b, status) in [(&released, "running"), (&failed, "failed")] {
            let j = serde_json::json!({"build_id": b, "owner": null, "lease_expires": 0,
                "attempt": 1, "status": status, "steps": []});
            c.s3.put_object()
                .bucket(&bucket)
                .key(format!("checkpoints/{b}.json"))
                .body(j.to_string().into_bytes().into())
                .send()
                .await
                .expect("journal");
        }
        let mut made = std::collections::BTreeMap::new();
        for b in [&released, &failed, &attached] {
            let (vol, _, ami) =
                crate::support::tagged_build_resources(&c.ec2, &janitor, &region, b, 1).await;
            made.insert(b.clone(), (vol, ami));
        }
        // A live builder host holds the attached build's volume.
        let host: Value =
            serde_json::from_str(&emulator_script(&["host", &unique("gchost")])).expect("host");
        let instance = host["instance_id"]
            .as_str()
            .expect("instance id")
            .to_owned();
        c.ec2
            .attach_volume()
            .volume_id(&made[&attached].0)
            .instance_id(&instance)
            .device("/dev/sdk")
            .send()
            .await
            .expect("attach");
        let gc = |older_than: &str| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
            cmd.args(["gc", "--bucket", &bucket, "--older-than", older_than]);
            cmd.args(["--build-id", &format!("{stem}-*")]);
            for (k, v) in &emu.vars {
                cmd.env(k, v);
            }
            let out = cmd.output().expect("kiln gc");
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            text
        };
        let exists = |vol: String, ami: String| {
            let ec2 = c.ec2.clone();
            async move {
                let v = ec2
                    .describe_volumes()
                    .volume_ids(vol)
                    .send()
                    .await
                    .is_ok_and(|o| !o.volumes().is_empty());
                let a = ec2
                    .describe_images()
                    .image_ids(ami)
                    .send()
                    .await
                    .is_ok_and(|o| !o.images().is_empty());
                (v, a)
            }
        };
        let out = gc("1h");
        for b in [&released, &failed, &attached] {
            let (v, a) = made[b].clone();
            assert_eq!(
                exists(v, a).await,
                (true, true),
                "{b} is younger than 1h:\n{out}"
            );
        }
        let journal =
            c.s3.head_object()
                .bucket(&bucket)
                .key(format!("checkpoints/{released}.json"))
                .send()
                .await;
        assert!(journal.is_ok(), "the released journal stays:\n{out}");
        let out = gc("0s");
        let (v, _) = made[&attached].clone();
        let attached_now = c
            .ec2
            .describe_volumes()
            .volume_ids(&v)
            .send()
            .await
            .expect("describe")
            .volumes()
            .first()
            .map(|v| v.attachments().len());
        assert_eq!(
            attached_now,
            Some(1),
            "the volume attached to a live instance is untouched:\n{out}"
        );
        let (v, a) = made[&failed].clone();
        assert_eq!(
            exists(v, a).await,
            (false, false),
            "with --older-than 0s the failed build goes:\n{out}"
        );
        let _ = c
            .ec2
            .detach_volume()
            .volume_id(&made[&attached].0)
            .instance_id(&instance)
            .device("/dev/sdk")
            .send()
            .await;
    })
    .await;
}

/// Reads notify datagrams from `sock` for `window`, or until `enough` says to stop.
fn read_notify(
    sock: &std::os::unix::net::UnixDatagram,
    window: Duration,
    enough: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !enough(&got) {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            got.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    got
}

/// systemd's notify protocol over a real `NOTIFY_SOCKET`: READY=1 when polling, WATCHDOG=1 from
/// the poll loop, STOPPING=1 on SIGTERM. A hung poll loop stops the pings (so systemd restarts
/// the worker), and a `WATCHDOG_PID` naming another process turns them off.
#[tokio::test]
async fn systemd_notify_ready_watchdog_from_the_loop_and_stopping() {
    let s = setup(5).await;
    let dir = std::env::temp_dir().join(unique("notify"));
    std::fs::create_dir_all(&dir).expect("dir");
    let count = |got: &[String], what: &str| got.iter().filter(|l| *l == what).count();
    for case in ["healthy", "hung", "other-pid"] {
        let path = dir.join(format!("{case}.sock"));
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        let path_s = path.display().to_string();
        let mut env = vec![
            ("NOTIFY_SOCKET", path_s.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ];
        match case {
            "hung" => env.push(("KILN_FAULT_HANG", "poll")),
            "other-pid" => env.push(("WATCHDOG_PID", "1")),
            _ => {}
        }
        let w = start_worker_with(&s, &[], &env);
        let ready = read_notify(&sock, Duration::from_secs(60), |g| {
            g.iter().any(|l| l == "READY=1")
        });
        assert!(ready.iter().any(|l| l == "READY=1"), "{case}: {ready:?}");
        // 0.2 s between pings: a healthy loop sends about ten in 2 s.
        let after = read_notify(&sock, Duration::from_secs(2), |_| false);
        match case {
            "healthy" => assert!(count(&after, "WATCHDOG=1") >= 3, "{case}: {after:?}"),
            "hung" => assert!(
                count(&ready, "WATCHDOG=1") + count(&after, "WATCHDOG=1") <= 1,
                "{case}: a hung loop pets the watchdog once at most: {ready:?} {after:?}"
            ),
            _ => assert_eq!(
                count(&ready, "WATCHDOG=1") + count(&after, "WATCHDOG=1"),
                0,
                "{case}: not our watchdog: {ready:?} {after:?}"
            ),
        }
        let (_, log) = stop_worker(w);
        let stopping = read_notify(&sock, Duration::from_secs(5), |g| {
            g.iter().any(|l| l == "STOPPING=1")
        });
        if case != "hung" {
            assert!(
                stopping.iter().any(|l| l == "STOPPING=1"),
                "{case}: {stopping:?}\n{log}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The build's log is replaced while the build runs (as a new owner's first write would): the
/// worker's later writes, periodic and final, are compare-and-swap and leave it.
#[tokio::test]
async fn a_log_another_attempt_replaced_is_not_overwritten() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let key = upload(&s, &unique("tpl")).await;
        let id = unique("log");
        send(&s, &crate::worker::request(&id, &s.bucket, &key, 8)).await;
        let w = start_worker(&s, &[]);
        crate::worker::wait_for_log(&s, &id).await;
        let theirs = "the log of another attempt\n";
        s.s3.put_object()
            .bucket(&s.bucket)
            .key(format!("logs/{id}.log"))
            .body(theirs.as_bytes().to_vec().into())
            .send()
            .await
            .expect("replace the log");
        let doc = result(&s, &id, Duration::from_secs(120)).await;
        track_result(&janitor, &doc);
        let (_, log) = stop_worker(w);
        let now =
            s.s3.get_object()
                .bucket(&s.bucket)
                .key(format!("logs/{id}.log"))
                .send()
                .await
                .expect("log")
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes();
        assert_eq!(
            String::from_utf8_lossy(&now),
            theirs,
            "the replaced log stays:\n{log}"
        );
        assert!(log.contains("was replaced by another writer"), "{log}");
    })
    .await;
}
