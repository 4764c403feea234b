//! `kiln-trigger`, the real process behind a local Lambda Runtime API, against the emulator: an
//! upload is built by a worker, a duplicate event names the same build, the nightly run skips an
//! unchanged template and rebuilds a changed one or one whose base image has a newer version (or
//! whose source image parameter names another), and bad input gets a clear answer.

use crate::lambda::{Lambda, fixture};
use crate::support::{Emulator, Resource, tagged, track_result, unique, with_janitor};
use crate::worker::{Setup, TEMPLATE, result, setup, start_worker, stop_worker, upload};
use serde_json::{Value, json};
use std::time::Duration;

pub(crate) async fn lambda_for(s: &Setup) -> Lambda {
    Lambda::start(&[("KILN_QUEUE", &s.queue), ("KILN_BUCKET", &s.bucket)]).await
}

/// An S3 `ObjectCreated:Put` notification for `key` (encoded as S3 encodes keys).
async fn put_event(s: &Setup, bucket: &str, key: &str) -> Value {
    let etag =
        s.s3.head_object()
            .bucket(&s.bucket)
            .key(key)
            .send()
            .await
            .ok()
            .and_then(|o| o.e_tag().map(|e| e.trim_matches('"').to_owned()))
            .unwrap_or_else(|| "d41d8cd98f00b204e9800998ecf8427e".into());
    let encoded = key.replace(' ', "+");
    fixture(
        "s3-put.json",
        &[
            ("BUCKET", bucket),
            ("KEY", &encoded),
            ("VERSION", ""),
            ("ETAG", &etag),
            ("SEQUENCER", "0055AED6DCD90281E5"),
        ],
    )
}

pub(crate) fn names<'a>(summary: &'a Value, list: &str) -> Vec<(&'a str, &'a str)> {
    summary[list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["template"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

/// The next build request on the queue (within 5 s).
async fn next_request(s: &Setup) -> Value {
    let msg = s
        .sqs
        .receive_message()
        .queue_url(&s.queue)
        .wait_time_seconds(5)
        .send()
        .await
        .expect("receive");
    serde_json::from_str(
        msg.messages()
            .first()
            .and_then(|m| m.body())
            .expect("a request"),
    )
    .expect("JSON")
}

/// The index entry a worker writes when request `req` for template `key` succeeded (as
/// `record_bake` does), so the nightly run sees its bake.
async fn record_built(s: &Setup, key: &str, req: &Value) {
    put_text(
        s,
        &format!("index/{key}.json"),
        &json!({"template": key, "build_id": req["build_id"], "finished_at": "2026-11-26T02:00:00Z", "bake": req["bake"]}).to_string(),
    )
    .await;
}

pub(crate) async fn put_text(s: &Setup, key: &str, text: &str) {
    s.s3.put_object()
        .bucket(&s.bucket)
        .key(key)
        .body(text.as_bytes().to_vec().into())
        .send()
        .await
        .expect("put");
}

/// The whole loop: upload → trigger → worker builds it once (the same event twice, and as an
/// EventBridge event, name one build) → the nightly run skips it → the template changes → the
/// nightly run enqueues it, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_builds_once_and_nightly_rebuilds_only_what_changed() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let key = upload(&s, &format!("templates/{}", unique("loop"))).await;
        let event = put_event(&s, &s.bucket, &key).await;
        let first = lambda.invoke(event.clone()).await.expect("upload handled");
        let enqueued = first["enqueued"].as_array().cloned().unwrap_or_default();
        assert_eq!(enqueued.len(), 1, "{first:#}\n{}", lambda.log());
        assert_eq!(enqueued[0]["template"], key.as_str());
        assert_eq!(enqueued[0]["reason"], "uploaded");
        let id = enqueued[0]["build_id"]
            .as_str()
            .expect("build id")
            .to_owned();
        // S3 delivers at least once: the same event names the same build.
        let again = lambda.invoke(event).await.expect("duplicate handled");
        assert_eq!(again["enqueued"][0]["build_id"], id.as_str(), "{again:#}");
        let etag =
            s.s3.head_object()
                .bucket(&s.bucket)
                .key(&key)
                .send()
                .await
                .expect("head")
                .e_tag()
                .map(|e| e.trim_matches('"').to_owned())
                .unwrap_or_default();
        let eb = fixture(
            "eventbridge-object-created.json",
            &[
                ("BUCKET", &s.bucket),
                ("KEY", &key),
                ("VERSION", ""),
                ("ETAG", &etag),
                ("SEQUENCER", "0055AED6DCD90281E5"),
            ],
        );
        let third = lambda.invoke(eb).await.expect("EventBridge event handled");
        assert_eq!(third["enqueued"][0]["build_id"], id.as_str(), "{third:#}");

        let worker = start_worker(&s, &[]);
        let doc = result(&s, &id, Duration::from_secs(180)).await;
        track_result(&janitor, &doc);
        crate::exactly_once::wait_queue_empty(&s, &s.queue, Duration::from_secs(120)).await;
        let (_, log) = stop_worker(worker);
        assert_eq!(doc["status"], "succeeded", "{doc:#}\n{log}");
        assert!(
            doc["bake_key"].is_string(),
            "the result carries the bake key: {doc:#}"
        );
        let images = tagged(Emulator::get().region(), &id).await.images;
        assert_eq!(images.len(), 1, "three events, one build: {images:?}");

        let schedule = fixture("eventbridge-schedule.json", &[]);
        let nightly = lambda.invoke(schedule.clone()).await.expect("nightly");
        assert_eq!(nightly["enqueued"], json!([]), "{nightly:#}");
        let skipped = names(&nightly, "skipped");
        assert_eq!(skipped.len(), 1, "{nightly:#}");
        assert_eq!(skipped[0].0, key);
        assert!(
            skipped[0]
                .1
                .starts_with(&format!("unchanged since build {id} on ")),
            "{nightly:#}"
        );

        put_text(&s, &key, &format!("{TEMPLATE}\n# v2\n")).await;
        let nightly = lambda.invoke(schedule.clone()).await.expect("nightly");
        assert_eq!(
            names(&nightly, "enqueued"),
            vec![(key.as_str(), "template changed")],
            "{nightly:#}"
        );
        let rerun = lambda.invoke(schedule).await.expect("nightly again");
        assert_eq!(
            rerun["enqueued"][0]["build_id"], nightly["enqueued"][0]["build_id"],
            "a nightly run repeated names the same build"
        );
    })
    .await;
}

/// A template on a base image found by `source_ami_filter` (most_recent): the nightly run
/// resolves the filter again, so a newer base image is a reason to rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nightly_rebuilds_when_a_newer_base_image_appears() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let emu = Emulator::get();
        let region = emu.region();
        let ec2 = emu.clients(region).await.ec2;
        let stem = unique("base");
        let register = |n: u32| {
            let ec2 = ec2.clone();
            let janitor = &janitor;
            let name = format!("{stem}-{n}");
            async move {
                let vol = crate::emulator::volume(&ec2, janitor, region).await;
                let snap = crate::emulator::snapshot(&ec2, janitor, region, &vol).await;
                let ami = ec2
                    .register_image()
                    .name(name)
                    .root_device_name("/dev/xvda")
                    .block_device_mappings(crate::emulator::root_mapping(&snap, 1))
                    .send()
                    .await
                    .expect("RegisterImage")
                    .image_id
                    .expect("id");
                janitor.track(region, Resource::Image(ami.clone()));
                ami
            }
        };
        let base1 = register(1).await;
        let key = format!("templates/{}/app.pkr.hcl", unique("app"));
        let template = format!(
            r#"
source "amazon-chroot" "app" {{
  ami_name = "app-{{{{timestamp}}}}"
  source_ami_filter {{
    filters = {{ name = "{stem}-*" }}
    owners      = ["self"]
    most_recent = true
  }}
}}
build {{
  sources = ["source.amazon-chroot.app"]
}}
"#
        );
        put_text(&s, &key, &template).await;
        let only = json!({"nightly": {"templates": [key]}});
        let first = lambda.invoke(only.clone()).await.expect("nightly");
        assert_eq!(
            names(&first, "enqueued"),
            vec![(key.as_str(), "never built by kiln-trigger")],
            "{first:#}\n{}",
            lambda.log()
        );
        // The request carries the resolved base image.
        let req = next_request(&s).await;
        assert_eq!(req["bake"]["source_amis"], json!([base1]), "{req:#}");
        // Its build succeeded: the index a worker writes (as `record_bake` does) names its bake.
        record_built(&s, &key, &req).await;
        let same = lambda.invoke(only.clone()).await.expect("nightly");
        assert_eq!(same["enqueued"], json!([]), "{same:#}");
        // A newer base image (CreationDate has one-second resolution: register it in a later
        // second than the first).
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        while std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            == t0
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let base2 = register(2).await;
        let newer = lambda.invoke(only).await.expect("nightly");
        assert_eq!(
            names(&newer, "enqueued"),
            vec![(
                key.as_str(),
                format!("source AMI {base1} → {base2}").as_str()
            )],
            "{newer:#}"
        );
    })
    .await;
}

/// A source image taken from a Parameter Store parameter (as AWS publishes its "latest AMI"
/// parameters): the nightly run follows the parameter, rebuilding when it names a new image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nightly_follows_a_source_image_parameter() {
    with_janitor(|_janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let emu = Emulator::get();
        let ssm = aws_sdk_ssm::Client::new(&emu.sdk_config(emu.region()).await);
        let param = format!("/kiln-test/{}/base-ami", unique("param"));
        let put = |value: &'static str| {
            let (ssm, param) = (ssm.clone(), param.clone());
            async move {
                ssm.put_parameter()
                    .name(param)
                    .value(value)
                    .r#type(aws_sdk_ssm::types::ParameterType::String)
                    .overwrite(true)
                    .send()
                    .await
                    .expect("PutParameter");
            }
        };
        put("ami-0123456789abcdef0").await;
        let key = format!("templates/{}/app.pkr.hcl", unique("app"));
        let template = format!(
            r#"
data "amazon-parameterstore" "base" {{
  name = "{param}"
}}
source "amazon-chroot" "app" {{
  ami_name   = "app-{{{{timestamp}}}}"
  source_ami = data.amazon-parameterstore.base.value
}}
build {{
  sources = ["source.amazon-chroot.app"]
}}
"#
        );
        put_text(&s, &key, &template).await;
        let only = json!({"nightly": {"templates": [key]}});
        let first = lambda.invoke(only.clone()).await.expect("nightly");
        let req = next_request(&s).await;
        assert!(req.is_object(), "{first:#}\n{}", lambda.log());
        assert_eq!(
            req["bake"]["source_amis"],
            json!(["ami-0123456789abcdef0"]),
            "{req:#}"
        );
        record_built(&s, &key, &req).await;
        let same = lambda.invoke(only.clone()).await.expect("nightly");
        assert_eq!(same["enqueued"], json!([]), "{same:#}");
        put("ami-0fedcba9876543210").await;
        let newer = lambda.invoke(only).await.expect("nightly");
        let _ = ssm.delete_parameter().name(&param).send().await;
        assert_eq!(
            names(&newer, "enqueued"),
            vec![(
                key.as_str(),
                "source AMI ami-0123456789abcdef0 → ami-0fedcba9876543210"
            )],
            "{newer:#}"
        );
    })
    .await;
}

/// Bad input: an unknown event is the invocation's error; objects outside the prefix, files that
/// are not templates and buckets the workers do not trust are skipped with the reason; a template
/// that does not parse is still enqueued (the worker's failure result says why) and is skipped by
/// the nightly run with the parse error; an SQS batch reports only its bad message as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let err = lambda
            .invoke(json!({"hello": "world"}))
            .await
            .expect_err("an unknown event is an error");
        let message = err["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains("unknown event shape"), "{err:#}");

        let dir = format!("templates/{}", unique("bad"));
        let outside = format!("elsewhere/{}.pkr.hcl", unique("x"));
        let notes = format!("{dir}/notes.txt");
        put_text(&s, &notes, "not a template").await;
        for (bucket, key, want) in [
            (
                s.bucket.as_str(),
                outside.as_str(),
                "outside the template prefix",
            ),
            (s.bucket.as_str(), notes.as_str(), "not a template"),
            (
                "someone-elses-bucket",
                "templates/a.pkr.hcl",
                "is not kiln's bucket",
            ),
        ] {
            let summary = lambda
                .invoke(put_event(&s, bucket, key).await)
                .await
                .expect("handled");
            assert_eq!(summary["enqueued"], json!([]), "{key}: {summary:#}");
            assert!(
                names(&summary, "skipped")[0].1.contains(want),
                "{key}: {summary:#}"
            );
        }

        // A key with a space arrives encoded (`+`); the template does not parse.
        let broken = format!("{dir}/my broken.pkr.hcl");
        put_text(&s, &broken, "source \"amazon-chroot\" {\n").await;
        let summary = lambda
            .invoke(put_event(&s, &s.bucket, &broken).await)
            .await
            .expect("handled");
        let enqueued = names(&summary, "enqueued");
        assert_eq!(enqueued.len(), 1, "{summary:#}\n{}", lambda.log());
        assert_eq!(enqueued[0].0, broken, "the key is decoded");
        assert!(
            enqueued[0].1.contains("the worker will report"),
            "{summary:#}"
        );
        let id = summary["enqueued"][0]["build_id"]
            .as_str()
            .expect("id")
            .to_owned();
        let worker = start_worker(&s, &[]);
        let doc = result(&s, &id, Duration::from_secs(60)).await;
        track_result(&janitor, &doc);
        let (_, log) = stop_worker(worker);
        assert_eq!(doc["status"], "failed", "{doc:#}\n{log}");
        assert_eq!(doc["error"]["step"], "validate", "{doc:#}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("the template is invalid")),
            "{doc:#}"
        );
        let nightly = lambda
            .invoke(json!({"nightly": {"templates": [broken]}}))
            .await
            .expect("nightly");
        assert!(
            names(&nightly, "skipped")[0]
                .1
                .contains("the template is invalid"),
            "{nightly:#}"
        );

        // An SQS batch: one good message, one that is not an S3 event.
        let good_key = upload(&s, &format!("templates/{}", unique("sqs"))).await;
        let good_body = put_event(&s, &s.bucket, &good_key).await.to_string();
        let mut batch = fixture("sqs.json", &[("MESSAGE_ID", "good"), ("BODY", &good_body)]);
        let bad = fixture("sqs.json", &[("MESSAGE_ID", "bad"), ("BODY", "not json")]);
        if let (Some(records), Some(extra)) = (
            batch["Records"].as_array_mut(),
            bad["Records"].as_array().and_then(|r| r.first()).cloned(),
        ) {
            records.push(extra);
        }
        let answer = lambda.invoke(batch).await.expect("batch handled");
        assert_eq!(
            answer,
            json!({"batchItemFailures": [{"itemIdentifier": "bad"}]}),
            "{}",
            lambda.log()
        );
        // (A long poll the stopped worker left open may hold it for the queue's visibility
        // timeout: look until a generous deadline.)
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let mut bodies = Vec::new();
        while !bodies.iter().any(|b: &String| b.contains(&good_key))
            && std::time::Instant::now() < deadline
        {
            let sent = s
                .sqs
                .receive_message()
                .queue_url(&s.queue)
                .wait_time_seconds(2)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive");
            bodies.extend(
                sent.messages()
                    .iter()
                    .filter_map(|m| m.body().map(str::to_owned)),
            );
        }
        assert!(
            bodies.iter().any(|b| b.contains(&good_key)),
            "the good message's template {good_key} was enqueued: {bodies:?}\n{}",
            lambda.log()
        );
    })
    .await;
}

/// A directory template (its source and its build in two `*.pkr.hcl` files, as `packer build .`
/// takes them): an upload of either file names the directory, the worker builds the files
/// together, and the nightly run sees one template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_template_builds_as_one() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let dir = format!("templates/{}", unique("dir"));
        // TEMPLATE's variables and source in one file, its build block in another.
        let at = TEMPLATE.find("build {").expect("a build block");
        put_text(&s, &format!("{dir}/sources.pkr.hcl"), &TEMPLATE[..at]).await;
        put_text(&s, &format!("{dir}/build.pkr.hcl"), &TEMPLATE[at..]).await;
        put_text(&s, &format!("{dir}/greeting.txt"), "hi from a directory\n").await;
        let uploaded = format!("{dir}/sources.pkr.hcl");
        let summary = lambda
            .invoke(put_event(&s, &s.bucket, &uploaded).await)
            .await
            .expect("handled");
        let named = format!("{dir}/build.pkr.hcl");
        assert_eq!(
            names(&summary, "enqueued"),
            vec![(named.as_str(), "uploaded")],
            "{summary:#}\n{}",
            lambda.log()
        );
        let id = summary["enqueued"][0]["build_id"]
            .as_str()
            .expect("id")
            .to_owned();
        let worker = start_worker(&s, &[]);
        let doc = result(&s, &id, Duration::from_secs(180)).await;
        track_result(&janitor, &doc);
        let (_, log) = stop_worker(worker);
        assert_eq!(doc["status"], "succeeded", "{doc:#}\n{log}");
        let nightly = lambda
            .invoke(fixture("eventbridge-schedule.json", &[]))
            .await
            .expect("nightly");
        let skipped = names(&nightly, "skipped");
        assert_eq!(skipped.len(), 1, "one template: {nightly:#}");
        assert_eq!(skipped[0].0, named);
        assert!(
            skipped[0].1.starts_with("unchanged since build"),
            "{nightly:#}"
        );
    })
    .await;
}

/// The request of an upload goes to its team's queue: a team's own trigger (`KILN_TEAM`) takes
/// only its team's templates (under `teams/<team>/templates/`) and leaves the default team's; a
/// trigger serving several teams (`KILN_TEAM_QUEUES`) routes each upload by its key, and skips a
/// team it has no queue for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_go_to_their_teams_queue() {
    let s = setup(5).await;
    let web_queue = s
        .sqs
        .create_queue()
        .queue_name(unique("q-web"))
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    let web_key = format!("teams/web/templates/{}/app.pkr.hcl", unique("t"));
    put_text(&s, &web_key, TEMPLATE).await;
    let default_key = format!("templates/{}/app.pkr.hcl", unique("t"));
    put_text(&s, &default_key, TEMPLATE).await;
    let other_key = format!("teams/other/templates/{}/app.pkr.hcl", unique("t"));
    put_text(&s, &other_key, TEMPLATE).await;

    // The web team's own trigger.
    let web = Lambda::start(&[
        ("KILN_QUEUE", &web_queue),
        ("KILN_BUCKET", &s.bucket),
        ("KILN_TEAM", "web"),
    ])
    .await;
    let got = web
        .invoke(put_event(&s, &s.bucket, &web_key).await)
        .await
        .expect("web upload");
    assert_eq!(got["enqueued"][0]["team"], "web", "{got:#}\n{}", web.log());
    let got = web
        .invoke(put_event(&s, &s.bucket, &default_key).await)
        .await
        .expect("default upload");
    assert!(
        got["enqueued"].as_array().is_none_or(Vec::is_empty),
        "{got:#}"
    );
    assert!(
        got["skipped"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("team default"),
        "{got:#}"
    );

    // One trigger for the default team and web.
    let pool = Lambda::start(&[
        ("KILN_QUEUE", &s.queue),
        ("KILN_TEAM_QUEUES", &format!("web={web_queue}")),
        ("KILN_BUCKET", &s.bucket),
    ])
    .await;
    for key in [&web_key, &default_key, &other_key] {
        pool.invoke(put_event(&s, &s.bucket, key).await)
            .await
            .expect("upload");
    }
    let on = |queue: String| {
        let sqs = s.sqs.clone();
        async move {
            let mut keys = Vec::new();
            loop {
                let out = sqs
                    .receive_message()
                    .queue_url(&queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .expect("receive");
                if out.messages().is_empty() {
                    return keys;
                }
                for m in out.messages() {
                    let v: Value = serde_json::from_str(m.body().unwrap_or("null")).expect("JSON");
                    keys.push(v["template"]["key"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
    };
    let web_requests = on(web_queue.clone()).await;
    let default_requests = on(s.queue.clone()).await;
    // The web trigger's request and the pool trigger's, both for the web template.
    assert_eq!(web_requests, vec![web_key.clone(), web_key.clone()]);
    assert_eq!(default_requests, vec![default_key.clone()]);
}

/// A template with two builds, uploaded: one request per build, `only` naming it, each with its
/// own build id, both in the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_build_template_is_one_request_per_build() {
    let s = setup(5).await;
    let lambda = lambda_for(&s).await;
    let second = TEMPLATE
        .split("build {")
        .next()
        .expect("sources")
        .replace(
            "source \"amazon-chroot\" \"bb\"",
            "source \"amazon-chroot\" \"arm\"",
        )
        .split("source \"amazon-chroot\"")
        .nth(1)
        .map(|b| format!("source \"amazon-chroot\"{b}"))
        .expect("the source block");
    let text = format!("{TEMPLATE}\n{second}").replace(
        "sources = [\"source.amazon-chroot.bb\"]",
        "sources = [\"source.amazon-chroot.bb\", \"source.amazon-chroot.arm\"]",
    );
    let prefix = format!("templates/{}", unique("two"));
    let key = format!("{prefix}/bb.pkr.hcl");
    put_text(&s, &key, &text).await;
    put_text(&s, &format!("{prefix}/greeting.txt"), "hi\n").await;
    let got = lambda
        .invoke(put_event(&s, &s.bucket, &key).await)
        .await
        .expect("upload");
    let enqueued = got["enqueued"].as_array().cloned().unwrap_or_default();
    let builds: Vec<&str> = enqueued
        .iter()
        .filter_map(|e| e["build"].as_str())
        .collect();
    assert_eq!(
        builds,
        vec!["amazon-chroot.bb", "amazon-chroot.arm"],
        "{got:#}\n{}",
        lambda.log()
    );
    let ids: Vec<&str> = enqueued
        .iter()
        .filter_map(|e| e["build_id"].as_str())
        .collect();
    assert!(
        ids[0].ends_with("-amazon-chroot.bb") && ids[1].ends_with("-amazon-chroot.arm"),
        "{ids:?}"
    );
    let mut only = Vec::new();
    for _ in 0..2 {
        let r = next_request(&s).await;
        only.push(r["only"][0].as_str().unwrap_or_default().to_owned());
    }
    only.sort();
    assert_eq!(only, vec!["amazon-chroot.arm", "amazon-chroot.bb"]);
}
