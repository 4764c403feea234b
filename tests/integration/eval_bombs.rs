//! Evaluation cannot take the process down: HCL templates built to crash, hang or exhaust the
//! process that evaluates them, through the real `kiln validate` (under a memory limit and a
//! deadline), each a clear error and exit 1, never a signal; and through `kiln worker`, a build
//! that panics fails with its message while the worker goes on, and a template cannot read the
//! worker's environment.

use crate::support::{track_result, unique, with_janitor};
use crate::worker::{request, result, send, setup, start_worker_with, stop_worker, upload};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The data segment `kiln validate` may use: 2 GiB, far below what the bombs asked for (24 GiB
/// for `file("/dev/zero")`, 1e8 values for `setproduct`), far above what a refused bomb uses.
const DATA_LIMIT: &str = "2147483648";

/// How long one `kiln validate` may take: the bombs that hung (a FIFO) or looped must not.
const DEADLINE: Duration = Duration::from_secs(120);

/// A directory of its own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(unique("bombs"));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A template whose `locals` (or other blocks) are `blocks` and whose AMI name uses
/// `local.bomb`.
fn template(blocks: &str) -> String {
    format!(
        r#"{blocks}
source "amazon-chroot" "x" {{
  ami_name   = "x-${{local.bomb}}"
  source_ami = "ami-0123456789abcdef0"
}}
build {{
  sources = ["source.amazon-chroot.x"]
}}
"#
    )
}

/// How `kiln validate` ended.
struct Outcome {
    /// The exit code; `None` when a signal ended it.
    code: Option<i32>,
    output: String,
    took: Duration,
}

/// Runs `kiln validate t.pkr.hcl` in `dir` under [`DATA_LIMIT`], killed at [`DEADLINE`].
fn validate(dir: &Path) -> Outcome {
    let out = std::fs::File::create(dir.join("out.txt")).expect("output file");
    let err = out.try_clone().expect("output file");
    let start = Instant::now();
    let mut child = Command::new("prlimit")
        .arg(format!("--data={DATA_LIMIT}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["validate", "t.pkr.hcl"])
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("run prlimit kiln validate");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kiln validate still running after {DEADLINE:?} in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = start.elapsed();
    let output = std::fs::read_to_string(dir.join("out.txt")).unwrap_or_default();
    Outcome {
        code: status.code(),
        output,
        took,
    }
}

/// Validates `text` (with `files` beside it) and checks: exit 1, every `want` in the output.
fn refused(name: &str, text: &str, files: &[(&str, &str)], want: &[&str]) -> Outcome {
    let dir = Dir::new();
    std::fs::write(dir.0.join("t.pkr.hcl"), text).expect("write template");
    for (f, body) in files {
        std::fs::write(dir.0.join(f), body).expect("write file");
    }
    let o = validate(&dir.0);
    assert_eq!(
        o.code,
        Some(1),
        "{name}: kiln validate must fail with exit 1, not crash (a signal is None):\n{}",
        o.output
    );
    for w in want {
        assert!(o.output.contains(w), "{name}: no {w:?} in:\n{}", o.output);
    }
    o
}

/// Each bomb of issue 20, and the ones found next to them: a clear error naming the function
/// and the limit, exit 1, quickly, within the memory limit.
#[test]
fn every_bomb_is_a_clear_error_and_exit_1() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "indent",
            r#"indent(1e21, "x")"#,
            &["indent", "whole number"],
        ),
        (
            "indent width",
            r#"indent(100000000, "a\nb")"#,
            &["indent", "16777216"],
        ),
        (
            "timeadd",
            r#"timeadd("9999-06-01T00:00:00Z", "87000h")"#,
            &["timeadd", "outside the years 0 to 9999"],
        ),
        (
            "timeadd overflow",
            r#"timeadd("2020-01-01T00:00:00Z", "99999999999999999h")"#,
            &["timeadd", "is not a duration"],
        ),
        (
            "file /dev/zero",
            r#"file("/dev/zero")"#,
            &["file", "/dev/zero", "under /dev"],
        ),
        (
            "templatefile /dev/zero",
            r#"templatefile("/dev/zero", {})"#,
            &["templatefile", "/dev/zero", "under /dev"],
        ),
        (
            "setproduct",
            "setproduct(range(1000), range(1000), range(1000))",
            &["setproduct", "1000000"],
        ),
        (
            "/proc/self/environ",
            r#"file("/proc/self/environ")"#,
            &["file", "/proc/self/environ", "under /proc"],
        ),
        (
            "format width",
            r#"format("%99999999999s", "x")"#,
            &["format", "limit"],
        ),
        (
            "replace",
            r#"replace(format("%1000000s", ""), "", "0123456789abcdefghij")"#,
            &["replace", "16 MiB"],
        ),
        (
            "function budget",
            r#"[for i in range(1024) : format("%1000000s", i)]"#,
            &["format", "256 MiB"],
        ),
        (
            "nested for expressions",
            "[for a in range(1024) : [for b in range(1024) : [for c in range(1024) : a]]]",
            &["for", "256 MiB"],
        ),
        (
            "template loops",
            r#""%{ for a in range(1024) }%{ for b in range(1024) }${format("%1000s", "")}%{ endfor }%{ endfor }""#,
            &["template", "16 MiB"],
        ),
        (
            "parseint",
            r#"parseint("zzzzzzzzzzzzzzzzzzzzzzzzzzzz", 62)"#,
            &["parseint", "64-bit"],
        ),
        (
            "cidrsubnet",
            r#"cidrsubnet("10.0.0.0/24", 300, 1)"#,
            &["cidrsubnet", "128"],
        ),
        (
            "remainder by zero",
            "5 % 0",
            &["cannot be evaluated", "remainder"],
        ),
    ];
    for (name, expr, want) in cases {
        let text = template(&format!("locals {{\n  bomb = {expr}\n}}\n"));
        let o = refused(name, &text, &[], want);
        assert!(
            o.output.contains("local.bomb"),
            "{name}: names the local:\n{}",
            o.output
        );
        assert!(
            o.took < Duration::from_secs(60),
            "{name}: took {:?}",
            o.took
        );
    }
}

/// `file("/dev/zero")` in a variable's default, as issue 20 found it (24 GiB, then the OOM killer).
#[test]
fn a_variable_default_reading_dev_zero_is_refused() {
    let text = template(
        "variable \"blob\" {\n  default = file(\"/dev/zero\")\n}\nlocals {\n  bomb = var.blob\n}\n",
    );
    // As in Packer, a default may call no function but env(): refused before anything is read.
    refused(
        "variable default",
        &text,
        &[],
        &["var.blob.default", "no function named \"file\""],
    );
}

/// Locals that double one another (10 KB, 20 KB, ... 2^39 × 10 KB) stop at the first one past
/// the limit for one string, instead of growing until the memory limit aborts the process.
#[test]
fn doubling_locals_stop_at_the_value_limit() {
    let mut locals = format!("locals {{\n  l0 = \"{}\"\n", "x".repeat(10_000));
    for i in 1..40 {
        locals.push_str(&format!(
            "  l{i} = \"${{local.l{}}}${{local.l{}}}\"\n",
            i - 1,
            i - 1
        ));
    }
    locals.push_str("  bomb = local.l39\n}\n");
    // 10 KB × 2^11 = 20 MB is the first past the 16 MiB of one string (a template builds one).
    refused(
        "doubling",
        &template(&locals),
        &[],
        &["local.l11", "16 MiB"],
    );
}

/// A FIFO, a link into `/proc` and a template that renders itself: refused, not a hang, not a
/// leak, not a stack overflow.
#[test]
fn fifos_links_and_recursive_templates_are_refused() {
    let dir = Dir::new();
    let made = Command::new("mkfifo").arg(dir.0.join("fifo")).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    std::os::unix::fs::symlink("/proc/self/environ", dir.0.join("env")).expect("symlink");
    std::fs::write(dir.0.join("self.tpl"), "${templatefile(\"self.tpl\", {})}").expect("write");
    for (name, expr, want) in [
        ("fifo", r#"file("fifo")"#, "a FIFO"),
        ("link", r#"file("env")"#, "under /proc"),
        (
            "recursion",
            r#"templatefile("self.tpl", {})"#,
            "cannot call templatefile",
        ),
    ] {
        let text = template(&format!("locals {{\n  bomb = {expr}\n}}\n"));
        std::fs::write(dir.0.join("t.pkr.hcl"), text).expect("write template");
        let o = validate(&dir.0);
        assert_eq!(o.code, Some(1), "{name}:\n{}", o.output);
        assert!(
            o.output.contains(want),
            "{name}: no {want:?} in:\n{}",
            o.output
        );
    }
}

/// A panic while a worker loads a build's template (`KILN_FAULT_PANIC=load`, as a bug in the
/// evaluator would) fails that build with the panic's message, deletes its message, and the
/// worker answers the next build and exits cleanly.
#[tokio::test]
async fn a_panicking_build_fails_and_the_worker_goes_on() {
    with_janitor(|janitor| async move {
        let s = setup(3).await;
        let key = upload(&s, &unique("tpl")).await;
        let ids: Vec<String> = (0..2).map(|_| unique("panic")).collect();
        for id in &ids {
            send(&s, &request(id, &s.bucket, &key, 0)).await;
        }
        let worker =
            start_worker_with(&s, &["--concurrency", "1"], &[("KILN_FAULT_PANIC", "load")]);
        for id in &ids {
            let doc = result(&s, id, Duration::from_secs(90)).await;
            track_result(&janitor, &doc);
            assert_eq!(doc["status"], "failed", "{doc:#}");
            assert_eq!(doc["error"]["step"], "validate", "{doc:#}");
            assert_eq!(doc["error"]["retryable"], false, "{doc:#}");
            let m = doc["error"]["message"].as_str().unwrap_or_default();
            assert!(
                m.contains("KILN_FAULT_PANIC: loading the template panics"),
                "{doc:#}"
            );
        }
        // The messages were answered (deleted), not left to the heartbeat or a redelivery. The
        // worker deletes a message just after it publishes the result: wait for it, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let attrs = s
                .sqs
                .get_queue_attributes()
                .queue_url(&s.queue)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await
                .expect("queue attributes");
            let count = |a: aws_sdk_sqs::types::QueueAttributeName| -> String {
                attrs
                    .attributes()
                    .and_then(|m| m.get(&a).cloned())
                    .unwrap_or_default()
            };
            let visible =
                count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages);
            let in_flight = count(
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            );
            if visible == "0" && in_flight == "0" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "messages left on the queue: {visible} visible, {in_flight} in flight"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (ok, log) = stop_worker(worker);
        assert!(ok, "the worker exits 0 after SIGTERM:\n{log}");
        assert!(log.contains("the build panicked"), "{log}");
    })
    .await;
}

/// Through a worker, a template reads neither the worker's environment (`env()` sees only the
/// allow-listed variables) nor `/proc/self/environ`.
#[tokio::test]
async fn a_workers_templates_cannot_read_its_environment() {
    with_janitor(|janitor| async move {
        let s = setup(3).await;
        let key = format!("{}/t.pkr.hcl", unique("tpl"));
        let text = template(
            r#"variable "secret" {
  default = env("KILN_TEST_WORKER_SECRET")
  validation {
    condition     = var.secret == ""
    error_message = "the template read the worker's environment"
  }
}
locals {
  bomb = file("/proc/self/environ")
}
"#,
        );
        s.s3.put_object()
            .bucket(&s.bucket)
            .key(&key)
            .body(text.into_bytes().into())
            .send()
            .await
            .expect("put template");
        let id = unique("env");
        send(&s, &request(&id, &s.bucket, &key, 0)).await;
        let worker = start_worker_with(&s, &[], &[("KILN_TEST_WORKER_SECRET", "hunter2")]);
        let doc = result(&s, &id, Duration::from_secs(90)).await;
        track_result(&janitor, &doc);
        let (ok, log) = stop_worker(worker);
        assert!(ok, "{log}");
        assert_eq!(doc["status"], "failed", "{doc:#}");
        let m = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains("under /proc"), "{doc:#}");
        assert!(!m.contains("read the worker's environment"), "{doc:#}");
        assert!(!doc.to_string().contains("hunter2"), "{doc:#}");
    })
    .await;
}
