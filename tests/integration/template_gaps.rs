//! The template gaps issue 22 lists: Packer's short source references (`TYPE.NAME`) in a
//! directory of many builders' sources, function calls where Packer allows none (variable
//! defaults, values from outside), and the ansible fields `max_retries` and
//! `inventory_file_template`.

use crate::support::unique;
use kiln::template::{self, Inputs, Loaded};
use std::path::{Path, PathBuf};

/// A directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(unique("gaps"));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn inputs(cwd: &Path) -> Inputs {
    Inputs {
        env: Default::default(),
        cwd: cwd.to_path_buf(),
        now: time::macros::datetime!(2024-03-05 07:08:09 UTC),
        ..Inputs::default()
    }
}

fn errors(l: &Loaded) -> String {
    l.errors()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

const CHROOT: &str = "source \"amazon-chroot\" \"x\" {\n  source_ami = \"ami-12345678\"\n  ami_name = \"kiln-gaps-x\"\n}\n";

/// Files shaped like AlmaLinux's cloud-images repository: shared variables and locals, one file
/// per target with its own builder type, every build naming its source as `TYPE.NAME`, and one
/// amazon-chroot build (written `sources.TYPE.NAME`, as its stage 2 is).
pub(crate) fn alma_like(dir: &Path) {
    let w = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
    w(
        "variables.pkr.hcl",
        "variable \"os_ver\" {\n  default = \"8.10\"\n}\nvariable \"headless\" {\n  default = true\n}\nlocals {\n  iso_url = \"https://example.invalid/AlmaLinux-${var.os_ver}-x86_64-boot.iso\"\n}\n",
    );
    w(
        "almalinux-8-azure.pkr.hcl",
        "source \"qemu\" \"almalinux-8-azure-x86_64\" {\n  iso_url = local.iso_url\n  iso_checksum = \"none\"\n  headless = var.headless\n  vm_name = \"AlmaLinux-8-Azure-${var.os_ver}.raw\"\n}\nbuild {\n  sources = [\"qemu.almalinux-8-azure-x86_64\"]\n}\n",
    );
    w(
        "almalinux-8-gencloud.pkr.hcl",
        "source \"qemu\" \"almalinux-8-gencloud-x86_64\" {\n  iso_url = local.iso_url\n  iso_checksum = \"none\"\n}\nsource \"virtualbox-iso\" \"almalinux-8\" {\n  iso_url = local.iso_url\n}\nbuild {\n  sources = [\"qemu.almalinux-8-gencloud-x86_64\", \"virtualbox-iso.almalinux-8\"]\n}\n",
    );
    w(
        "almalinux-8-aws-stage2.pkr.hcl",
        "source \"amazon-chroot\" \"almalinux-8-aws-stage2\" {\n  source_ami = \"ami-12345678\"\n  ami_name = \"AlmaLinux OS ${var.os_ver} x86_64\"\n  mount_partition = \"2\"\n}\nbuild {\n  sources = [\"sources.amazon-chroot.almalinux-8-aws-stage2\"]\n}\n",
    );
}

#[test]
fn short_source_references_as_packer_reads_them() {
    // TYPE.NAME, source.TYPE.NAME, sources.TYPE.NAME and (as Packer's sourceRefFromString) any
    // three parts name the source; one part or four do not.
    for (r, ok) in [
        ("amazon-chroot.x", true),
        ("source.amazon-chroot.x", true),
        ("sources.amazon-chroot.x", true),
        ("foo.amazon-chroot.x", true),
        ("amazon-chroot", false),
        ("a.source.amazon-chroot.x", false),
        ("amazon-chroot.", false),
    ] {
        let dir = TempDir::new();
        let p = dir.write(
            "t.pkr.hcl",
            &format!("{CHROOT}build {{\n  sources = [\"{r}\"]\n}}\n"),
        );
        let l = template::load(&p, &inputs(&dir.0));
        assert_eq!(errors(&l).is_empty(), ok, "{r}: {}", errors(&l));
        if ok {
            assert_eq!(l.plans[0].name, "amazon-chroot.x", "{r}");
        }
    }
    // An override block inside build may use the short form too.
    let dir = TempDir::new();
    let p = dir.write(
        "t.pkr.hcl",
        &format!("{CHROOT}build {{\n  source \"amazon-chroot.x\" {{\n    name = \"y\"\n  }}\n}}\n"),
    );
    let l = template::load(&p, &inputs(&dir.0));
    assert!(errors(&l).is_empty(), "{}", errors(&l));
    assert_eq!(l.plans[0].name, "amazon-chroot.y");
}

#[test]
fn a_directory_of_many_builders_validates_with_only_picking_its_chroot_build() {
    let dir = TempDir::new();
    alma_like(&dir.0);
    let mut i = inputs(&dir.0);
    i.only = vec!["amazon-chroot.almalinux-8-aws-stage2".into()];
    let l = template::load(&dir.0, &i);
    assert!(errors(&l).is_empty(), "{}", errors(&l));
    assert_eq!(l.plans.len(), 1);
    assert_eq!(l.plans[0].config.ami_name, "AlmaLinux OS 8.10 x86_64");
    // Without -only, the qemu and virtualbox builds are named with the --only that avoids them.
    let l = template::load(&dir.0, &inputs(&dir.0));
    let e = errors(&l);
    assert!(
        e.contains("qemu.almalinux-8-azure-x86_64")
            && e.contains("--only=amazon-chroot.almalinux-8-aws-stage2"),
        "{e}"
    );
}

fn with_variable(decl: &str) -> String {
    format!("{decl}\n{CHROOT}build {{\n  sources = [\"source.amazon-chroot.x\"]\n}}\n")
}

#[test]
fn a_default_may_call_only_env() {
    let dir = TempDir::new();
    for (default, fname) in [
        ("upper(\"x\")", "upper"),
        ("\"a-${lower(\"B\")}\"", "lower"),
        ("[for s in [\"a\"] : upper(s)]", "upper"),
        ("env(upper(\"home\"))", "upper"),
        ("try(\"x\", \"y\")", "try"),
    ] {
        let p = dir.write(
            "t.pkr.hcl",
            &with_variable(&format!("variable \"v\" {{\n  default = {default}\n}}")),
        );
        let l = template::load(&p, &inputs(&dir.0));
        let e = errors(&l);
        assert!(
            e.contains("Call to unknown function")
                && e.contains(&format!("There is no function named \"{fname}\"")),
            "{default}: {e}"
        );
    }
    // env() is the one function a default may call (Packer's exception), and it still works.
    let p = dir.write(
        "t.pkr.hcl",
        &with_variable(
            "variable \"v\" {\n  default = \"k-${env(\"KILN_GAPS\")}\"\n}\nlocals {\n  u = upper(var.v)\n}",
        ),
    );
    let mut i = inputs(&dir.0);
    i.env.insert("KILN_GAPS".into(), "set".into());
    let l = template::load(&p, &i);
    assert!(errors(&l).is_empty(), "{}", errors(&l));
    assert_eq!(l.plans[0].variables["v"], "k-set");
}

#[test]
fn values_from_outside_are_evaluated_without_functions() {
    let dir = TempDir::new();
    let p = dir.write(
        "t.pkr.hcl",
        &with_variable(
            "variable \"l\" {\n  type = list(string)\n  default = [\"a\"]\n}\nvariable \"s\" {\n  default = \"a\"\n}",
        ),
    );
    let not_allowed = |l: &Loaded, what: &str| {
        let e = errors(l);
        assert!(
            e.contains("Function calls not allowed")
                && e.contains("Functions may not be called here"),
            "{what}: {e}"
        );
    };
    // --var (and a request's variables) of a non-string type.
    let mut i = inputs(&dir.0);
    i.vars = vec![("l".into(), "[upper(\"x\")]".into())];
    not_allowed(&template::load(&p, &i), "--var");
    // PKR_VAR_*.
    let mut i = inputs(&dir.0);
    i.env.insert("PKR_VAR_l".into(), "[lower(\"X\")]".into());
    not_allowed(&template::load(&p, &i), "PKR_VAR_l");
    // A var file.
    let vf = dir.write("v.pkrvars.hcl", "s = upper(\"x\")\n");
    let mut i = inputs(&dir.0);
    i.var_files = vec![vf];
    not_allowed(&template::load(&p, &i), "var file");
    // Values themselves still work, and a string variable's value is taken as text.
    let vf = dir.write("v.pkrvars.hcl", "s = \"b\"\nl = [\"c\", \"d\"]\n");
    let mut i = inputs(&dir.0);
    i.var_files = vec![vf];
    i.vars = vec![("s".into(), "upper(\"x\")".into())];
    let l = template::load(&p, &i);
    assert!(errors(&l).is_empty(), "{}", errors(&l));
    assert_eq!(l.plans[0].variables["s"], "upper(\"x\")");
    assert_eq!(l.plans[0].variables["l"], "[\"c\",\"d\"]");
}

#[test]
fn aws_secretsmanager_becomes_a_data_request_and_reads_its_fetched_value() {
    use kiln::template::data::{DataQuery, DataValues};
    let dir = TempDir::new();
    let p = dir.write(
        "t.pkr.hcl",
        "locals {\n  password = aws_secretsmanager(\"app/db\", \"password\")\n}\nsource \"amazon-chroot\" \"x\" {\n  source_ami = \"ami-12345678\"\n  ami_name = \"kiln-gaps-x\"\n  ami_description = \"pw ${local.password}\"\n}\nbuild {\n  sources = [\"amazon-chroot.x\"]\n}\n",
    );
    // Offline (kiln validate): a placeholder, and the call is a request to fetch.
    let l = template::load(&p, &inputs(&dir.0));
    assert!(errors(&l).is_empty(), "{}", errors(&l));
    assert_eq!(l.data_requests.len(), 1);
    let r = &l.data_requests[0];
    assert_eq!(r.kind, "amazon-secretsmanager");
    assert!(matches!(
        &r.query,
        DataQuery::Secret { name, key: Some(k), version_id: None, version_stage }
            if name == "app/db" && k == "password" && version_stage == "AWSCURRENT"
    ));
    // With the fetched values (the second load crate::data_sources::complete makes).
    let mut d = DataValues::default();
    d.outputs.insert(
        r.address(),
        [("value".to_owned(), "hunter2-long".to_owned())]
            .into_iter()
            .collect(),
    );
    d.secrets.push("hunter2-long".into());
    let mut i = inputs(&dir.0);
    i.data = Some(d);
    let l = template::load(&p, &i);
    assert!(errors(&l).is_empty(), "{}", errors(&l));
    assert_eq!(
        l.plans[0].config.ami_description.as_deref(),
        Some("pw hunter2-long")
    );
    assert_eq!(l.masker.mask("pw hunter2-long"), "pw <sensitive>");
}
