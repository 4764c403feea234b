//! `kiln-trigger`: the Lambda function (provided.al2023, `bootstrap`) that turns S3 uploads and
//! nightly schedules into build requests. Settings: `KILN_QUEUE`, `KILN_BUCKET`,
//! `KILN_TEMPLATE_PREFIX`, `KILN_TEAM`, `KILN_TEAM_QUEUES` (see `kiln::trigger`). Logs are JSON, as Lambda's log pipeline expects.

use kiln::aws::{AwsSettings, Clients};
use kiln::trigger::{self, Settings};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use std::sync::Arc;
use tracing::Instrument;

#[tokio::main]
async fn main() -> Result<(), Error> {
    kiln::observe::init(kiln::observe::LogFormat::Json, 0);
    let settings = Arc::new(Settings::from_env()?);
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Arc::new(Clients::new(&config));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (clients, settings) = (Arc::clone(&clients), Arc::clone(&settings));
        let span = tracing::info_span!("invocation", request_id = %event.context.request_id);
        async move {
            // Boxed: the handler's future is deep (bake keys, template loads, data sources).
            let deadline = std::time::UNIX_EPOCH
                .checked_add(std::time::Duration::from_millis(event.context.deadline));
            Box::pin(trigger::handle_until(
                &clients,
                &settings,
                event.payload,
                deadline,
            ))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, retryable = e.is_retryable(), "invocation failed");
                Error::from(e.to_string())
            })
        }
        .instrument(span)
    }))
    .await
}
