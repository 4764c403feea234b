//! Cascading rebuilds (issue 25): a base template's new image in its channel rebuilds, through
//! `kiln-trigger`'s Parameter Store change event, the templates built on that channel, in
//! dependency order and each naming its parent's build; the channels a template publishes to
//! come from its S3 metadata (`kiln-channels`).

use crate::lambda::Lambda;
use crate::support::{Emulator, track_result, unique, with_janitor};
use crate::trigger::{lambda_for, names};
use crate::worker::{Setup, TEMPLATE, result, setup, start_worker, stop_worker};
use serde_json::{Value, json};
use std::time::Duration;

/// A template built on the image channel `parameter` names; its shell step leaves `/etc/<name>`.
fn layer(name: &str, parameter: &str) -> String {
    format!(
        r#"
data "amazon-parameterstore" "base" {{
  name = "{parameter}"
}}
source "amazon-chroot" "layer" {{
  source_ami    = data.amazon-parameterstore.base.value
  ami_name      = "{name}-{{{{uuid}}}}"
  copy_files    = []
  chroot_mounts = [["proc", "proc", "/proc"]]
}}
build {{
  sources = ["source.amazon-chroot.layer"]
  provisioner "shell" {{
    inline = ["echo {name} > /etc/{name}"]
  }}
}}
"#
    )
}

/// Uploads `text` as `key` with the channels it publishes to in its metadata (`None`: none).
async fn put(s: &Setup, key: &str, text: &str, channels: Option<&str>) {
    let mut put =
        s.s3.put_object()
            .bucket(&s.bucket)
            .key(key)
            .body(text.as_bytes().to_vec().into());
    if let Some(c) = channels {
        put = put.metadata("kiln-channels", c);
    }
    put.send().await.expect("put");
}

/// The Parameter Store change event EventBridge delivers for `name`.
fn changed(name: &str, operation: &str) -> Value {
    json!({
        "version": "0", "id": unique("event"), "detail-type": "Parameter Store Change",
        "source": "aws.ssm", "account": "123456789012", "time": "2026-12-02T02:10:00Z",
        "region": Emulator::get().region(), "resources": [],
        "detail": {"operation": operation, "name": name, "type": "String", "description": ""}
    })
}

async fn ssm() -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::new(&Emulator::get().sdk_config(Emulator::get().region()).await)
}

/// The value of parameter `name`.
async fn parameter(name: &str) -> String {
    ssm()
        .await
        .get_parameter()
        .name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetParameter {name}: {e:?}"))
        .parameter()
        .and_then(|p| p.value())
        .unwrap_or_default()
        .to_owned()
}

/// The one request a cascade enqueued: its template, build id and reason.
fn only_enqueued(run: &Value) -> (String, String, String) {
    let e = run["enqueued"].as_array().cloned().unwrap_or_default();
    assert_eq!(e.len(), 1, "one request: {run:#}");
    let s = |k: &str| e[0][k].as_str().unwrap_or_default().to_owned();
    assert_eq!(e[0]["channels"], json!(["dev"]), "{run:#}");
    (s("template"), s("build_id"), s("reason"))
}

/// A built image's tag.
async fn tag(ami: &str, key: &str) -> Option<String> {
    let ec2 = Emulator::get().clients(Emulator::get().region()).await.ec2;
    let out = ec2
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .expect("DescribeImages");
    out.images()
        .first()
        .and_then(|i| i.tags().iter().find(|t| t.key() == Some(key)))
        .and_then(|t| t.value().map(str::to_owned))
}

fn ami_of(doc: &Value) -> String {
    doc["artifacts"][Emulator::get().region()]["ami_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no AMI in {doc:#}"))
        .to_owned()
}

/// base ← app ← web, and an unrelated template: the base's nightly build publishes to `dev`; its
/// channel's change enqueues only app, naming the base's build; app's publication enqueues only
/// web, naming app's build; each is built on its parent's new image. The same change again
/// builds nothing; a template built on its own channel is not rebuilt by its own publication; a
/// deleted channel and another team's parameter enqueue nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_change_rebuilds_its_descendants_in_order() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let u = unique("cascade");
        let prefix = format!("templates/{u}");
        let channel = |t: &str| format!("/kiln/default/{u}/{t}/dev");
        let base_key = format!("{prefix}/base/bb.pkr.hcl");
        put(&s, &base_key, TEMPLATE, Some("dev")).await;
        put(&s, &format!("{prefix}/base/greeting.txt"), "hi\n", None).await;
        let app_key = format!("{prefix}/app/app.pkr.hcl");
        put(
            &s,
            &app_key,
            &layer("app", &channel("base/bb")),
            Some("dev"),
        )
        .await;
        let web_key = format!("{prefix}/web/web.pkr.hcl");
        put(
            &s,
            &web_key,
            &layer("web", &channel("app/app")),
            Some("dev , dev"),
        )
        .await;
        let other_key = format!("{prefix}/other/bb.pkr.hcl");
        put(&s, &other_key, TEMPLATE, None).await;
        put(&s, &format!("{prefix}/other/greeting.txt"), "hi\n", None).await;
        let w = start_worker(&s, &[]);
        let mut params = Vec::new();

        // The base's nightly build publishes to the channel its metadata names.
        let night = lambda
            .invoke(json!({"nightly": {"templates": [base_key]}}))
            .await
            .expect("nightly");
        let (_, base_id, _) = only_enqueued(&night);
        let base_doc = result(&s, &base_id, Duration::from_secs(240)).await;
        track_result(&janitor, &base_doc);
        assert_eq!(base_doc["status"], "succeeded", "{base_doc:#}");
        let base_ami = ami_of(&base_doc);
        params.push(channel("base/bb"));
        assert_eq!(parameter(&channel("base/bb")).await, base_ami);

        // Its channel moved: app, built on it, is enqueued (web's own base does not exist yet;
        // the base itself and the unrelated template are not built on it).
        let first = lambda
            .invoke(changed(&channel("base/bb"), "Update"))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lambda.log()));
        let (template, app_id, reason) = only_enqueued(&first);
        assert_eq!(template, app_key, "{first:#}");
        assert!(
            reason.contains(&base_ami) && reason.contains(&format!("built by build {base_id}")),
            "{first:#}"
        );
        let skipped = names(&first, "skipped");
        let why = |key: &str| {
            skipped
                .iter()
                .find(|(t, _)| *t == key)
                .map(|(_, r)| r.to_string())
                .unwrap_or_else(|| panic!("{key} not in {first:#}"))
        };
        assert!(why(&other_key).starts_with("not built on"), "{first:#}");
        assert!(why(&base_key).starts_with("not built on"), "{first:#}");
        let app_doc = result(&s, &app_id, Duration::from_secs(240)).await;
        track_result(&janitor, &app_doc);
        assert_eq!(app_doc["status"], "succeeded", "{app_doc:#}");
        let app_ami = ami_of(&app_doc);
        params.push(channel("app/app"));
        assert_eq!(
            tag(&app_ami, "kiln:parent-ami").await,
            Some(base_ami.clone())
        );
        assert_eq!(
            tag(&app_ami, "kiln:parent-build-id").await,
            Some(base_id.clone())
        );

        // app's publication moves its channel in turn: web follows, naming app's build.
        let second = lambda
            .invoke(changed(&channel("app/app"), "Create"))
            .await
            .expect("second cascade");
        let (template, web_id, reason) = only_enqueued(&second);
        assert_eq!(template, web_key, "{second:#}");
        assert!(
            reason.contains(&format!("built by build {app_id}")),
            "{second:#}"
        );
        let web_doc = result(&s, &web_id, Duration::from_secs(240)).await;
        track_result(&janitor, &web_doc);
        assert_eq!(web_doc["status"], "succeeded", "{web_doc:#}");
        let web_ami = ami_of(&web_doc);
        params.push(channel("web/web"));
        assert_eq!(
            tag(&web_ami, "kiln:parent-build-id").await,
            Some(app_id.clone())
        );
        assert_eq!(parameter(&channel("web/web")).await, web_ami);

        // The same change again: app is already built on that image.
        let again = lambda
            .invoke(changed(&channel("base/bb"), "Update"))
            .await
            .expect("again");
        assert_eq!(again["enqueued"], json!([]), "{again:#}");
        assert!(
            names(&again, "skipped")
                .iter()
                .any(|(t, r)| *t == app_key
                    && r.starts_with(&format!("unchanged since build {app_id}"))),
            "{again:#}"
        );
        // web now builds on its own channel (a rolling image): its publication must not rebuild
        // it, or every build would enqueue the next.
        put(
            &s,
            &web_key,
            &layer("web", &channel("web/web")),
            Some("dev"),
        )
        .await;
        let rolling = lambda
            .invoke(changed(&channel("web/web"), "Update"))
            .await
            .expect("rolling");
        assert_eq!(rolling["enqueued"], json!([]), "{rolling:#}");
        assert!(
            names(&rolling, "skipped")
                .iter()
                .any(|(t, r)| *t == web_key && r.contains("cycle")),
            "{rolling:#}"
        );
        // A channel emptied (a revoke), and a parameter of a team this trigger does not serve.
        for event in [
            changed(&channel("base/bb"), "Delete"),
            changed(&format!("/kiln/{u}-other/base/bb/dev"), "Update"),
        ] {
            let run = lambda.invoke(event).await.expect("ignored event");
            assert_eq!(run["enqueued"], json!([]), "{run:#}");
            assert!(
                run["skipped"][0]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("ignored:"),
                "{run:#}"
            );
        }
        let (ok, log) = stop_worker(w);
        assert!(ok, "{log}");
        let ssm = ssm().await;
        for p in params {
            let _ = ssm.delete_parameter().name(p).send().await;
        }
    })
    .await;
}

/// A template whose `kiln-channels` metadata is not a list of channel names is still built when
/// uploaded, publishes nowhere, and the summary names the metadata and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_channel_metadata_is_named() {
    let s = setup(5).await;
    let lambda: Lambda = lambda_for(&s).await;
    let prefix = format!("templates/{}", unique("badmeta"));
    let key = format!("{prefix}/bb.pkr.hcl");
    put(&s, &key, TEMPLATE, Some("dev,../prod")).await;
    put(&s, &format!("{prefix}/greeting.txt"), "hi\n", None).await;
    let run = lambda
        .invoke(json!({"nightly": {"templates": [key]}}))
        .await
        .expect("nightly");
    assert_eq!(run["enqueued"], json!([]), "{run:#}");
    let why = run["skipped"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("kiln-channels") && why.contains("../prod") && why.contains("--metadata"),
        "{run:#}"
    );
}

/// Puts `doc` as JSON at `key`.
async fn put_json(s: &Setup, key: &str, doc: &Value) {
    put(s, key, &doc.to_string(), None).await;
}

/// A nightly build's result document as the worker writes it: its AMI here, and step `sbom`'s
/// package changes against the previous image of its template.
fn result_doc(build_id: &str, ami: &str, lines: &[&str]) -> Value {
    json!({
        "build_id": build_id, "status": "succeeded", "finished_at": "2026-12-02T02:00:00Z",
        "artifacts": {Emulator::get().region(): {"ami_id": ami, "snapshot_ids": []}},
        "steps": [{"name": "sbom", "outputs": {"changes": {"previous": {"ami": "ami-0prev", "lines": lines}}}}]
    })
}

/// A rebuild because its base moved names the packages the base's build changed: through a
/// channel's move (the cascade's reason and `base_changes`) and through a source image's move
/// in the nightly run, which also names what the template's own last build changed. An image
/// whose `kiln:build-id` names a build whose result did not make it brings nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_names_what_its_base_brought() {
    use crate::lifecycle::{image, put_channel, volume};
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let lambda = lambda_for(&s).await;
        let u = unique("brought");
        let base_id = format!("nightly-{u}-base");
        let region = Emulator::get().region();
        let vol = volume(&janitor, region).await;
        let base_tpl = format!("s3://{}/templates/{u}/base.pkr.hcl#base", s.bucket);
        let (base_ami, _) = image(
            &janitor,
            (region, &vol),
            (&base_id, "default"),
            &base_tpl,
            &format!("{u}/base"),
            None,
        )
        .await;
        let brought = ["kiln-probe 1.0-1 → 1.1-1", "+ probe-lib 2.0-1"];
        put_json(
            &s,
            &format!("results/{base_id}.json"),
            &result_doc(&base_id, &base_ami, &brought),
        )
        .await;
        let channel = format!("/kiln/default/{u}/base/dev");
        let ssm = ssm().await;
        put_channel(&ssm, &channel, &base_ami).await;
        let app_key = format!("templates/{u}/app/app.pkr.hcl");
        put(&s, &app_key, &layer("app", &channel), None).await;

        // The channel moved: app's reason names what the base brought.
        let run = lambda
            .invoke(changed(&channel, "Update"))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lambda.log()));
        let entry = &run["enqueued"][0];
        assert_eq!(entry["template"], json!(app_key), "{run:#}");
        assert!(
            entry["reason"].as_str().unwrap_or_default().ends_with(
                "; it brought kiln-probe 1.0-1 → 1.1-1, + probe-lib 2.0-1: never built by kiln-trigger"
            ),
            "{run:#}"
        );
        assert_eq!(entry["base_changes"], json!(brought), "{run:#}");

        // The nightly run: app's last build was on an older image; its source moved to the base.
        let last_id = format!("nightly-{u}-app");
        put_json(
            &s,
            &format!("results/{last_id}.json"),
            &result_doc(&last_id, "ami-0last", &["+ app 1"]),
        )
        .await;
        put_json(
            &s,
            &format!("index/{app_key}.json"),
            &json!({"template": app_key, "build_id": last_id, "finished_at": "2026-12-01T02:00:00Z",
                    "bake": {"key": "old", "source_amis": ["ami-0older"]}}),
        )
        .await;
        let night = lambda
            .invoke(json!({"nightly": {"templates": [app_key]}}))
            .await
            .expect("nightly");
        let entry = &night["enqueued"][0];
        assert_eq!(
            entry["reason"],
            json!(format!(
                "source AMI ami-0older → {base_ami}; it brought kiln-probe 1.0-1 → 1.1-1, + probe-lib 2.0-1"
            )),
            "{night:#}"
        );
        assert_eq!(
            entry["last_build"],
            json!({"build_id": last_id, "changes": ["+ app 1"]}),
            "{night:#}"
        );

        // An image claiming the base's build id, which that build's result did not make.
        let (forged, _) = image(
            &janitor,
            (region, &vol),
            (&base_id, "default"),
            &base_tpl,
            &format!("{u}/base"),
            None,
        )
        .await;
        put_channel(&ssm, &channel, &forged).await;
        let run = lambda
            .invoke(changed(&channel, "Update"))
            .await
            .expect("forged");
        let entry = &run["enqueued"][0];
        assert!(
            entry["reason"].as_str().unwrap_or_default().contains(&forged)
                && !entry["reason"].as_str().unwrap_or_default().contains("it brought")
                && entry["base_changes"].is_null(),
            "{run:#}"
        );
        let _ = ssm.delete_parameter().name(&channel).send().await;
    })
    .await;
}
