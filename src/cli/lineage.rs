//! `kiln lineage AMI`: the image's parents up to the first image kiln did not build, and every
//! image built on it.

use kiln::aws::{AwsSettings, Clients};
use std::io::Write;
use std::process::ExitCode;

pub(crate) async fn lineage(ami: &str, json: bool) -> anyhow::Result<ExitCode> {
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    let region = clients.region().to_owned();
    let l = kiln::ec2::lineage::lineage(&clients.ec2, &region, ami).await?;
    let text = if json {
        serde_json::to_string_pretty(&l)? + "\n"
    } else {
        l.text()
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(
        if l.image
            .state
            .as_deref()
            .is_some_and(|s| s.starts_with("not found"))
        {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn print_actions(actions: &[kiln::release::Action]) {
    for a in actions {
        let _ = writeln!(std::io::stdout(), "{} {}: {}", a.region, a.ami, a.what);
    }
}

/// `kiln promote AMI --to CHANNEL [--from CHANNEL] [--region R]...`.
pub(crate) async fn promote(
    ami: &str,
    to: &str,
    from: Option<&str>,
    regions: &[String],
) -> anyhow::Result<ExitCode> {
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    print_actions(&kiln::release::promote(&clients, regions, ami, to, from).await?);
    Ok(ExitCode::SUCCESS)
}

/// `kiln revoke AMI --reason WHY [--descendants] [--region R]...`: the descendants come from the
/// image's lineage; without --descendants a terminal is asked, anything else refused.
pub(crate) async fn revoke(
    ami: &str,
    reason: &str,
    descendants: bool,
    regions: &[String],
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let config = kiln::aws::load(&AwsSettings::default()).await?;
    let clients = Clients::new(&config);
    let region = clients.region().to_owned();
    let l = kiln::ec2::lineage::lineage(&clients.ec2, &region, ami).await?;
    let below: Vec<String> = l.descendants.iter().map(|m| m.ami.clone()).collect();
    let mut amis = vec![ami.to_owned()];
    if !below.is_empty() {
        let include = if descendants {
            true
        } else if std::io::stdin().is_terminal() {
            eprint!(
                "{} image(s) were built on {ami}: {}\nRevoke them too? [y/N] ",
                below.len(),
                below.join(", ")
            );
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            matches!(answer.trim(), "y" | "Y" | "yes")
        } else {
            anyhow::bail!(
                "{} image(s) were built on {ami} ({}): pass --descendants to revoke them too (or revoke {ami} from a terminal to be asked)",
                below.len(),
                below.join(", ")
            );
        };
        if include {
            amis.extend(below);
        }
    }
    let mut done = Vec::new();
    let result = kiln::release::revoke(&clients, regions, &amis, reason, &mut done).await;
    print_actions(&done);
    result?;
    Ok(ExitCode::SUCCESS)
}
