//! A build's network: its own network namespace with a veth pair to the host and outbound NAT
//! (nftables masquerade), so package mirrors stay reachable while the instance metadata service
//! (the builder role's credentials), the host itself (its loopback services, its addresses) and
//! other builds' namespaces are not. Everything is named by the sandbox id and removed by name.

use super::SandboxError;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The range builds' veth pairs take their /30s from: the last /16 of RFC 6598's shared address
/// space (100.64.0.0/10), which EC2 does not assign to VPCs or services, so it cannot shadow a
/// mirror's address. 16,384 builds at once per host.
const NET_PREFIX: [u8; 2] = [100, 127];
/// Addresses a build must not reach even through NAT: the instance metadata service (IPv4 and
/// IPv6, where the builder role's credentials are), ECS/EKS pod credentials, the host's loopback
/// and every link-local address except Amazon's DNS (.253) and time (.123) services.
const BLOCKED_V4: &[&str] = &["169.254.169.254", "169.254.170.2", "127.0.0.0/8"];
const BLOCKED_V6: &[&str] = &["fd00:ec2::254", "::1"];
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Serialises address allocation between builds (and kiln processes) on one host.
const ALLOC_LOCK: &str = "/run/kiln/sandbox-net.lock";

/// A build's network namespace and what connects it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildNet {
    /// The namespace's name (`/run/netns/<ns>`).
    pub ns: String,
    /// The host side of the veth pair.
    pub host_if: String,
    /// The nftables table (family inet) of this build's rules.
    pub table: String,
    /// The host side's address; the namespace has the next one.
    pub host_addr: String,
}

fn run(what: &str, cmd: &mut Command, stdin: Option<&str>) -> Result<String, SandboxError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| SandboxError::Command {
        what: what.to_owned(),
        detail: format!(
            "cannot start {:?}: {e} (install it: apt-get install -y iproute2 nftables)",
            cmd.get_program()
        ),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SandboxError::Command {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SandboxError::Command {
            what: what.to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(what: &str, args: &[&str]) -> Result<String, SandboxError> {
    run(what, Command::new("ip").args(args), None)
}

/// A free /30 in [`NET_PREFIX`]: random slots tried against the host's addresses.
fn free_slot() -> Result<u32, SandboxError> {
    let used = ip(
        "listing the host's addresses",
        &["-o", "-4", "addr", "show"],
    )?;
    for _ in 0..64 {
        let slot = (uuid::Uuid::new_v4().as_u128() % 16_384) as u32;
        let host = addr(slot, 1);
        if !used.contains(&format!("inet {host}/")) {
            return Ok(slot);
        }
    }
    Err(SandboxError::Busy {
        what: format!(
            "no free address for a build network in {}.{}.0.0/16",
            NET_PREFIX[0], NET_PREFIX[1]
        ),
    })
}

fn addr(slot: u32, n: u32) -> String {
    let v = slot * 4 + n;
    format!("{}.{}.{}.{}", NET_PREFIX[0], NET_PREFIX[1], v >> 8, v & 255)
}

/// This build's nftables rules: masquerade outbound, drop what [`BLOCKED_V4`]/[`BLOCKED_V6`] name,
/// other builds' ranges and anything addressed to the host itself.
fn ruleset(table: &str, host_if: &str, slot: u32) -> String {
    let subnet = format!("{}/30", addr(slot, 0));
    let range = format!("{}.{}.0.0/16", NET_PREFIX[0], NET_PREFIX[1]);
    let mut fwd = String::new();
    for a in BLOCKED_V4.iter().chain([&range.as_str()]) {
        fwd.push_str(&format!("    iifname \"{host_if}\" ip daddr {a} drop\n"));
    }
    fwd.push_str(&format!(
        "    iifname \"{host_if}\" ip daddr 169.254.0.0/16 ip daddr != {{ 169.254.169.253, 169.254.169.123 }} drop\n"
    ));
    for a in BLOCKED_V6 {
        fwd.push_str(&format!("    iifname \"{host_if}\" ip6 daddr {a} drop\n"));
    }
    format!(
        "table inet {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {subnet} oifname != \"{host_if}\" masquerade\n  }}\n  chain forward {{\n    type filter hook forward priority filter - 1; policy accept;\n{fwd}  }}\n  chain input {{\n    type filter hook input priority filter - 1; policy accept;\n    iifname \"{host_if}\" drop\n  }}\n}}\n"
    )
}

impl BuildNet {
    /// Creates the namespace `kiln-<id>`, the veth pair (`kv<id>` on the host, `eth0` inside),
    /// addresses, the default route and the nftables table `kiln_<id>`; turns on IPv4 forwarding
    /// (a host-wide setting NAT needs).
    ///
    /// Side effects: a network namespace, two interfaces, one nftables table. On failure what was
    /// made is removed. Not safe to run twice with the same id (the names exist): use [`Self::remove`] first.
    pub fn create(id: &str) -> Result<Self, SandboxError> {
        std::fs::create_dir_all("/run/kiln").map_err(|source| SandboxError::Io {
            what: "creating",
            path: PathBuf::from("/run/kiln"),
            source,
        })?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(ALLOC_LOCK)
            .map_err(|source| SandboxError::Io {
                what: "opening",
                path: PathBuf::from(ALLOC_LOCK),
                source,
            })?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, e)| SandboxError::Command {
                what: "locking the build network allocation".into(),
                detail: e.to_string(),
            },
        )?;
        let slot = free_slot()?;
        let net = BuildNet {
            host_addr: addr(slot, 1),
            ..Self::named(id)
        };
        if let Err(e) = net.set_up(slot) {
            if let Err(undo) = net.remove() {
                tracing::error!(namespace = %net.ns, interface = %net.host_if, table = %net.table, error = %undo, "could not remove a half-made build network");
            }
            return Err(e);
        }
        Ok(net)
    }

    fn set_up(&self, slot: u32) -> Result<(), SandboxError> {
        let ns = self.ns.as_str();
        let inner = addr(slot, 2);
        ip("creating the network namespace", &["netns", "add", ns])?;
        ip(
            "creating the veth pair",
            &[
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ],
        )?;
        ip(
            "addressing the host side",
            &[
                "addr",
                "add",
                &format!("{}/30", self.host_addr),
                "dev",
                &self.host_if,
            ],
        )?;
        ip(
            "bringing the host side up",
            &["link", "set", &self.host_if, "up"],
        )?;
        ip(
            "addressing the build side",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{inner}/30"),
                "dev",
                "eth0",
            ],
        )?;
        ip(
            "bringing the build side up",
            &["-n", ns, "link", "set", "eth0", "up"],
        )?;
        ip(
            "bringing loopback up",
            &["-n", ns, "link", "set", "lo", "up"],
        )?;
        ip(
            "routing the build out",
            &["-n", ns, "route", "add", "default", "via", &self.host_addr],
        )?;
        run(
            "loading the build's nftables rules",
            Command::new("nft").args(["-f", "-"]),
            Some(&ruleset(&self.table, &self.host_if, slot)),
        )?;
        let fwd = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(fwd).is_ok_and(|v| v.trim() == "0") {
            std::fs::write(fwd, "1").map_err(|source| SandboxError::Io {
                what: "turning on IPv4 forwarding (NAT for builds needs it) in",
                path: PathBuf::from(fwd),
                source,
            })?;
        }
        Ok(())
    }

    /// The names a build network with sandbox id `id` has (for removing a dead build's).
    pub fn named(id: &str) -> Self {
        BuildNet {
            ns: format!("kiln-{id}"),
            host_if: format!("kv{id}"),
            table: format!("kiln_{id}"),
            host_addr: String::new(),
        }
    }

    /// The namespace's file, for `nsenter --net=`.
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.ns)
    }

    /// Removes the table, the veth pair and the namespace, each by its exact name.
    ///
    /// Side effects: as said. Safe to run twice (what is gone is skipped). Errors name what is
    /// left.
    pub fn remove(&self) -> Result<(), SandboxError> {
        let mut left = Vec::new();
        let tables = run(
            "listing nftables tables",
            Command::new("nft").args(["list", "tables"]),
            None,
        )
        .unwrap_or_default();
        if tables
            .lines()
            .any(|l| l.trim() == format!("table inet {}", self.table))
            && let Err(e) = run(
                "deleting the build's nftables table",
                Command::new("nft").args(["delete", "table", "inet", &self.table]),
                None,
            )
        {
            left.push(format!("nftables table inet {} ({e})", self.table));
        }
        if std::path::Path::new(&format!("/sys/class/net/{}", self.host_if)).exists()
            && let Err(e) = ip("deleting the veth pair", &["link", "del", &self.host_if])
        {
            left.push(format!("interface {} ({e})", self.host_if));
        }
        if self.ns_path().exists()
            && let Err(e) = ip(
                "deleting the network namespace",
                &["netns", "del", &self.ns],
            )
        {
            left.push(format!("network namespace {} ({e})", self.ns));
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(SandboxError::Busy {
                what: format!("left behind: {}", left.join(", ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_rules() {
        assert_eq!(addr(0, 1), "100.127.0.1");
        assert_eq!(addr(16_383, 2), "100.127.255.254");
        let r = ruleset("kiln_ab", "kvab", 1);
        assert!(
            r.contains("ip saddr 100.127.0.4/30 oifname != \"kvab\" masquerade"),
            "{r}"
        );
        assert!(
            r.contains("iifname \"kvab\" ip daddr 169.254.169.254 drop"),
            "{r}"
        );
        assert!(r.contains("ip6 daddr fd00:ec2::254 drop"), "{r}");
        assert!(
            r.contains("iifname \"kvab\" ip daddr 100.127.0.0/16 drop"),
            "{r}"
        );
        assert!(r.contains("chain input"), "{r}");
    }
}
