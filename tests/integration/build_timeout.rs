//! A build that runs past the worker's `build_timeout_s` (issue 22: hung builds must not hold a
//! slot forever): it is cancelled, what it made is undone, its failure names the timeout, and the
//! worker goes on with the next request.

use crate::pipeline::assert_nothing_left;
use crate::support::{track_result, unique, with_janitor};
use crate::worker::{request, result, send, setup, start_worker, stop_worker, upload};
use std::time::Duration;

#[tokio::test]
async fn a_build_past_its_timeout_is_cancelled_and_the_worker_goes_on() {
    with_janitor(|janitor| async move {
        let s = setup(3).await;
        let key = upload(&s, &unique("tpl")).await;
        let stuck = unique("stuck");
        // Its provisioner sleeps 600 s: far past the 20 s timeout.
        send(&s, &request(&stuck, &s.bucket, &key, 600)).await;
        let next = unique("next");
        send(&s, &request(&next, &s.bucket, &key, 0)).await;
        let w = start_worker(&s, &["--concurrency", "1", "--build-timeout", "20"]);
        let doc = result(&s, &stuck, Duration::from_secs(180)).await;
        track_result(&janitor, &doc);
        assert_eq!(doc["status"], "failed", "{doc:#}");
        let message = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("build_timeout_s (20 s)"), "{doc:#}");
        assert_eq!(doc["error"]["retryable"], false, "{doc:#}");
        assert_nothing_left(&stuck, &doc).await;
        // The slot came free: the next request builds.
        let doc = result(&s, &next, Duration::from_secs(180)).await;
        track_result(&janitor, &doc);
        assert_eq!(doc["status"], "succeeded", "{doc:#}");
        let (ok, log) = stop_worker(w);
        assert!(ok, "{log}");
    })
    .await;
}
