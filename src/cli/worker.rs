//! `kiln worker`: runs the queue worker until SIGTERM.

use super::WorkerArgs;
use super::build::cancel_on_signals;
use kiln::aws::{AwsSettings, Clients};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

pub(crate) async fn worker(args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    kiln::worker::run(cfg, clients, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
