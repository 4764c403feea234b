//! The emulator answers as AWS does where kiln could otherwise pass here and fail on AWS: a
//! duplicate AMI name, an attachment across availability zones or to an invalid device name; and
//! it injects faults on request (the tests of retries and publishing rely on them).

use crate::emulator::{root_mapping, snapshot, volume};
use crate::support::{Emulator, Resource, emulator_script, unique, with_janitor};
use aws_sdk_ec2::error::ProvideErrorMetadata;

/// Patch 1b: RegisterImage refuses a name the account already uses in the region.
#[tokio::test]
async fn register_image_refuses_a_duplicate_name() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region();
        let ec2 = emu.clients(region).await.ec2;
        let vol = volume(&ec2, &janitor, region).await;
        let snap = snapshot(&ec2, &janitor, region, &vol).await;
        let name = unique("dup-ami");
        let register = || {
            ec2.register_image()
                .name(&name)
                .root_device_name("/dev/xvda")
                .block_device_mappings(root_mapping(&snap, 1))
                .send()
        };
        let first = register().await.expect("first RegisterImage");
        let ami = first.image_id().expect("id").to_owned();
        janitor.track(region, Resource::Image(ami.clone()));
        let err = register()
            .await
            .expect_err("a second image of the same name");
        assert_eq!(err.code(), Some("InvalidAMIName.Duplicate"), "{err:?}");
        assert!(
            err.message().is_some_and(|m| m.contains(&ami)),
            "the message names the AMI: {err:?}"
        );
    })
    .await;
}

/// Patch 4b: AttachVolume refuses a volume in another zone than the instance, and a device name
/// EBS does not accept.
#[tokio::test]
async fn attach_volume_checks_the_zone_and_the_device_name() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region();
        let ec2 = emu.clients(region).await.ec2;
        let host: serde_json::Value = serde_json::from_str(&emulator_script(&[
            "host",
            &unique("zone-b"),
            &format!("{region}b"),
        ]))
        .expect("host");
        let instance = host["instance_id"].as_str().expect("instance id");
        let in_a = volume(&ec2, &janitor, region).await;
        let err = ec2
            .attach_volume()
            .volume_id(&in_a)
            .instance_id(instance)
            .device("/dev/sdf")
            .send()
            .await
            .expect_err("a volume in zone a on an instance in zone b");
        assert_eq!(err.code(), Some("InvalidVolume.ZoneMismatch"), "{err:?}");
        let in_b = ec2
            .create_volume()
            .availability_zone(format!("{region}b"))
            .size(1)
            .send()
            .await
            .expect("CreateVolume")
            .volume_id
            .expect("id");
        janitor.track(region, Resource::Volume(in_b.clone()));
        for bad in ["/dev/foo", "sdf", "/dev/nvme1n1"] {
            let err = ec2
                .attach_volume()
                .volume_id(&in_b)
                .instance_id(instance)
                .device(bad)
                .send()
                .await
                .expect_err(bad);
            assert_eq!(err.code(), Some("InvalidParameterValue"), "{bad}: {err:?}");
        }
        ec2.attach_volume()
            .volume_id(&in_b)
            .instance_id(instance)
            .device("/dev/sdf")
            .send()
            .await
            .expect("same zone, valid device");
        ec2.detach_volume()
            .volume_id(&in_b)
            .send()
            .await
            .expect("detach");
    })
    .await;
}

/// Patch 8: a fault answers exactly the requests it matches (method, path, body), as many times
/// as asked, then the request goes through.
#[tokio::test]
async fn faults_answer_only_what_they_match() {
    let emu = Emulator::get();
    let c = emu.clients(emu.region()).await;
    let bucket = unique("faults");
    c.s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let key = "results/x.json";
    emulator_script(&[
        "fault",
        "PUT",
        &format!("/{bucket}/{key}"),
        "403",
        "AccessDenied",
        "2",
    ]);
    let put = |k: &'static str| {
        c.s3.put_object()
            .bucket(&bucket)
            .key(k)
            .body(b"{}".to_vec().into())
            .send()
    };
    put("results/other.json")
        .await
        .expect("another key is not matched");
    for i in 0..2 {
        let err = put(key).await.expect_err("faulted");
        assert_eq!(err.code(), Some("AccessDenied"), "{i}: {err:?}");
    }
    put(key).await.expect("the fault is used up");
    for k in [key, "results/other.json"] {
        let _ = c.s3.delete_object().bucket(&bucket).key(k).send().await;
    }
    let _ = c.s3.delete_bucket().bucket(&bucket).send().await;
}

/// Patch 9: a creation call made by kiln (user agent `app/kiln`) without kiln's tag is refused,
/// so a resource kiln forgets to tag fails the test that makes it instead of leaking unseen.
#[tokio::test]
async fn kilns_untagged_creations_are_refused() {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region();
        let kiln_ec2 = aws_sdk_ec2::Client::new(&emu.kiln_sdk_config(region).await);
        let err = kiln_ec2
            .create_volume()
            .availability_zone(format!("{region}a"))
            .size(1)
            .send()
            .await
            .expect_err("kiln's untagged CreateVolume");
        assert_eq!(err.code(), Some("KilnUntaggedResource"), "{err:?}");
        let tagged = kiln_ec2
            .create_volume()
            .availability_zone(format!("{region}a"))
            .size(1)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .tags(
                        Tag::builder()
                            .key("kiln:build-id")
                            .value(unique("tagged"))
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("kiln's tagged CreateVolume")
            .volume_id
            .expect("id");
        janitor.track(region, Resource::Volume(tagged));
        // The tests' own client may create untagged resources.
        let test_ec2 = emu.clients(region).await.ec2;
        let plain = volume(&test_ec2, &janitor, region).await;
        assert!(plain.starts_with("vol-"));
    })
    .await;
}

/// An EC2 client that does not retry (so each throttled answer is seen).
async fn no_retry_ec2() -> aws_sdk_ec2::Client {
    let emu = Emulator::get();
    let config = emu.sdk_config(emu.region()).await;
    aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&config)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build(),
    )
}

/// Patch 12: a share of the matching calls answer RequestLimitExceeded; others never do.
#[tokio::test]
async fn throttling_answers_a_share_of_the_matching_calls() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region();
        let ec2 = no_retry_ec2().await;
        let full = emu.clients(region).await.ec2;
        let vol = crate::emulator::volume(&full, &janitor, region).await;
        let other = crate::emulator::volume(&full, &janitor, region).await;
        emulator_script(&["throttle", "0.5", "DescribeVolumes", &vol]);
        let mut throttled = 0;
        let mut others = 0;
        for _ in 0..40 {
            match ec2.describe_volumes().volume_ids(&vol).send().await {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.code(), Some("RequestLimitExceeded"), "{e:?}");
                    throttled += 1;
                }
            }
            if ec2
                .describe_volumes()
                .volume_ids(&other)
                .send()
                .await
                .is_err()
            {
                others += 1;
            }
        }
        emulator_script(&["throttle", "0"]);
        // 40 draws at 50%: outside 5..=35 with probability below 1e-6.
        assert!((5..=35).contains(&throttled), "{throttled} of 40 throttled");
        assert_eq!(others, 0, "calls for another volume were throttled");
        ec2.describe_volumes()
            .volume_ids(&vol)
            .send()
            .await
            .expect("share 0 stops it");
    })
    .await;
}

/// Patch 13: the emulator keeps HTTP/1.1 connections alive, as AWS's endpoints do.
#[test]
fn connections_are_kept_alive() {
    use std::io::{BufRead, BufReader, Read, Write};
    let emu = Emulator::get();
    let addr = emu
        .endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let stream = std::net::TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    for i in 0..2 {
        write!(
            writer,
            "GET /_kiln/state HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive\r\n\r\n"
        )
        .expect("write");
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "request {i}: {status:?}"
        );
        let mut length = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).expect("header");
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            assert!(
                !h.eq_ignore_ascii_case("connection: close\r\n"),
                "request {i}: the server closes the connection"
            );
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
    }
}
