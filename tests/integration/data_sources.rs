//! HCL2's `amazon-parameterstore` and `amazon-secretsmanager` data sources against the emulator:
//! their values reach the image (through locals, `jsondecode`, provisioner variables), secrets
//! stay masked, a missing parameter or secret key fails before anything is made with Packer's
//! words, and the trigger's bake key follows a source image taken from a parameter.

use crate::pipeline::{Tpl, build, build_output, busybox, read_from_result};
use crate::support::{Emulator, track_result, unique, with_janitor};

/// SSM and Secrets Manager clients on the emulator (the tests' own user agent).
async fn clients() -> (aws_sdk_ssm::Client, aws_sdk_secretsmanager::Client) {
    let emu = Emulator::get();
    let config = emu.sdk_config(emu.region()).await;
    (
        aws_sdk_ssm::Client::new(&config),
        aws_sdk_secretsmanager::Client::new(&config),
    )
}

/// Creates (or overwrites) parameter `name`: a `SecureString` when `secure`, else a `String`.
async fn put_parameter(ssm: &aws_sdk_ssm::Client, name: &str, value: &str, secure: bool) {
    ssm.put_parameter()
        .name(name)
        .value(value)
        .r#type(if secure {
            aws_sdk_ssm::types::ParameterType::SecureString
        } else {
            aws_sdk_ssm::types::ParameterType::String
        })
        .overwrite(true)
        .send()
        .await
        .expect("PutParameter");
}

async fn remove(
    ssm: &aws_sdk_ssm::Client,
    sm: &aws_sdk_secretsmanager::Client,
    params: &[&str],
    secrets: &[&str],
) {
    for p in params {
        let _ = ssm.delete_parameter().name(*p).send().await;
    }
    for s in secrets {
        let _ = sm
            .delete_secret()
            .secret_id(*s)
            .force_delete_without_recovery(true)
            .send()
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_source_values_reach_the_image_and_secrets_stay_masked() {
    with_janitor(|janitor| async move {
        let (ssm, sm) = clients().await;
        let tag = unique("ds");
        let (greeting, token, secret) = (
            format!("/kiln-test/{tag}/greeting"),
            format!("/kiln-test/{tag}/token"),
            format!("kiln-test/{tag}/db"),
        );
        let password = format!("pw-{tag}-Zq9");
        let token_value = format!("tok-{tag}-Xy7");
        put_parameter(&ssm, &greeting, "hello from parameter store", false).await;
        put_parameter(&ssm, &token, &token_value, true).await;
        sm.create_secret()
            .name(&secret)
            .secret_string(format!(r#"{{"user":"admin","password":"{password}"}}"#))
            .send()
            .await
            .expect("CreateSecret");
        let t = Tpl::new();
        let data = format!(
            r#"
data "amazon-parameterstore" "greeting" {{
  name = "{greeting}"
}}
data "amazon-parameterstore" "token" {{
  name            = "{token}"
  with_decryption = true
}}
data "amazon-secretsmanager" "db" {{
  name = "{secret}"
  key  = "password"
}}
data "amazon-secretsmanager" "whole" {{
  name = "{secret}"
}}
locals {{
  user    = jsondecode(data.amazon-secretsmanager.whole.secret_string)["user"]
  version = data.amazon-parameterstore.greeting.version
}}
"#
        );
        let provs = r#"provisioner "shell" {
    environment_vars = ["GREETING=${data.amazon-parameterstore.greeting.value}", "PASSWORD=${data.amazon-secretsmanager.db.value}"]
    inline = [
      "echo \"$GREETING\" > /etc/greeting",
      "echo \"$PASSWORD\" > /etc/password",
      "echo '${local.user} ${local.version}' > /etc/user",
      "echo '${data.amazon-parameterstore.token.value}' > /etc/token",
      "echo \"printing $PASSWORD and ${data.amazon-parameterstore.token.value}\"",
    ]
  }"#;
        let tpl = t.write(
            "app.pkr.hcl",
            &format!("{data}{}", busybox(&unique("ds-app"), "", provs)),
        );
        let (ok, doc, stderr) = build(&tpl, &[]);
        track_result(&janitor, &doc);
        remove(&ssm, &sm, &[&greeting, &token], &[&secret]).await;
        assert!(ok, "{}\n{stderr}", doc["error"]);
        let got = read_from_result(
            &doc,
            &["/etc/greeting", "/etc/password", "/etc/user", "/etc/token"],
        );
        assert_eq!(got[0].as_deref(), Some("hello from parameter store\n"));
        assert_eq!(got[1].as_deref(), Some(format!("{password}\n").as_str()));
        assert_eq!(got[2].as_deref(), Some("admin 1\n"));
        assert_eq!(got[3].as_deref(), Some(format!("{token_value}\n").as_str()));
        // The secret and the SecureString never reach the log or the result; the provisioner's
        // line is there, masked.
        let all = format!("{stderr}\n{doc}");
        assert!(!all.contains(&password), "the secret leaked:\n{stderr}");
        assert!(!all.contains(&token_value), "the SecureString leaked:\n{stderr}");
        assert!(stderr.contains("printing <sensitive> and <sensitive>"), "{stderr}");
        // A plain String parameter is not a secret.
        assert!(!stderr.contains("hello from <sensitive>"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_data_fails_before_anything_is_made() {
    let (ssm, sm) = clients().await;
    let tag = unique("ds-missing");
    let secret = format!("kiln-test/{tag}/db");
    sm.create_secret()
        .name(&secret)
        .secret_string(r#"{"user":"admin","password":"x"}"#)
        .send()
        .await
        .expect("CreateSecret");
    let t = Tpl::new();
    let name = unique("ds-missing-app");
    let cases = [
        (
            format!(r#"data "amazon-parameterstore" "p" {{ name = "/kiln-test/{tag}/absent" }}"#),
            format!(r#"The parameter name "/kiln-test/{tag}/absent" not found"#),
            "data.amazon-parameterstore.p",
        ),
        (
            format!(r#"data "amazon-secretsmanager" "s" {{ name = "kiln-test/{tag}/absent" }}"#),
            format!(
                r#"Secrets Manager Secret "kiln-test/{tag}/absent" Version "AWSCURRENT" not found"#
            ),
            "data.amazon-secretsmanager.s",
        ),
        (
            format!(
                r#"data "amazon-secretsmanager" "s" {{
  name = "{secret}"
  key  = "pasword"
}}"#
            ),
            r#"the secret has no key "pasword"; its keys are "password", "user""#.to_owned(),
            "data.amazon-secretsmanager.s",
        ),
    ];
    for (block, message, field) in cases {
        let tpl = t.write(
            "app.pkr.hcl",
            &format!("{block}\n{}", busybox(&name, "", "")),
        );
        let out = build_output(&tpl, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{block}: built\n{stderr}");
        assert!(
            stderr.contains(&message) && stderr.contains(field),
            "{block}: expected `{message}` at {field}:\n{stderr}"
        );
        assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("ami-"));
    }
    // Nothing was made under the AMI name the builds would have used.
    let emu = Emulator::get();
    let ec2 = emu.clients(emu.region()).await.ec2;
    let images = kiln::ec2::images::by_name(&ec2, emu.region(), &name)
        .await
        .expect("DescribeImages");
    assert!(images.is_empty(), "{images:?}");
    remove(&ssm, &sm, &[], &[&secret]).await;
}

/// `kiln validate` reads no AWS (as `packer validate`): data source values are placeholders,
/// a local computed from one is unknown rather than an error, and the blocks' own mistakes are
/// reported with Packer's words.
#[test]
fn validate_is_offline_and_checks_the_blocks() {
    let t = Tpl::new();
    let good = t.write(
        "good.pkr.hcl",
        &format!(
            r#"
data "amazon-secretsmanager" "db" {{
  name          = "app/db"
  version_stage = "AWSPREVIOUS"
  region        = "eu-west-1"
}}
data "amazon-parameterstore" "ami" {{
  name = "/aws/service/debian/release/12/latest/amd64"
}}
locals {{
  password = jsondecode(data.amazon-secretsmanager.db.secret_string)["password"]
}}
{}"#,
            busybox("ds-validate", "", r#"provisioner "shell" { inline = ["echo ${local.password} ${data.amazon-parameterstore.ami.value}"] }"#)
        ),
    );
    let validate = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("validate")
            .arg(path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("kiln validate")
    };
    let out = validate(&good);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = t.write(
        "bad.pkr.hcl",
        &format!(
            r#"
data "amazon-parameterstore" "p" {{
  with_decrytion = true
}}
data "amazon-secretsmanager" "s" {{
  name       = "x"
  access_key = "AKIA"
}}
data "amazon-ssm" "q" {{
  name = "x"
}}
{}"#,
            busybox("ds-validate-bad", "", "")
        ),
    );
    let out = validate(&bad);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for expected in [
        "data.amazon-parameterstore.p.name: a 'name' must be provided",
        "unknown field `with_decrytion`: did you mean `with_decryption`?",
        "data.amazon-secretsmanager.s.access_key: `access_key` is ignored",
        "data source `amazon-ssm` is not supported: kiln resolves `amazon-ami`, `amazon-parameterstore`, `amazon-secretsmanager`",
    ] {
        assert!(text.contains(expected), "expected `{expected}` in:\n{text}");
    }
}

/// A worker reads the data sources of the template it fetched with its own credentials: the
/// value is in the image; a parameter that does not exist fails the build at `validate`, once
/// (not retried), with Packer's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_data_sources() {
    use crate::worker::{TEMPLATE, request, result, send, setup, start_worker, stop_worker};
    with_janitor(|janitor| async move {
        let s = setup(3).await;
        let (ssm, sm) = clients().await;
        let param = format!("/kiln-test/{}/motd", unique("wk"));
        put_parameter(&ssm, &param, "built by a worker", false).await;
        let prefix = unique("tpl-ds");
        let with_data = |name: &str| {
            format!("data \"amazon-parameterstore\" \"p\" {{\n  name = \"{name}\"\n}}\n{TEMPLATE}")
                .replace(
                    "\"echo worker-build-running\"",
                    "\"echo '${data.amazon-parameterstore.p.value}' > /etc/motd\"",
                )
        };
        let (good, bad) = (
            format!("{prefix}/good.pkr.hcl"),
            format!("{prefix}/bad/bad.pkr.hcl"),
        );
        for (key, text) in [
            (&good, with_data(&param)),
            (&bad, with_data(&format!("{param}-absent"))),
        ] {
            s.s3.put_object()
                .bucket(&s.bucket)
                .key(key.as_str())
                .body(text.into_bytes().into())
                .send()
                .await
                .expect("put template");
        }
        for dir in [prefix.clone(), format!("{prefix}/bad")] {
            s.s3.put_object()
                .bucket(&s.bucket)
                .key(format!("{dir}/greeting.txt"))
                .body(b"hi\n".to_vec().into())
                .send()
                .await
                .expect("put file");
        }
        let (ok_id, bad_id) = (unique("ds-ok"), unique("ds-bad"));
        send(&s, &request(&ok_id, &s.bucket, &good, 0)).await;
        send(&s, &request(&bad_id, &s.bucket, &bad, 0)).await;
        let worker = start_worker(&s, &[]);
        let doc = result(&s, &ok_id, std::time::Duration::from_secs(120)).await;
        track_result(&janitor, &doc);
        let failed = result(&s, &bad_id, std::time::Duration::from_secs(120)).await;
        let (_, log) = stop_worker(worker);
        remove(&ssm, &sm, &[&param], &[]).await;
        assert_eq!(doc["status"], "succeeded", "{doc:#}\n{log}");
        assert_eq!(
            read_from_result(&doc, &["/etc/motd"])[0].as_deref(),
            Some("built by a worker\n")
        );
        assert_eq!(failed["status"], "failed", "{failed:#}");
        let error = failed["error"]["message"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("The parameter name \"{param}-absent\" not found")),
            "{failed:#}"
        );
        assert_eq!(failed["error"]["step"], "validate", "{failed:#}");
        assert_eq!(failed["error"]["retryable"], false, "{failed:#}");
    })
    .await;
}
