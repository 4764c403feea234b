//! Duplicate deliveries (issue 22): a duplicate of a running build is parked (sent again,
//! delayed, as a fresh message) instead of being received again and again until the queue moves
//! it to its dead-letter queue; a request without a build id names the same build at every
//! delivery of its message.

use crate::support::{track_result, unique, with_janitor};
use crate::worker::{request, result, send, setup, start_worker, stop_worker, upload};
use std::time::{Duration, Instant};

/// (visible, in flight, delayed) messages of `queue`.
async fn depth(s: &crate::worker::Setup, queue: &str) -> (u64, u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = s
        .sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(A::All)
        .send()
        .await
        .expect("queue attributes");
    let get = |a: A| {
        out.attributes()
            .and_then(|m| m.get(&a))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(A::ApproximateNumberOfMessages),
        get(A::ApproximateNumberOfMessagesNotVisible),
        get(A::ApproximateNumberOfMessagesDelayed),
    )
}

/// The same request twice, on a queue whose `maxReceiveCount` is 2, with a build that outlives
/// several leases: the build succeeds once, the duplicate is parked while it runs and answered
/// with the result afterwards, and nothing reaches the dead-letter queue.
#[tokio::test]
async fn a_duplicate_of_a_running_build_never_reaches_the_dead_letter_queue() {
    with_janitor(|janitor| async move {
        let s = setup(2).await;
        let key = upload(&s, &unique("tpl")).await;
        let id = unique("dup");
        let body = request(&id, &s.bucket, &key, 20);
        send(&s, &body).await;
        send(&s, &body).await;
        let w = start_worker(&s, &["--concurrency", "2", "--duplicate-park", "3"]);
        let doc = result(&s, &id, Duration::from_secs(240)).await;
        track_result(&janitor, &doc);
        assert_eq!(doc["status"], "succeeded", "{doc:#}");
        // The parked copy comes back, finds the result, and is deleted.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = depth(&s, &s.queue).await;
            if d == (0, 0, 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the request queue still holds {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (ok, log) = stop_worker(w);
        assert!(ok, "{log}");
        assert!(
            log.contains("parked"),
            "the duplicate was never parked:\n{log}"
        );
        assert_eq!(log.matches("result published").count(), 1, "{log}");
        let dlq = depth(&s, &s.dlq).await;
        assert_eq!(
            dlq,
            (0, 0, 0),
            "the duplicate reached the dead-letter queue"
        );
    })
    .await;
}

/// A request without `build_id`, delivered twice (the first delivery received and let go, as by
/// a worker that died): the worker builds it under the id derived from the message, the same at
/// every delivery.
#[tokio::test]
async fn a_request_without_build_id_keeps_its_id_across_deliveries() {
    with_janitor(|janitor| async move {
        let s = setup(3).await;
        let key = upload(&s, &unique("tpl")).await;
        let body = serde_json::json!({"version": 1, "template": {"bucket": s.bucket, "key": key}})
            .to_string();
        send(&s, &body).await;
        // The first delivery: received and never deleted (visible again after 1 s).
        let first = s
            .sqs
            .receive_message()
            .queue_url(&s.queue)
            .visibility_timeout(1)
            .wait_time_seconds(5)
            .send()
            .await
            .expect("receive");
        let message_id = first
            .messages()
            .first()
            .and_then(|m| m.message_id())
            .expect("the request")
            .to_owned();
        let id = kiln::request::derived_build_id(&message_id, &body);
        // The worker receives the message again once its 1 s visibility ends.
        let w = start_worker(&s, &[]);
        let doc = result(&s, &id, Duration::from_secs(240)).await;
        track_result(&janitor, &doc);
        let (ok, log) = stop_worker(w);
        assert!(ok, "{log}");
        assert_eq!(doc["status"], "succeeded", "{doc:#}");
        assert_eq!(doc["build_id"], id.as_str());
    })
    .await;
}
