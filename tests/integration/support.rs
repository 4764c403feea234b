//! Test support: the emulator (started through `scripts/emulator`, as the README does), per-test
//! unique names, and a janitor that removes what a test created even when the test fails.

use aws_config::SdkConfig;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use kiln::aws::{AwsSettings, Clients};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The repository root (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The running emulator's settings, parsed from `scripts/emulator up`'s export lines.
#[derive(Debug)]
pub struct Emulator {
    pub vars: HashMap<String, String>,
}

impl Emulator {
    /// Starts the emulator (or reuses the running one) once per test process.
    pub fn get() -> &'static Emulator {
        static EMU: OnceLock<Emulator> = OnceLock::new();
        EMU.get_or_init(|| {
            let out = emulator_script(&["up"]);
            let vars = out
                .lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            Emulator { vars }
        })
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("scripts/emulator up did not export {name}"))
    }

    pub fn endpoint(&self) -> &str {
        self.var("AWS_ENDPOINT_URL")
    }

    /// The IMDS endpoint of the default builder host.
    pub fn imds_endpoint(&self) -> &str {
        self.var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    }

    pub fn region(&self) -> &str {
        self.var("AWS_REGION")
    }

    /// The settings kiln gets when pointed at the emulator.
    pub fn settings(&self, region: &str) -> AwsSettings {
        AwsSettings {
            region: Some(region.to_owned()),
            endpoint_url: Some(self.endpoint().to_owned()),
            static_credentials: Some(("testing".into(), "testing".into())),
        }
    }

    /// One `SdkConfig` for `region`, built by kiln's own loader, as the tests' own client: its
    /// user agent says `app/kiln-test`, not kiln's `app/kiln` (the emulator requires kiln's tags
    /// on kiln's creation calls; a test may create untagged resources).
    pub async fn sdk_config(&self, region: &str) -> SdkConfig {
        let config = kiln::aws::load(&self.settings(region))
            .await
            .expect("kiln::aws::load against the emulator");
        match aws_config::AppName::new("kiln-test") {
            Ok(name) => config.into_builder().app_name(name).build(),
            Err(_) => config,
        }
    }

    /// Like [`Emulator::sdk_config`], exactly as kiln makes it (user agent `app/kiln`).
    pub async fn kiln_sdk_config(&self, region: &str) -> SdkConfig {
        kiln::aws::load(&self.settings(region))
            .await
            .expect("kiln::aws::load against the emulator")
    }

    pub async fn clients(&self, region: &str) -> Clients {
        Clients::new(&self.sdk_config(region).await)
    }
}

/// Runs `scripts/emulator ARGS`; panics with its output (which names the install command) on failure.
pub fn emulator_script(args: &[&str]) -> String {
    let script = repo_root().join("scripts/emulator");
    let out = Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {} failed:\n{}",
        script.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name no other test (in this or another process) uses: `kiln-test-<what>-<pid>-<n>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "kiln-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A resource a test created, to be removed afterwards.
#[derive(Debug, Clone)]
pub enum Resource {
    Volume(String),
    Snapshot(String),
    Image(String),
    /// A file (e.g. the loop backend's snapshot data), removed last.
    File(PathBuf),
}

/// Records what a test creates, per region, and removes it in [`Janitor::clean`]: images first,
/// then snapshots, then volumes (detached first). Errors other than "not found" fail the test.
#[derive(Debug, Clone, Default)]
pub struct Janitor {
    items: Arc<Mutex<Vec<(String, Resource)>>>,
}

impl Janitor {
    pub fn track(&self, region: &str, resource: Resource) {
        self.items
            .lock()
            .expect("janitor lock")
            .push((region.to_owned(), resource));
    }

    pub async fn clean(&self, emu: &Emulator) -> Vec<String> {
        let items = std::mem::take(&mut *self.items.lock().expect("janitor lock"));
        let mut problems = Vec::new();
        let rank = |r: &Resource| match r {
            Resource::Image(_) => 0,
            Resource::Snapshot(_) => 1,
            Resource::Volume(_) => 2,
            Resource::File(_) => 3,
        };
        let mut sorted = items;
        sorted.sort_by_key(|(_, r)| rank(r));
        for (region, resource) in sorted {
            if let Resource::File(f) = &resource {
                let _ = std::fs::remove_file(f);
                continue;
            }
            let ec2 = emu.clients(&region).await.ec2;
            let gone = |code: Option<&str>| {
                code.is_some_and(|c| c.ends_with("NotFound") || c.ends_with(".Unavailable"))
            };
            let describe = |e: &dyn std::fmt::Debug| format!("{e:?}");
            let result: Result<(), String> = match &resource {
                Resource::Image(id) => ec2
                    .deregister_image()
                    .image_id(id)
                    .send()
                    .await
                    .map(|_| ())
                    .or_else(|e| {
                        if gone(e.code()) {
                            Ok(())
                        } else {
                            Err(describe(&e))
                        }
                    }),
                Resource::Snapshot(id) => ec2
                    .delete_snapshot()
                    .snapshot_id(id)
                    .send()
                    .await
                    .map(|_| ())
                    .or_else(|e| {
                        if gone(e.code()) {
                            Ok(())
                        } else {
                            Err(describe(&e))
                        }
                    }),
                Resource::File(_) => Ok(()),
                Resource::Volume(id) => {
                    let _ = ec2.detach_volume().volume_id(id).force(true).send().await;
                    ec2.delete_volume()
                        .volume_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .or_else(|e| {
                            if gone(e.code()) {
                                Ok(())
                            } else {
                                Err(describe(&e))
                            }
                        })
                }
            };
            if let Err(e) = result {
                problems.push(format!("{resource:?} in {region}: {e}"));
            }
        }
        problems
    }
}

/// Runs `body` with a janitor, then cleans up whether the body passed or panicked; re-raises the
/// body's panic, and fails when cleanup left something behind.
pub async fn with_janitor<F, Fut>(body: F)
where
    F: FnOnce(Janitor) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let janitor = Janitor::default();
    let outcome = tokio::spawn(body(janitor.clone())).await;
    let problems = janitor.clean(Emulator::get()).await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test task failed: {e}");
    }
    assert!(problems.is_empty(), "cleanup failed: {problems:#?}");
}

/// Tracks the artifacts of a result document (AMIs, snapshots and the loop backend's snapshot
/// files, in every region) for cleanup.
pub fn track_result(janitor: &Janitor, doc: &serde_json::Value) {
    let Some(arts) = doc["artifacts"].as_object() else {
        return;
    };
    for (region, a) in arts {
        janitor.track(
            region,
            Resource::Image(a["ami_id"].as_str().unwrap_or_default().to_owned()),
        );
        for s in a["snapshot_ids"].as_array().into_iter().flatten() {
            janitor.track(
                region,
                Resource::Snapshot(s.as_str().unwrap_or_default().to_owned()),
            );
        }
        for f in a["snapshot_files"].as_array().into_iter().flatten() {
            janitor.track(
                region,
                Resource::File(PathBuf::from(f.as_str().unwrap_or_default())),
            );
        }
    }
}

/// What carries build `id`'s `kiln:build-id` tag in `region` (owned by this account).
pub struct Tagged {
    pub volumes: Vec<aws_sdk_ec2::types::Volume>,
    pub snapshots: Vec<aws_sdk_ec2::types::Snapshot>,
    pub images: Vec<aws_sdk_ec2::types::Image>,
}

/// Lists the volumes, snapshots and images tagged with build `id` in `region`.
pub async fn tagged(region: &str, id: &str) -> Tagged {
    let ec2 = Emulator::get().clients(region).await.ec2;
    let tag = aws_sdk_ec2::types::Filter::builder()
        .name("tag:kiln:build-id")
        .values(id)
        .build();
    let volumes = ec2
        .describe_volumes()
        .filters(tag.clone())
        .send()
        .await
        .expect("DescribeVolumes")
        .volumes
        .unwrap_or_default();
    let snapshots = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(tag.clone())
        .send()
        .await
        .expect("DescribeSnapshots")
        .snapshots
        .unwrap_or_default();
    let images = ec2
        .describe_images()
        .owners("self")
        .filters(tag)
        .send()
        .await
        .expect("DescribeImages")
        .images
        .unwrap_or_default();
    Tagged {
        volumes,
        snapshots,
        images,
    }
}

/// Asserts that nothing of `volume` is left on this host: the emulator holds no data file for it
/// (DeleteVolume ran), no loop device is on that file, and no host shows a node for it.
pub fn assert_volume_gone_from_host(id: &str, volume: &str) {
    let file = volume_data(volume);
    assert!(
        !file.exists(),
        "{id}: volume {volume}'s data {} left (the volume was not deleted)",
        file.display()
    );
    assert_volume_data_unattached(volume);
}

/// Asserts that no host shows `volume`: no loop device on its data file, no attachment in the
/// emulator's data plane.
pub fn assert_volume_data_unattached(volume: &str) {
    let id = volume;
    let file = volume_data(volume);
    let out = Command::new("losetup")
        .arg("-j")
        .arg(&file)
        .output()
        .expect("losetup -j");
    assert!(
        out.stdout.is_empty(),
        "{id}: loop device left: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let state: serde_json::Value =
        serde_json::from_str(&emulator_script(&["state"])).expect("emulator state");
    assert!(
        state["ebs"]["attached"].get(volume).is_none(),
        "{id}: {volume} still attached on a host: {}",
        state["ebs"]["attached"][volume]
    );
}

/// The emulator's data file of volume `id`.
pub fn volume_data(id: &str) -> PathBuf {
    PathBuf::from(Emulator::get().var("KILN_EMULATOR_DATA"))
        .join("volumes")
        .join(format!("{id}.img"))
}

/// The emulator's data file of snapshot `id` (what an image made from it holds).
pub fn snapshot_data(id: &str) -> PathBuf {
    PathBuf::from(Emulator::get().var("KILN_EMULATOR_DATA"))
        .join("snapshots")
        .join(format!("{id}.img"))
}

/// The data file of the first snapshot of a result document's artifacts in `region`.
pub fn result_snapshot_data(doc: &serde_json::Value, region: &str) -> PathBuf {
    let id = doc["artifacts"][region]["snapshot_ids"][0]
        .as_str()
        .unwrap_or_else(|| panic!("the result names no snapshot in {region}: {doc:#}"));
    snapshot_data(id)
}

/// A builder host of this test process in the emulator with the given device naming (`xen` or
/// `nitro`), made once: the environment that points `kiln` at it (its IMDS, device directory
/// and naming). The default host (`builder-1`, Nitro naming) is in [`Emulator::vars`].
pub fn host_env(naming: &str) -> Vec<(String, String)> {
    static HOSTS: OnceLock<std::sync::Mutex<HashMap<String, serde_json::Value>>> = OnceLock::new();
    let mut hosts = HOSTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let host = hosts.entry(naming.to_owned()).or_insert_with(|| {
        let name = format!("tests-{}-{naming}", std::process::id());
        serde_json::from_str(&emulator_script(&["host", &name, "--naming", naming]))
            .expect("scripts/emulator host prints JSON")
    });
    let get = |k: &str| host[k].as_str().unwrap_or_default().to_owned();
    vec![
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
            get("imds_endpoint"),
        ),
        ("KILN_DEVICE_DIR".into(), get("dev_dir")),
        ("KILN_DEVICE_NAMING".into(), get("naming")),
    ]
}

/// A volume tagged as build `build`'s, `snapshots` snapshots of it (at least one) and an AMI that
/// maps the first, all tagged at creation and tracked by the janitor: (volume, snapshots, AMI).
pub async fn tagged_build_resources(
    ec2: &aws_sdk_ec2::Client,
    janitor: &Janitor,
    region: &str,
    build: &str,
    snapshots: usize,
) -> (String, Vec<String>, String) {
    tagged_generation_resources(ec2, janitor, region, build, None, snapshots).await
}

/// As [`tagged_build_resources`], with every resource also tagged `kiln:generation` =
/// `generation` (no such tag with `None`).
pub async fn tagged_generation_resources(
    ec2: &aws_sdk_ec2::Client,
    janitor: &Janitor,
    region: &str,
    build: &str,
    generation: Option<&str>,
    snapshots: usize,
) -> (String, Vec<String>, String) {
    use aws_sdk_ec2::types::{
        BlockDeviceMapping, EbsBlockDevice, ResourceType, Tag, TagSpecification,
    };
    let spec = |kind: ResourceType| {
        let mut s = TagSpecification::builder()
            .resource_type(kind)
            .tags(Tag::builder().key("kiln:build-id").value(build).build());
        if let Some(g) = generation {
            s = s.tags(Tag::builder().key("kiln:generation").value(g).build());
        }
        s.build()
    };
    let vol = ec2
        .create_volume()
        .availability_zone(format!("{region}a"))
        .size(1)
        .tag_specifications(spec(ResourceType::Volume))
        .send()
        .await
        .expect("volume")
        .volume_id
        .expect("id");
    janitor.track(region, Resource::Volume(vol.clone()));
    let mut snaps = Vec::new();
    for _ in 0..snapshots.max(1) {
        let snap = ec2
            .create_snapshot()
            .volume_id(&vol)
            .tag_specifications(spec(ResourceType::Snapshot))
            .send()
            .await
            .expect("snapshot")
            .snapshot_id
            .expect("id");
        janitor.track(region, Resource::Snapshot(snap.clone()));
        snaps.push(snap);
    }
    let ami = ec2
        .register_image()
        .name(unique("gc-ami"))
        .root_device_name("/dev/xvda")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(EbsBlockDevice::builder().snapshot_id(&snaps[0]).build())
                .build(),
        )
        .tag_specifications(spec(ResourceType::Image))
        .send()
        .await
        .expect("image")
        .image_id
        .expect("id");
    janitor.track(region, Resource::Image(ami.clone()));
    (vol, snaps, ami)
}
