//! The nightly run of `kiln-trigger` (issue 22): a failed nightly build is retried on a later
//! night with back-off, a broken template does not end the run, and a run out of time continues
//! where it stopped on the next night.

use crate::lambda::Lambda;
use crate::support::{track_result, unique, with_janitor};
use crate::trigger::{lambda_for, names, put_text};
use crate::worker::{TEMPLATE, result, setup, start_worker, stop_worker};
use serde_json::json;
use std::time::Duration;

/// A template whose nightly build fails (a host flag makes its shell-local step exit 1) is not
/// given up: the same night it backs off, the next night it is tried again under a new build id,
/// saying why, and that build succeeds once the flag is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_nightly_build_is_retried_the_next_night() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let flag = std::env::temp_dir().join(unique("nightly-flag"));
        std::fs::write(&flag, "fail tonight").expect("flag");
        let prefix = format!("templates/{}", unique("retry"));
        let text = TEMPLATE.replace(
            "build {\n  sources = [\"source.amazon-chroot.bb\"]",
            &format!(
                "build {{\n  sources = [\"source.amazon-chroot.bb\"]\n  provisioner \"shell-local\" {{\n    inline = [\"test ! -e {}\"]\n  }}",
                flag.display()
            ),
        );
        assert_ne!(text, TEMPLATE, "the template gained its flag check");
        let key = format!("{prefix}/bb.pkr.hcl");
        put_text(&s, &key, &text).await;
        put_text(&s, &format!("{prefix}/greeting.txt"), "hi\n").await;
        let w = start_worker(&s, &[]);
        let now = time::OffsetDateTime::now_utc();
        let at = |days: i64| {
            (now + time::Duration::days(days))
                .format(&time::format_description::well_known::Rfc3339)
                .expect("time")
        };
        let night = |days: i64| json!({"nightly": {"templates": [key], "time": at(days)}});

        let first = lambda.invoke(night(0)).await.expect("night 1");
        let base = first["enqueued"][0]["build_id"].as_str().expect("enqueued").to_owned();
        let failed = result(&s, &base, Duration::from_secs(240)).await;
        assert_eq!(failed["status"], "failed", "{failed:#}");
        std::fs::remove_file(&flag).expect("flag removed");

        // Later the same night: backing off, with the failure named.
        let again = lambda.invoke(night(0)).await.expect("night 1 again");
        assert_eq!(again["enqueued"], json!([]), "{again:#}");
        let why = again["skipped"][0]["reason"].as_str().unwrap_or_default();
        assert!(why.contains("backing off after 1 failed build"), "{again:#}");

        // The next night: a new build id, the failure as the reason, and it builds.
        let next = lambda.invoke(night(1)).await.expect("night 2");
        let retry = next["enqueued"][0]["build_id"].as_str().expect("retried").to_owned();
        assert_eq!(retry, format!("{base}-r1"), "{next:#}");
        let why = next["enqueued"][0]["reason"].as_str().unwrap_or_default();
        assert!(why.starts_with("retry 1 after a failure on"), "{next:#}");
        let doc = result(&s, &retry, Duration::from_secs(240)).await;
        track_result(&janitor, &doc);
        assert_eq!(doc["status"], "succeeded", "{doc:#}");
        let (ok, log) = stop_worker(w);
        assert!(ok, "{log}");
        // Built: the night after sees it unchanged.
        let after = lambda.invoke(night(2)).await.expect("night 3");
        assert_eq!(after["enqueued"], json!([]), "{after:#}");
        assert!(
            after["skipped"][0]["reason"].as_str().unwrap_or_default().starts_with("unchanged since build"),
            "{after:#}"
        );
    })
    .await;
}

/// One template whose data source cannot be read (the service keeps failing) among good ones:
/// the run goes on, the broken one is its own entry with the reason, the good ones are enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_template_does_not_end_the_nightly_run() {
    let s = setup(5).await;
    let lambda = lambda_for(&s).await;
    let prefix = format!("templates/{}", unique("mixed"));
    let parameter = unique("kiln-unreachable");
    let broken = format!(
        "data \"amazon-parameterstore\" \"p\" {{\n  name = \"/{parameter}\"\n}}\nlocals {{\n  p = data.amazon-parameterstore.p.value\n}}\n{TEMPLATE}"
    );
    let keys = [
        format!("{prefix}/a/bb.pkr.hcl"),
        format!("{prefix}/b/bb.pkr.hcl"),
        format!("{prefix}/c/bb.pkr.hcl"),
    ];
    put_text(&s, &keys[0], TEMPLATE).await;
    put_text(&s, &keys[1], &broken).await;
    put_text(&s, &keys[2], TEMPLATE).await;
    for k in &keys {
        put_text(&s, &k.replace("bb.pkr.hcl", "greeting.txt"), "hi\n").await;
    }
    // Parameter Store answers 500 to this parameter (more often than the SDK retries).
    crate::support::emulator_script(&[
        "fault",
        "POST",
        "/",
        "500",
        "InternalFailure",
        "50",
        &parameter,
    ]);
    let run = lambda
        .invoke(json!({"nightly": {"templates": keys}}))
        .await
        .unwrap_or_else(|e| panic!("the run failed as a whole: {e:#}\n{}", lambda.log()));
    let enqueued: Vec<&str> = names(&run, "enqueued")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(
        enqueued,
        vec![keys[0].as_str(), keys[2].as_str()],
        "{run:#}"
    );
    let skipped = names(&run, "skipped");
    assert_eq!(skipped.len(), 1, "{run:#}");
    assert_eq!(skipped[0].0, keys[1]);
    assert!(
        skipped[0].1.contains("data.amazon-parameterstore.p"),
        "{run:#}"
    );
}

/// A nightly run past its time budget leaves the templates it did not reach to the next run,
/// which starts after the last one looked at: with a budget that allows one template per run,
/// three runs look at three templates, each once, and a fourth starts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nightly_run_out_of_time_continues_where_it_stopped() {
    let s = setup(5).await;
    let lambda = Lambda::start(&[
        ("KILN_QUEUE", &s.queue),
        ("KILN_BUCKET", &s.bucket),
        ("KILN_NIGHTLY_BUDGET_S", "0"),
    ])
    .await;
    let prefix = format!("templates/{}", unique("budget"));
    let keys: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|d| format!("{prefix}/{d}/bb.pkr.hcl"))
        .collect();
    for k in &keys {
        put_text(&s, k, TEMPLATE).await;
        put_text(&s, &k.replace("bb.pkr.hcl", "greeting.txt"), "hi\n").await;
    }
    // Other tests' templates share the bucket's prefix only if they share the bucket: this test's
    // bucket holds these three alone.
    let mut looked = Vec::new();
    for _ in 0..4 {
        let run = lambda
            .invoke(json!({"nightly": {}}))
            .await
            .expect("nightly");
        let enqueued = names(&run, "enqueued");
        assert_eq!(enqueued.len(), 1, "one template per run: {run:#}");
        looked.push(enqueued[0].0.to_owned());
        let left = run["skipped"][0]["templates"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        assert_eq!(left, 2, "the other two are left to the next run: {run:#}");
    }
    assert_eq!(looked[..3], keys[..], "each template once, in order");
    assert_eq!(looked[3], keys[0], "then from the start again");
}
