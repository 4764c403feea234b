//! `scripts/bench waits`: kiln's waits against fixed-interval pollers at 1 s and at 15 s
//! (Packer's), against the emulator. Lateness is the time from the resource's readiness to the
//! wait noticing it; calls are the Describe* calls of the wait.
//!
//! - `kiln-bench-waits REGION=S...`: snapshot waits, all in this process, each poller waiting for
//!   its own snapshot of the same delay; expects `scripts/emulator delays REGION snapshot=S`.
//! - `kiln-bench-waits fresh KIND REGION DELAY POLLER [--history FILE] [--instance ID --device
//!   DEV]`: one volume, attachment or image wait in this (fresh) process, printed as a JSON line;
//!   POLLER is `kiln` (history from FILE when given, none otherwise), `fixed-1` or `fixed-15`;
//!   expects `scripts/emulator delays REGION KIND=DELAY` and, for attachments, a host instance.
//! - `kiln-bench-waits table`: those JSON lines (stdin) as a Markdown table.

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;
use kiln::aws::AwsSettings;
use kiln::ec2::schedule::Schedule;
use kiln::ec2::wait::Wait;
use kiln::ec2::{BuildRef, images, kiln_tags, volumes};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Counts the requests a client sends (retries included).
#[derive(Debug, Clone, Default)]
struct Counting(Arc<AtomicU32>);

impl Intercept for Counting {
    fn name(&self) -> &'static str {
        "kiln-bench-count"
    }
    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[path = "kiln-bench-waits/fresh.rs"]
mod fresh;

/// The client for `region` with a request counter.
async fn counted_client(region: &str) -> anyhow::Result<(aws_sdk_ec2::Client, Counting)> {
    let config = kiln::aws::load(&AwsSettings {
        region: Some(region.to_owned()),
        ..AwsSettings::default()
    })
    .await?;
    let counter = Counting::default();
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&config)
            .interceptor(counter.clone())
            .build(),
    );
    Ok((ec2, counter))
}

/// One measured wait.
struct Measured {
    delay_s: f64,
    poller: &'static str,
    late_s: f64,
    calls: u32,
}

async fn one(
    region: String,
    delay_s: f64,
    poller: &'static str,
    schedule: Schedule,
) -> anyhow::Result<Measured> {
    let (ec2, counter) = counted_client(&region).await?;
    let build = BuildRef {
        id: format!("bench-waits-{}", uuid::Uuid::new_v4()),
        generation: String::new(),
        team: String::new(),
    };
    let tags = kiln_tags(&build, "bench", &Default::default());
    let volume = volumes::create(
        &ec2,
        &region,
        &volumes::NewVolume {
            zone: format!("{region}a"),
            size: Some(1),
            volume_type: None,
            snapshot_id: None,
            encrypted: None,
            kms_key_id: None,
            tags: tags.clone(),
            client_token: build.id.clone(),
        },
    )
    .await?;
    let snapshot = images::create_snapshot(&ec2, &region, &volume, "bench", &tags).await?;
    let created = Instant::now();
    let before = counter.0.load(Ordering::SeqCst);
    let spec = Wait {
        what: format!("snapshot {snapshot} to complete ({poller})"),
        interval: images::SNAPSHOT_POLL,
        schedule,
        deadline: Duration::from_secs(3600),
        successes: 1,
        history_key: format!("bench snapshot ({poller})"),
    };
    images::wait_snapshot_as(&ec2, &region, &snapshot, &spec, &CancellationToken::new()).await?;
    let took = created.elapsed().as_secs_f64();
    let calls = counter.0.load(Ordering::SeqCst) - before;
    images::delete_snapshot(&ec2, &region, &snapshot).await?;
    volumes::delete(&ec2, &region, &volume).await?;
    Ok(Measured {
        delay_s,
        poller,
        late_s: (took - delay_s).max(0.0),
        calls,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fresh") => fresh::run(&args[1..]).await,
        Some("table") => fresh::table(),
        _ => snapshots(&args).await,
    }
}

/// Snapshot waits of every poller and delay, at once in this process.
async fn snapshots(args: &[String]) -> anyhow::Result<()> {
    let mut jobs = Vec::new();
    for arg in args {
        let Some((region, delay)) = arg.split_once('=') else {
            anyhow::bail!("usage: kiln-bench-waits REGION=SECONDS...");
        };
        let delay: f64 = delay.parse()?;
        for (poller, schedule) in [
            (
                "kiln",
                Schedule::Predictive {
                    cap: images::SNAPSHOT_POLL,
                },
            ),
            ("fixed 1 s", Schedule::Fixed(Duration::from_secs(1))),
            (
                "fixed 15 s (Packer)",
                Schedule::Fixed(Duration::from_secs(15)),
            ),
        ] {
            jobs.push(tokio::spawn(one(
                region.to_owned(),
                delay,
                poller,
                schedule,
            )));
        }
    }
    let mut rows = Vec::new();
    for j in jobs {
        rows.push(j.await??);
    }
    println!(
        "| wait | poller | lateness | goal: max(0.2 s, 3%) | DescribeSnapshots calls | goal: 8 + wait/15 |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let (late_goal, calls_goal) = ((0.03 * r.delay_s).max(0.2), 8.0 + r.delay_s / 15.0);
        let mark = |ok: bool| if ok { "met" } else { "missed" };
        println!(
            "| {:.0} s | {} | {:.2} s ({:.1}%) | {:.2} s {} | {} | {:.0} {} |",
            r.delay_s,
            r.poller,
            r.late_s,
            100.0 * r.late_s / r.delay_s,
            late_goal,
            mark(r.late_s <= late_goal),
            r.calls,
            calls_goal,
            mark(f64::from(r.calls) <= calls_goal),
        );
    }
    Ok(())
}
