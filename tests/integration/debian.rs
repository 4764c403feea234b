//! A minimal Debian root with Python and Ansible (for the ansible provisioners' tests), made by
//! `debootstrap` once and shared: a tarball under `/var/tmp/kiln-cache`, named by a hash of
//! everything that goes into it, built under a file lock so concurrent test processes build it
//! once. Builds extract it in `post_mount_commands`, as a from-scratch template would lay down
//! its root file system.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What goes into the root: suite, variant, packages (debootstrap resolves no virtual packages,
/// so `python3-cffi-backend` is named for ansible-core's cryptography) and mirror.
const SUITE: &str = "bookworm";
const VARIANT: &str = "minbase";
const INCLUDE: &str = "python3,python3-cffi-backend,ansible-core,sudo";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Where fixtures are cached between runs (outside the clone; nothing depends on it being warm).
const CACHE_DIR: &str = "/var/tmp/kiln-cache";

/// The tarball of the Debian root, built on first use. Panics with the command that installs
/// debootstrap when it is missing.
pub(crate) fn debian_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(build)
}

fn build() -> PathBuf {
    assert!(
        Command::new("debootstrap")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "debootstrap is missing: run scripts/setup (or apt-get install -y debootstrap)"
    );
    let key = hex(&Sha256::digest(
        format!("{SUITE} {VARIANT} {INCLUDE} {MIRROR}").as_bytes(),
    ));
    std::fs::create_dir_all(CACHE_DIR).expect("cache dir");
    let tar = Path::new(CACHE_DIR).join(format!("debian-{SUITE}-{}.tar", &key[..16]));
    // One builder at a time across processes; the others wait and then find the tarball.
    let lock = Path::new(CACHE_DIR).join(format!("debian-{}.lock", &key[..16]));
    let script = format!(
        "set -e; test -s {tar} && exit 0; d=$(mktemp -d {cache}/debootstrap.XXXXXX); \
         trap 'rm -rf \"$d\"' EXIT; \
         debootstrap --variant={VARIANT} --include={INCLUDE} {SUITE} \"$d\" {MIRROR} > \"$d.log\" 2>&1 \
           || {{ tail -20 \"$d.log\"; rm -f \"$d.log\"; exit 1; }}; rm -f \"$d.log\"; \
         rm -rf \"$d\"/var/cache/apt/archives/*.deb; \
         tar -C \"$d\" -cf {tar}.part . && mv {tar}.part {tar}",
        tar = tar.display(),
        cache = CACHE_DIR,
    );
    let out = Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c", &script])
        .output()
        .expect("flock sh");
    assert!(
        out.status.success(),
        "building the Debian root with debootstrap failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tar
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A from-scratch source block laying down the Debian root on a fresh 2 GiB volume, with `extra`
/// fields, and a build with `provisioners`.
pub(crate) fn debian_template(name: &str, extra: &str, provisioners: &str) -> String {
    format!(
        r#"
source "amazon-chroot" "debian" {{
  from_scratch            = true
  ami_name                = "{name}"
  ami_virtualization_type = "hvm"
  root_device_name        = "/dev/xvda"
  root_volume_size        = 2
  copy_files              = []
  ami_block_device_mappings {{
    device_name           = "/dev/xvda"
    volume_type           = "gp3"
    delete_on_termination = true
  }}
  pre_mount_commands = [
    "sfdisk --quiet {{{{.Device}}}} <<'PARTS'\nlabel: gpt\n,,L\nPARTS",
    "mkfs.ext4 -q -L root {{{{.Device}}}}1",
  ]
  post_mount_commands = ["tar -C {{{{.MountPath}}}} -xf {tar}"]
  chroot_mounts = [["proc", "proc", "/proc"], ["sysfs", "sysfs", "/sys"], ["bind", "/dev", "/dev"]]
  {extra}
}}
build {{
  sources = ["source.amazon-chroot.debian"]
  {provisioners}
}}
"#,
        tar = debian_root().display()
    )
}
