//! Lifecycle rules (issue 25): a template's `kiln-lifecycle` metadata makes the nightly run
//! deprecate, then deregister (with the snapshots their builds made), the template's images it
//! does not keep: never the newest `keep`, nor the `keep` latest of each channel, nor an image any
//! channel of the team points at, nor another team's or another template's image.

use crate::support::{Emulator, Janitor, Resource, unique, with_janitor};
use crate::trigger::lambda_for;
use crate::worker::setup;
use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, ResourceType, Tag, TagSpecification};
use serde_json::{Value, json};
use std::time::Duration;

/// Tags of a resource kiln made for `build` of `team`, from template `template`.
fn spec(kind: ResourceType, tags: &[(&str, &str)]) -> TagSpecification {
    let mut s = TagSpecification::builder().resource_type(kind);
    for (k, v) in tags {
        s = s.tags(Tag::builder().key(*k).value(*v).build());
    }
    s.build()
}

/// A volume to snapshot in `region` (1 GiB, tracked).
pub(crate) async fn volume(janitor: &Janitor, region: &str) -> String {
    let emu = Emulator::get();
    let volume = emu
        .clients(region)
        .await
        .ec2
        .create_volume()
        .availability_zone(format!("{region}a"))
        .size(1)
        .send()
        .await
        .expect("CreateVolume")
        .volume_id
        .expect("volume id");
    janitor.track(region, Resource::Volume(volume.clone()));
    volume
}

/// An image as a worker registers it for `build`: a snapshot of `volume` (in `region`) tagged
/// with the build and team, the image tagged with those and its template; `extra`: a further
/// snapshot its mapping names (a source image's, not the build's). Waits until it is available.
pub(crate) async fn image(
    janitor: &Janitor,
    (region, volume): (&str, &str),
    (build, team): (&str, &str),
    template: &str,
    template_name: &str,
    extra: Option<&str>,
) -> (String, String) {
    let ec2 = Emulator::get().clients(region).await.ec2;
    let own = [("kiln:build-id", build), ("kiln:team", team)];
    let snap = ec2
        .create_snapshot()
        .volume_id(volume)
        .tag_specifications(spec(ResourceType::Snapshot, &own))
        .send()
        .await
        .expect("CreateSnapshot")
        .snapshot_id
        .expect("snapshot id");
    janitor.track(region, Resource::Snapshot(snap.clone()));
    let mapping = |device: &str, snap: &str| {
        BlockDeviceMapping::builder()
            .device_name(device)
            .ebs(EbsBlockDevice::builder().snapshot_id(snap).build())
            .build()
    };
    let mut register = ec2
        .register_image()
        .name(unique("lc-ami"))
        .root_device_name("/dev/xvda")
        .block_device_mappings(mapping("/dev/xvda", &snap));
    if let Some(s) = extra {
        register = register.block_device_mappings(mapping("/dev/xvdb", s));
    }
    let mut tags = own.to_vec();
    tags.extend([
        ("kiln:template", template),
        ("kiln:template-name", template_name),
    ]);
    let ami = register
        .tag_specifications(spec(ResourceType::Image, &tags))
        .send()
        .await
        .expect("RegisterImage")
        .image_id
        .expect("image id");
    janitor.track(region, Resource::Image(ami.clone()));
    for _ in 0..100 {
        if state(region, &ami).await.as_deref() == Some("available") {
            return (ami, snap);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{ami} never became available");
}

/// Waits until the clock has left the second `ami` was registered in: creation times are whole
/// seconds, so an image registered after this is newer than `ami`.
async fn newer_from_now(region: &str, ami: &str) {
    let ec2 = Emulator::get().clients(region).await.ec2;
    let created = ec2
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .expect("DescribeImages")
        .images()
        .first()
        .and_then(|i| i.creation_date())
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .expect("a creation time");
    let next = created.replace_nanosecond(0).expect("second") + time::Duration::seconds(1);
    while time::OffsetDateTime::now_utc() < next {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An image's state in `region` (`None`: gone) and deprecation time.
async fn described(region: &str, ami: &str) -> Option<(String, Option<String>)> {
    let ec2 = Emulator::get().clients(region).await.ec2;
    let out = ec2.describe_images().image_ids(ami).send().await.ok()?;
    let i = out.images().first()?;
    Some((
        i.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        i.deprecation_time().map(str::to_owned),
    ))
}

async fn state(region: &str, ami: &str) -> Option<String> {
    described(region, ami).await.map(|(s, _)| s)
}

async fn snapshot_exists(region: &str, id: &str) -> bool {
    let ec2 = Emulator::get().clients(region).await.ec2;
    ec2.describe_snapshots()
        .snapshot_ids(id)
        .send()
        .await
        .is_ok_and(|o| !o.snapshots().is_empty())
}

/// Points channel parameter `name` at `ami` (a new version).
pub(crate) async fn put_channel(ssm: &aws_sdk_ssm::Client, name: &str, ami: &str) {
    ssm.put_parameter()
        .name(name)
        .value(ami)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutParameter {name}: {e:?}"));
}

/// The summary's lifecycle entries with an action, as (ami, action).
fn actions(run: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = run["lifecycle"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["ami"].is_string())
        .map(|e| {
            (
                e["ami"].as_str().unwrap_or_default().to_owned(),
                e["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Eight images of one template, oldest first (i1..i8), with `keep=2,deprecate=30d,deregister=60d`:
/// the 2 newest (i8, i7), the 2 latest of channel dev (i4, i3; it held i2 before), what prod
/// holds (i1) and what another template's channel holds (i2) are kept; i5 and i6 are deprecated
/// 45 days on, not again the same night, and deregistered 70 days on with their own snapshots
/// (not the source snapshot i6 also maps). Another team's image of the same template, and a
/// template whose name is a wildcard (`a*`) with `deregister=0`, touch nothing; a malformed rule
/// is named with its fix; the boot test's private image is not the rule's. In the other region
/// the last build published to (its bake index), three images without channels: the oldest goes
/// the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_rules_keep_exactly_what_they_promise() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let emu = Emulator::get();
        let region = emu.region();
        let ec2 = emu.clients(region).await.ec2;
        let ssm = aws_sdk_ssm::Client::new(&emu.sdk_config(region).await);
        let u = unique("lc");
        let key = format!("templates/{u}/app.pkr.hcl");
        let wild = format!("templates/{u}/a*.pkr.hcl");
        let bad = format!("templates/{u}/bad.pkr.hcl");
        for (k, rule) in [
            (&key, "keep=2, deprecate=30d, deregister=60d"),
            (&wild, "deregister=0"),
            (&bad, "keep=3"),
        ] {
            s.s3.put_object()
                .bucket(&s.bucket)
                .key(k)
                .body(b"# images only\n".to_vec().into())
                .metadata("kiln-lifecycle", rule)
                .send()
                .await
                .expect("put template");
        }
        let template = format!("s3://{}/{key}#app", s.bucket);
        let name = format!("{u}/app");
        let home_volume = volume(&janitor, region).await;
        // A snapshot of the team that another build made (as a source image's): no image maps
        // it but i6, so only its tags keep it from going with i6.
        let source_build = unique("lc-source");
        let source_snap = ec2
            .create_snapshot()
            .volume_id(&home_volume)
            .tag_specifications(spec(
                ResourceType::Snapshot,
                &[
                    ("kiln:build-id", source_build.as_str()),
                    ("kiln:team", "default"),
                ],
            ))
            .send()
            .await
            .expect("CreateSnapshot")
            .snapshot_id
            .expect("snapshot id");
        janitor.track(region, Resource::Snapshot(source_snap.clone()));
        // The boot test's private image of an older build (kiln:step boot-test): never the rule's.
        let (boot_test, _) = image(
            &janitor,
            (region, &home_volume),
            (&unique("lc-build"), "default"),
            &template,
            &name,
            None,
        )
        .await;
        ec2.create_tags()
            .resources(&boot_test)
            .tags(Tag::builder().key("kiln:step").value("boot-test").build())
            .send()
            .await
            .expect("CreateTags");
        let mut amis = Vec::new();
        let mut snaps = Vec::new();
        for i in 1..=8 {
            let extra = (i == 6).then_some(source_snap.as_str());
            let (ami, snap) = image(
                &janitor,
                (region, &home_volume),
                (&unique("lc-build"), "default"),
                &template,
                &name,
                extra,
            )
            .await;
            newer_from_now(region, &ami).await;
            amis.push(ami);
            snaps.push(snap);
        }
        let (other_team, other_snap) = image(
            &janitor,
            (region, &home_volume),
            (&unique("lc-build"), &format!("{u}-other")),
            &template,
            &name,
            None,
        )
        .await;
        let i = |n: usize| amis[n - 1].clone();
        let channel = |t: &str, c: &str| format!("/kiln/default/{u}/{t}/{c}");
        for ami in [i(2), i(3), i(4)] {
            put_channel(&ssm, &channel("app", "dev"), &ami).await;
        }
        put_channel(&ssm, &channel("app", "prod"), &i(1)).await;
        put_channel(&ssm, &channel("other", "prod"), &i(2)).await;
        // The last build also published to another region (its bake index says so): three
        // images there, no channel; the oldest goes.
        let west = crate::checkpoint::COPY_REGION;
        let west_volume = volume(&janitor, west).await;
        let mut w = Vec::new();
        for _ in 0..3 {
            let (ami, _) = image(
                &janitor,
                (west, &west_volume),
                (&unique("lc-build"), "default"),
                &template,
                &name,
                None,
            )
            .await;
            newer_from_now(west, &ami).await;
            w.push(ami);
        }
        let index = json!({"template": key, "build_id": unique("lc-last"), "bake": {"key": "k", "source_amis": []},
            "artifacts": {region: {"ami_id": i(8), "snapshot_ids": []}, west: {"ami_id": w[2], "snapshot_ids": []}}});
        s.s3.put_object()
            .bucket(&s.bucket)
            .key(format!("index/{key}.json"))
            .body(index.to_string().into_bytes().into())
            .send()
            .await
            .expect("put index");

        let now = time::OffsetDateTime::now_utc();
        let night = |days: i64| {
            let at = (now + time::Duration::days(days))
                .format(&time::format_description::well_known::Rfc3339)
                .expect("time");
            json!({"nightly": {"templates": [key, wild, bad], "time": at}})
        };
        let first = lambda
            .invoke(night(45))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lambda.log()));
        assert_eq!(
            actions(&first),
            {
                let mut v = vec![
                    (i(2), "kept".to_owned()),
                    (i(5), "deprecated".to_owned()),
                    (i(6), "deprecated".to_owned()),
                    (w[0].clone(), "deprecated".to_owned()),
                ];
                v.sort();
                v
            },
            "{first:#}"
        );
        let kept = first["lifecycle"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["kept"].is_array() && e["template"] == json!(key) && e["region"] == json!(region)
            })
            .unwrap_or_else(|| panic!("no kept entry: {first:#}"));
        let mut kept: Vec<String> = serde_json::from_value(kept["kept"].clone()).expect("kept");
        kept.sort();
        let mut want = vec![i(8), i(7), i(4), i(3), i(1)];
        want.sort();
        assert_eq!(kept, want, "{first:#}");
        let error = |run: &Value, t: &str| {
            run["lifecycle"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["template"] == json!(t) && e["error"].is_string())
                .map(|e| e["error"].as_str().unwrap_or_default().to_owned())
        };
        let why = error(&first, &bad).unwrap_or_else(|| panic!("bad rule not named: {first:#}"));
        assert!(
            why.contains("kiln-lifecycle") && why.contains("--metadata"),
            "{why}"
        );
        for n in 1..=8 {
            let (st, deprecated) = described(region, &i(n)).await.expect("still there");
            assert_eq!(st, "available", "i{n}");
            assert_eq!(
                deprecated.is_some(),
                n == 5 || n == 6,
                "i{n}: {deprecated:?}"
            );
        }

        // The same night again: nothing more to do.
        let again = lambda.invoke(night(45)).await.expect("again");
        assert_eq!(
            actions(&again),
            vec![(i(2), "kept".to_owned())],
            "{again:#}"
        );

        // 70 days on: i5 and i6 go, with their own snapshots; everything else stays.
        let later = lambda.invoke(night(70)).await.expect("later");
        let mut want = vec![
            (i(2), "kept".to_owned()),
            (i(5), "deregistered".to_owned()),
            (i(6), "deregistered".to_owned()),
            (w[0].clone(), "deregistered".to_owned()),
        ];
        want.sort();
        assert_eq!(actions(&later), want, "{later:#}");
        for n in 1..=8 {
            let gone = n == 5 || n == 6;
            assert_eq!(state(region, &i(n)).await.is_none(), gone, "i{n}");
            assert_eq!(
                snapshot_exists(region, &snaps[n - 1]).await,
                !gone,
                "i{n}'s snapshot"
            );
        }
        assert!(
            snapshot_exists(region, &source_snap).await,
            "the source snapshot i6 mapped is kept"
        );
        assert_eq!(state(region, &other_team).await.as_deref(), Some("available"));
        assert_eq!(state(region, &boot_test).await.as_deref(), Some("available"));
        assert!(state(west, &w[0]).await.is_none(), "{later:#}");
        for ami in &w[1..] {
            assert_eq!(state(west, ami).await.as_deref(), Some("available"));
        }
        assert!(snapshot_exists(region, &other_snap).await);
        assert!(error(&later, &wild).is_none(), "{later:#}");

        for (t, c) in [("app", "dev"), ("app", "prod"), ("other", "prod")] {
            let _ = ssm.delete_parameter().name(channel(t, c)).send().await;
        }
        drop(lambda);
    })
    .await;
}
