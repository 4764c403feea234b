//! The builder pool's stack (infra/kiln.yaml): it passes cfn-lint, kiln's cfn-guard rules and the
//! check that its roles allow every AWS call kiln makes, and each check fails on a template broken
//! on purpose; it deploys to the emulator (moto's CloudFormation), and a worker started with what
//! its outputs name builds a template from its queue.

use crate::support::{Emulator, repo_root, track_result, unique, with_janitor};
use crate::worker::TEMPLATE;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn script(name: &str, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(repo_root().join("scripts").join(name));
    c.args(args)
        .env("KILN_BIN", env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_TRIGGER_BIN", env!("CARGO_BIN_EXE_kiln-trigger"));
    for (k, v) in &Emulator::get().vars {
        c.env(k, v);
    }
    let out = c.output().unwrap_or_else(|e| panic!("scripts/{name}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The stack passes every check; each breakage below fails the check that owns it, naming it.
#[test]
fn the_stack_passes_its_checks_and_broken_stacks_fail_them() {
    let (ok, out) = script("check-infra", &[]);
    assert!(ok, "{out}");
    let allowed = out
        .lines()
        .find_map(|l| l.strip_prefix("check-infra: calls allowed: "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(allowed >= 20, "the policy check saw kiln's calls: {out}");
    let stack = std::fs::read_to_string(repo_root().join("infra/kiln.yaml")).expect("stack");
    let dir = std::env::temp_dir().join(unique("broken-stack"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cases = [
        (
            "heartbeat",
            "HeartbeatTimeout: 900",
            "HeartbeatTimeout: 9000",
            "lifecycle_heartbeat_at_most_7200",
        ),
        (
            "granularity",
            "- Granularity: 1Minute",
            "- Granularity: 5Minute",
            "group_metrics_every_minute",
        ),
        (
            "long-poll",
            "      ReceiveMessageWaitTimeSeconds: 20\n      MessageRetentionPeriod: 345600",
            "      ReceiveMessageWaitTimeSeconds: 10\n      MessageRetentionPeriod: 345600",
            "request_queues_long_poll_20s",
        ),
        (
            "max-receive",
            "    MaxValue: 1000\n    Description: Deliveries",
            "    MaxValue: 5000\n    Description: Deliveries",
            "max_receive_count_parameter_at_most_1000",
        ),
        (
            "untagged-delete",
            "              - !Sub arn:${AWS::Partition}:ec2:*::image/*\n            Condition:\n              StringEquals: { \"aws:ResourceTag/kiln:team\": \"${aws:PrincipalTag/kiln:team}\" }",
            "              - !Sub arn:${AWS::Partition}:ec2:*::image/*",
            "destructive_ec2_statements_carry_the_tag_condition",
        ),
        (
            "missing-action",
            "              - ec2:DeleteVolume\n",
            "",
            "ec2:DeleteVolume (src/ec2/volumes.rs",
        ),
        (
            "visibility",
            "      VisibilityTimeout: 900",
            "      VisibilityTimeout: 90000",
            "E3034",
        ),
    ];
    for (name, from, to, want) in cases {
        assert!(
            stack.contains(from),
            "{name}: the stack no longer has {from:?}"
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, stack.replacen(from, to, 1)).expect("write");
        let (ok, out) = script("check-infra", &[&path.display().to_string()]);
        assert!(!ok, "{name}: a broken stack passed:\n{out}");
        assert!(
            out.contains(want),
            "{name}: the failure names {want:?}:\n{out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deploys the stack to the emulator and builds through it. moto creates the queues (with the
/// redrive policy), the bucket, the roles, the function, the rules, the launch template and the
/// group; it ignores the scaling policy, the lifecycle hook, metrics collection and the bucket's
/// EventBridge notification, which this test cannot check here (cfn-guard checks their settings).
#[tokio::test]
async fn the_stack_deploys_and_a_worker_builds_from_its_queue() {
    with_janitor(|janitor| async move {
        let stack = unique("pool").replace("kiln-test-", "kt-");
        // Two teams: the default one in the pool's stack, `payments` in a stack of its own.
        let teams = repo_root().join("infra/teams.example.toml");
        let (ok, out) = script(
            "deploy",
            &["--stack-name", &stack, "--teams", &teams.display().to_string()],
        );
        assert!(ok, "{out}");
        let json_start = out.find("{\n").unwrap_or(0);
        let deployed: Value = serde_json::from_str(&out[json_start..]).unwrap_or_else(|e| panic!("{e}:\n{out}"));
        let deleted = StackGuard(stack.clone());
        for (id, kind) in [
            ("RequestQueue", "AWS::SQS::Queue"),
            ("DeadLetterQueue", "AWS::SQS::Queue"),
            ("ResultQueue", "AWS::SQS::Queue"),
            ("ArtifactsBucket", "AWS::S3::Bucket"),
            ("BuilderRole", "AWS::IAM::Role"),
            ("BuilderProfile", "AWS::IAM::InstanceProfile"),
            ("BuilderLaunchTemplate", "AWS::EC2::LaunchTemplate"),
            ("BuilderGroup", "AWS::AutoScaling::AutoScalingGroup"),
            ("TriggerFunction", "AWS::Lambda::Function"),
            ("TriggerFailureQueue", "AWS::SQS::Queue"),
            ("UploadRule", "AWS::Events::Rule"),
            ("NightlyRule", "AWS::Events::Rule"),
        ] {
            assert_eq!(deployed["resources"][id], kind, "{id}: {deployed:#}");
        }
        let o = &deployed["outputs"];
        let (queue, results, bucket) = (
            o["RequestQueueUrl"].as_str().expect("queue").to_owned(),
            o["ResultQueueUrl"].as_str().expect("results").to_owned(),
            o["ArtifactsBucketName"].as_str().expect("bucket").to_owned(),
        );
        let payments = &deployed["teams"]["payments"];
        let payments_queue = payments["queue_url"].as_str().unwrap_or_else(|| panic!("payments' queue: {deployed:#}"));
        assert_ne!(payments_queue, queue);
        assert!(payments["role_arn"].as_str().is_some_and(|r| r.contains("payments")), "{deployed:#}");
        let emu = Emulator::get();
        let c = emu.clients(emu.region()).await;
        // The builders' team settings, as the user data hands them to the worker.
        let teams_toml = c
            .s3
            .get_object()
            .bucket(&bucket)
            .key("config/worker-teams.toml")
            .send()
            .await
            .expect("config/worker-teams.toml")
            .body
            .collect()
            .await
            .expect("body")
            .into_bytes();
        let teams_toml = String::from_utf8_lossy(&teams_toml).into_owned();
        assert!(teams_toml.contains("name = \"payments\"") && teams_toml.contains(payments_queue), "{teams_toml}");
        let config_file = std::env::temp_dir().join(format!("{}.toml", unique("worker-teams")));
        std::fs::write(&config_file, &teams_toml).expect("worker config");
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attrs = c
            .sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(A::All)
            .send()
            .await
            .expect("attributes");
        let get = |a: A| attrs.attributes().and_then(|m| m.get(&a)).cloned().unwrap_or_default();
        assert_eq!(get(A::ReceiveMessageWaitTimeSeconds), "20");
        assert_eq!(get(A::VisibilityTimeout), "900");
        let redrive: Value = serde_json::from_str(&get(A::RedrivePolicy)).expect("redrive policy");
        assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "3", "{redrive}");
        // A worker configured from the outputs builds a template put in the bucket.
        let prefix = format!("templates/{}", unique("pool"));
        for (key, body) in [
            (format!("{prefix}/bb.pkr.hcl"), TEMPLATE.as_bytes().to_vec()),
            (format!("{prefix}/greeting.txt"), b"hi from the pool\n".to_vec()),
        ] {
            c.s3.put_object().bucket(&bucket).key(key).body(body.into()).send().await.expect("put");
        }
        let id = unique("pool-build");
        c.sqs
            .send_message()
            .queue_url(&queue)
            .message_body(
                serde_json::json!({"version": 1, "build_id": id, "template": {"bucket": bucket, "key": format!("{prefix}/bb.pkr.hcl")}})
                    .to_string(),
            )
            .send()
            .await
            .expect("send");
        let metrics_file = std::env::temp_dir().join(format!("{}.emf", unique("metrics")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        // The worker serves both teams, each team's builds with the credentials of its build
        // role (assumed from the emulator's STS with the kiln:team session tag).
        cmd.args(["worker", "--queue", &queue, "--result-queue", &results])
            .arg("--config")
            .arg(&config_file)
            .args(["--bucket", &bucket, "--backend", "ebs"])
            .stdout(std::fs::File::create(&metrics_file).expect("metrics file"))
            .stderr(std::process::Stdio::piped());
        for (k, v) in &emu.vars {
            cmd.env(k, v);
        }
        let worker = crate::worker::WorkerProc::from_child(cmd.spawn().expect("worker"));
        let deadline = Instant::now() + Duration::from_secs(180);
        let doc = loop {
            if let Ok(o) = c.s3.get_object().bucket(&bucket).key(format!("results/{id}.json")).send().await {
                let bytes = o.body.collect().await.expect("body").into_bytes();
                break serde_json::from_slice::<Value>(&bytes).expect("result");
            }
            assert!(Instant::now() < deadline, "no result from the pool's queue");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        track_result(&janitor, &doc);
        // A payments request is answered in payments' part of the bucket.
        let pid = unique("pool-payments");
        c.sqs
            .send_message()
            .queue_url(payments_queue)
            .message_body(
                serde_json::json!({"version": 1, "build_id": pid, "template": {"bucket": bucket, "key": "teams/payments/templates/missing/t.pkr.hcl"}})
                    .to_string(),
            )
            .send()
            .await
            .expect("send to payments");
        let deadline = Instant::now() + Duration::from_secs(120);
        let pdoc = loop {
            if let Ok(o) = c.s3.get_object().bucket(&bucket).key(format!("teams/payments/results/{pid}.json")).send().await {
                let bytes = o.body.collect().await.expect("body").into_bytes();
                break serde_json::from_slice::<Value>(&bytes).expect("result");
            }
            assert!(Instant::now() < deadline, "no result from payments' queue");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let (_, log) = crate::worker::stop_worker(worker);
        let _ = std::fs::remove_file(&config_file);
        assert_eq!(doc["status"], "succeeded", "{doc:#}\n{log}");
        assert_eq!(doc["team"], "default");
        assert_eq!(pdoc["team"], "payments", "{pdoc:#}");
        assert!(log.contains("team lane") && log.contains("payments"), "{log}");
        // The worker's metrics, in CloudWatch embedded metric format on stdout.
        let emf = std::fs::read_to_string(&metrics_file).unwrap_or_default();
        let _ = std::fs::remove_file(&metrics_file);
        let docs: Vec<Value> = emf.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let build = docs
            .iter()
            .find(|d| d["BuildId"] == id.as_str() && d.get("BuildDuration").is_some())
            .unwrap_or_else(|| panic!("a build metric for {id}: {emf}"));
        assert_eq!(build["Outcome"], "succeeded");
        assert_eq!(build["_aws"]["CloudWatchMetrics"][0]["Namespace"], "kiln");
        assert!(build["QueueWait"].as_f64().is_some_and(|w| w >= 0.0), "{build}");
        assert!(
            docs.iter().any(|d| d["BuildId"] == id.as_str() && d["Step"] == "snapshot"),
            "a step metric: {emf}"
        );
        drop(deleted);
    })
    .await;
}

/// Deletes the test's stack (and empties its buckets) when dropped, also when the test fails.
struct StackGuard(String);

impl Drop for StackGuard {
    fn drop(&mut self) {
        let _ = script("deploy", &["--delete", "--stack-name", &self.0]);
    }
}

/// A builder host of this test's own, in an Auto Scaling group of its own: (host name,
/// instance id, IMDS endpoint, group name).
async fn host_in_group() -> (String, String, String, String) {
    let emu = Emulator::get();
    let name = unique("asg-host");
    let host: Value = serde_json::from_str(&crate::support::emulator_script(&[
        "host",
        &name,
        // Nitro nodes are named by the volume: hosts may share the default host's directory.
        "--dev-dir",
        emu.var("KILN_DEVICE_DIR"),
    ]))
    .expect("host");
    let instance = host["instance_id"].as_str().expect("instance").to_owned();
    let imds = host["imds_endpoint"].as_str().expect("imds").to_owned();
    let config = emu.sdk_config(emu.region()).await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let lt = ec2
        .create_launch_template()
        .launch_template_name(unique("lt"))
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id("ami-0000000000000b17d")
                .instance_type(aws_sdk_ec2::types::InstanceType::C6iLarge)
                .build(),
        )
        .send()
        .await
        .expect("launch template")
        .launch_template
        .and_then(|t| t.launch_template_id)
        .expect("id");
    let asg = aws_sdk_autoscaling::Client::new(&config);
    let group = unique("builders");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&group)
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_id(lt)
                .build(),
        )
        .min_size(0)
        .max_size(2)
        .desired_capacity(0)
        .availability_zones(format!("{}a", emu.region()))
        .send()
        .await
        .expect("group");
    asg.attach_instances()
        .auto_scaling_group_name(&group)
        .instance_ids(&instance)
        .send()
        .await
        .expect("attach the host");
    (name, instance, imds, group)
}

async fn protected(group: &str, instance: &str) -> Option<bool> {
    let emu = Emulator::get();
    let asg = aws_sdk_autoscaling::Client::new(&emu.sdk_config(emu.region()).await);
    asg.describe_auto_scaling_instances()
        .instance_ids(instance)
        .send()
        .await
        .ok()?
        .auto_scaling_instances()
        .iter()
        .find(|i| i.auto_scaling_group_name() == Some(group))
        .and_then(|i| i.protected_from_scale_in())
}

/// The group terminates the instance while a build runs: the worker (scale-in protected while
/// it builds) stops taking work, keeps the termination hook alive, lets the build finish, then
/// completes the lifecycle action and exits; nothing is left.
#[tokio::test]
async fn a_termination_notice_drains_then_completes_the_hook() {
    with_janitor(|janitor| async move {
        let (host, instance, imds, group) = host_in_group().await;
        let s = crate::worker::setup(5).await;
        let key = crate::worker::upload(&s, &unique("tpl")).await;
        let id = unique("drain");
        crate::worker::send(&s, &crate::worker::request(&id, &s.bucket, &key, 20)).await;
        let w = crate::worker::start_worker_with(
            &s,
            &[
                "--auto-scaling-group",
                &group,
                "--lifecycle-hook",
                "drain",
                "--drain-timeout",
                "300",
            ],
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)],
        );
        crate::worker::wait_for_log(&s, &id).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while protected(&group, &instance).await != Some(true) {
            assert!(
                Instant::now() < deadline,
                "scale-in protection while the build runs"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        crate::support::emulator_script(&[
            "metadata",
            &host,
            "/latest/meta-data/autoscaling/target-lifecycle-state",
            "Terminated",
        ]);
        let log = crate::checkpoint::wait_exit(w, Duration::from_secs(180));
        let doc = crate::worker::result(&s, &id, Duration::from_secs(5)).await;
        track_result(&janitor, &doc);
        assert_eq!(
            doc["status"], "succeeded",
            "the build drained: {doc:#}\n{log}"
        );
        let state: Value =
            serde_json::from_str(&crate::support::emulator_script(&["state"])).expect("state");
        let calls: Vec<&Value> = state["lifecycle_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["instance"] == instance.as_str())
            .collect();
        assert!(
            calls
                .iter()
                .any(|c| c["action"] == "RecordLifecycleActionHeartbeat"
                    && c["group"] == group.as_str()
                    && c["hook"] == "drain"),
            "the hook was kept alive: {calls:?}\n{log}"
        );
        let last = calls.last().expect("lifecycle calls");
        assert_eq!(last["action"], "CompleteLifecycleAction", "{calls:?}");
        assert_eq!(last["result"], "CONTINUE");
        assert_eq!(
            protected(&group, &instance).await,
            Some(false),
            "protection released"
        );
        assert!(log.contains("draining"), "{log}");
    })
    .await;
}

/// A Spot interruption notice while a build runs: the worker stops and undoes the build at once
/// (nothing is left), makes its message visible again (the heartbeat had hidden it for 300 s) and
/// exits without publishing a result.
#[tokio::test]
async fn a_spot_notice_stops_the_build_and_returns_its_message() {
    with_janitor(|_janitor| async move {
        let name = unique("spot-host");
        let host: Value = serde_json::from_str(&crate::support::emulator_script(&[
            "host",
            &name,
            // Nitro nodes are named by the volume: hosts may share the default host's directory.
            "--dev-dir",
            crate::support::Emulator::get().var("KILN_DEVICE_DIR"),
        ]))
        .expect("host");
        let imds = host["imds_endpoint"].as_str().expect("imds").to_owned();
        let s = crate::worker::setup(5).await;
        let key = crate::worker::upload(&s, &unique("tpl")).await;
        let id = unique("spot");
        crate::worker::send(&s, &crate::worker::request(&id, &s.bucket, &key, 120)).await;
        let w = crate::worker::start_worker_with(
            &s,
            &["--visibility", "300", "--drain-timeout", "600"],
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)],
        );
        crate::worker::wait_for_log(&s, &id).await;
        crate::support::emulator_script(&[
            "metadata",
            &name,
            "/latest/meta-data/spot/instance-action",
            r#"{"action": "terminate", "time": "2026-11-26T12:00:00Z"}"#,
        ]);
        let log = crate::checkpoint::wait_exit(w, Duration::from_secs(180));
        assert!(log.contains("Spot interruption notice"), "{log}");
        let again = s
            .sqs
            .receive_message()
            .queue_url(&s.queue)
            .wait_time_seconds(2)
            .send()
            .await
            .expect("receive");
        assert!(
            again
                .messages()
                .iter()
                .any(|m| m.body().is_some_and(|b| b.contains(&id))),
            "the message is visible again at once:\n{log}"
        );
        let left = crate::support::tagged(Emulator::get().region(), &id).await;
        assert!(
            left.volumes.is_empty() && left.snapshots.is_empty() && left.images.is_empty(),
            "nothing of the stopped build is left: {:?} {:?} {:?}",
            left.volumes,
            left.snapshots,
            left.images
        );
        assert!(
            s.s3.get_object()
                .bucket(&s.bucket)
                .key(format!("results/{id}.json"))
                .send()
                .await
                .is_err(),
            "no result for a build stopped by a Spot notice"
        );
    })
    .await;
}
