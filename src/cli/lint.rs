//! `kiln lint`: the image linter (`kiln::lint`) on a root directory, against the registration
//! fields of a template (`--template`) or of flags, which override the template's. Prints the
//! findings (or the report as JSON) and exits 1 when one is an error. Reads only.

use super::{LintArgs, TemplateArgs};
use anyhow::{Context as _, bail};
use kiln::ec2::instance_types::hypervisor;
use kiln::host::image_fs::ImageFs;
use kiln::lint::{self, Disk, Promises, Severity};
use std::process::ExitCode;

/// The promises: the template's build (when given), then each flag over it.
fn promises(args: &LintArgs) -> anyhow::Result<(Promises, Vec<String>)> {
    let mut skip = Vec::new();
    let mut p = match &args.template {
        None => Promises {
            architecture: kiln::template::config::DEFAULT_ARCHITECTURE.into(),
            boot_mode: None,
            ena_support: false,
            imds_v2: false,
            hypervisor: kiln::ec2::instance_types::Hypervisor::Nitro,
            uefi_data: false,
            other_volumes: false,
        },
        Some(t) => {
            let ta = TemplateArgs {
                vars: args.vars.clone(),
                var_files: args.var_files.clone(),
                only: args.only.clone(),
                except: Vec::new(),
                template: t.clone(),
            };
            let loaded = ta.load()?;
            super::template::print_warnings(&loaded);
            if loaded.has_errors() {
                super::template::print_errors(&loaded);
                bail!("{}: the template has errors", t.display());
            }
            let [plan] = loaded.plans.as_slice() else {
                bail!(
                    "{} has {} builds: name one with --only",
                    t.display(),
                    loaded.plans.len()
                );
            };
            let c = &plan.config;
            skip.extend(c.lint.skip.iter().cloned());
            Promises::from_config(c, None, &c.ami_architecture)
        }
    };
    if let Some(a) = &args.arch {
        if !kiln::template::config::ARCHITECTURES.contains(&a.as_str()) {
            bail!(
                "--arch {a}: one of {}",
                kiln::template::config::ARCHITECTURES.join(", ")
            );
        }
        p.architecture = a.clone();
    }
    if let Some(m) = &args.boot_mode {
        if !kiln::template::config::BOOT_MODES.contains(&m.as_str()) {
            bail!(
                "--boot-mode {m}: one of {}",
                kiln::template::config::BOOT_MODES.join(", ")
            );
        }
        p.boot_mode = Some(m.clone());
    }
    if args.ena {
        p.ena_support = true;
    }
    match args.imds_support.as_deref() {
        None => {}
        Some("v2.0") => p.imds_v2 = true,
        Some(other) => bail!("--imds-support {other}: the only value is v2.0"),
    }
    if let Some(t) = &args.instance_type {
        p.hypervisor = hypervisor(t);
    }
    skip.extend(args.skip.iter().cloned());
    lint::validate_skip(&skip)?;
    Ok((p, skip))
}

pub(crate) fn lint(args: &LintArgs) -> anyhow::Result<ExitCode> {
    let (promises, skip) = promises(args)?;
    if !args.root.is_dir() {
        bail!("{}: not a directory", args.root.display());
    }
    let fs =
        ImageFs::open(&args.root).with_context(|| format!("opening {}", args.root.display()))?;
    let disk = args.device.as_deref().map(Disk::open).transpose()?;
    let report = lint::lint(&fs, disk.as_ref(), &promises, &skip);
    let count = |s: Severity| report.findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["errors"] = errors.into();
        v["warnings"] = warnings.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report.text());
        println!("{errors} error(s), {warnings} warning(s)");
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
