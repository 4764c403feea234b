//! What belongs to a template (issue 22): in a flat folder of three templates (and more than a
//! worker fetches beside them) each template's bake key follows only its own files and a worker
//! builds one from exactly the template and what it references; `kiln submit` from a repository
//! root with `.git` and `target/` uploads only what the template references and sends one
//! request per build of a two-build template (`--wait` prints both results); `kiln submit` of a
//! template outside the working directory builds it from its own folder.

use crate::support::{Emulator, track_result, unique, with_janitor};
use crate::trigger::put_text;
use crate::worker::{Setup, TEMPLATE, request, result, send, setup, start_worker, stop_worker};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// A Packer JSON template whose build runs `scripts/NAME.sh` (checked when loaded, never run
/// here: the bake key only evaluates it).
fn json_template(name: &str) -> String {
    format!(
        r#"{{"builders": [{{"type": "amazon-chroot", "name": "{name}", "from_scratch": true,
  "ami_name": "{name}-{{{{timestamp}}}}", "ami_virtualization_type": "hvm",
  "root_device_name": "/dev/xvda", "root_volume_size": 1, "copy_files": [],
  "ami_block_device_mappings": [{{"device_name": "/dev/xvda"}}],
  "pre_mount_commands": ["mkfs.ext4 -q {{{{.Device}}}}"]}}],
 "provisioners": [{{"type": "shell", "script": "scripts/{name}.sh"}}]}}"#
    )
}

async fn bake_key(s: &Setup, key: &str) -> String {
    let clients = Emulator::get().clients(Emulator::get().region()).await;
    let dir = std::env::temp_dir().join(unique("bake"));
    let listed = kiln::trigger::bake::list(&clients, &s.bucket, key)
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    let bake = kiln::trigger::bake::compute(
        &clients,
        &s.bucket,
        key,
        None,
        &BTreeMap::new(),
        &dir,
        &listed,
    )
    .await
    .unwrap_or_else(|e| panic!("{key}: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    bake.key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_folder_bakes_and_builds_each_template_from_its_own_files() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let folder = format!("templates/{}", unique("flat"));
        let web = format!("{folder}/web.pkr.hcl");
        put_text(
            &s,
            &web,
            &TEMPLATE.replace("\"greeting.txt\"", "\"files/web.txt\""),
        )
        .await;
        put_text(&s, &format!("{folder}/files/web.txt"), "hi from web\n").await;
        for t in ["db", "cache"] {
            put_text(&s, &format!("{folder}/{t}.json"), &json_template(t)).await;
            put_text(&s, &format!("{folder}/scripts/{t}.sh"), "true\n").await;
        }
        // More files beside them than a worker fetches for one template.
        for i in 0..=kiln::request::MAX_TEMPLATE_FILES {
            put_text(&s, &format!("{folder}/notes/{i}.txt"), "x").await;
        }
        let keys = [
            web.clone(),
            format!("{folder}/db.json"),
            format!("{folder}/cache.json"),
        ];
        let mut before = Vec::new();
        for k in &keys {
            before.push(bake_key(&s, k).await);
        }

        // Editing one template changes only its bake key; editing one's script only that one's.
        put_text(
            &s,
            &keys[1],
            &json_template("db").replace("\"hvm\"", "\"hvm\" "),
        )
        .await;
        let mut after = Vec::new();
        for k in &keys {
            after.push(bake_key(&s, k).await);
        }
        assert_eq!(before[0], after[0], "web is unchanged");
        assert_ne!(before[1], after[1], "db changed");
        assert_eq!(before[2], after[2], "cache is unchanged");
        put_text(&s, &format!("{folder}/scripts/cache.sh"), "echo changed\n").await;
        let cache = bake_key(&s, &keys[2]).await;
        assert_ne!(cache, after[2], "cache's script changed");
        assert_eq!(bake_key(&s, &keys[0]).await, after[0], "web is unchanged");

        // The set the trigger hashes: the template and the file it references.
        let clients = Emulator::get().clients(Emulator::get().region()).await;
        let dir = std::env::temp_dir().join(unique("files"));
        let files = kiln::trigger::bake::files(&clients, &s.bucket, &web, &dir)
            .await
            .expect("files");
        let names =
            kiln::trigger::bake::builds(&dir, &web, Some(&format!("{folder}/")), &BTreeMap::new());
        let _ = std::fs::remove_dir_all(&dir);
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["files/web.txt", "web.pkr.hcl"]);
        assert_eq!(names, ["amazon-chroot.bb"]);

        // A worker fetches exactly that set and builds it, whatever else is in the folder.
        let worker = start_worker(&s, &[]);
        let id = unique("flat-web");
        send(&s, &request(&id, &s.bucket, &web, 0)).await;
        let doc = result(&s, &id, Duration::from_secs(300)).await;
        track_result(&janitor, &doc);
        let (_, log) = stop_worker(worker);
        assert_eq!(doc["status"], "succeeded", "{doc:#}\n{log}");
        let got = crate::pipeline::read_from_result(&doc, &["/etc/copied"]);
        assert_eq!(got[0].as_deref(), Some("hi from web\n"));
    })
    .await;
}

/// `kiln ARGS` run in `cwd`.
fn kiln_in(cwd: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).current_dir(cwd);
    for (k, v) in &Emulator::get().vars {
        c.env(k, v);
    }
    c.output().expect("run kiln")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The result documents `kiln submit --wait` printed after the build ids.
fn printed_results(o: &Output) -> Vec<Value> {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let start = out.find('{').unwrap_or(out.len());
    serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("results ({e}): {out}"))
}

async fn submitted_keys(s: &Setup, prefix: &str) -> Vec<String> {
    let out =
        s.s3.list_objects_v2()
            .bucket(&s.bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list");
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key()?.strip_prefix(prefix).map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_from_a_repository_root_and_from_outside_the_working_directory() {
    with_janitor(|janitor| async move {
        let s = setup(5).await;
        let base = std::env::temp_dir().join(unique("repo"));
        let repo = base.join("repo");
        let write = |rel: &str, text: &str| {
            let p = repo.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
            std::fs::write(&p, text).expect("write");
        };
        // A repository's root: .git and a cargo target/ full of files, unrelated files, and a
        // two-build template that uses one file.
        for i in 0..300 {
            write(&format!(".git/objects/{i}"), "x");
            write(&format!("target/debug/{i}.o"), "x");
            write(&format!("src/{i}.rs"), "x");
        }
        write(
            "target/CACHEDIR.TAG",
            "Signature: 8a477f597d28d172789f06886806bc55\n",
        );
        write(".gitignore", "target/\n*.key\n");
        write("files/greeting.txt", "hi from the repository\n");
        write("files/deploy.key", "secret");
        let at = TEMPLATE.find("build {").expect("a build block");
        let second = TEMPLATE[..at]
            .split_once("source \"amazon-chroot\" \"bb\"")
            .map(|(_, src)| format!("source \"amazon-chroot\" \"bb2\"{src}"))
            .map(|src| src.replace("= var.name", "= \"${var.name}-bb2\""))
            .expect("a source");
        let two = format!(
            "{}{second}{}",
            &TEMPLATE[..at],
            TEMPLATE[at..]
                .replace(
                    "sources = [\"source.amazon-chroot.bb\"]",
                    "sources = [\"source.amazon-chroot.bb\", \"source.amazon-chroot.bb2\"]"
                )
                .replace("\"greeting.txt\"", "\"files/greeting.txt\"")
        );
        write("golden.pkr.hcl", &two);
        // A template elsewhere, using a file beside it.
        let elsewhere = base.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("dir");
        std::fs::write(elsewhere.join("app.pkr.hcl"), TEMPLATE).expect("template");
        std::fs::write(elsewhere.join("greeting.txt"), "hi from elsewhere\n").expect("file");

        let worker = start_worker(&s, &["--concurrency", "2"]);
        let id = unique("golden");
        let out = kiln_in(
            &repo,
            &[
                "submit",
                "--queue",
                &s.queue,
                "--bucket",
                &s.bucket,
                "--build-id",
                &id,
                "--wait",
                "--timeout",
                "300",
                "golden.pkr.hcl",
            ],
        );
        let docs = printed_results(&out);
        for d in &docs {
            track_result(&janitor, d);
        }
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .take_while(|l| !l.starts_with('{'))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            ids,
            [
                format!("{id}-amazon-chroot.bb"),
                format!("{id}-amazon-chroot.bb2")
            ],
            "{}",
            text(&out)
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(docs.len(), 2, "both results printed: {}", text(&out));
        let mut built: Vec<&str> = docs.iter().filter_map(|d| d["build_id"].as_str()).collect();
        built.sort();
        assert_eq!(built, ids, "{docs:#?}");
        for d in &docs {
            assert_eq!(d["status"], "succeeded", "{d:#}");
            let got = crate::pipeline::read_from_result(d, &["/etc/copied"]);
            assert_eq!(got[0].as_deref(), Some("hi from the repository\n"));
        }
        assert_eq!(
            submitted_keys(&s, &format!("submissions/{id}/")).await,
            ["files/greeting.txt", "golden.pkr.hcl"],
            "only the template and what it references"
        );

        // Outside the working directory: its folder stands for the working directory.
        let id = unique("elsewhere");
        let path = elsewhere.join("app.pkr.hcl");
        let out = kiln_in(
            &repo,
            &[
                "submit",
                "--queue",
                &s.queue,
                "--bucket",
                &s.bucket,
                "--build-id",
                &id,
                "--wait",
                "--timeout",
                "300",
                &path.display().to_string(),
            ],
        );
        let docs = printed_results(&out);
        for d in &docs {
            track_result(&janitor, d);
        }
        let (_, log) = stop_worker(worker);
        assert!(out.status.success(), "{}\n{log}", text(&out));
        assert!(
            text(&out).contains("is outside the working directory"),
            "{}",
            text(&out)
        );
        assert_eq!(docs.len(), 1, "{}", text(&out));
        assert_eq!(docs[0]["status"], "succeeded", "{:#}", docs[0]);
        let got = crate::pipeline::read_from_result(&docs[0], &["/etc/copied"]);
        assert_eq!(got[0].as_deref(), Some("hi from elsewhere\n"));
        assert_eq!(
            submitted_keys(&s, &format!("submissions/{id}/")).await,
            ["app.pkr.hcl", "greeting.txt"]
        );
        let _ = std::fs::remove_dir_all(&base);
    })
    .await;
}
