//! The boot test's `instance` method: the new snapshot registered as a private image of its own
//! (`kiln-boot-test-<build>`, never shared, copied or named like the AMI, so the real AMI appears
//! only after the test passes and `force_deregister` never removes a good image for a bad one),
//! launched on a small instance (`boot_test.instance_type`, tagged at creation, in the builder's
//! subnet unless `subnet_id` says otherwise, its root volume deleted on termination), its serial
//! console read with GetConsoleOutput until the marker, then the instance terminated (waited for)
//! and the image deregistered; the snapshot stays for `register-image`. A cancelled build
//! terminates the instance at once.

use crate::ec2::instances::{self, Launch};
use crate::ec2::{api, client_token, images, kiln_tags};
use crate::host::vm;
use crate::pipeline::{Build, StepError};
use crate::template::boot_test::BootTest;
use aws_sdk_ec2::types::InstanceStateName;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Pause between two reads of the console. GetConsoleOutput is a Describe-class call (shared
/// rate limit); an instance takes tens of seconds to boot, so a few seconds of lateness is noise.
const CONSOLE_POLL: Duration = Duration::from_secs(3);

/// The private image's name: unique per build and generation, within EC2's 128 characters.
fn image_name(b: &Build) -> String {
    let mut name = format!("kiln-boot-test-{}-{}", b.id, b.generation);
    name.retain(|c| c.is_ascii_alphanumeric() || "-_.()/".contains(c));
    name.truncate(128);
    name
}

pub async fn run(
    b: &mut Build,
    test: &BootTest,
    snapshot: &str,
) -> Result<serde_json::Value, StepError> {
    let marker = regex::Regex::new(&test.marker)
        .map_err(|e| super::invalid(format!("boot_test.marker: {e}")))?;
    let name = image_name(b);
    let image = super::register_image::request(b, snapshot, &name, "boot-test")?
        .send()
        .await
        .map_err(api("RegisterImage", name.clone(), &b.region))?
        .image_id
        .ok_or_else(|| super::invalid("RegisterImage returned no image id"))?;
    b.state.boot_test.image_id = Some(image.clone());
    let registered =
        images::wait_available(&b.clients.ec2, &b.region, &image, &b.polling, &b.cancel).await?;
    let root = instances::root_mapping(&registered).ok_or_else(|| {
        super::invalid(format!(
            "the test image {image} has no EBS root mapping to launch"
        ))
    })?;
    let subnet_id = match &test.subnet_id {
        Some(s) => Some(s.clone()),
        None => builder_subnet(b).await?,
    };
    let instance_type = test
        .instance_type_for(super::register_image::architecture(b) == "arm64")
        .to_owned();
    let launch = Launch {
        image_id: image.clone(),
        instance_type: instance_type.clone(),
        subnet_id,
        root,
        tags: kiln_tags(&b.build_ref(), "boot-test", &BTreeMap::new()),
        client_token: client_token(&b.build_ref(), &["boot-test", &b.attempt.to_string()]),
    };
    let instance = instances::launch(&b.clients.ec2, &b.region, &launch).await?;
    b.state.boot_test.instance_id = Some(instance.clone());
    (b.sink)(
        "boot-test",
        &format!(
            "launched {instance} ({instance_type}) from {image}; waiting for `{}` on its console (timeout {} s)",
            test.marker, test.timeout_s
        ),
    );
    let watched = watch(b, &instance, &marker, test.timeout_s).await;
    // The instance and the image go now, whatever the test said; the undo repeats this only if
    // removing them failed.
    let removed = remove(b).await;
    let (seconds, line, tail) = watched?;
    removed?;
    Ok(serde_json::json!({
        "method": "instance",
        "instance_id": instance,
        "instance_type": instance_type,
        "test_image_id": image,
        "booted_in_s": seconds,
        "marker_line": line,
        "console_tail": tail,
    }))
}

/// Reads the console until a line matches `marker`; fails when the instance stops or the time is
/// up, with the console's last lines. Returns (seconds, matching line, last lines).
async fn watch(
    b: &Build,
    instance: &str,
    marker: &regex::Regex,
    timeout_s: f64,
) -> Result<(f64, String, Vec<String>), StepError> {
    let started = Instant::now();
    let mut last_printed: Option<String> = None;
    loop {
        let console = instances::console(&b.clients.ec2, &b.region, instance).await?;
        let lines: Vec<String> = console
            .lines()
            .map(|l| vm::clean(l.as_bytes()))
            .filter(|l| !l.trim().is_empty())
            .collect();
        for line in &lines[unseen_from(last_printed.as_deref(), &lines)..] {
            (b.sink)("boot-test", line);
        }
        last_printed = lines.last().cloned().or(last_printed);
        let tail = lines[lines.len().saturating_sub(vm::CONSOLE_TAIL)..].to_vec();
        // The whole window is searched each time: EC2 keeps only the console's last 64 KiB, so
        // counting lines cannot tell which are new once the output is longer than that.
        if let Some(line) = lines.iter().find(|l| marker.is_match(l)) {
            return Ok((started.elapsed().as_secs_f64(), line.clone(), tail));
        }
        let failed = |message: String| StepError::Boot {
            message,
            tail: tail.join("\n"),
        };
        match instances::state(&b.clients.ec2, &b.region, instance).await? {
            Some((
                s @ (InstanceStateName::ShuttingDown
                | InstanceStateName::Terminated
                | InstanceStateName::Stopping
                | InstanceStateName::Stopped),
                reason,
            )) => {
                return Err(failed(format!(
                    "the test instance {instance} is {} before its console showed the marker ({reason})",
                    s.as_str()
                )));
            }
            None => {
                return Err(failed(format!("the test instance {instance} is gone")));
            }
            _ => {}
        }
        if started.elapsed().as_secs_f64() >= timeout_s {
            return Err(failed(format!(
                "no console line of {instance} matched `{}` within {timeout_s} s",
                marker.as_str()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(CONSOLE_POLL) => {}
            _ = b.cancel.cancelled() => return Err(StepError::Cancelled),
        }
    }
}

/// Where the lines not printed yet start in the console window `lines`: after the last
/// occurrence of the last line printed before, else (the window moved past it) at its start.
fn unseen_from(last_printed: Option<&str>, lines: &[String]) -> usize {
    last_printed
        .and_then(|last| lines.iter().rposition(|l| l == last))
        .map_or(0, |i| i + 1)
}

/// The builder's subnet (the test instance runs next to it); `None` off EC2's VPCs.
async fn builder_subnet(b: &Build) -> Result<Option<String>, StepError> {
    let Some(me) = b.state.instance.as_ref() else {
        return Ok(None);
    };
    let out = b
        .clients
        .ec2
        .describe_instances()
        .instance_ids(&me.instance_id)
        .send()
        .await
        .map_err(api("DescribeInstances", me.instance_id.clone(), &b.region))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.subnet_id.clone()))
}

/// Terminates the test instance (waiting until it is gone) and deregisters the test image.
/// Safe to run twice; what is removed is forgotten, so an error names only what is left.
pub async fn remove(b: &mut Build) -> Result<(), StepError> {
    if let Some(id) = b.state.boot_test.instance_id.clone() {
        instances::terminate(&b.clients.ec2, &b.region, &id, &b.polling).await?;
        b.state.boot_test.instance_id = None;
    }
    if let Some(id) = b.state.boot_test.image_id.clone() {
        images::deregister(&b.clients.ec2, &b.region, &id).await?;
        b.state.boot_test.image_id = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unseen_from;

    #[test]
    fn only_new_console_lines_are_printed_also_when_the_window_slides() {
        let w = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(unseen_from(None, &w(&["a", "b"])), 0);
        assert_eq!(unseen_from(Some("b"), &w(&["a", "b", "c"])), 2);
        // The 64 KiB window dropped "a" and "b": the same number of lines, one new.
        assert_eq!(unseen_from(Some("c"), &w(&["b", "c", "d"])), 2);
        // The window moved past everything printed: all of it is new.
        assert_eq!(unseen_from(Some("c"), &w(&["x", "y"])), 0);
    }
}
