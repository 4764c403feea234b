//! Patch 16: AMI deprecation answers as AWS documents it (API reference: EnableImageDeprecation,
//! DisableImageDeprecation; User Guide: "Deprecate an AMI"): DeprecateAt rounded to the nearest
//! minute, never in the past nor more than 10 years out, DeprecationTime in DescribeImages, the
//! owner still listing its deprecated AMIs, and a copy that does not inherit the deprecation.

use crate::emulator::{root_mapping, snapshot, volume};
use crate::support::{Emulator, Janitor, Resource, unique, with_janitor};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::enable_image_deprecation::EnableImageDeprecationError;
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{Filter, Image};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::macros::format_description;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// AWS's rounding of DeprecateAt: to the nearest minute, half a minute up.
fn rounded(secs: i64) -> i64 {
    let floor = secs - secs.rem_euclid(60);
    if secs - floor >= 30 {
        floor + 60
    } else {
        floor
    }
}

/// DescribeImages' DeprecationTime for a whole-minute time: `2026-12-02T15:04:00.000Z`.
fn deprecation_text(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .expect("a representable time")
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].000Z"
        ))
        .expect("format")
}

/// An EBS-backed image of a new 1 GiB snapshot, with a unique name, tracked by the janitor.
async fn image(ec2: &aws_sdk_ec2::Client, janitor: &Janitor, region: &str) -> (String, String) {
    let vol = volume(ec2, janitor, region).await;
    let snap = snapshot(ec2, janitor, region, &vol).await;
    let name = unique("deprecate");
    let id = ec2
        .register_image()
        .name(&name)
        .root_device_name("/dev/xvda")
        .virtualization_type("hvm")
        .block_device_mappings(root_mapping(&snap, 1))
        .send()
        .await
        .expect("RegisterImage")
        .image_id
        .expect("image id");
    janitor.track(region, Resource::Image(id.clone()));
    (id, name)
}

async fn by_id(ec2: &aws_sdk_ec2::Client, id: &str) -> Image {
    ec2.describe_images()
        .image_ids(id)
        .send()
        .await
        .expect("DescribeImages by id")
        .images
        .unwrap_or_default()
        .pop()
        .unwrap_or_else(|| panic!("{id} is described by its id"))
}

/// DescribeImages with Owners=self and a name filter (no ImageIds), optionally IncludeDeprecated.
async fn own_by_name(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
    include_deprecated: Option<bool>,
) -> Vec<Image> {
    ec2.describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .set_include_deprecated(include_deprecated)
        .send()
        .await
        .expect("DescribeImages by owner")
        .images
        .unwrap_or_default()
}

async fn deprecate(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    at_secs: i64,
) -> Result<(), SdkError<EnableImageDeprecationError>> {
    ec2.enable_image_deprecation()
        .image_id(id)
        .deprecate_at(DateTime::from_secs(at_secs))
        .send()
        .await
        .map(|out| {
            assert_eq!(
                out.r#return(),
                Some(true),
                "EnableImageDeprecation returns true"
            )
        })
}

#[tokio::test]
async fn enable_image_deprecation_rounds_to_the_minute_and_disable_clears_it() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let ec2 = emu.clients(&region).await.ec2;
        let (id, name) = image(&ec2, &janitor, &region).await;
        assert_eq!(
            by_id(&ec2, &id).await.deprecation_time(),
            None,
            "not deprecated yet"
        );

        // As soon as AWS allows (not in the past): a little after now, seconds and all.
        let at = now_secs() + 40;
        deprecate(&ec2, &id, at)
            .await
            .expect("EnableImageDeprecation");
        let expected = deprecation_text(rounded(at));
        let described = by_id(&ec2, &id).await;
        assert_eq!(described.deprecation_time(), Some(expected.as_str()));
        assert!(
            (rounded(at) - at).abs() <= 30 && rounded(at) - now_secs() < 120,
            "within a minute of the request: {expected}"
        );

        // Listed by owner (with and without IncludeDeprecated), with its time.
        for include in [None, Some(false), Some(true)] {
            let listed = own_by_name(&ec2, &name, include).await;
            assert_eq!(listed.len(), 1, "IncludeDeprecated={include:?}: {listed:?}");
            assert_eq!(listed[0].image_id(), Some(id.as_str()));
            assert_eq!(listed[0].deprecation_time(), Some(expected.as_str()));
        }

        // A later time replaces it; the seconds round down below half a minute.
        let later = rounded(now_secs()) + 7 * 24 * 3600 + 29;
        deprecate(&ec2, &id, later)
            .await
            .expect("a second EnableImageDeprecation");
        assert_eq!(
            by_id(&ec2, &id).await.deprecation_time(),
            Some(deprecation_text(later - 29).as_str())
        );

        let out = ec2
            .disable_image_deprecation()
            .image_id(&id)
            .send()
            .await
            .expect("DisableImageDeprecation");
        assert_eq!(out.r#return(), Some(true));
        assert_eq!(by_id(&ec2, &id).await.deprecation_time(), None, "cleared");
        let listed = own_by_name(&ec2, &name, None).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].deprecation_time(), None);

        // DryRun changes nothing.
        let err = ec2
            .enable_image_deprecation()
            .image_id(&id)
            .deprecate_at(DateTime::from_secs(now_secs() + 3600))
            .dry_run(true)
            .send()
            .await
            .expect_err("DryRun answers with an error");
        assert_eq!(err.code(), Some("DryRunOperation"), "{err:?}");
        assert_eq!(by_id(&ec2, &id).await.deprecation_time(), None);
    })
    .await;
}

/// An AMI whose deprecation time has passed is deprecated; its owner still lists it, and
/// DeregisterImage still removes it.
#[tokio::test]
async fn owner_still_lists_and_deregisters_a_deprecated_image() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let ec2 = emu.clients(&region).await.ec2;
        let (id, name) = image(&ec2, &janitor, &region).await;

        // A time a few seconds ahead that rounds down to the current minute: deprecated at once.
        // Early in a minute only (wait for the next one otherwise, at most half a minute).
        while now_secs().rem_euclid(60) > 20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let at = now_secs() + 3;
        deprecate(&ec2, &id, at)
            .await
            .expect("EnableImageDeprecation");
        let minute = rounded(at);
        assert!(minute <= now_secs(), "the rounded time has passed");
        let expected = deprecation_text(minute);
        assert_eq!(
            by_id(&ec2, &id).await.deprecation_time(),
            Some(expected.as_str())
        );
        for include in [None, Some(false), Some(true)] {
            let listed = own_by_name(&ec2, &name, include).await;
            assert_eq!(
                listed.len(),
                1,
                "the owner sees its deprecated AMI (IncludeDeprecated={include:?}): {listed:?}"
            );
            assert_eq!(listed[0].deprecation_time(), Some(expected.as_str()));
        }

        ec2.deregister_image()
            .image_id(&id)
            .send()
            .await
            .expect("DeregisterImage of a deprecated image");
        assert!(
            own_by_name(&ec2, &name, Some(true)).await.is_empty(),
            "deregistered"
        );
        let err = deprecate(&ec2, &id, now_secs() + 3600)
            .await
            .expect_err("a deregistered image");
        assert_eq!(err.code(), Some("InvalidAMIID.Unavailable"), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn enable_image_deprecation_refuses_unknown_images_and_times_out_of_range() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let ec2 = emu.clients(&region).await.ec2;
        let (id, _) = image(&ec2, &janitor, &region).await;
        let tomorrow = now_secs() + 24 * 3600;

        let err = deprecate(&ec2, "ami-0123456789abcdef0", tomorrow)
            .await
            .expect_err("an unknown image");
        assert_eq!(err.code(), Some("InvalidAMIID.NotFound"), "{err:?}");
        let err = ec2
            .disable_image_deprecation()
            .image_id("ami-0123456789abcdef0")
            .send()
            .await
            .expect_err("an unknown image");
        assert_eq!(err.code(), Some("InvalidAMIID.NotFound"), "{err:?}");
        let err = deprecate(&ec2, "not-an-ami", tomorrow)
            .await
            .expect_err("a malformed id");
        assert_eq!(err.code(), Some("InvalidAMIID.Malformed"), "{err:?}");

        // "You can't specify a date in the past."
        let err = deprecate(&ec2, &id, now_secs() - 600)
            .await
            .expect_err("a time in the past");
        assert_eq!(err.code(), Some("InvalidParameterValue"), "{err:?}");
        // "The upper limit for DeprecateAt is 10 years from now."
        let err = deprecate(&ec2, &id, now_secs() + 10 * 366 * 24 * 3600)
            .await
            .expect_err("more than 10 years out");
        assert_eq!(err.code(), Some("InvalidParameterValue"), "{err:?}");
        assert_eq!(
            by_id(&ec2, &id).await.deprecation_time(),
            None,
            "refusals change nothing"
        );

        let nine_years = now_secs() + 9 * 365 * 24 * 3600;
        deprecate(&ec2, &id, nine_years)
            .await
            .expect("9 years out is within the limit");
        assert_eq!(
            by_id(&ec2, &id).await.deprecation_time(),
            Some(deprecation_text(rounded(nine_years)).as_str())
        );
    })
    .await;
}

#[tokio::test]
async fn copy_image_does_not_inherit_the_deprecation() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let ec2 = emu.clients(&region).await.ec2;
        let (id, name) = image(&ec2, &janitor, &region).await;
        let at = now_secs() + 3600;
        deprecate(&ec2, &id, at)
            .await
            .expect("EnableImageDeprecation");

        let other = "us-west-2";
        let west = emu.clients(other).await.ec2;
        let copy = west
            .copy_image()
            .source_image_id(&id)
            .source_region(&region)
            .name(&name)
            .send()
            .await
            .expect("CopyImage")
            .image_id
            .expect("copy id");
        janitor.track(other, Resource::Image(copy.clone()));
        for ebs in by_id(&west, &copy)
            .await
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs())
        {
            if let Some(snap) = ebs.snapshot_id() {
                janitor.track(other, Resource::Snapshot(snap.to_owned()));
            }
        }
        assert_eq!(
            by_id(&west, &copy).await.deprecation_time(),
            None,
            "the copy"
        );
        assert_eq!(
            by_id(&ec2, &id).await.deprecation_time(),
            Some(deprecation_text(rounded(at)).as_str()),
            "the source keeps its own"
        );
    })
    .await;
}
