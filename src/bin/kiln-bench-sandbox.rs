//! `scripts/bench sandbox`: the build sandbox's cost. Over one image root (a directory holding a
//! static busybox), runs the same trivial command RUNS times through kiln's sandbox launcher
//! (namespaces, pivot_root, cgroup, NAT network namespace, seccomp) and through a plain
//! `chroot DIR /bin/sh -c` (Packer's way), interleaved, and prints the medians and their ratio;
//! then the time to make and remove a build's sandbox (once per build).
//!
//! Usage: `kiln-bench-sandbox ROOT_DIR RUNS` (as root).

use kiln::host::sandbox::{Limits, Network, Sandbox, SandboxSpec};
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn time(cmd: &mut Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = cmd.status()?;
    anyhow::ensure!(st.success(), "{cmd:?} failed: {st}");
    Ok(t.elapsed())
}

fn spec(root: &str, id: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.to_owned(),
        root: root.into(),
        proc: true,
        sys: true,
        dev: true,
        devices: Vec::new(),
        network: Network::Nat,
        limits: Limits {
            memory_bytes: 1 << 30,
            pids: 4096,
            cpu_weight: 100,
        },
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: kiln-bench-sandbox ROOT_DIR RUNS"))?;
    let runs: usize = args.next().unwrap_or_else(|| "200".into()).parse()?;
    let id = format!("{:012x}", std::process::id());
    let sb = Sandbox::create(spec(&root, &id))?;
    let (mut sandboxed, mut plain) = (Vec::new(), Vec::new());
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..runs {
            sandboxed.push(time(
                Command::new(sb.launcher()).args(["/bin/sh", "-c", "true"]),
            )?);
            plain.push(time(
                Command::new("chroot").args([&root, "/bin/sh", "-c", "true"]),
            )?);
        }
        Ok(())
    })();
    sb.remove()?;
    result?;
    let (s, p) = (median(sandboxed), median(plain));
    println!(
        "per command (median of {runs}): chroot {:.1} ms (1.00), sandbox {:.1} ms ({:.2}); overhead {:.1} ms",
        p.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3,
        s.as_secs_f64() / p.as_secs_f64(),
        (s.as_secs_f64() - p.as_secs_f64()) * 1e3
    );
    let mut lifecycle = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let sb = Sandbox::create(spec(&root, &format!("{:010x}{i:02}", std::process::id())))?;
        sb.remove()?;
        lifecycle.push(t.elapsed());
    }
    println!(
        "per build: make and remove the sandbox (cgroup, network namespace, nftables, launcher): {:.1} ms (median of 10)",
        median(lifecycle).as_secs_f64() * 1e3
    );
    Ok(())
}
