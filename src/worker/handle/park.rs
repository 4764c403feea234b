//! Duplicate deliveries of a running build: parked as a fresh, delayed copy instead of being
//! received again and again (each receive counts toward the dead-letter queue).

use crate::checkpoint;
use crate::worker::publish::{delete, release};
use crate::worker::request::BuildRequest;
use crate::worker::{Ctx, Delivery};

/// Parks a duplicate delivery of a build another attempt runs (its owner holds a live lease
/// until `until`): a copy of the request, naming the build id, is sent to the team's queue
/// delayed until the lease ends (at most [`crate::worker::WorkerConfig::duplicate_park_s`]: the owner may
/// be dead, and this copy may be what resumes its build), then this delivery is deleted. The copy
/// starts with no receives, so duplicates never count toward the dead-letter queue; when it comes
/// back the build has finished (the result answers it), is still running (parked again), or its
/// owner died (the copy resumes it). If the copy cannot be sent, the delivery is released until
/// the lease ends, as before.
pub(super) async fn park(ctx: &Ctx, d: &Delivery, req: &BuildRequest, build_id: &str, until: u64) {
    let mut copy = req.clone();
    copy.build_id = Some(build_id.to_owned());
    // The running attempt honours `force`; the copy only waits for its result.
    copy.force = false;
    let body = serde_json::to_string(&copy).unwrap_or_default();
    let lease_left = until.saturating_sub(checkpoint::now()).saturating_add(1);
    let delay = lease_left.clamp(
        1,
        ctx.cfg
            .duplicate_park_s
            .clamp(1, crate::worker::MAX_SQS_DELAY_S),
    );
    match ctx
        .clients
        .sqs
        .send_message()
        .queue_url(&d.lane.queue)
        .message_body(body)
        .delay_seconds(delay as i32)
        .send()
        .await
    {
        Ok(_) => delete(ctx, d).await,
        Err(e) => {
            let wait = until.saturating_sub(checkpoint::now()).clamp(1, 43_200);
            tracing::warn!(build_id = %build_id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), retry_in_s = wait, "could not park the duplicate; it is released until the owner's lease ends");
            release(ctx, d, wait as i32).await;
        }
    }
}
