//! Teams on one pool (README "Teams", issue 21): one worker serving the default team's queue and
//! two other teams' (`b`, trusted with host features; `c`, not), on the emulator with the loop
//! backend. A team's request cannot force, overwrite or read another team's build, result or
//! journal, cannot build another team's template, cannot deregister another team's image through
//! `force_deregister`, cannot read another team's secrets through a data source; a refused
//! host-side feature names itself; and one team's backlog does not hold up another's request.

use crate::support::{track_result, unique, with_janitor};
use crate::trigger::put_text;
use crate::worker::{
    Setup, TEMPLATE, request, result, send, setup, start_worker, stop_worker, upload,
};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A queue of the test's own for another team.
async fn team_queue(s: &Setup, team: &str) -> String {
    s.sqs
        .create_queue()
        .queue_name(unique(&format!("q-{team}")))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "30",
        )
        .send()
        .await
        .expect("team queue")
        .queue_url
        .expect("url")
}

/// The worker's settings file with `teams` (TOML `[[teams]]` entries).
fn config(teams: &str) -> std::path::PathBuf {
    let f = std::env::temp_dir().join(format!("{}.toml", unique("worker-teams")));
    std::fs::write(&f, teams).expect("write config");
    f
}

async fn send_to(s: &Setup, queue: &str, body: &str) {
    s.sqs
        .send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .expect("send");
}

/// A document in the bucket, if it exists.
async fn document(s: &Setup, key: &str) -> Option<Value> {
    let o =
        s.s3.get_object()
            .bucket(&s.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
    let bytes = o.body.collect().await.ok()?.into_bytes();
    serde_json::from_slice(&bytes).ok()
}

/// Waits for a document.
async fn wait_document(s: &Setup, key: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = document(s, key).await {
            return v;
        }
        assert!(Instant::now() < deadline, "no s3://{}/{key}", s.bucket);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn error_of(doc: &Value) -> String {
    doc["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_team_cannot_touch_another_teams_builds_images_or_secrets() {
    with_janitor(|janitor| async move {
        let s = setup(3).await;
        let (qb, qc) = (team_queue(&s, "b").await, team_queue(&s, "c").await);
        let cfg = config(&format!(
            "[[teams]]\nname = \"b\"\nqueue = \"{qb}\"\nhost_features = true\n\n[[teams]]\nname = \"c\"\nqueue = \"{qc}\"\n"
        ));
        let w = start_worker(&s, &["--config", &cfg.display().to_string()]);

        // The default team ("A") builds `golden`.
        let a_key = upload(&s, &format!("templates/{}", unique("a"))).await;
        let id = unique("golden");
        let ami_name = unique("team-a-golden");
        let body = serde_json::json!({"version": 1, "build_id": id, "template": {"bucket": s.bucket, "key": a_key}, "variables": {"name": ami_name}}).to_string();
        send(&s, &body).await;
        let a = result(&s, &id, Duration::from_secs(300)).await;
        track_result(&janitor, &a);
        assert_eq!(a["status"], "succeeded", "{a:#}");
        assert_eq!(a["team"], "default");
        let ami = a["artifacts"][crate::support::Emulator::get().region()]["ami_id"]
            .as_str()
            .expect("A's AMI")
            .to_owned();

        // B forces A's build id with a missing template: B's own build fails, A's stays.
        let forged = serde_json::json!({"version": 1, "build_id": id, "force": true, "template": {"bucket": s.bucket, "key": "teams/b/templates/missing.json"}}).to_string();
        send_to(&s, &qb, &forged).await;
        let b = wait_document(&s, &format!("teams/b/results/{id}.json"), Duration::from_secs(120)).await;
        assert_eq!(b["status"], "failed", "{b:#}");
        assert_eq!(b["team"], "b");
        let a_again = document(&s, &format!("results/{id}.json")).await.expect("A's result");
        assert_eq!(a_again["status"], "succeeded", "B's request changed A's result: {a_again:#}");
        let journal = document(&s, &format!("checkpoints/{id}.json")).await.expect("A's journal");
        assert_eq!(journal["status"], "succeeded", "B's request changed A's journal");

        // B names A's template: refused, naming the team's prefixes.
        let stolen = unique("stolen");
        send_to(&s, &qb, &request(&stolen, &s.bucket, &a_key, 0)).await;
        let b = wait_document(&s, &format!("teams/b/results/{stolen}.json"), Duration::from_secs(120)).await;
        assert!(error_of(&b).contains("is not team b's"), "{b:#}");
        assert!(error_of(&b).contains("teams/b/templates/"), "{b:#}");

        // B names its own template but A's results as the root (fetched whole): refused.
        let rooted = unique("rooted");
        let body = serde_json::json!({"version": 1, "build_id": rooted, "template": {"bucket": s.bucket, "key": "teams/b/templates/x/bb.pkr.hcl", "root": "results"}}).to_string();
        send_to(&s, &qb, &body).await;
        let b = wait_document(&s, &format!("teams/b/results/{rooted}.json"), Duration::from_secs(120)).await;
        assert!(error_of(&b).contains("template.root \"results\" is not team b's"), "{b:#}");

        // B's template takes A's AMI name with force_deregister: refused before anything is
        // made, and A's image is still there.
        let b_key = format!("teams/b/templates/{}/bb.pkr.hcl", unique("fd"));
        put_text(&s, &b_key, TEMPLATE).await;
        put_text(&s, &b_key.replace("bb.pkr.hcl", "greeting.txt"), "hi\n").await;
        let fd = unique("fd");
        let body = serde_json::json!({"version": 1, "build_id": fd, "template": {"bucket": s.bucket, "key": b_key}, "variables": {"name": ami_name, "force": "true"}}).to_string();
        send_to(&s, &qb, &body).await;
        let b = wait_document(&s, &format!("teams/b/results/{fd}.json"), Duration::from_secs(300)).await;
        track_result(&janitor, &b);
        assert_eq!(b["status"], "failed", "{b:#}");
        assert!(error_of(&b).contains("belongs to team default"), "{b:#}");
        let emu = crate::support::Emulator::get();
        let ec2 = emu.clients(emu.region()).await.ec2;
        let still = ec2
            .describe_images()
            .image_ids(&ami)
            .send()
            .await
            .expect("DescribeImages");
        assert_eq!(still.images().len(), 1, "A's image {ami} was deregistered");

        // C (no host features) with the same template: refused, naming the feature and the
        // setting.
        let c_key = format!("teams/c/templates/{}/bb.pkr.hcl", unique("hf"));
        put_text(&s, &c_key, TEMPLATE).await;
        put_text(&s, &c_key.replace("bb.pkr.hcl", "greeting.txt"), "hi\n").await;
        let hf = unique("hf");
        send_to(&s, &qc, &request(&hf, &s.bucket, &c_key, 0)).await;
        let c = wait_document(&s, &format!("teams/c/results/{hf}.json"), Duration::from_secs(120)).await;
        let e = error_of(&c);
        assert!(e.contains("pre_mount_commands") && e.contains("host_features = true"), "{c:#}");

        // C reads B's secret through a data source: refused by name, before any call.
        let ds_key = format!("teams/c/templates/{}/ds.pkr.hcl", unique("ds"));
        let ds = format!(
            "data \"amazon-secretsmanager\" \"t\" {{\n  name = \"kiln/b/token\"\n}}\nlocals {{\n  token = data.amazon-secretsmanager.t.value\n}}\n{TEMPLATE}"
        );
        put_text(&s, &ds_key, &ds).await;
        let dsid = unique("ds");
        send_to(&s, &qc, &request(&dsid, &s.bucket, &ds_key, 0)).await;
        let c = wait_document(&s, &format!("teams/c/results/{dsid}.json"), Duration::from_secs(120)).await;
        let e = error_of(&c);
        assert!(e.contains("kiln/b/token") && e.contains("outside the team's prefix"), "{c:#}");

        // C reads a builder-host file with file(): refused; its own file beside the template
        // is fine (the build then stops at the host feature, as above).
        let fr_dir = format!("teams/c/templates/{}", unique("fr"));
        let fr = format!("locals {{\n  host = file(\"/etc/hostname\")\n}}\n{TEMPLATE}");
        put_text(&s, &format!("{fr_dir}/fr.pkr.hcl"), &fr).await;
        put_text(&s, &format!("{fr_dir}/greeting.txt"), "hi\n").await;
        let frid = unique("fr");
        send_to(&s, &qc, &request(&frid, &s.bucket, &format!("{fr_dir}/fr.pkr.hcl"), 0)).await;
        let c = wait_document(&s, &format!("teams/c/results/{frid}.json"), Duration::from_secs(120)).await;
        let e = error_of(&c);
        assert!(e.contains("/etc/hostname") && e.contains("outside the template's folder"), "{c:#}");
        let own = format!("locals {{\n  own = file(\"greeting.txt\")\n}}\n{TEMPLATE}");
        put_text(&s, &format!("{fr_dir}/fr.pkr.hcl"), &own).await;
        let ownid = unique("own");
        send_to(&s, &qc, &request(&ownid, &s.bucket, &format!("{fr_dir}/fr.pkr.hcl"), 0)).await;
        let c = wait_document(&s, &format!("teams/c/results/{ownid}.json"), Duration::from_secs(120)).await;
        let e = error_of(&c);
        assert!(!e.contains("outside the template's folder") && e.contains("pre_mount_commands"), "{c:#}");

        let (ok, log) = stop_worker(w);
        assert!(ok, "{log}");
    })
    .await;
}

/// 50 requests from the default team, then one from team `b`, on a worker with one build slot:
/// `b`'s starts after at most one of the default team's (weighted round robin), not after all.
#[tokio::test]
async fn one_teams_backlog_does_not_hold_up_another() {
    let s = setup(3).await;
    let qb = team_queue(&s, "b").await;
    let cfg = config(&format!("[[teams]]\nname = \"b\"\nqueue = \"{qb}\"\n"));
    // Requests that fail fast (their template is missing): the order of their results is the
    // order the worker took them in.
    let a_ids: Vec<String> = (0..50).map(|_| unique("backlog")).collect();
    for id in &a_ids {
        send(
            &s,
            &request(id, &s.bucket, "templates/missing/t.pkr.hcl", 0),
        )
        .await;
    }
    let b_id = unique("single");
    send_to(
        &s,
        &qb,
        &request(&b_id, &s.bucket, "teams/b/templates/missing/t.pkr.hcl", 0),
    )
    .await;
    let w = start_worker(
        &s,
        &["--config", &cfg.display().to_string(), "--concurrency", "1"],
    );
    wait_document(
        &s,
        &format!("teams/b/results/{b_id}.json"),
        Duration::from_secs(120),
    )
    .await;
    for id in &a_ids {
        wait_document(&s, &format!("results/{id}.json"), Duration::from_secs(120)).await;
    }
    let (ok, log) = stop_worker(w);
    assert!(ok, "{log}");
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("result published"))
        .filter_map(|l| {
            std::iter::once(b_id.as_str())
                .chain(a_ids.iter().map(String::as_str))
                .find(|id| l.contains(*id))
        })
        .collect();
    assert_eq!(order.len(), 51, "{log}");
    let b_at = order.iter().position(|id| *id == b_id).expect("b's result");
    assert!(
        b_at <= 1,
        "b's request waited for {b_at} of the default team's: {order:?}"
    );
}
