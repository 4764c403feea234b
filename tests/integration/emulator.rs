//! The emulator's fidelity patches, each exercised through the Rust SDK as kiln will use it.
//! If one of these fails, the emulator no longer behaves as AWS documents and kiln's tests
//! against it prove nothing.

use crate::support::{Emulator, Janitor, Resource, emulator_script, unique, with_janitor};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, ResourceType, Tag,
    TagSpecification, VolumeType,
};
use std::time::{Duration, Instant};

/// The instance id the given IMDS endpoint serves, read with aws-config's IMDSv2 client.
async fn imds_get(endpoint: &str, path: &str) -> String {
    let client = aws_config::imds::Client::builder()
        .endpoint(endpoint)
        .expect("IMDS endpoint URL")
        .build();
    client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("IMDS GET {path} at {endpoint}: {e}"))
        .as_ref()
        .to_owned()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// A 1 GiB volume in the default zone, tracked by the janitor.
pub(crate) async fn volume(ec2: &aws_sdk_ec2::Client, janitor: &Janitor, region: &str) -> String {
    let id = ec2
        .create_volume()
        .availability_zone(format!("{region}a"))
        .size(1)
        .send()
        .await
        .expect("CreateVolume")
        .volume_id
        .expect("volume id");
    janitor.track(region, Resource::Volume(id.clone()));
    id
}

pub(crate) async fn snapshot(
    ec2: &aws_sdk_ec2::Client,
    janitor: &Janitor,
    region: &str,
    vol: &str,
) -> String {
    let id = ec2
        .create_snapshot()
        .volume_id(vol)
        .send()
        .await
        .expect("CreateSnapshot")
        .snapshot_id
        .expect("snapshot id");
    janitor.track(region, Resource::Snapshot(id.clone()));
    id
}

pub(crate) fn root_mapping(snapshot: &str, size: i32) -> BlockDeviceMapping {
    BlockDeviceMapping::builder()
        .device_name("/dev/xvda")
        .ebs(
            EbsBlockDevice::builder()
                .snapshot_id(snapshot)
                .volume_size(size)
                .volume_type(VolumeType::Gp3)
                .delete_on_termination(true)
                .build(),
        )
        .build()
}

/// Patch 1: RegisterImage keeps what AWS keeps, and CopyImage copies it with new snapshots.
#[tokio::test]
async fn register_image_keeps_block_device_mappings_and_attributes() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let ec2 = emu.clients(&region).await.ec2;
        let vol = volume(&ec2, &janitor, &region).await;
        let snap = snapshot(&ec2, &janitor, &region, &vol).await;
        let name = unique("register");
        let image_id = ec2
            .register_image()
            .name(&name)
            .root_device_name("/dev/xvda")
            .architecture(ArchitectureValues::Arm64)
            .virtualization_type("hvm")
            .ena_support(true)
            .sriov_net_support("simple")
            .boot_mode(BootModeValues::Uefi)
            .block_device_mappings(root_mapping(&snap, 4))
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/sdb")
                    .virtual_name("ephemeral0")
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .tags(tag("kiln:build-id", &name))
                    .build(),
            )
            .send()
            .await
            .expect("RegisterImage")
            .image_id
            .expect("image id");
        janitor.track(&region, Resource::Image(image_id.clone()));

        let image = ec2
            .describe_images()
            .image_ids(&image_id)
            .send()
            .await
            .expect("DescribeImages")
            .images
            .unwrap_or_default()
            .pop()
            .expect("the registered image");
        assert_eq!(image.root_device_name(), Some("/dev/xvda"));
        assert_eq!(image.root_device_type().map(|t| t.as_str()), Some("ebs"));
        assert_eq!(image.architecture(), Some(&ArchitectureValues::Arm64));
        assert_eq!(image.virtualization_type().map(|t| t.as_str()), Some("hvm"));
        assert_eq!(image.ena_support(), Some(true));
        assert_eq!(image.sriov_net_support(), Some("simple"));
        assert_eq!(image.boot_mode().map(|b| b.as_str()), Some("uefi"));
        let bdm = image.block_device_mappings();
        assert_eq!(bdm.len(), 2, "both mappings kept: {bdm:?}");
        let root = bdm[0].ebs().expect("root mapping is EBS");
        assert_eq!(
            root.snapshot_id(),
            Some(snap.as_str()),
            "root maps our snapshot"
        );
        assert_eq!(root.volume_size(), Some(4));
        assert_eq!(root.volume_type(), Some(&VolumeType::Gp3));
        assert_eq!(root.delete_on_termination(), Some(true));
        assert_eq!(bdm[1].virtual_name(), Some("ephemeral0"));
        assert!(
            image
                .tags()
                .iter()
                .any(|t| t.key() == Some("kiln:build-id") && t.value() == Some(name.as_str())),
            "tags set at creation: {:?}",
            image.tags()
        );
        // No snapshot was invented for the image.
        let invented = ec2
            .describe_snapshots()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("description")
                    .values(format!("*{image_id}*"))
                    .build(),
            )
            .send()
            .await
            .expect("DescribeSnapshots");
        assert!(
            invented.snapshots().is_empty(),
            "{:?}",
            invented.snapshots()
        );

        // CopyImage to a second region: same mappings with a new snapshot there, and ClientToken.
        let other = "us-west-2";
        let ec2_west = emu.clients(other).await.ec2;
        let token = unique("copy");
        let mut copies = Vec::new();
        for _ in 0..2 {
            let id = ec2_west
                .copy_image()
                .source_image_id(&image_id)
                .source_region(&region)
                .name(&name)
                .client_token(&token)
                .send()
                .await
                .expect("CopyImage")
                .image_id
                .expect("copy id");
            janitor.track(other, Resource::Image(id.clone()));
            copies.push(id);
        }
        assert_eq!(
            copies[0], copies[1],
            "the same ClientToken returns the same copy"
        );
        let copy = ec2_west
            .describe_images()
            .image_ids(&copies[0])
            .send()
            .await
            .expect("DescribeImages in the copy region")
            .images
            .unwrap_or_default()
            .pop()
            .expect("the copy");
        let copy_root = copy.block_device_mappings()[0].ebs().expect("EBS root");
        let copy_snap = copy_root
            .snapshot_id()
            .expect("copy has a snapshot")
            .to_owned();
        janitor.track(other, Resource::Snapshot(copy_snap.clone()));
        assert_ne!(copy_snap, snap);
        assert_eq!(copy_root.volume_size(), Some(4));
        assert_eq!(copy.root_device_name(), Some("/dev/xvda"));
        assert_eq!(copy.ena_support(), Some(true));
        ec2_west
            .describe_snapshots()
            .snapshot_ids(&copy_snap)
            .send()
            .await
            .expect("the copy's snapshot exists in the copy region");
    })
    .await;
}

/// Patch 2: CreateVolume honours ClientToken.
#[tokio::test]
async fn create_volume_honours_client_token() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let ec2 = emu.clients(&region).await.ec2;
        let token = unique("token");
        let mut ids = Vec::new();
        for _ in 0..2 {
            let id = ec2
                .create_volume()
                .availability_zone(format!("{region}a"))
                .size(2)
                .client_token(&token)
                .send()
                .await
                .expect("CreateVolume")
                .volume_id
                .expect("volume id");
            janitor.track(&region, Resource::Volume(id.clone()));
            ids.push(id);
        }
        assert_eq!(
            ids[0], ids[1],
            "a retry with the same token returns the same volume"
        );
        let err = ec2
            .create_volume()
            .availability_zone(format!("{region}a"))
            .size(3)
            .client_token(&token)
            .send()
            .await
            .expect_err("same token, other size");
        assert_eq!(err.code(), Some("IdempotentParameterMismatch"));
        let other = ec2
            .create_volume()
            .availability_zone(format!("{region}a"))
            .size(2)
            .client_token(unique("token"))
            .send()
            .await
            .expect("CreateVolume")
            .volume_id
            .expect("volume id");
        janitor.track(&region, Resource::Volume(other.clone()));
        assert_ne!(other, ids[0], "another token makes another volume");
    })
    .await;
}

/// Patch 3: a snapshot that a registered image maps cannot be deleted.
#[tokio::test]
async fn delete_snapshot_in_use_by_an_image_fails() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let ec2 = emu.clients(&region).await.ec2;
        let vol = volume(&ec2, &janitor, &region).await;
        let snap = snapshot(&ec2, &janitor, &region, &vol).await;
        let image_id = ec2
            .register_image()
            .name(unique("inuse"))
            .root_device_name("/dev/xvda")
            .block_device_mappings(root_mapping(&snap, 1))
            .send()
            .await
            .expect("RegisterImage")
            .image_id
            .expect("image id");
        janitor.track(&region, Resource::Image(image_id.clone()));
        let err = ec2
            .delete_snapshot()
            .snapshot_id(&snap)
            .send()
            .await
            .expect_err("the snapshot is in use");
        assert_eq!(err.code(), Some("InvalidSnapshot.InUse"));
        ec2.deregister_image()
            .image_id(&image_id)
            .send()
            .await
            .expect("DeregisterImage");
        ec2.delete_snapshot()
            .snapshot_id(&snap)
            .send()
            .await
            .expect("deleting is allowed once the image is gone");
    })
    .await;
}

/// Patch 4: DetachVolume with only the volume id; AttachVolume's checks.
#[tokio::test]
async fn detach_volume_with_only_volume_id() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let ec2 = emu.clients(&region).await.ec2;
        // An instance of this test's own (a builder host), so its device names are free.
        let host: serde_json::Value =
            serde_json::from_str(&emulator_script(&["host", &unique("detach")])).expect("host");
        let instance = imds_get(
            host["imds_endpoint"].as_str().expect("imds"),
            "/latest/meta-data/instance-id",
        )
        .await;
        let vol = volume(&ec2, &janitor, &region).await;
        let device = "/dev/sdg".to_owned();
        ec2.attach_volume()
            .volume_id(&vol)
            .instance_id(&instance)
            .device(&device)
            .send()
            .await
            .expect("AttachVolume");
        let again = ec2
            .attach_volume()
            .volume_id(&vol)
            .instance_id(&instance)
            .device("/dev/sdh")
            .send()
            .await
            .expect_err("already attached");
        assert_eq!(again.code(), Some("VolumeInUse"));
        ec2.detach_volume()
            .volume_id(&vol)
            .send()
            .await
            .expect("DetachVolume with only VolumeId");
        let state = ec2
            .describe_volumes()
            .volume_ids(&vol)
            .send()
            .await
            .expect("DescribeVolumes")
            .volumes
            .unwrap_or_default()
            .pop()
            .and_then(|v| v.state)
            .expect("volume state");
        assert_eq!(state.as_str(), "available");
    })
    .await;
}

/// Patch 5: the IMDSv2 stand-in serves a builder instance that exists in the emulator, and a
/// second host has a second identity.
#[tokio::test]
async fn imds_serves_builder_identities() {
    let emu = Emulator::get();
    let region = emu.region().to_owned();
    let ec2 = emu.clients(&region).await.ec2;
    let first = imds_get(emu.imds_endpoint(), "/latest/meta-data/instance-id").await;
    assert_eq!(
        imds_get(emu.imds_endpoint(), "/latest/meta-data/placement/region").await,
        region
    );
    let az = imds_get(
        emu.imds_endpoint(),
        "/latest/meta-data/placement/availability-zone",
    )
    .await;
    assert!(az.starts_with(&region), "{az}");
    let doc: serde_json::Value = serde_json::from_str(
        &imds_get(
            emu.imds_endpoint(),
            "/latest/dynamic/instance-identity/document",
        )
        .await,
    )
    .expect("identity document is JSON");
    assert_eq!(doc["instanceId"], first.as_str());
    assert_eq!(doc["region"], region.as_str());
    let described = ec2
        .describe_instances()
        .instance_ids(&first)
        .send()
        .await
        .expect("the builder instance exists in EC2");
    assert_eq!(described.reservations().len(), 1);

    // IMDSv2 only: a read without a token is refused.
    let url = format!("{}/latest/meta-data/instance-id", emu.imds_endpoint());
    let status = raw_http_status("GET", &url, &[]);
    assert_eq!(status, 401, "IMDSv1 read must be refused");
    let status = raw_http_status(
        "PUT",
        &format!("{}/latest/api/token", emu.imds_endpoint()),
        &[],
    );
    assert_eq!(
        status, 400,
        "a token request without the TTL header must be refused"
    );

    // A second builder host.
    let host: serde_json::Value =
        serde_json::from_str(&emulator_script(&["host", &unique("host")])).expect("host JSON");
    let endpoint = host["imds_endpoint"].as_str().expect("imds_endpoint");
    let second = imds_get(endpoint, "/latest/meta-data/instance-id").await;
    assert_ne!(first, second);
    assert_eq!(host["instance_id"], second.as_str());
}

/// Sends one bare HTTP/1.1 request and returns the status code.
fn raw_http_status(method: &str, url: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(authority).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"))
}

/// Patch 6: resources stay creating/attaching/pending for the configured delay.
#[tokio::test]
async fn delays_make_states_observable() {
    // A region no other test uses, so the delays touch only this test.
    let region = "ap-southeast-4";
    Emulator::get();
    emulator_script(&[
        "delays",
        region,
        "volume=1.5",
        "attachment=1.5",
        "snapshot=3",
        "image=1.5",
    ]);
    let cleared = scopeguard_delays(region);
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let ec2 = emu.clients(region).await.ec2;
        let vol = ec2
            .create_volume()
            .availability_zone(format!("{region}a"))
            .size(1)
            .send()
            .await
            .expect("CreateVolume");
        assert_eq!(vol.state().map(|s| s.as_str()), Some("creating"));
        let vol = vol.volume_id.expect("volume id");
        janitor.track(region, Resource::Volume(vol.clone()));
        let started = Instant::now();
        let seen = wait_for(
            || {
                let ec2 = ec2.clone();
                let vol = vol.clone();
                async move {
                    ec2.describe_volumes()
                        .volume_ids(vol)
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.volumes.unwrap_or_default().pop())
                        .and_then(|v| v.state)
                        .map(|s| s.as_str().to_owned())
                }
            },
            "available",
        )
        .await;
        assert!(seen.contains(&"creating".to_owned()), "{seen:?}");
        assert!(started.elapsed() >= Duration::from_millis(1000));

        let snap = ec2
            .create_snapshot()
            .volume_id(&vol)
            .send()
            .await
            .expect("CreateSnapshot");
        assert_eq!(snap.state().map(|s| s.as_str()), Some("pending"));
        let snap = snap.snapshot_id.expect("snapshot id");
        janitor.track(region, Resource::Snapshot(snap.clone()));
        let seen = wait_for(
            || {
                let ec2 = ec2.clone();
                let snap = snap.clone();
                async move {
                    ec2.describe_snapshots()
                        .snapshot_ids(snap)
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.snapshots.unwrap_or_default().pop())
                        .map(|s| {
                            format!(
                                "{} {}",
                                s.state.map(|s| s.as_str().to_owned()).unwrap_or_default(),
                                s.progress.unwrap_or_default()
                            )
                        })
                }
            },
            "completed 100%",
        )
        .await;
        // Progress rises from 0% through several values while pending, as AWS reports it.
        let pending: Vec<u32> = seen
            .iter()
            .filter_map(|s| s.strip_prefix("pending "))
            .filter_map(|p| p.trim_end_matches('%').parse().ok())
            .collect();
        assert!(pending.len() >= 3, "{seen:?}");
        assert!(pending.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert!(
            pending[0] < 40 && *pending.last().unwrap_or(&0) > 60,
            "{seen:?}"
        );

        let image = ec2
            .register_image()
            .name(unique("delayed"))
            .root_device_name("/dev/xvda")
            .block_device_mappings(root_mapping(&snap, 1))
            .send()
            .await
            .expect("RegisterImage")
            .image_id
            .expect("image id");
        janitor.track(region, Resource::Image(image.clone()));
        let seen = wait_for(
            || {
                let ec2 = ec2.clone();
                let image = image.clone();
                async move {
                    ec2.describe_images()
                        .image_ids(image)
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.images.unwrap_or_default().pop())
                        .and_then(|i| i.state)
                        .map(|s| s.as_str().to_owned())
                }
            },
            "available",
        )
        .await;
        assert!(seen.contains(&"pending".to_owned()), "{seen:?}");

        // Attachments: run an instance in this region to attach to.
        let instance = ec2
            .run_instances()
            .image_id("ami-0000000000000b17d")
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .expect("RunInstances")
            .instances()
            .first()
            .and_then(|i| i.instance_id.clone())
            .expect("instance id");
        ec2.attach_volume()
            .volume_id(&vol)
            .instance_id(&instance)
            .device("/dev/sdf")
            .send()
            .await
            .expect("AttachVolume");
        let seen = wait_for(
            || {
                let ec2 = ec2.clone();
                let vol = vol.clone();
                async move {
                    ec2.describe_volumes()
                        .volume_ids(vol)
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.volumes.unwrap_or_default().pop())
                        .and_then(|v| v.attachments.unwrap_or_default().pop())
                        .and_then(|a| a.state)
                        .map(|s| s.as_str().to_owned())
                }
            },
            "attached",
        )
        .await;
        assert!(seen.contains(&"attaching".to_owned()), "{seen:?}");
        ec2.detach_volume()
            .volume_id(&vol)
            .send()
            .await
            .expect("DetachVolume");
        ec2.terminate_instances()
            .instance_ids(&instance)
            .send()
            .await
            .expect("TerminateInstances");
    })
    .await;
    drop(cleared);
}

/// Polls `probe` every 100 ms until it returns `want` (at most 10 s); returns every state seen.
async fn wait_for<F, Fut>(probe: F, want: &str) -> Vec<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        if let Some(state) = probe().await {
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            if state == want {
                return seen;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never reached {want}: saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clears the region's delays when dropped, also when the test fails.
fn scopeguard_delays(region: &'static str) -> impl Drop {
    struct Clear(&'static str);
    impl Drop for Clear {
        fn drop(&mut self) {
            let _ =
                std::process::Command::new(crate::support::repo_root().join("scripts/emulator"))
                    .args(["delays", self.0])
                    .status();
        }
    }
    Clear(region)
}

/// Patch 7: conditional PutObject is atomic: of many concurrent `If-None-Match: *` creates of one
/// key exactly one succeeds (checkpoint journals rely on it); the others get 412, or 409
/// ConditionalRequestConflict when they arrived while the winner was writing, as on AWS.
#[tokio::test]
async fn conditional_put_object_is_atomic() {
    let emu = Emulator::get();
    let s3 = emu.clients(emu.region()).await.s3;
    let bucket = unique("cas");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        tasks.push(tokio::spawn(async move {
            s3.put_object()
                .bucket(&bucket)
                .key("journal.json")
                .if_none_match("*")
                .body(format!("{i}").into_bytes().into())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.raw_response().map(|r| r.status().as_u16()))
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => won += 1,
            Err(Some(409 | 412)) => {}
            Err(other) => panic!("a losing create answers 412 or 409, not {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one conditional create wins");
    let _ = s3
        .delete_object()
        .bucket(&bucket)
        .key("journal.json")
        .send()
        .await;
    let _ = s3.delete_bucket().bucket(&bucket).send().await;
}
