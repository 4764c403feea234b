//! Step `provision`: the template's provisioners in order. `shell` and `file` work inside the
//! build's sandbox (commands run as `LAUNCHER /bin/sh FILE` children, the command staged in a 0600 file through `command_wrapper`,
//! see `crate::host::sandbox`); `shell-local` runs on the host with the build's device and mount path.
//! Output is streamed under the provisioner's name; a failure names the provisioner, the exit
//! code and the last lines of output.

use crate::host::HostError;
use crate::host::command::{ShellCommand, shell_quote};
use crate::host::image_fs::ImageFs;
use crate::pipeline::{Build, StepError};
use crate::template::provisioner::{File, Kind, Provisioner, Shell, parse_duration};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Mode of a staged script (only root runs it).
const SCRIPT_MODE: u32 = 0o700;
/// Mode of a file written from `content` (Packer's file provisioner writes 0644).
const FILE_MODE: u32 = 0o644;

fn vars_string(b: &Build, s: &Shell) -> (String, Vec<(String, String)>) {
    let mut pairs = vec![
        ("PACKER_BUILD_NAME".to_owned(), b.plan.name.clone()),
        ("PACKER_BUILDER_TYPE".to_owned(), "amazon-chroot".to_owned()),
    ];
    for kv in &s.environment_vars {
        if let Some((k, v)) = kv.split_once('=') {
            pairs.push((k.to_owned(), v.to_owned()));
        }
    }
    pairs.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let text = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", shell_quote(v)))
        .collect::<Vec<_>>()
        .join(" ");
    (text, pairs)
}

/// The scripts a shell provisioner runs: inline commands become one script with the shebang.
fn scripts_of(s: &Shell) -> Result<Vec<(String, Vec<u8>)>, HostError> {
    let mut out = Vec::new();
    if !s.inline.is_empty() {
        let mut text = format!("#!{}\n", s.inline_shebang);
        for l in &s.inline {
            text.push_str(l);
            text.push('\n');
        }
        out.push(("inline".to_owned(), text.into_bytes()));
    }
    for p in &s.scripts {
        out.push((
            p.display().to_string(),
            std::fs::read(p).map_err(HostError::io("reading the script", p))?,
        ));
    }
    Ok(out)
}

async fn run_shell(b: &Build, label: &str, s: &Shell, local: bool) -> Result<(), StepError> {
    let mp = b.mount_path()?;
    let (vars, env) = vars_string(b, s);
    let codes: Vec<i32> = s.valid_exit_codes.iter().map(|c| *c as i32).collect();
    if local {
        let mut env = env;
        env.push((
            "KILN_DEVICE".into(),
            b.state
                .device_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ));
        env.push(("KILN_MOUNT_PATH".into(), mp.display().to_string()));
        let mut texts: Vec<String> = Vec::new();
        if let Some(cmd) = &s.command {
            texts.push(b.render(label, cmd, &b.device_values())?);
        }
        for l in &s.inline {
            texts.push(b.render(label, l, &b.device_values())?);
        }
        for p in &s.scripts {
            texts.push(format!("/bin/sh {}", shell_quote(&p.display().to_string())));
        }
        for t in texts {
            b.run_command(ShellCommand {
                name: label.to_owned(),
                display: t.clone(),
                script: t,
                env: env.clone(),
                valid_exit_codes: codes.clone(),
            })
            .await?;
        }
        return Ok(());
    }
    let image = ImageFs::open(&mp)?;
    for (what, body) in scripts_of(s)? {
        let name = format!("kiln-script-{}.sh", uuid::Uuid::new_v4().simple());
        let inner_path = format!("/tmp/{name}");
        // Staged inside the image: a /tmp that is a link resolves as the chroot sees it.
        image
            .write(&inner_path, &body, SCRIPT_MODE)
            .map_err(|e| super::invalid(format!("{label}: staging the script: {e}")))?;
        let inner = b.render(
            &format!("{label} execute_command"),
            &s.execute_command,
            &[
                ("Vars", vars.clone()),
                ("Path", inner_path.clone()),
                ("Command", inner_path.clone()),
            ],
        )?;
        let result = in_chroot(b, label, &inner, &format!("{inner}  ({what})"), &codes).await;
        if let Err(e) = image.remove(&inner_path) {
            tracing::warn!(error = %e, "the staged script stays in the image");
        }
        result?;
    }
    Ok(())
}

/// Mode of a staged command file: it may carry the template's environment values (secrets), so
/// only root reads it.
const COMMAND_MODE: u32 = 0o600;

/// Runs `inner` with `/bin/sh` inside the build's sandbox (its launcher, through
/// `command_wrapper`, a child in its own process group), its output under `label`; `display` is
/// what logs show (masked). Succeeds on an exit code in `codes`.
///
/// `inner` (an `execute_command` with `{{.Vars}}` expanded, so it may hold environment values)
/// never appears on a command line, where every process on the host could read it in
/// `/proc/*/cmdline`: it is staged in the image's `/tmp` as a 0600 file that `/bin/sh` reads, and
/// removed afterwards. Side effects: that file exists while the command runs.
pub(super) async fn in_chroot(
    b: &Build,
    label: &str,
    inner: &str,
    display: &str,
    codes: &[i32],
) -> Result<(), StepError> {
    let sandbox =
        b.state.sandbox.as_ref().ok_or_else(|| {
            super::invalid(format!("{label}: the build has no sandbox to run in"))
        })?;
    let image = ImageFs::open(&b.mount_path()?)?;
    let staged = format!("/tmp/kiln-command-{}.sh", uuid::Uuid::new_v4().simple());
    image
        .write(&staged, format!("{inner}\n").as_bytes(), COMMAND_MODE)
        .map_err(|e| super::invalid(format!("{label}: staging the command: {e}")))?;
    let chroot_cmd = sandbox.shell_file(&staged);
    let result = async {
        let wrapped = b.render(
            "command_wrapper",
            &b.plan.config.command_wrapper,
            &[("Command", chroot_cmd)],
        )?;
        b.run_command(ShellCommand {
            name: label.to_owned(),
            display: display.to_owned(),
            script: wrapped,
            env: Vec::new(),
            valid_exit_codes: codes.to_vec(),
        })
        .await
    }
    .await;
    if let Err(e) = image.remove(&staged) {
        tracing::warn!(error = %e, file = %staged, "the staged command stays in the image");
    }
    result
}

/// Where an upload of `src` goes inside the image, as Packer's file provisioner places it: a
/// source ending in `/` puts the directory's contents at `dest`; a destination ending in `/` gets
/// the source's name appended.
fn target_for(src: &str, dest: &str) -> String {
    let name = Path::new(src.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !src.ends_with('/') && dest.ends_with('/') {
        format!("{dest}{name}")
    } else {
        dest.to_owned()
    }
}

/// The `file` provisioner: every image path resolved within the mount ([`ImageFs`]), so a link
/// in the image never leads kiln to a host file.
fn run_file(b: &Build, label: &str, f: &File) -> Result<(), StepError> {
    let mp = b.mount_path()?;
    let image = ImageFs::open(&mp)?;
    if f.direction == "download" {
        for src in &f.sources {
            let to = if f.destination.ends_with('/') {
                PathBuf::from(&f.destination).join(Path::new(src).file_name().unwrap_or_default())
            } else {
                PathBuf::from(&f.destination)
            };
            image.download(src, &to)?;
            (b.sink)(label, &format!("downloaded {src} -> {}", to.display()));
        }
        return Ok(());
    }
    if let Some(content) = &f.content {
        image.write(&f.destination, content.as_bytes(), FILE_MODE)?;
        (b.sink)(label, &format!("uploaded content -> {}", f.destination));
        return Ok(());
    }
    for src in &f.sources {
        image.upload(
            Path::new(src.trim_end_matches('/')),
            &target_for(src, &f.destination),
        )?;
        (b.sink)(label, &format!("uploaded {src} -> {}", f.destination));
    }
    Ok(())
}

async fn run_one(b: &Build, label: &str, p: &Provisioner) -> Result<(), StepError> {
    match &p.kind {
        Kind::Shell(s) => run_shell(b, label, s, false).await,
        Kind::ShellLocal(s) => run_shell(b, label, s, true).await,
        Kind::File(f) => run_file(b, label, f),
        Kind::Ansible(a) => super::ansible::run(b, label, a).await,
        Kind::AnsibleLocal(a) => super::ansible::run_local(b, label, a).await,
    }
}

pub async fn run(b: &mut Build) -> Result<serde_json::Value, StepError> {
    let provisioners = b.plan.provisioners.clone();
    for (i, p) in provisioners.iter().enumerate() {
        let label = format!(
            "provisioner {} ({}{})",
            i + 1,
            p.kind_name,
            p.name
                .as_ref()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default()
        );
        if let Some(pause) = p.pause_before.as_deref().and_then(parse_duration) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(pause)) => {}
                _ = b.cancel.cancelled() => return Err(StepError::Cancelled),
            }
        }
        let timeout = p
            .timeout
            .as_deref()
            .and_then(parse_duration)
            .map(Duration::from_secs_f64);
        let mut attempt = 0;
        loop {
            let fut = run_one(b, &label, p);
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(super::invalid(format!(
                        "{label} timed out after {}",
                        p.timeout.clone().unwrap_or_default()
                    ))),
                },
                None => fut.await,
            };
            match result {
                Ok(()) => break,
                Err(StepError::Cancelled) => return Err(StepError::Cancelled),
                Err(e) if attempt < p.max_retries => {
                    attempt += 1;
                    (b.sink)(
                        &label,
                        &format!("failed ({e}); retrying ({attempt}/{})", p.max_retries),
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(serde_json::json!({ "provisioners": provisioners.len() }))
}
