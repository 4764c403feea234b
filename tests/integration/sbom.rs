//! Issue 25: what is in an image, what changed, and where it came from. A three-level chain on a
//! busybox base: the base (no package database: its SBOM says so), an image whose provisioner
//! writes a dpkg database with two packages (its SBOM lists them; against its parent both are
//! added), a rebuild of the same template with one package's version moved (the change against
//! the previous image of the template), and a CycloneDX image on top of the rebuild (its parent
//! named in its tags with the parent's build id). `kiln lineage` prints the chain both ways. The
//! rebuild is published to channel `dev`, promoted to `prod`, and revoked with its descendant:
//! both deprecated, tagged, and out of every channel.

use crate::direct::step;
use crate::pipeline::{Tpl, build, busybox};
use crate::support::{Emulator, track_result, unique, with_janitor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn ami(doc: &Value) -> String {
    doc["artifacts"][Emulator::get().region()]["ami_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no AMI in {doc:#}"))
        .to_owned()
}

/// The AMI as DescribeImages shows it.
async fn image_of(ami: &str) -> aws_sdk_ec2::types::Image {
    let ec2 = Emulator::get().clients(Emulator::get().region()).await.ec2;
    let out = ec2
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .expect("DescribeImages");
    out.images().first().expect("image").clone()
}

/// The AMI's tags.
async fn tags_of(ami: &str) -> BTreeMap<String, String> {
    image_of(ami)
        .await
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or("").to_owned(),
                t.value().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The SBOM document a `kiln:sbom` tag names (a local build's `file://`).
fn sbom_doc(uri: &str) -> Value {
    let path = uri.strip_prefix("file://").expect("a local build's SBOM");
    serde_json::from_slice(&std::fs::read(path).expect("the SBOM file")).expect("JSON")
}

/// `(name, version)` of the packages an SPDX document lists (the OS package excluded).
fn spdx_packages(doc: &Value) -> BTreeMap<String, String> {
    assert_eq!(doc["spdxVersion"], "SPDX-2.3", "{doc:#}");
    doc["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["primaryPackagePurpose"] != "OPERATING-SYSTEM")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["versionInfo"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A dpkg status database with `kiln-probe` at `version` and `probe-lib` 2.0-1.
fn dpkg_status(version: &str) -> String {
    format!(
        "Package: kiln-probe\\nStatus: install ok installed\\nArchitecture: amd64\\nVersion: {version}\\nSource: kiln-probe-src\\n\\nPackage: probe-lib\\nStatus: install ok installed\\nArchitecture: amd64\\nVersion: 2.0-1\\n\\nPackage: gone\\nStatus: deinstall ok config-files\\nArchitecture: amd64\\nVersion: 9\\n"
    )
}

/// A template on `source` whose provisioner writes the dpkg database `status` (printf text). Its
/// AMI name ends in a uuid: a rebuild within the same second as the build before it must not
/// collide on the name (`{{timestamp}}` would).
fn layer(name: &str, source: &str, status: &str) -> String {
    format!(
        r#"
source "amazon-chroot" "layer" {{
  source_ami    = "{source}"
  ami_name      = "{name}-{{{{uuid}}}}"
  copy_files    = []
  chroot_mounts = [["proc", "proc", "/proc"], ["sysfs", "sysfs", "/sys"], ["bind", "/dev", "/dev"]]
}}
build {{
  sources = ["source.amazon-chroot.layer"]
  provisioner "shell" {{
    inline = ["mkdir -p /var/lib/dpkg", "printf '{status}' > /var/lib/dpkg/status"]
  }}
}}
"#
    )
}

fn lines(doc: &Value, what: &str) -> Vec<String> {
    step(doc, "sbom")["changes"][what]["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no {what} changes in {:#}", step(doc, "sbom")))
        .iter()
        .map(|l| l.as_str().unwrap_or("").to_owned())
        .collect()
}

fn lineage(ami: &str) -> Value {
    let emu = Emulator::get();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["lineage", "--json", ami]);
    for (k, v) in &emu.vars {
        c.env(k, v);
    }
    let out = c.output().expect("kiln lineage");
    assert!(
        out.status.success(),
        "kiln lineage {ami}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lineage JSON")
}

/// Runs `kiln ARGS` against the emulator; (success, stdout and stderr).
fn kiln(args: &[&str]) -> (bool, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).stdin(std::process::Stdio::null());
    for (k, v) in &Emulator::get().vars {
        c.env(k, v);
    }
    let out = c.output().expect("kiln");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of SSM parameter `name` in the emulator's region (`None`: no such parameter).
async fn parameter(name: &str) -> Option<String> {
    let config = Emulator::get().sdk_config(Emulator::get().region()).await;
    let ssm = aws_sdk_ssm::Client::new(&config);
    match ssm.get_parameter().name(name).send().await {
        Ok(o) => o.parameter().and_then(|p| p.value()).map(str::to_owned),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            None
        }
        Err(e) => panic!("GetParameter {name}: {e:?}"),
    }
}

/// Puts a plain text parameter (a team's data-source value; the test removes it by its unique
/// name).
async fn put_text_parameter(name: &str, value: &str) {
    let config = Emulator::get().sdk_config(Emulator::get().region()).await;
    aws_sdk_ssm::Client::new(&config)
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .expect("PutParameter");
}

/// The image's deprecation time, if it has one.
async fn deprecation(ami: &str) -> Option<String> {
    image_of(ami).await.deprecation_time().map(str::to_owned)
}

fn amis(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|m| m["ami"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn sboms_changes_and_lineage_of_a_three_level_chain() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let sboms = t.0.join("sboms");
        let sbom_dir = vec!["--sbom-dir".to_owned(), sboms.display().to_string()];
        // The base: from scratch, busybox only, no package database.
        let base_tpl = t.write("base.pkr.hcl", &busybox(&unique("sbom-base"), "", ""));
        let (ok, base_doc, stderr) = build(&base_tpl, &sbom_dir);
        track_result(&janitor, &base_doc);
        assert!(ok, "{}\n{stderr}", base_doc["error"]);
        let base = ami(&base_doc);
        let note = step(&base_doc, "sbom")["note"].as_str().unwrap_or("");
        assert!(note.contains("no package database"), "{base_doc:#}");
        assert_eq!(step(&base_doc, "sbom")["packages"], 0);

        // The middle layer, twice: 1.0, then the same template with 1.1.
        let name = unique("sbom-mid");
        let mid_tpl = t.write(
            &format!("{name}.pkr.hcl"),
            &layer(&name, &base, &dpkg_status("1.0-1")),
        );
        let (ok, mid_doc, stderr) = build(&mid_tpl, &sbom_dir);
        track_result(&janitor, &mid_doc);
        assert!(ok, "{}\n{stderr}", mid_doc["error"]);
        let mid = ami(&mid_doc);
        let mut parent = lines(&mid_doc, "parent");
        parent.sort();
        assert_eq!(parent, ["+ kiln-probe 1.0-1", "+ probe-lib 2.0-1"]);
        assert!(
            step(&mid_doc, "sbom")["changes"]["previous"].is_null(),
            "a first build has no previous image: {:#}",
            step(&mid_doc, "sbom")
        );
        let tags = tags_of(&mid).await;
        assert_eq!(tags.get("kiln:parent-ami"), Some(&base), "{tags:?}");
        assert_eq!(
            tags.get("kiln:parent-build-id").map(String::as_str),
            base_doc["build_id"].as_str(),
            "{tags:?}"
        );
        let uri = tags.get("kiln:sbom").expect("kiln:sbom tag").clone();
        assert_eq!(
            Some(uri.as_str()),
            step(&mid_doc, "sbom")["location"].as_str()
        );
        let listed = spdx_packages(&sbom_doc(&uri));
        assert_eq!(listed.get("kiln-probe").map(String::as_str), Some("1.0-1"));
        assert_eq!(listed.get("probe-lib").map(String::as_str), Some("2.0-1"));
        assert!(!listed.contains_key("gone"), "a removed package is not listed: {listed:?}");

        std::fs::write(&mid_tpl, layer(&name, &base, &dpkg_status("1.1-1"))).expect("write");
        // A data-source value of the team where a channel would go: never overwritten.
        let qa = format!("/kiln/default/{name}/qa");
        put_text_parameter(&qa, "not-an-ami").await;
        let mut args = sbom_dir.clone();
        args.extend(["--channel", "dev", "--channel", "qa"].map(str::to_owned));
        let (ok, re_doc, stderr) = build(&mid_tpl, &args);
        track_result(&janitor, &re_doc);
        assert!(ok, "{}\n{stderr}", re_doc["error"]);
        let rebuilt = ami(&re_doc);
        assert_eq!(lines(&re_doc, "previous"), ["kiln-probe 1.0-1 → 1.1-1"]);
        assert_eq!(step(&re_doc, "sbom")["changes"]["previous"]["ami"], mid);
        let re_tags = tags_of(&rebuilt).await;
        assert_eq!(re_tags.get("kiln:template"), tags.get("kiln:template"));
        // The build's log says it too.
        assert!(
            stderr.contains("previous: kiln-probe 1.0-1 → 1.1-1"),
            "{stderr}"
        );

        // The top layer, in CycloneDX, on the rebuild.
        let top_tpl = t.write(
            "top.pkr.hcl",
            &layer(
                &unique("sbom-top"),
                &rebuilt,
                &format!("{}\\nPackage: app\\nStatus: install ok installed\\nArchitecture: all\\nVersion: 3.0\\n", dpkg_status("1.1-1")),
            ),
        );
        let mut args = sbom_dir.clone();
        args.extend(["--sbom-format".to_owned(), "cyclonedx".to_owned()]);
        let (ok, top_doc, stderr) = build(&top_tpl, &args);
        track_result(&janitor, &top_doc);
        assert!(ok, "{}\n{stderr}", top_doc["error"]);
        let top = ami(&top_doc);
        assert_eq!(lines(&top_doc, "parent"), ["+ app 3.0"]);
        let top_tags = tags_of(&top).await;
        assert_eq!(
            top_tags.get("kiln:parent-build-id").map(String::as_str),
            re_doc["build_id"].as_str()
        );
        let cdx = sbom_doc(top_tags.get("kiln:sbom").expect("kiln:sbom"));
        assert_eq!(cdx["bomFormat"], "CycloneDX");
        assert_eq!(cdx["specVersion"], "1.5");
        assert!(
            cdx["components"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == "app" && c["version"] == "3.0"),
            "{cdx:#}"
        );

        // Channels: the rebuild is in dev; promoted from dev to prod; the first image is not in dev.
        assert_eq!(parameter(&qa).await.as_deref(), Some("not-an-ami"));
        let warned = step(&re_doc, "publish-channels")["not_published"].to_string();
        assert!(warned.contains("is not a channel"), "{warned}");
        let dev = format!("/kiln/default/{name}/dev");
        let prod = format!("/kiln/default/{name}/prod");
        assert_eq!(parameter(&dev).await.as_deref(), Some(rebuilt.as_str()));
        let (ok, out) = kiln(&["promote", &mid, "--to", "prod", "--from", "dev"]);
        assert!(!ok && out.contains(&format!("holds {rebuilt}")), "{out}");
        assert_eq!(parameter(&prod).await, None);
        let (ok, out) = kiln(&["promote", &rebuilt, "--to", "prod", "--from", "dev"]);
        assert!(ok, "{out}");
        assert_eq!(parameter(&prod).await.as_deref(), Some(rebuilt.as_str()));
        let (ok, out) = kiln(&["promote", &rebuilt, "--to", "no/slash"]);
        assert!(!ok && out.contains("letters, digits"), "{out}");

        // The lineage of the rebuild: up to the base, down to the top.
        let l = lineage(&rebuilt);
        assert_eq!(amis(&l["ancestors"]), std::slice::from_ref(&base), "{l:#}");
        assert_eq!(amis(&l["descendants"]), std::slice::from_ref(&top), "{l:#}");
        // Of the base: both middle images, and the top under the rebuild.
        let l = lineage(&base);
        assert!(l["ancestors"].as_array().is_some_and(|a| a.is_empty()), "{l:#}");
        // (The two middle images may share a creation second: compared as a set.)
        let mut below = amis(&l["descendants"]);
        below.sort();
        let mut want = vec![mid.clone(), rebuilt.clone(), top.clone()];
        want.sort();
        assert_eq!(below, want, "{l:#}");

        // Revoke the rebuild: without --descendants (no terminal) it is refused, naming the top.
        let (ok, out) = kiln(&["revoke", &rebuilt, "--reason", "bad probe"]);
        assert!(!ok && out.contains(&top) && out.contains("--descendants"), "{out}");
        assert!(deprecation(&rebuilt).await.is_none(), "refused, so not deprecated");
        let (ok, out) = kiln(&["revoke", &rebuilt, "--reason", "bad probe", "--descendants"]);
        assert!(ok, "{out}");
        for revoked in [&rebuilt, &top] {
            assert!(deprecation(revoked).await.is_some(), "{revoked} not deprecated: {out}");
            assert_eq!(
                tags_of(revoked).await.get("kiln:revoked").map(String::as_str),
                Some("bad probe")
            );
        }
        assert!(deprecation(&mid).await.is_none(), "the first image is not revoked");
        assert_eq!(parameter(&dev).await, None, "{out}");
        assert_eq!(parameter(&prod).await, None, "{out}");
        let (ok, out) = kiln(&["promote", &rebuilt, "--to", "dev"]);
        assert!(!ok && out.contains("revoked"), "{out}");
        let config = Emulator::get().sdk_config(Emulator::get().region()).await;
        let _ = aws_sdk_ssm::Client::new(&config)
            .delete_parameter()
            .name(&qa)
            .send()
            .await;
    })
    .await;
}

/// The Debian example's SBOM lists exactly what the image's own dpkg database holds, as Debian's
/// `dpkg-query` reads it (called from `boot.rs`'s Debian build, which has the image at hand).
pub(crate) fn assert_sbom_matches_dpkg(doc: &Value, image_root: &Path) {
    let admin = std::env::temp_dir().join(unique("dpkg-admin"));
    std::fs::create_dir_all(admin.join("info")).expect("admindir");
    std::fs::copy(image_root.join("var/lib/dpkg/status"), admin.join("status")).expect("status");
    let out = std::process::Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f", "${db:Status-Abbrev} ${Package} ${Version}\n"])
        .output()
        .expect("dpkg-query (apt-get install -y dpkg)");
    let _ = std::fs::remove_dir_all(&admin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("ii"))
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect();
    assert!(want.len() > 50, "dpkg-query listed {} packages", want.len());
    let uri = step(doc, "sbom")["location"]
        .as_str()
        .expect("SBOM location");
    let mut got = spdx_packages(&sbom_doc(uri));
    got.retain(|name, _| name != "linux-kernel");
    assert_eq!(got, want, "the SBOM against dpkg-query");
}
