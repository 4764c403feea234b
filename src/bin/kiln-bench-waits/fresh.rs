//! One volume, attachment or image wait in a fresh process (`kiln-bench-waits fresh`), as a JSON
//! line, and the Markdown table of such lines (`kiln-bench-waits table`). A fresh process has no
//! in-process history: kiln's wait starts from the history file when one is given and exists.

use super::counted_client;
use anyhow::{Context, bail};
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, EbsBlockDevice, ResourceType, Tag,
};
use kiln::ec2::wait::Polling;
use kiln::ec2::{BuildRef, history, images, kiln_tags, tag_spec, volumes};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: kiln-bench-waits fresh volume|attachment|image REGION DELAY \
                     kiln|fixed-1|fixed-15 [--history FILE] [--instance ID --device DEV]";

/// One measured wait.
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    kind: String,
    delay_s: f64,
    poller: String,
    late_s: f64,
    calls: u32,
}

/// The options after the positional arguments.
#[derive(Default)]
struct Options {
    history: Option<PathBuf>,
    instance: Option<String>,
    device: Option<String>,
}

fn options(rest: &[String]) -> anyhow::Result<Options> {
    let mut o = Options::default();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--history" => o.history = Some(PathBuf::from(value)),
            "--instance" => o.instance = Some(value.clone()),
            "--device" => o.device = Some(value.clone()),
            _ => bail!("unknown option {flag}; {USAGE}"),
        }
    }
    Ok(o)
}

/// `kiln-bench-waits fresh ...`: makes what the wait needs, measures the wait, removes it all.
pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let [kind, region, delay, poller, rest @ ..] = args else {
        bail!(USAGE)
    };
    let delay_s: f64 = delay.parse().with_context(|| format!("delay {delay:?}"))?;
    let opts = options(rest)?;
    let fixed = |s| Polling {
        delay_seconds: Some(s),
        max_attempts: None,
    };
    let (polling, label) = match (poller.as_str(), &opts.history) {
        ("kiln", Some(f)) if f.exists() => (Polling::default(), "kiln, history of the last run"),
        ("kiln", _) => (Polling::default(), "kiln, no history"),
        ("fixed-1", _) => (fixed(1), "fixed 1 s"),
        ("fixed-15", _) => (fixed(15), "fixed 15 s (Packer)"),
        _ => bail!(USAGE),
    };
    let (ec2, counter) = counted_client(region).await?;
    let made = Made::new(&ec2, region, kind).await?;
    let count = || counter.0.load(Ordering::SeqCst);
    let cancel = CancellationToken::new();
    let mut ami = None;
    if kind == "image" {
        let snapshot = made.snapshot.as_deref().unwrap_or_default();
        ami = Some(register(&ec2, region, snapshot, &made.tags).await?);
    }
    // Only kiln's measured wait reads and writes the history file.
    history::use_file(opts.history.clone().filter(|_| poller == "kiln"));
    let (start, before) = (Instant::now(), count());
    let mut not_describe = 0;
    match (kind.as_str(), &ami) {
        ("volume", _) => {
            let class = volumes::class_of(&made.new);
            volumes::wait_available(&ec2, region, &made.volume, &class, &polling, &cancel).await?
        }
        ("attachment", _) => {
            let (Some(instance), Some(device)) = (&opts.instance, &opts.device) else {
                bail!("attachment waits need --instance and --device; {USAGE}")
            };
            not_describe = 1; // AttachVolume
            let v = &made.volume;
            volumes::attach(&ec2, region, v, instance, device, &polling, &cancel).await?;
        }
        (_, Some(ami)) => {
            images::wait_available(&ec2, region, ami, &polling, &cancel).await?;
        }
        _ => bail!(USAGE),
    }
    let took = start.elapsed().as_secs_f64();
    let calls = count() - before - not_describe;
    history::use_file(None);
    if let Some(ami) = &ami {
        images::remove(&ec2, region, ami).await?;
    }
    made.remove(&ec2, region, kind).await?;
    print(kind, delay_s, label, took, calls)
}

/// What a wait needs before it starts: a volume (available unless its own wait is measured) and,
/// for an image, a completed snapshot of it.
struct Made {
    new: volumes::NewVolume,
    volume: String,
    snapshot: Option<String>,
    tags: Vec<Tag>,
}

impl Made {
    async fn new(ec2: &aws_sdk_ec2::Client, region: &str, kind: &str) -> anyhow::Result<Self> {
        let build = BuildRef {
            id: format!("bench-waits-{}", uuid::Uuid::new_v4()),
            generation: String::new(),
            team: String::new(),
        };
        let tags = kiln_tags(&build, "bench", &Default::default());
        let new = volumes::NewVolume {
            zone: format!("{region}a"),
            size: Some(1),
            volume_type: None,
            snapshot_id: None,
            encrypted: None,
            kms_key_id: None,
            tags: tags.clone(),
            client_token: build.id.clone(),
        };
        let volume = volumes::create(ec2, region, &new).await?;
        let (setup, cancel) = (Polling::default(), CancellationToken::new());
        if kind != "volume" {
            let class = volumes::class_of(&new);
            volumes::wait_available(ec2, region, &volume, &class, &setup, &cancel).await?;
        }
        let mut snapshot = None;
        if kind == "image" {
            let s = images::create_snapshot(ec2, region, &volume, "bench", &tags).await?;
            images::wait_snapshot(ec2, region, &s, &setup, &cancel).await?;
            snapshot = Some(s);
        }
        Ok(Made {
            new,
            volume,
            snapshot,
            tags,
        })
    }

    /// Detaches and deletes the volume (the image's removal took its snapshot).
    async fn remove(
        self,
        ec2: &aws_sdk_ec2::Client,
        region: &str,
        kind: &str,
    ) -> anyhow::Result<()> {
        let (setup, cancel) = (Polling::default(), CancellationToken::new());
        if kind == "attachment" {
            volumes::detach(ec2, region, &self.volume, &setup, &cancel).await?;
        }
        volumes::delete(ec2, region, &self.volume).await?;
        Ok(())
    }
}

fn print(kind: &str, delay_s: f64, poller: &str, took: f64, calls: u32) -> anyhow::Result<()> {
    let row = Row {
        kind: kind.to_owned(),
        delay_s,
        poller: poller.to_owned(),
        late_s: (took - delay_s).max(0.0),
        calls,
    };
    println!("{}", serde_json::to_string(&row)?);
    Ok(())
}

/// An image of the snapshot, as `register-image` makes one from scratch.
async fn register(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    snapshot: &str,
    tags: &[Tag],
) -> anyhow::Result<String> {
    let out = ec2
        .register_image()
        .name(format!("bench-waits-{}", uuid::Uuid::new_v4()))
        .root_device_name("/dev/xvda")
        .architecture(ArchitectureValues::X8664)
        .virtualization_type("hvm")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(EbsBlockDevice::builder().snapshot_id(snapshot).build())
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::Image, tags))
        .send()
        .await
        .with_context(|| format!("RegisterImage of {snapshot} in {region}"))?;
    out.image_id.context("RegisterImage returned no image id")
}

/// `kiln-bench-waits table`: the JSON lines on stdin as one Markdown table, ordered by kind,
/// delay and poller.
pub fn table() -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if !line.trim().is_empty() {
            rows.push(serde_json::from_str::<Row>(&line).with_context(|| line.clone())?);
        }
    }
    let order = |r: &Row| {
        let kind = ["volume", "attachment", "image"]
            .iter()
            .position(|k| *k == r.kind);
        let poller = ["kiln, no", "kiln, history", "fixed 1", "fixed 15"]
            .iter()
            .position(|p| r.poller.starts_with(p));
        (kind, (r.delay_s * 1000.0) as u64, poller)
    };
    rows.sort_by_key(order);
    println!(
        "| wait | delay | poller | lateness | goal: max(0.3 s, 5%) | Describe* calls | goal: 8 + wait/15 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mark = |ok: bool| if ok { "met" } else { "missed" };
    for r in rows {
        let (late_goal, calls_goal) = ((0.05 * r.delay_s).max(0.3), 8.0 + r.delay_s / 15.0);
        println!(
            "| {} | {:.0} s | {} | {:.2} s ({:.1}%) | {:.2} s {} | {} | {:.0} {} |",
            r.kind,
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
