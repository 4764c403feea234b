//! The build sandbox (README "Host safety", issue 20): what runs inside an image cannot reach the
//! host, another build, the builder's credentials or more than its share of memory and processes.
//! Each test here fails against a plain `chroot` with Packer's default mounts: the probes in
//! tests/fixtures/sandbox/probe.py reach the host's files, the other build's root, the host's
//! disk, the emulator and its metadata endpoint on the host's loopback, and `open_by_handle_at`.
//! The probe build runs while a second build is in its provisioning step on the same host.

use crate::pipeline::{Tpl, assert_nothing_left, build, build_env, busybox, read_from_result};
use crate::support::{Emulator, repo_root, tagged, track_result, unique, with_janitor};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The host's `/usr` (and its libraries) bound into a busybox image, so probes can use the
/// host's python3 inside the sandbox.
const HOST_PYTHON_MOUNTS: &str = r#"chroot_mounts = [["bind", "/usr", "/usr"], ["bind", "/lib", "/lib"], ["bind", "/lib64", "/lib64"], ["proc", "proc", "/proc"], ["sysfs", "sysfs", "/sys"], ["bind", "/dev", "/dev"], ["devpts", "devpts", "/dev/pts"]]"#;
/// How long the second build waits for the probes before giving up (it fails then).
const OTHER_BUILD_WAIT_S: u32 = 300;

/// The host's root disk (`/dev/vda` here): the device behind `/`.
fn host_disk() -> String {
    let out = Command::new("findmnt")
        .args(["-no", "SOURCE", "/"])
        .output()
        .expect("findmnt");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn port_of(url: &str) -> String {
    url.rsplit(':')
        .next()
        .map(|p| p.trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

/// Starts the second build: it writes its mount path to `ready`, then sits in a provisioner
/// (marker file in its image) until the test drops `/tmp/release` into its image.
fn start_other_build(t: &Tpl, marker: &str, ready: &Path) -> std::process::Child {
    let provs = format!(
        r#"provisioner "shell-local" {{
    inline = ["echo $KILN_MOUNT_PATH > {ready}"]
  }}
  provisioner "shell" {{
    inline = ["touch /{marker}", "i=0; while [ ! -e /tmp/release ]; do i=$((i+1)); [ $i -lt {n} ] || exit 1; sleep 0.2; done"]
  }}"#,
        ready = ready.display(),
        n = OTHER_BUILD_WAIT_S * 5,
    );
    let tpl = t.write("other.pkr.hcl", &busybox(&unique("sb-other"), "", &provs));
    let emu = Emulator::get();
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["build", "--backend", "ebs", "--json"])
        .arg(&tpl)
        .current_dir(&t.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &emu.vars {
        c.env(k, v);
    }
    c.spawn().expect("start the second build")
}

fn wait_for(path: &Path, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().to_owned();
        }
        assert!(start.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every escape probe is blocked, while a second build provisions on the same host; both
/// builds succeed and leave nothing.
#[tokio::test]
async fn a_build_cannot_reach_the_host_other_builds_or_credentials() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let host_dir = PathBuf::from("/tmp").join(unique("sb-host"));
        std::fs::create_dir_all(&host_dir).expect("host dir");
        let secret = host_dir.join("secret");
        std::fs::write(&secret, "host secret\n").expect("secret");
        let marker = unique("sb-marker");
        let ready = host_dir.join("ready");
        let other = start_other_build(&t, &marker, &ready);
        let other_mount = wait_for(&ready, Duration::from_secs(180));

        std::fs::copy(
            repo_root().join("tests/fixtures/sandbox/probe.py"),
            t.0.join("probe.py"),
        )
        .expect("probe");
        let emu = Emulator::get();
        let provs = format!(
            r#"provisioner "file" {{
    source      = "probe.py"
    destination = "/probe.py"
  }}
  provisioner "shell" {{
    inline = ["python3 /probe.py {secret} {disk} {emu} {imds} {marker}"]
  }}"#,
            secret = secret.display(),
            disk = host_disk(),
            emu = port_of(emu.endpoint()),
            imds = port_of(emu.imds_endpoint()),
        );
        let tpl = t.write(
            "probe.pkr.hcl",
            &busybox(&unique("sb-probe"), HOST_PYTHON_MOUNTS, &provs),
        );
        let id = unique("sb-probe");
        let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
        track_result(&janitor, &doc);
        // Let the other build finish, whatever happened here.
        let _ = std::fs::write(Path::new(&other_mount).join("tmp/release"), "");
        let other_out = other.wait_with_output().expect("second build");
        let other_doc: Value = serde_json::from_slice(&other_out.stdout).unwrap_or_default();
        track_result(&janitor, &other_doc);
        let _ = std::fs::remove_dir_all(&host_dir);

        assert!(ok, "{}\n{stderr}", doc["error"]);
        let probes: Value = serde_json::from_str(
            read_from_result(&doc, &["/probes.json"])[0]
                .as_deref()
                .expect("the probes wrote /probes.json into the image"),
        )
        .expect("probes.json");
        let reached: Vec<String> = probes
            .as_object()
            .expect("object")
            .iter()
            .filter(|(_, v)| v.as_str().is_some_and(|s| !s.starts_with("blocked")))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        assert!(
            probes.as_object().is_some_and(|o| o.len() >= 21),
            "every probe ran: {probes:#}"
        );
        assert!(
            reached.is_empty(),
            "the build reached out of its sandbox:\n{}",
            reached.join("\n")
        );
        assert!(
            other_out.status.success(),
            "the second build failed: {}\n{}",
            other_doc["error"],
            String::from_utf8_lossy(&other_out.stderr)
        );
        let left = tagged(emu.region(), &id).await;
        assert!(left.volumes.is_empty(), "volumes left: {:?}", left.volumes);
        assert_no_sandbox_left(&doc);
    })
    .await;
}

/// Nothing of the build's sandbox is left: its cgroup, network namespace and nftables table.
pub(crate) fn assert_no_sandbox_left(doc: &Value) {
    let step = doc["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "sandbox")
        .unwrap_or_else(|| panic!("no sandbox step in {doc:#}"));
    let id = step["outputs"]["sandbox"].as_str().expect("sandbox id");
    for dir in ["memory", "pids", "unified", ""] {
        let p = Path::new("/sys/fs/cgroup")
            .join(dir)
            .join(format!("kiln/build-{id}"));
        assert!(!p.exists(), "cgroup {} is left", p.display());
    }
    assert!(
        !Path::new(&format!("/run/netns/kiln-{id}")).exists(),
        "network namespace left"
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains(&format!("kiln_{id}")),
        "nftables table left"
    );
}

/// A fork bomb stops at the build's process limit: the build fails with the shell's error, and
/// a build beside it succeeds. (Bounded: without the limit the loop ends at 300 processes, and
/// the test fails saying so.)
#[tokio::test]
async fn a_fork_bomb_stops_at_the_process_limit() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let provs = r#"provisioner "shell" {
    inline = ["echo bomb started; i=0; while [ $i -lt 300 ]; do sleep 60 & i=$((i+1)); done; echo spawned $i processes; exit 0"]
  }"#;
        let tpl = t.write(
            "bomb.pkr.hcl",
            &busybox(&unique("sb-bomb"), "sandbox {\n    pids = 64\n  }", provs),
        );
        let id = unique("sb-bomb");
        let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
        track_result(&janitor, &doc);
        assert!(!ok, "the build spawned 300 processes under a limit of 64: {stderr}");
        assert!(!stderr.contains("spawned 300 processes"), "{stderr}");
        // It ran, and fork failed (not some other error before it).
        assert!(stderr.contains("bomb started"), "{stderr}");
        let message = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(
            stderr.contains("can't fork") || stderr.contains("Resource temporarily unavailable"),
            "fork did not fail at the limit: {message}\n{stderr}"
        );
        assert_eq!(doc["error"]["step"], "provision", "{doc:#}");
        assert_nothing_left(&id, &doc).await;
        assert_no_sandbox_left(&doc);
        // Killed with the build's cgroup; a process the kernel is still tearing down (SIGKILL
        // delivered, its memory not yet released) may show for a moment on a loaded host.
        let deadline = Instant::now() + Duration::from_secs(5);
        let left = loop {
            let out = Command::new("pgrep").args(["-c", "-f", "^sleep 60$"]).output().expect("pgrep");
            let left: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
            if left == 0 || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(left, 0, "processes of the bomb are still running");
    })
    .await;
}

/// A memory hog is killed inside its own cgroup: the build fails, the worker (kiln build) lives
/// to report it and clean up.
#[tokio::test]
async fn a_memory_hog_is_killed_in_its_cgroup() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let provs = r#"provisioner "shell" {
    inline = ["echo hog started", "python3 -c 'b = bytearray(600 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096]); print(\"allocated\", len(b))'"]
  }"#;
        let extra = format!("{HOST_PYTHON_MOUNTS}\n  sandbox {{\n    memory = 128\n  }}");
        let tpl = t.write("hog.pkr.hcl", &busybox(&unique("sb-hog"), &extra, provs));
        let id = unique("sb-hog");
        let (ok, doc, stderr) = build(&tpl, &["--build-id".into(), id.clone()]);
        track_result(&janitor, &doc);
        assert!(!ok, "the build allocated 600 MiB under a limit of 128 MiB: {stderr}");
        assert!(!stderr.contains("allocated"), "{stderr}");
        // It ran, and the kernel killed it (SIGKILL: exit code 137 from the shell, or -1).
        assert!(stderr.contains("hog started"), "{stderr}");
        let message = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("exit code 137") || message.contains("exit code -1") || stderr.contains("Killed"),
            "not killed by the OOM killer: {message}"
        );
        assert_eq!(doc["error"]["step"], "provision", "{doc:#}");
        assert_nothing_left(&id, &doc).await;
        assert_no_sandbox_left(&doc);
    })
    .await;
}

/// `network = "host"` is refused unless the pool allows it, with the setting that allows it;
/// `network = "none"` leaves loopback only.
#[tokio::test]
async fn host_network_needs_the_pools_permission() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let tpl = t.write(
            "hostnet.pkr.hcl",
            &busybox(
                &unique("sb-net"),
                "sandbox {\n    network = \"host\"\n  }",
                "",
            ),
        );
        let (ok, doc, stderr) =
            build_env(&tpl, &[], &[("KILN_SANDBOX_HOST_NETWORK", "deny".into())]);
        track_result(&janitor, &doc);
        assert!(!ok, "{stderr}");
        let msg = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("KILN_SANDBOX_HOST_NETWORK=allow"), "{msg}");
        let provs = r#"provisioner "shell" {
    inline = ["ip -o link > /links.txt 2>&1 || cat /proc/net/dev > /links.txt"]
  }"#;
        let tpl = t.write(
            "nonet.pkr.hcl",
            &busybox(
                &unique("sb-nonet"),
                "sandbox {\n    network = \"none\"\n  }",
                provs,
            ),
        );
        let (ok, doc, stderr) = build(&tpl, &[]);
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{stderr}", doc["error"]);
        let links = read_from_result(&doc, &["/links.txt"])[0]
            .clone()
            .unwrap_or_default();
        assert!(links.contains("lo"), "{links}");
        assert!(
            !links.contains("eth0"),
            "a network beyond loopback: {links}"
        );
    })
    .await;
}

/// What images are built with keeps working in the sandbox: `sudo`, `useradd`, `chown` to
/// another user, `su`, and `apt`'s privilege drop to `_apt` (on the shared Debian root).
#[tokio::test]
async fn sudo_useradd_and_su_work_in_the_sandbox() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let provs = r#"provisioner "shell" {
    inline = [
      "chmod 0755 /",
      "sudo -n true",
      "useradd -m kilnuser",
      "sudo -u kilnuser sh -c 'id -un > /tmp/whoami'",
      "chown kilnuser /tmp/whoami",
      "su -s /bin/sh -c 'echo from-su >> /tmp/whoami' kilnuser",
      "cp /tmp/whoami /sudo-result",
      "setpriv --reuid=_apt --regid=nogroup --clear-groups true && echo apt-drop-ok >> /sudo-result",
    ]
  }"#;
        let tpl = t.write(
            "sudo.pkr.hcl",
            &crate::debian::debian_template(&unique("sb-sudo"), "", provs),
        );
        let (ok, doc, stderr) = build(&tpl, &[]);
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{stderr}", doc["error"]);
        let got = read_from_result(&doc, &["/sudo-result", "/etc/passwd"]);
        assert_eq!(got[0].as_deref(), Some("kilnuser\nfrom-su\napt-drop-ok\n"));
        assert!(got[1].as_deref().unwrap_or_default().contains("kilnuser:"));
    })
    .await;
}

/// Every process's command line on the host that holds `needle`.
fn command_lines_holding(needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&b).replace('\0', " ");
            if line.contains(needle) {
                hits.push(line);
            }
        }
    }
    hits
}

/// A shell provisioner's environment values (`{{.Vars}}` in Packer's default `execute_command`)
/// reach the script through its environment, never through a command line that any process on
/// the host can read in `/proc/*/cmdline`; the staged command file is gone after the build.
#[tokio::test]
async fn environment_values_stay_off_command_lines() {
    with_janitor(|janitor| async move {
        let t = Tpl::new();
        let secret = unique("kiln-secret");
        let provs = format!(
            r#"provisioner "shell" {{
    environment_vars = ["TOKEN={secret}"]
    inline = ["test \"$TOKEN\" = {secret} && echo $TOKEN | wc -c > /token-length", "sleep 3"]
  }}"#
        );
        let tpl = t.write("secret.pkr.hcl", &busybox(&unique("sb-secret"), "", &provs));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scanner = {
            let (stop, secret) = (stop.clone(), secret.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut scans = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    seen.extend(command_lines_holding(&secret));
                    scans += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                (seen, scans)
            })
        };
        let (ok, doc, stderr) = build(&tpl, &[]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (seen, scans) = scanner.join().expect("the scanner");
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{stderr}", doc["error"]);
        assert!(
            scans > 20,
            "the scanner ran {scans} times only: it proves nothing"
        );
        assert!(
            seen.is_empty(),
            "the secret was on a command line: {seen:?}"
        );
        let expected = format!("{}\n", secret.len() + 1);
        let got = read_from_result(&doc, &["/token-length"]);
        assert_eq!(
            got[0].as_deref(),
            Some(expected.as_str()),
            "the script did not get TOKEN"
        );
        let file = crate::support::result_snapshot_data(&doc, Emulator::get().region());
        let left: Vec<String> = crate::pipeline::with_snapshot(&file, |mnt| {
            std::fs::read_dir(mnt.join("tmp"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kiln-"))
                .collect()
        });
        assert!(
            left.is_empty(),
            "staged commands left in the image: {left:?}"
        );
    })
    .await;
}
