//! `kiln validate` and `kiln inspect`: a template's diagnostics and its resolved builds.

use super::TemplateArgs;
use anyhow::Context as _;
use kiln::template::{self, Loaded};
use std::io::Write;
use std::process::ExitCode;

pub(crate) fn print_warnings(loaded: &Loaded) {
    let mut err = std::io::stderr().lock();
    for w in loaded.warnings() {
        let _ = writeln!(err, "Warning: {}", loaded.masker.mask(&w.to_string()));
    }
}

pub(crate) fn print_errors(loaded: &Loaded) {
    let mut err = std::io::stderr().lock();
    let n = loaded.errors().count();
    let _ = writeln!(err, "Error: {n} error(s) occurred:\n");
    for e in loaded.errors() {
        let _ = writeln!(err, "* {}", loaded.masker.mask(&e.to_string()));
    }
}

pub(crate) fn diagnostics_json(loaded: &Loaded) -> serde_json::Value {
    let list = |it: &mut dyn Iterator<Item = &template::Diagnostic>| -> Vec<serde_json::Value> {
        it.map(|d| {
            let mut v = serde_json::to_value(d).unwrap_or_default();
            if let Some(m) = v.get_mut("message") {
                *m = serde_json::Value::String(loaded.masker.mask(&d.message));
            }
            v
        })
        .collect()
    };
    serde_json::json!({
        "valid": !loaded.has_errors(),
        "errors": list(&mut loaded.errors()),
        "warnings": list(&mut loaded.warnings()),
    })
}

pub(crate) fn validate(args: &TemplateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let loaded = args.load()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&diagnostics_json(&loaded))?
        );
    } else {
        print_warnings(&loaded);
        if loaded.has_errors() {
            print_errors(&loaded);
        } else {
            println!("The configuration is valid.");
        }
    }
    Ok(if loaded.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn inspect(args: &TemplateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let loaded = args.load()?;
    print_warnings(&loaded);
    if loaded.has_errors() {
        print_errors(&loaded);
        return Ok(ExitCode::FAILURE);
    }
    if json {
        let text = serde_json::to_string_pretty(&loaded.plans).context("serializing the plan")?;
        println!("{}", loaded.masker.mask(&text));
    } else {
        for (i, plan) in loaded.plans.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", template::inspect::render(plan, &loaded.masker));
        }
    }
    Ok(ExitCode::SUCCESS)
}
