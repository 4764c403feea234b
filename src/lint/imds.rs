//! `imds-client`: with `imds_support = "v2.0"` the AMI is meant for instances that take their
//! configuration (SSH key, user data, hostname) from the instance metadata service with IMDSv2
//! tokens. Something in the image must do that: cloud-init, or an equivalent agent
//! ([`AGENTS`]), or the image's own unit or script that asks for an IMDSv2 token (its text
//! names the `X-aws-ec2-metadata-token` header) in `/etc/systemd/system`, `/usr/local/bin` or
//! `/usr/local/sbin`. Without one, instances launched from the AMI ignore their key and user
//! data: a warning (the image still boots).

use super::{Lint, LintError};

/// Agents that configure an instance from IMDS, or give access to it, and speak IMDSv2 in their
/// current releases (a query tool such as amazon-ec2-utils' `ec2-metadata` configures nothing).
pub const AGENTS: [(&str, &str); 7] = [
    ("/usr/bin/cloud-init", "cloud-init"),
    ("/usr/local/bin/cloud-init", "cloud-init"),
    ("/usr/bin/afterburn", "afterburn"),
    ("/usr/sbin/tiny-cloud", "tiny-cloud"),
    ("/sbin/tiny-cloud", "tiny-cloud"),
    (
        "/usr/share/ec2-instance-connect/eic_run_authorized_keys",
        "ec2-instance-connect",
    ),
    ("/usr/bin/amazon-ssm-agent", "amazon-ssm-agent"),
];
/// Directories searched for the image's own IMDSv2 client.
const OWN_DIRS: [&str; 3] = ["/etc/systemd/system", "/usr/local/bin", "/usr/local/sbin"];
/// The header an IMDSv2 client sends with its token.
const TOKEN_HEADER: &[u8] = b"X-aws-ec2-metadata-token";
/// Files looked at per directory, and bytes per file, at most: a unit or script is small.
const MAX_FILES: usize = 500;
/// See [`MAX_FILES`].
const MAX_FILE: u64 = 256 << 10;

/// `imds-client`.
pub fn check(l: &mut Lint<'_>) -> Result<(), LintError> {
    const ID: &str = "imds-client";
    if !l.promises.imds_v2 {
        l.not_checked(ID, "imds_support is not \"v2.0\"");
        return Ok(());
    }
    for (path, _) in AGENTS {
        if l.fs.read_head(path, 0)?.is_some() {
            return Ok(());
        }
    }
    for dir in OWN_DIRS {
        let names = l.fs.list_dir(dir)?.unwrap_or_default();
        for n in names.iter().take(MAX_FILES) {
            // Directories (`*.wants`) and special files are not units or scripts.
            let Ok(Some(text)) = l.fs.read_head(&format!("{dir}/{n}"), MAX_FILE) else {
                continue;
            };
            if text.windows(TOKEN_HEADER.len()).any(|w| w == TOKEN_HEADER) {
                return Ok(());
            }
        }
    }
    l.warn(
        ID,
        "/usr/bin/cloud-init",
        "imds_support = \"v2.0\" registers the AMI for IMDSv2-only instances, but nothing in the image reads the instance metadata (no cloud-init or equivalent agent, and no unit or script in /etc/systemd/system or /usr/local that sends an IMDSv2 token): instances launched from it ignore their SSH key and user data".into(),
        "install cloud-init (Debian: cloud-init; it speaks IMDSv2), or your own service that fetches the key with an IMDSv2 token (X-aws-ec2-metadata-token), or skip this check".into(),
    );
    Ok(())
}
