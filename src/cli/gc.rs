//! `kiln gc`: what finished, failed or abandoned builds left.

use anyhow::Context as _;
use kiln::aws::{AwsSettings, Clients};
use std::io::Write;
use std::process::ExitCode;

pub(crate) async fn gc(
    bucket: &str,
    regions: &[String],
    build_id: &str,
    older_than: &str,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let secs = kiln::template::provisioner::parse_duration(older_than)
        .with_context(|| format!("--older-than {older_than}: use a duration such as 30m or 24h"))?;
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    let actions = kiln::gc::run(
        &clients,
        bucket,
        regions,
        build_id,
        std::time::Duration::from_secs_f64(secs),
        dry_run,
    )
    .await;
    let mut failed = false;
    for a in &actions {
        failed |= !(a.outcome == "deleted" || a.outcome == "would delete");
        let _ = writeln!(
            std::io::stdout(),
            "{} {} (build {}): {}; {}",
            a.kind,
            a.id,
            a.build_id,
            a.reason,
            a.outcome
        );
    }
    if actions.is_empty() {
        let _ = writeln!(std::io::stdout(), "nothing to collect");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
