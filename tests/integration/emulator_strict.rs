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
