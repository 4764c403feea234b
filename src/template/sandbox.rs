//! kiln's `sandbox` block in an `amazon-chroot` source (a kiln extension; Packer has no such
//! field): what a build asks of its sandbox, and the pool's policy that bounds it.
//!
//! ```hcl
//! sandbox {
//!   network    = "nat"   # outbound NAT (default); "none": loopback only; "host": the host's
//!                        # network, only where the pool allows it
//!   memory     = 2048    # MiB for all of the build's processes (default: half the host's memory)
//!   pids       = 4096    # processes and threads at once
//!   cpu_weight = 100     # cgroup v2 CPU weight (1..10000, 100 = an equal share)
//! }
//! ```

use super::decode::Fields;
use serde::Serialize;

/// Default process limit: a parallel compile on a large builder stays far below it, a fork bomb
/// reaches it in milliseconds (systemd's default `TasksMax` is 15% of `pid_max`, 4,915 at
/// the kernel's default 32,768: the same order).
pub const DEFAULT_PIDS: u64 = 4096;
/// Default CPU weight: an equal share with every other build on the host.
pub const DEFAULT_CPU_WEIGHT: u64 = 100;
/// The smallest memory limit that runs `apt-get` and `dpkg` (MiB).
pub const MIN_MEMORY_MIB: u64 = 64;
/// Default memory when the host's size cannot be read (MiB).
const FALLBACK_MEMORY_MIB: u64 = 2048;

/// A build's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Its own namespace with outbound NAT; no metadata service, no host (the default).
    #[default]
    Nat,
    /// Its own namespace with loopback only.
    None,
    /// The host's network (only where the pool's policy allows it).
    Host,
}

/// Limits for one build's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Memory (RSS and page cache) in bytes; the kernel's OOM killer acts inside the group only.
    pub memory_bytes: u64,
    /// Processes and threads at once (a fork bomb stops here).
    pub pids: u64,
    /// CPU weight, cgroup v2's scale (1..=10000, 100 = an equal share).
    pub cpu_weight: u64,
}

/// What a template asks (every field optional).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SandboxConfig {
    /// `network`.
    pub network: Option<Network>,
    /// `memory` (MiB).
    pub memory_mib: Option<u64>,
    /// `pids`.
    pub pids: Option<u64>,
    /// `cpu_weight`.
    pub cpu_weight: Option<u64>,
}

/// The pool's policy (worker and `kiln build` settings, from the environment):
/// `KILN_SANDBOX_HOST_NETWORK=allow` lets templates ask for the host's network;
/// `KILN_SANDBOX_MAX_MEMORY_MIB` and `KILN_SANDBOX_MAX_PIDS` cap what a template may ask.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Whether `network = "host"` is allowed.
    pub allow_host_network: bool,
    /// Largest `memory` a template may ask (MiB).
    pub max_memory_mib: u64,
    /// Largest `pids`.
    pub max_pids: u64,
    /// Default memory (MiB): half the host's.
    pub default_memory_mib: u64,
}

fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

impl Policy {
    /// The policy from the environment, with defaults for this host's size: a build may use up
    /// to three quarters of its memory and gets half by default.
    pub fn from_env() -> Self {
        let host = host_memory_mib().unwrap_or(FALLBACK_MEMORY_MIB * 2);
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Policy {
            allow_host_network: std::env::var("KILN_SANDBOX_HOST_NETWORK")
                .is_ok_and(|v| v == "allow"),
            max_memory_mib: num("KILN_SANDBOX_MAX_MEMORY_MIB").unwrap_or(host * 3 / 4),
            max_pids: num("KILN_SANDBOX_MAX_PIDS").unwrap_or(DEFAULT_PIDS * 8),
            default_memory_mib: (host / 2).max(MIN_MEMORY_MIB),
        }
    }
}

/// What the sandbox is made with: the template's asks within the pool's policy.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxSettings {
    /// The network.
    pub network: Network,
    /// The limits.
    pub limits: Limits,
}

impl SandboxSettings {
    /// Resolves `config` against `policy`; an ask beyond the policy is an error naming the field,
    /// the limit and the setting that raises it.
    pub fn resolve(config: &SandboxConfig, policy: &Policy) -> Result<Self, String> {
        let network = config.network.unwrap_or_default();
        if network == Network::Host && !policy.allow_host_network {
            return Err("sandbox.network = \"host\" is not allowed by this pool's policy: remove it (builds get outbound NAT by default) or ask the pool's operator to set KILN_SANDBOX_HOST_NETWORK=allow".into());
        }
        let memory = config
            .memory_mib
            .unwrap_or(policy.default_memory_mib.min(policy.max_memory_mib));
        if memory > policy.max_memory_mib {
            return Err(format!(
                "sandbox.memory = {memory} MiB is above this pool's limit of {} MiB (KILN_SANDBOX_MAX_MEMORY_MIB): ask for less",
                policy.max_memory_mib
            ));
        }
        let pids = config.pids.unwrap_or(DEFAULT_PIDS.min(policy.max_pids));
        if pids > policy.max_pids {
            return Err(format!(
                "sandbox.pids = {pids} is above this pool's limit of {} (KILN_SANDBOX_MAX_PIDS): ask for less",
                policy.max_pids
            ));
        }
        Ok(SandboxSettings {
            network,
            limits: Limits {
                memory_bytes: memory.saturating_mul(1024 * 1024),
                pids,
                cpu_weight: config.cpu_weight.unwrap_or(DEFAULT_CPU_WEIGHT),
            },
        })
    }
}

fn bounded(g: &mut Fields<'_>, key: &str, min: i64, max: i64) -> Option<u64> {
    let v = g.int(key)?;
    if v < min || v > max {
        g.error(
            key,
            format!("{key} must be between {min} and {max}, got {v}"),
        );
        return None;
    }
    u64::try_from(v).ok()
}

/// Decodes `sandbox` (an object in JSON, a block in HCL2), if present.
pub fn decode(f: &mut Fields<'_>) -> SandboxConfig {
    let Some(node) = f.raw("sandbox") else {
        return SandboxConfig::default();
    };
    let node = match &node.value {
        super::node::Value::Array(a) if a.len() == 1 => &a[0],
        _ => node,
    };
    let mut diags = Vec::new();
    let path = f.field("sandbox");
    let mut g = Fields::new(node, path, &mut diags, f.ctx);
    let mut c = SandboxConfig::default();
    match g.string("network", &[]).as_deref() {
        None => {}
        Some("nat") => c.network = Some(Network::Nat),
        Some("none") => c.network = Some(Network::None),
        Some("host") => c.network = Some(Network::Host),
        Some(other) => g.error(
            "network",
            format!("network must be \"nat\", \"none\" or \"host\", got \"{other}\""),
        ),
    }
    c.memory_mib = bounded(&mut g, "memory", MIN_MEMORY_MIB as i64, 1 << 30);
    c.pids = bounded(&mut g, "pids", 16, 1 << 22);
    c.cpu_weight = bounded(&mut g, "cpu_weight", 1, 10_000);
    g.finish(&[]);
    f.diags.append(&mut diags);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            allow_host_network: false,
            max_memory_mib: 1000,
            max_pids: 500,
            default_memory_mib: 400,
        }
    }

    #[test]
    fn defaults_and_policy() {
        let s = SandboxSettings::resolve(&SandboxConfig::default(), &policy()).unwrap();
        assert_eq!(s.network, Network::Nat);
        assert_eq!(s.limits.memory_bytes, 400 * 1024 * 1024);
        assert_eq!(s.limits.pids, 500.min(DEFAULT_PIDS));
        let host = SandboxConfig {
            network: Some(Network::Host),
            ..Default::default()
        };
        let e = SandboxSettings::resolve(&host, &policy()).unwrap_err();
        assert!(e.contains("KILN_SANDBOX_HOST_NETWORK=allow"), "{e}");
        let mut allow = policy();
        allow.allow_host_network = true;
        assert_eq!(
            SandboxSettings::resolve(&host, &allow).unwrap().network,
            Network::Host
        );
        let big = SandboxConfig {
            memory_mib: Some(2000),
            ..Default::default()
        };
        let e = SandboxSettings::resolve(&big, &policy()).unwrap_err();
        assert!(
            e.contains("sandbox.memory") && e.contains("1000 MiB"),
            "{e}"
        );
    }
}
