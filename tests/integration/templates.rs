//! The template language, table by table: each format, every default, every validation message,
//! interpolation, variables and masking; the example templates through the real binary; and a
//! property test that the parsers never panic on arbitrary input.

use crate::support::unique;
use kiln::template::{self, Inputs, Loaded};
use std::path::PathBuf;
use std::process::Command;

/// A directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(unique("tpl"));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&p, text).expect("write template");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn inputs() -> Inputs {
    Inputs {
        env: Default::default(),
        now: time::macros::datetime!(2024-03-05 07:08:09 UTC),
        ..Inputs::default()
    }
}

fn load_file(name: &str, text: &str, inputs: &Inputs) -> Loaded {
    let dir = TempDir::new();
    let p = dir.write(name, text);
    template::load(&p, inputs)
}

/// A JSON template with one chroot builder made of `fields` (a JSON object body without braces).
fn json_builder(fields: &str) -> String {
    format!(r#"{{"builders": [{{"type": "amazon-chroot", {fields}}}]}}"#)
}

fn errors(l: &Loaded) -> Vec<String> {
    l.errors().map(|d| d.to_string()).collect()
}

fn warnings(l: &Loaded) -> Vec<String> {
    l.warnings().map(|d| d.to_string()).collect()
}

const BASE: &str = r#""ami_name": "kiln-test-ami", "source_ami": "ami-12345678""#;

#[test]
fn json_defaults_match_packer() {
    let l = load_file("t.json", &json_builder(BASE), &inputs());
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    let c = &l.plans[0].config;
    assert_eq!(l.plans[0].name, "amazon-chroot");
    assert_eq!(
        c.chroot_mounts,
        vec![
            ["proc", "proc", "/proc"].map(String::from),
            ["sysfs", "sysfs", "/sys"].map(String::from),
            ["bind", "/dev", "/dev"].map(String::from),
            ["devpts", "devpts", "/dev/pts"].map(String::from),
            ["binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"].map(String::from),
        ]
    );
    assert_eq!(c.copy_files, vec!["/etc/resolv.conf"]);
    assert_eq!(c.command_wrapper, "{{.Command}}");
    assert_eq!(
        c.mount_path,
        "/mnt/packer-amazon-chroot-volumes/{{.Device}}"
    );
    assert_eq!(c.mount_partition, "1");
    assert_eq!(c.ami_architecture, "x86_64");
    assert!(!c.from_scratch && !c.force_deregister && !c.sriov_support);
    for field in [
        "chroot_mounts",
        "copy_files",
        "command_wrapper",
        "mount_path",
        "mount_partition",
        "ami_architecture",
    ] {
        assert!(c.defaulted.contains(field), "{field} is shown as a default");
    }

    // An explicit empty copy_files copies nothing; from_scratch has no default copy.
    let l = load_file(
        "t.json",
        &json_builder(&format!(r#"{BASE}, "copy_files": []"#)),
        &inputs(),
    );
    assert!(l.plans[0].config.copy_files.is_empty());
    let scratch = r#""ami_name": "scratch-ami", "from_scratch": true, "root_volume_size": 1, "pre_mount_commands": ["x"], "ami_virtualization_type": "hvm", "root_device_name": "/dev/xvda", "ami_block_device_mappings": [{"device_name": "/dev/xvda"}]"#;
    let l = load_file("t.json", &json_builder(scratch), &inputs());
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    assert!(l.plans[0].config.copy_files.is_empty());
}

#[test]
fn validation_messages() {
    // (builder fields, expected message, expected field)
    let cases: &[(&str, &str, &str)] = &[
        (
            r#""source_ami": "ami-1""#,
            "ami_name must be specified",
            "ami_name",
        ),
        (
            r#""source_ami": "ami-1", "ami_name": "ab""#,
            "ami_name must be between 3 and 128 characters long",
            "ami_name",
        ),
        (
            r#""source_ami": "ami-1", "ami_name": "bad:name""#,
            "AMIName should only contain alphanumeric characters",
            "ami_name",
        ),
        (
            r#""ami_name": "good-name""#,
            "source_ami or source_ami_filter is required.",
            "source_ami",
        ),
        (
            &format!(r#"{BASE}, "ami_architecture": "sparc""#),
            r#"The only valid ami_architecture values are "arm64", "arm64_mac", "i386", "x86_64", or "x86_64_mac""#,
            "ami_architecture",
        ),
        (
            &format!(r#"{BASE}, "boot_mode": "bios""#),
            "The only valid boot_mode values are",
            "boot_mode",
        ),
        (
            &format!(r#"{BASE}, "imds_support": "v1""#),
            r#"The only valid imds_support values are "v2.0""#,
            "imds_support",
        ),
        (
            &format!(r#"{BASE}, "tpm_support": "v1.2""#),
            r#"The only valid tpm_support values are "v2.0""#,
            "tpm_support",
        ),
        (
            &format!(r#"{BASE}, "chroot_mounts": [["proc", "/proc"]]"#),
            "Each chroot_mounts entry should be three elements.",
            "chroot_mounts[0]",
        ),
        (
            &format!(r#"{BASE}, "kms_key_id": "alias/x""#),
            "If you have set either kms_key_id or region_kms_key_ids, encrypt_boot must also be true.",
            "kms_key_id",
        ),
        (
            &format!(
                r#"{BASE}, "encrypt_boot": true, "ami_regions": ["us-west-2"], "region_kms_key_ids": {{"eu-west-1": "k"}}"#
            ),
            "Region us-west-2 is in ami_regions but not in region_kms_key_ids",
            "region_kms_key_ids",
        ),
        (
            &format!(r#"{BASE}, "root_volume_kms_key_id": "k""#),
            "If you have set root_volume_kms_key_id, root_volume_encrypt_boot must also be true.",
            "root_volume_kms_key_id",
        ),
        (
            &format!(r#"{BASE}, "root_device_name": "/dev/xvda", "root_volume_size": 8"#),
            "If root_device_name is specified, ami_block_device_mappings must be specified",
            "ami_block_device_mappings",
        ),
        (
            &format!(
                r#"{BASE}, "ami_block_device_mappings": [{{"device_name": "/dev/xvda"}}], "root_volume_size": 8"#
            ),
            "If ami_block_device_mappings is specified, root_device_name must be specified",
            "root_device_name",
        ),
        (
            &format!(
                r#"{BASE}, "ami_block_device_mappings": [{{"device_name": "/dev/xvda"}}], "root_device_name": "/dev/xvda""#
            ),
            "root_volume_size is required if ami_block_device_mappings is specified",
            "root_volume_size",
        ),
        (
            r#""ami_name": "scratch", "from_scratch": true"#,
            "root_volume_size is required with from_scratch.",
            "root_volume_size",
        ),
        (
            r#""ami_name": "scratch", "from_scratch": true"#,
            "pre_mount_commands is required with from_scratch.",
            "pre_mount_commands",
        ),
        (
            r#""ami_name": "scratch", "from_scratch": true"#,
            "ami_virtualization_type is required with from_scratch.",
            "ami_virtualization_type",
        ),
        (
            r#""ami_name": "scratch", "from_scratch": true"#,
            "root_device_name is required with from_scratch.",
            "root_device_name",
        ),
        (
            r#""ami_name": "scratch", "from_scratch": true"#,
            "ami_block_device_mappings is required with from_scratch.",
            "ami_block_device_mappings",
        ),
        (
            &format!(r#"{BASE}, "deprecate_at": "next week""#),
            "deprecate_at must be an RFC 3339 timestamp",
            "deprecate_at",
        ),
        (
            &format!(r#"{BASE}, "root_volume_type": "gp9""#),
            "unknown volume type \"gp9\"",
            "root_volume_type",
        ),
        (
            &format!(r#"{BASE}, "mount_partition": "one""#),
            "mount_partition must be a partition number",
            "mount_partition",
        ),
        (
            &format!(r#"{BASE}, "root_volume_size": "big""#),
            "expected a whole number, got \"big\"",
            "root_volume_size",
        ),
        (
            &format!(r#"{BASE}, "ena_support": "maybe""#),
            "expected a boolean",
            "ena_support",
        ),
        (
            r#""ami_name": "x-ami", "source_ami_filter": {"filters": {"name": "ubuntu/*"}}"#,
            "For security reasons, your source AMI filter must declare an owner.",
            "source_ami_filter.owners",
        ),
        // Block device mappings: what Packer forgets to check for chroot.
        (
            &format!(
                r#"{BASE}, "root_device_name": "/dev/xvda", "root_volume_size": 8, "ami_block_device_mappings": [{{"volume_type": "gp3"}}]"#
            ),
            "The `device_name` must be specified for every device in the block device mapping.",
            "ami_block_device_mappings[0].device_name",
        ),
        (
            &format!(
                r#"{BASE}, "root_device_name": "/dev/xvda", "root_volume_size": 8, "ami_block_device_mappings": [{{"device_name": "/dev/xvda", "volume_type": "gp3", "iops": 20000}}]"#
            ),
            "iops 20000 is out of range for gp3: use 3000 to 16000",
            "ami_block_device_mappings[0].iops",
        ),
        (
            &format!(
                r#"{BASE}, "root_device_name": "/dev/xvda", "root_volume_size": 8, "ami_block_device_mappings": [{{"device_name": "/dev/xvda", "volume_type": "gp3", "throughput": 50}}]"#
            ),
            "throughput 50 is out of range for gp3: use 125 to 1000",
            "ami_block_device_mappings[0].throughput",
        ),
        (
            &format!(
                r#"{BASE}, "root_device_name": "/dev/xvda", "root_volume_size": 8, "ami_block_device_mappings": [{{"device_name": "/dev/xvda", "volume_type": "io1"}}]"#
            ),
            "iops is required for volume_type io1",
            "ami_block_device_mappings[0].iops",
        ),
        (
            &format!(
                r#"{BASE}, "root_device_name": "/dev/xvda", "root_volume_size": 8, "ami_block_device_mappings": [{{"device_name": "/dev/xvda", "volume_type": "io2", "iops": 50}}]"#
            ),
            "iops 50 is out of range for io2: use 100 to 256000",
            "ami_block_device_mappings[0].iops",
        ),
        (
            &format!(
                r#"{BASE}, "root_device_name": "/dev/xvda", "root_volume_size": 8, "ami_block_device_mappings": [{{"device_name": "/dev/xvda", "volume_type": "gp2", "throughput": 200}}]"#
            ),
            "throughput applies only to gp3 volumes",
            "ami_block_device_mappings[0].throughput",
        ),
        (
            &format!(
                r#"{BASE}, "root_device_name": "/dev/xvda", "root_volume_size": 8, "ami_block_device_mappings": [{{"device_name": "/dev/xvda", "kms_key_id": "k"}}]"#
            ),
            "must also have `encrypted: true` when setting a kms_key_id",
            "ami_block_device_mappings[0].kms_key_id",
        ),
        (
            &format!(
                r#"{BASE}, "root_device_name": "/dev/sda1", "root_volume_size": 8, "ami_block_device_mappings": [{{"device_name": "/dev/xvda"}}]"#
            ),
            "root_device_name /dev/sda1 has no entry in ami_block_device_mappings",
            "root_device_name",
        ),
        // Unknown fields.
        (
            &format!(r#"{BASE}, "ami_nmae": "x""#),
            "unknown field `ami_nmae`: did you mean `ami_name`?",
            "ami_nmae",
        ),
        (
            &format!(r#"{BASE}, "instance_type": "t3.micro""#),
            "unknown field `instance_type`: amazon-chroot builds on the builder instance itself",
            "instance_type",
        ),
        (
            &format!(r#"{BASE}, "ssh_username": "ubuntu""#),
            "amazon-chroot has no communicator",
            "ssh_username",
        ),
        (
            &format!(r#"{BASE}, "mount_path": "/mnt/{{{{.Nope}}}}""#),
            "`{{.Nope}}` is not available in this field; available: {{.Device}}, {{.MountPath}}",
            "mount_path",
        ),
        (
            &format!(r#"{BASE}, "ami_description": "{{{{ nosuch }}}}""#),
            "function \"nosuch\" not defined",
            "ami_description",
        ),
    ];
    for (fields, message, field) in cases {
        let l = load_file("t.json", &json_builder(fields), &inputs());
        let hit = l.errors().find(|d| d.message.contains(message));
        let Some(d) = hit else {
            panic!("{fields}: expected `{message}`, got {:?}", errors(&l));
        };
        assert_eq!(d.field, format!("builders[0].{field}"), "{fields}");
        assert!(d.line >= 1, "{fields}: the error names a line");
        assert!(d.file.ends_with("t.json"));
    }
}

#[test]
fn every_error_is_reported_in_one_run() {
    let l = load_file(
        "t.json",
        &json_builder(r#""ami_name": "x", "boot_mode": "bios", "ami_nmae": "y""#),
        &inputs(),
    );
    assert!(errors(&l).len() >= 4, "{:?}", errors(&l));
}

#[test]
fn weak_typing_as_packers_decoder() {
    let fields = format!(
        r#"{BASE}, "root_volume_size": "30", "ena_support": "true", "sriov_support": "1", "ami_users": "111,222", "mount_partition": 2, "ami_regions": "us-west-2, eu-west-1", "force_deregister": "false""#
    );
    let l = load_file("t.json", &json_builder(&fields), &inputs());
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    let c = &l.plans[0].config;
    assert_eq!(c.root_volume_size, Some(30));
    assert_eq!(c.ena_support, Some(true));
    assert!(c.sriov_support);
    assert_eq!(c.ami_users, vec!["111", "222"]);
    assert_eq!(c.mount_partition, "2");
    assert_eq!(c.ami_regions, vec!["us-west-2", "eu-west-1"]);
    assert!(!c.force_deregister);

    // A {{user}} string where a number or list is expected.
    let t = r#"{"variables": {"size": "12", "users": "111,222"},
        "builders": [{"type": "amazon-chroot", "ami_name": "abc", "source_ami": "ami-1",
                      "root_volume_size": "{{user `size`}}", "ami_users": "{{user `users`}}"}]}"#;
    let l = load_file("t.json", t, &inputs());
    assert_eq!(l.plans[0].config.root_volume_size, Some(12));
    assert_eq!(l.plans[0].config.ami_users, vec!["111", "222"]);
}

#[test]
fn json_quirks_real_templates_use() {
    let t = r#"{
  "_comment": "top-level comment",
  "description": "a template",
  "min_packer_version": "1.5.0",
  "variables": {"fs": "ext4", "region": null, "name": "My App: v1", "home": "{{env `KILN_TEST_HOME`}}"},
  "builders": [{
    "_comment": "inside a builder",
    "type": "amazon-chroot",
    "ami_name": "{{ user `name` | clean_resource_name }}-{{timestamp | clean_resource_name}}",
    "ami_description": "{{clean_ami_name `a:b`}} from {{user `undeclared`}}",
    "source_ami": "ami-1",
    "region": "{{user `region`}}",
    "pre_mount_commands": ["mkfs.{{user `fs`}} -L root {{.Device}}1", "rpm --root={{.MountPath}} -q x"],
    "tags": {"Built": "{{isotime \"2006-01-02\"}}", "Source": "{{.SourceAMI}}", "Home": "{{user `home`}}"}
  }]
}"#;
    let mut i = inputs();
    i.vars.push(("region".into(), "eu-west-1".into()));
    i.env.insert("KILN_TEST_HOME".into(), "/home/kiln".into());
    // `env` reads the process environment, as Packer does; this key is set for this test only.
    let dir = TempDir::new();
    let p = dir.write("t.json", t);
    let l = template::load(&p, &i);
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    let c = &l.plans[0].config;
    assert_eq!(c.ami_name, "My App- v1-1709622489", "pipes");
    assert_eq!(c.region.as_deref(), Some("eu-west-1"));
    assert_eq!(
        c.pre_mount_commands[0], "mkfs.ext4 -L root {{.Device}}1",
        "two-phase interpolation"
    );
    assert_eq!(c.pre_mount_commands[1], "rpm --root={{.MountPath}} -q x");
    assert_eq!(c.tags["Built"], "2024-03-05");
    assert_eq!(c.tags["Source"], "{{.SourceAMI}}");
    assert_eq!(c.ami_description.as_deref(), Some("a-b from "));
    let w = warnings(&l).join("\n");
    assert!(w.contains("`clean_ami_name` is deprecated"), "{w}");
    assert!(
        w.contains("variable `undeclared` is used but not declared"),
        "{w}"
    );

    // `env` outside variables is an error, as in Packer.
    let l = load_file(
        "t.json",
        &json_builder(&format!(
            r#"{BASE}, "ami_description": "{{{{env `HOME`}}}}""#
        )),
        &inputs(),
    );
    assert!(
        errors(&l)
            .join("\n")
            .contains("`env` can only be used in the `variables` section"),
        "{:?}",
        errors(&l)
    );
    // A required (null) variable that is not set.
    let l = load_file(
        "t.json",
        r#"{"variables": {"src": null}, "builders": [{"type": "amazon-chroot", "ami_name": "abc", "source_ami": "{{user `src`}}"}]}"#,
        &inputs(),
    );
    assert!(
        errors(&l)
            .join("\n")
            .contains("required variable not set: src"),
        "{:?}",
        errors(&l)
    );
}

#[test]
fn json_structure_errors_name_what_and_where() {
    let cases: &[(&str, &str)] = &[
        (
            "{\n  \"builders\": [\n    {\"type\": \"amazon-chroot\",}\n  ]\n}",
            "t.json:3: invalid JSON at column",
        ),
        (
            r#"{"builders": [{"type": "amazon-ebs", "ami_name": "x"}]}"#,
            "build `amazon-ebs` uses builder type `amazon-ebs`, which kiln does not run (kiln runs `amazon-chroot` builds only): the template has no amazon-chroot build",
        ),
        (
            r#"{"builderz": []}"#,
            "unknown top-level key `builderz`: did you mean `builders`?",
        ),
        (r#"{"variables": {}}"#, "the template has no `builders`"),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "ansible", "playbook_file": "x.yml"}}]}}"#
            ),
            "provisioners[0].playbook_file: playbook_file: x.yml is invalid: stat x.yml: no such file or directory",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "ansible-local"}}]}}"#
            ),
            "provisioners[0].playbook_file: Either playbook_file or playbook_files must be specified",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "powershell"}}]}}"#
            ),
            "unknown provisioner type `powershell`",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "post-processors": ["compress"]}}"#
            ),
            "post-processor `compress` is not supported",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "shell"}}]}}"#
            ),
            "Either a script file or inline script must be specified.",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "shell", "inline": ["a"], "script": "x.sh"}}]}}"#
            ),
            "Only one of inline, script, or scripts can be specified.",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "shell", "script": "missing.sh"}}]}}"#
            ),
            "Bad script 'missing.sh'",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "shell", "inline": ["a"], "environment_vars": ["NOVALUE"]}}]}}"#
            ),
            "Environment variable not in format 'key=value': NOVALUE",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "file", "source": "x"}}]}}"#
            ),
            "Destination must be specified.",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "file", "destination": "/x"}}]}}"#
            ),
            "Source must be specified.",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "file", "content": "x", "destination": "/x", "direction": "sideways"}}]}}"#
            ),
            "Direction must be one of: download, upload.",
        ),
        (
            &format!(
                r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}], "provisioners": [{{"type": "shell", "inline": ["a"], "pause_before": "10"}}]}}"#
            ),
            "invalid duration \"10\"",
        ),
    ];
    for (text, want) in cases {
        let l = load_file("t.json", text, &inputs());
        let all = errors(&l).join("\n");
        assert!(all.contains(want), "{text}\nexpected `{want}` in:\n{all}");
    }
}

#[test]
fn provisioners_only_except_override_and_post_processors() {
    let dir = TempDir::new();
    dir.write("s.sh", "echo hi\n");
    let t = format!(
        r#"{{"builders": [{{"type": "amazon-chroot", "name": "a", {BASE}}}, {{"type": "amazon-chroot", "name": "b", {BASE}}}],
          "provisioners": [
            {{"type": "shell", "inline": ["for all"]}},
            {{"type": "shell", "inline": ["only a"], "only": ["a"]}},
            {{"type": "shell", "inline": ["not a"], "except": ["a"]}},
            {{"type": "shell", "script": "s.sh", "override": {{"b": {{"execute_command": "sudo {{{{.Path}}}}"}}}}}},
            {{"type": "file", "content": "x", "destination": "/etc/x"}}
          ],
          "post-processors": [[{{"type": "manifest", "output": "m.json"}}]]}}"#
    );
    let p = dir.write("t.json", &t);
    // Run from the template's folder (relative paths resolve against the working directory).
    let l = template::load(
        &p,
        &Inputs {
            cwd: dir.0.clone(),
            ..inputs()
        },
    );
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    let inline = |plan: &template::Plan| -> Vec<String> {
        plan.provisioners
            .iter()
            .filter_map(|p| match &p.kind {
                template::provisioner::Kind::Shell(s) => s.inline.first().cloned(),
                _ => None,
            })
            .collect()
    };
    assert_eq!(inline(&l.plans[0]), vec!["for all", "only a"]);
    assert_eq!(inline(&l.plans[1]), vec!["for all", "not a"]);
    let exec = |plan: &template::Plan| match &plan
        .provisioners
        .iter()
        .find(|p| matches!(&p.kind, template::provisioner::Kind::Shell(s) if !s.scripts.is_empty()))
        .expect("script provisioner")
        .kind
    {
        template::provisioner::Kind::Shell(s) => s.execute_command.clone(),
        _ => unreachable!(),
    };
    assert_eq!(
        exec(&l.plans[0]),
        "chmod +x {{.Path}}; {{.Vars}} {{.Path}}",
        "Packer's default"
    );
    assert_eq!(exec(&l.plans[1]), "sudo {{.Path}}", "override for b");
    assert_eq!(l.plans[0].post_processors[0].output, "m.json");

    // --only picks one build; a name that matches nothing says what exists.
    let mut i = inputs();
    i.only = vec!["b".into()];
    let l = template::load(&p, &i);
    assert_eq!(
        l.plans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    i.only = vec!["c".into()];
    let l = template::load(&p, &i);
    assert!(
        errors(&l)
            .join("\n")
            .contains("no build is selected by --only c: the template has a, b")
    );
}

/// `-only`/`-except` select builds before anything is validated, with Packer's names and globs:
/// builds of other builder types are then not errors; a selected one names the `--only` that
/// picks the chroot builds. (Compared with `packer validate` 1.6.6 on the same templates.)
#[test]
fn only_and_except_select_builds_before_validation() {
    let json = r#"{
  "builders": [
    {"type": "amazon-ebs", "name": "ebs", "source_ami": "ami-1", "instance_type": "t3.micro", "ami_name": "a"},
    {"type": "amazon-chroot", "source_ami": "ami-12345678", "ami_name": "chroot-{{timestamp}}"},
    {"type": "amazon-chroot", "name": "broken", "source_ami": "ami-12345678", "ami_name": "x"}
  ]
}"#;
    let names = |l: &Loaded| l.plans.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let mut i = inputs();
    let l = load_file("multi.json", json, &i);
    let e = errors(&l).join("\n");
    assert!(
        e.contains("build `ebs` uses builder type `amazon-ebs`, which kiln does not run")
            && e.contains("select its amazon-chroot builds with --only=amazon-chroot,broken"),
        "{e}"
    );
    for (only, except, want) in [
        (vec!["amazon-chroot"], vec![], vec!["amazon-chroot"]),
        (vec!["amazon-*"], vec![], vec!["amazon-chroot"]),
        (vec![], vec!["ebs", "broken"], vec!["amazon-chroot"]),
    ] {
        i.only = only.iter().map(|s| s.to_string()).collect();
        i.except = except.iter().map(|s| s.to_string()).collect();
        let l = load_file("multi.json", json, &i);
        assert!(
            errors(&l).is_empty(),
            "{only:?} {except:?}: {:?}",
            errors(&l)
        );
        assert_eq!(names(&l), want, "{only:?} {except:?}");
    }
    // The unselected broken build is not validated; selected, it is.
    i.only = vec!["broken".into()];
    i.except = vec![];
    let l = load_file("multi.json", json, &i);
    assert!(
        errors(&l)
            .join("\n")
            .contains("ami_name must be between 3 and 128")
    );

    let hcl = r#"
source "amazon-ebs" "web" {
  ami_name = "x"
}
source "amazon-chroot" "web" {
  source_ami = "ami-12345678"
  ami_name   = "chroot-web"
}
build {
  name    = "app"
  sources = ["source.amazon-ebs.web", "source.amazon-chroot.web"]
}
"#;
    let mut i = inputs();
    let e = errors(&load_file("m.pkr.hcl", hcl, &i)).join("\n");
    assert!(
        e.contains("build `app.amazon-ebs.web` uses builder type `amazon-ebs`")
            && e.contains("--only=app.amazon-chroot.web"),
        "{e}"
    );
    for only in [
        "app.amazon-chroot.web",
        "amazon-chroot.web",
        "amazon-chroot.*",
        "app.*chroot*",
    ] {
        i.only = vec![only.into()];
        let l = load_file("m.pkr.hcl", hcl, &i);
        assert!(errors(&l).is_empty(), "{only}: {:?}", errors(&l));
        assert_eq!(names(&l), vec!["app.amazon-chroot.web"], "{only}");
    }
    i.only = vec![];
    i.except = vec!["app.amazon-ebs.web".into()];
    assert_eq!(
        names(&load_file("m.pkr.hcl", hcl, &i)),
        vec!["app.amazon-chroot.web"]
    );
}

/// Packer's JSON decoder: a key twice in one object is an error naming it and its line; an empty
/// string for a number is unset; undeclared `sensitive-variables` are ignored (a warning here).
#[test]
fn json_duplicates_empty_numbers_and_unknown_sensitive_names() {
    let l = load_file(
        "dup.json",
        "{\n  \"builders\": [{\"type\": \"amazon-chroot\", \"source_ami\": \"ami-12345678\",\n    \"ami_name\": \"abc\", \"ami_name\": \"abcd\"}]\n}",
        &inputs(),
    );
    let e = errors(&l).join("\n");
    assert!(
        e.contains("dup.json:3: ami_name: template has duplicate field: ami_name"),
        "{e}"
    );
    let l = load_file(
        "empty.json",
        r#"{"variables": {"size": ""}, "sensitive-variables": ["nope"],
            "builders": [{"type": "amazon-chroot", "source_ami": "ami-12345678", "ami_name": "abc",
                          "root_volume_size": "{{user `size`}}", "force_deregister": ""}]}"#,
        &inputs(),
    );
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    assert_eq!(
        l.plans[0].config.root_volume_size, None,
        "the source's size"
    );
    assert!(!l.plans[0].config.force_deregister);
    assert!(warnings(&l).join("\n").contains("`nope` is not declared"));
}

#[test]
fn var_files_and_precedence() {
    let dir = TempDir::new();
    let t = dir.write(
        "t.json",
        &json_builder(r#""ami_name": "n-{{user `v`}}", "source_ami": "ami-1""#).replace(
            "{\"builders\"",
            "{\"variables\": {\"v\": \"default\"}, \"builders\"",
        ),
    );
    let vf = dir.write("vars.json", r#"{"v": "from-file"}"#);
    let mut i = inputs();
    i.var_files.push(vf);
    let l = template::load(&t, &i);
    assert_eq!(l.plans[0].config.ami_name, "n-from-file");
    i.vars.push(("v".into(), "from-flag".into()));
    let l = template::load(&t, &i);
    assert_eq!(
        l.plans[0].config.ami_name, "n-from-flag",
        "--var beats --var-file"
    );
}

#[test]
fn sensitive_values_are_masked() {
    let t = r#"{"variables": {"token": "s3cr3t-value"}, "sensitive-variables": ["token"],
        "builders": [{"type": "amazon-chroot", "ami_name": "abc", "source_ami": "ami-1",
                      "ami_description": "uses {{user `token`}}", "ami_regionz": "{{user `token`}}"}]}"#;
    let l = load_file("t.json", t, &inputs());
    let plan = &l.plans[0];
    let shown = template::inspect::render(plan, &l.masker);
    assert!(!shown.contains("s3cr3t-value"), "{shown}");
    assert!(shown.contains("<sensitive>"));
    let json = l
        .masker
        .mask(&serde_json::to_string(&l.plans).expect("plan JSON"));
    assert!(!json.contains("s3cr3t-value"));
}

const HCL_BASE: &str = r#"
source "amazon-chroot" "app" {
  ami_name   = "app-${var.version}"
  source_ami = "ami-12345678"
}
"#;

#[test]
fn hcl_variables_types_sources_and_precedence() {
    let t = r#"
/* block comment */
variable "version" {
  type    = string
  default = "1.0"
}
variable "size" {
  type    = number
  default = 8
  validation {
    condition     = var.size >= 4
    error_message = "The size must be at least 4 GiB."
  }
}
variable "users" {
  type    = list(string)
  default = ["111"]
}
variable "secret" {
  type      = string
  default   = "hunter2"
  sensitive = true
}
locals {
  name = "app-${var.version}"
  both = "${local.name}-${local.other}"
  other = lower("X")
}
local "tagged" {
  expression = upper(local.name)
}
source "amazon-chroot" "app" {
  ami_name         = "${local.both}-{{timestamp}}"
  source_ami       = "ami-12345678"
  root_volume_size = var.size
  ami_users        = var.users
  ami_description  = "secret ${var.secret}"
  tags = {
    Name = local.tagged
  }
  tag {
    key   = "Extra"
    value = "yes"
  }
  ami_block_device_mappings {
    device_name = "/dev/xvda"
    volume_size = var.size
  }
  ami_block_device_mappings {
    device_name  = "/dev/xvdb"
    virtual_name = "ephemeral0"
  }
  root_device_name = "/dev/xvda"
  source_ami_filter {
    filters = {
      name = "debian-12-*"
    }
    owners      = ["136693071363"]
    most_recent = true
  }
}
build {
  sources = ["sources.amazon-chroot.app"]
  provisioner "shell" { inline = ["echo one"] }
  provisioner "file" {
    content     = "${source.name}"
    destination = "/etc/source"
  }
  provisioner "shell" { inline = ["echo three"] }
}
"#;
    let l = load_file("t.pkr.hcl", t, &inputs());
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    let plan = &l.plans[0];
    assert_eq!(plan.name, "amazon-chroot.app");
    let c = &plan.config;
    assert_eq!(c.ami_name, "app-1.0-x-1709622489");
    assert_eq!(c.root_volume_size, Some(8));
    assert_eq!(c.ami_users, vec!["111"]);
    assert_eq!(c.tags["Name"], "APP-1.0");
    assert_eq!(c.tags["Extra"], "yes");
    assert_eq!(c.ami_block_device_mappings.len(), 2);
    assert_eq!(
        c.ami_block_device_mappings[1].virtual_name.as_deref(),
        Some("ephemeral0")
    );
    let f = c.source_ami_filter.as_ref().expect("filter");
    assert!(
        f.most_recent && f.owners == vec!["136693071363"] && f.filters["name"] == "debian-12-*"
    );
    let kinds: Vec<&str> = plan
        .provisioners
        .iter()
        .map(|p| p.kind_name.as_str())
        .collect();
    assert_eq!(
        kinds,
        vec!["shell", "file", "shell"],
        "provisioners in file order"
    );
    match &plan.provisioners[1].kind {
        template::provisioner::Kind::File(file) => assert_eq!(file.content.as_deref(), Some("app")),
        other => panic!("{other:?}"),
    }
    assert!(!template::inspect::render(plan, &l.masker).contains("hunter2"));

    // -var with a typed value, PKR_VAR_, and validation failure.
    let mut i = inputs();
    i.vars.push(("size".into(), "2".into()));
    let l = load_file("t.pkr.hcl", t, &i);
    assert!(
        errors(&l)
            .join("\n")
            .contains("Invalid value for variable: The size must be at least 4 GiB."),
        "{:?}",
        errors(&l)
    );
    let mut i = inputs();
    i.env.insert("PKR_VAR_version".into(), "2.5".into());
    i.vars.push(("users".into(), r#"["1", "2"]"#.into()));
    let l = load_file("t.pkr.hcl", t, &i);
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    assert!(l.plans[0].config.ami_name.starts_with("app-2.5-"));
    assert_eq!(l.plans[0].config.ami_users, vec!["1", "2"]);
    let mut i = inputs();
    i.vars.push(("sise".into(), "2".into()));
    let l = load_file("t.pkr.hcl", t, &i);
    assert!(errors(&l).join("\n").contains("A variable named \"sise\" was assigned on the command line, but the template does not declare it (did you mean `size`?)"), "{:?}", errors(&l));
    let mut i = inputs();
    i.vars.push(("size".into(), "big".into()));
    let l = load_file("t.pkr.hcl", t, &i);
    assert!(
        errors(&l).join("\n").contains("--var size"),
        "{:?}",
        errors(&l)
    );
}

#[test]
fn hcl_directory_var_files_builds_and_data_sources() {
    let dir = TempDir::new();
    dir.write("variables.pkr.hcl", "variable \"version\" {\n  type = string\n}\nvariable \"region\" {\n  default = env(\"KILN_TEST_UNSET_VARIABLE\")\n}\n");
    dir.write("vars.pkrvars.hcl", "version = \"3.0\"\n");
    dir.write(
        "main.pkr.hcl",
        r#"
data "amazon-ami" "debian" {
  filters = {
    name = "debian-12-amd64-*"
  }
  owners      = ["136693071363"]
  most_recent = true
}
source "amazon-chroot" "app" {
  ami_name   = "app-${var.version}"
  source_ami = data.amazon-ami.debian.id
}
build {
  name    = "nightly"
  sources = ["source.amazon-chroot.app"]
  source "source.amazon-chroot.app" {
    name     = "big"
    ami_name = "app-big-${var.version}"
  }
  provisioner "shell" {
    only   = ["amazon-chroot.app"]
    inline = ["only for app"]
  }
  post-processor "manifest" {}
}
build {
  sources = ["source.amazon-chroot.app"]
}
"#,
    );
    let mut i = inputs();
    i.var_files.push(dir.0.join("vars.pkrvars.hcl"));
    let l = template::load(&dir.0, &i);
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    let names: Vec<&str> = l.plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "nightly.amazon-chroot.app",
            "nightly.amazon-chroot.big",
            "amazon-chroot.app"
        ]
    );
    assert_eq!(
        l.plans[1].config.ami_name, "app-big-3.0",
        "source override in build"
    );
    assert_eq!(l.plans[0].provisioners.len(), 1);
    assert_eq!(
        l.plans[1].provisioners.len(),
        0,
        "only = amazon-chroot.app skips big"
    );
    let f = l.plans[0]
        .config
        .source_ami_filter
        .as_ref()
        .expect("data source becomes the filter");
    assert_eq!(f.filters["name"], "debian-12-amd64-*");
    assert!(l.plans[0].config.source_ami.is_none());

    // Without the var file, `version` is unset.
    let l = template::load(&dir.0, &inputs());
    assert!(
        errors(&l).join("\n").contains("Unset variable \"version\""),
        "{:?}",
        errors(&l)
    );
}

#[test]
fn hcl_functions() {
    // (expression, expected value)
    let cases: &[(&str, &str)] = &[
        (r#"lower("ABC")"#, "abc"),
        (r#"upper("abc")"#, "ABC"),
        (r#"replace("a-b-c", "-", "_")"#, "a_b_c"),
        (r#"regex_replace("v1.2.3", "[.]", "-")"#, "v1-2-3"),
        (r#"join(",", ["a", "b"])"#, "a,b"),
        (r#"join("|", split(",", "x,y"))"#, "x|y"),
        (r#"format("%s-%d", "n", 7)"#, "n-7"),
        (r#"trimspace("  t  ")"#, "t"),
        (r#"join(",", concat(["a"], ["b"]))"#, "a,b"),
        (r#"lookup(merge({a = "1"}, {b = "2"}), "b", "none")"#, "2"),
        (r#"lookup({a = "1"}, "z", "none")"#, "none"),
        (r#"coalesce("", "fallback")"#, "fallback"),
        (r#"clean_resource_name("a:b c")"#, "a-b c"),
        (
            r#"formatdate("YYYY-MM-DD'T'hh:mm", timestamp())"#,
            "2024-03-05T07:08",
        ),
        (r#"timestamp()"#, "2024-03-05T07:08:09Z"),
        (r#"length(uuidv4())"#, "36"),
        (r#"trimprefix("prefix-x", "prefix-")"#, "x"),
        (r#"substr("abcdef", 1, 3)"#, "bcd"),
        (r#"tostring(length(["a", "b"]))"#, "2"),
        (r#"basename("/a/b/c.txt")"#, "c.txt"),
    ];
    for (expr, want) in cases {
        let t = format!(
            "locals {{\n  v = {expr}\n}}\nsource \"amazon-chroot\" \"x\" {{\n  ami_name = \"name\"\n  ami_description = \"d-${{local.v}}\"\n  source_ami = \"ami-1\"\n}}\nbuild {{\n  sources = [\"source.amazon-chroot.x\"]\n}}\n"
        );
        let l = load_file("f.pkr.hcl", &t, &inputs());
        assert!(errors(&l).is_empty(), "{expr}: {:?}", errors(&l));
        assert_eq!(
            l.plans[0].config.ami_description.as_deref(),
            Some(format!("d-{want}").as_str()),
            "{expr}"
        );
    }
    // `file` reads a file; `env` works only in variable defaults.
    let dir = TempDir::new();
    let f = dir.write("content.txt", "from-file");
    let t = format!(
        "source \"amazon-chroot\" \"x\" {{\n  ami_name = \"n-${{file(\"{}\")}}\"\n  source_ami = \"ami-1\"\n}}\nbuild {{\n  sources = [\"source.amazon-chroot.x\"]\n}}\n",
        f.display()
    );
    let l = load_file("f.pkr.hcl", &t, &inputs());
    assert_eq!(l.plans[0].config.ami_name, "n-from-file");
    let t = "source \"amazon-chroot\" \"x\" {\n  ami_name = env(\"HOME\")\n  source_ami = \"ami-1\"\n}\nbuild {\n  sources = [\"source.amazon-chroot.x\"]\n}\n";
    let l = load_file("f.pkr.hcl", t, &inputs());
    assert!(
        errors(&l)
            .join("\n")
            .contains("env() can only be used in a variable's default"),
        "{:?}",
        errors(&l)
    );
}

#[test]
fn hcl_errors_name_what_and_where() {
    let cases: &[(&str, &str)] = &[
        (
            "source \"amazon-chroot\" \"x\" {\n  ami_name = \n}\n",
            "f.pkr.hcl:2: invalid HCL",
        ),
        (
            &format!(
                "{HCL_BASE}build {{\n  sources = [\"source.amazon-chroot.app\"]\n}}\nprovisioner \"shell\" {{\n  inline = [\"x\"]\n}}\n"
            ),
            "unexpected block `provisioner`: `provisioner` blocks belong inside a `build` block",
        ),
        (
            &format!(
                "{HCL_BASE}variable \"version\" {{ default = \"1\" }}\nbuild {{\n  sources = [\"source.amazon-chroot.ap\"]\n}}\n"
            ),
            "the build names source.amazon-chroot.ap, which is not declared (did you mean `source.amazon-chroot.app`?)",
        ),
        (
            &format!("{HCL_BASE}variable \"version\" {{ default = \"1\" }}\n"),
            "the template has no build block",
        ),
        (
            "source \"amazon-ebs\" \"x\" {\n  ami_name = \"abc\"\n}\nbuild {\n  sources = [\"source.amazon-ebs.x\"]\n}\n",
            "f.pkr.hcl:5: build.sources: build `amazon-ebs.x` uses builder type `amazon-ebs`, which kiln does not run",
        ),
        (
            "source \"amazon-chroot\" \"x\" {\n  ami_name = \"abc\"\n  source_ami = \"ami-1\"\n  instance_type = \"t3.micro\"\n}\nbuild {\n  sources = [\"source.amazon-chroot.x\"]\n}\n",
            "f.pkr.hcl:4: source.amazon-chroot.x.instance_type: unknown field `instance_type`",
        ),
        (
            "source \"amazon-chroot\" \"x\" {\n  ami_name = \"abc\"\n  source_ami = \"ami-1\"\n}\nbuild {\n  sources = [\"source.amazon-chroot.x\"]\n  provisioner \"ansible\" {\n    playbook_file = \"x.yml\"\n  }\n}\n",
            "f.pkr.hcl:8: build.provisioner[0] \"ansible\".playbook_file: playbook_file: x.yml is invalid: stat x.yml: no such file or directory",
        ),
        (
            "data \"amazon-secretsmanager\" \"s\" {}\n",
            "f.pkr.hcl:1: data.amazon-secretsmanager.s.name: a 'name' must be provided",
        ),
        (
            "data \"aws-thing\" \"s\" {}\n",
            "data source `aws-thing` is not supported",
        ),
        (
            "varible \"x\" {}\n",
            "unexpected block `varible`: did you mean `variable`?",
        ),
        (
            "source \"amazon-chroot\" \"x\" {\n  ami_name = var.nope\n}\nbuild {\n  sources = [\"source.amazon-chroot.x\"]\n}\n",
            "f.pkr.hcl:2: source.amazon-chroot.x.ami_name",
        ),
    ];
    for (text, want) in cases {
        let l = load_file("f.pkr.hcl", text, &inputs());
        let all = errors(&l).join("\n");
        assert!(all.contains(want), "{text}\nexpected `{want}` in:\n{all}");
    }
}

#[test]
fn hcl_json_syntax() {
    let t = r#"{
  "variable": {"version": {"type": "string", "default": "4.2"}},
  "source": {"amazon-chroot": {"app": {"ami_name": "app-${var.version}", "source_ami": "ami-1"}}},
  "build": [{
    "sources": ["source.amazon-chroot.app"],
    "provisioner": [{"shell": {"inline": ["echo ${var.version}"]}}]
  }]
}"#;
    let l = load_file("t.pkr.json", t, &inputs());
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    assert_eq!(l.plans[0].config.ami_name, "app-4.2");
    match &l.plans[0].provisioners[0].kind {
        template::provisioner::Kind::Shell(s) => assert_eq!(s.inline, vec!["echo 4.2"]),
        other => panic!("{other:?}"),
    }
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(crate::support::repo_root())
        .output()
        .expect("run kiln")
}

/// Every example in templates/ validates and inspects through the real binary.
#[test]
fn example_templates_validate_and_inspect() {
    let root = crate::support::repo_root().join("templates");
    let mut checked = 0;
    let vars = ["--var", "source_ami=ami-0123456789abcdef0"];
    for entry in std::fs::read_dir(&root).expect("templates/") {
        let p = entry.expect("entry").path();
        let name = p.display().to_string();
        if name.ends_with("-manifest.json") {
            continue; // a manifest post-processor's output, not a template
        }
        let is_template = p.is_dir()
            && std::fs::read_dir(&p)
                .expect("dir")
                .any(|e| e.is_ok_and(|e| e.path().to_string_lossy().ends_with(".pkr.hcl")))
            || name.ends_with(".json")
            || name.ends_with(".pkr.hcl");
        if !is_template {
            continue;
        }
        let extra: &[&str] = if name.ends_with("app.json") {
            &vars
        } else {
            &[]
        };
        let mut args = vec!["validate"];
        args.extend_from_slice(extra);
        args.push(&name);
        let out = kiln(&args);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "The configuration is valid."
        );
        let mut args = vec!["inspect"];
        args.extend_from_slice(extra);
        args.push(&name);
        let out = kiln(&args);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("provisioners:") && text.contains("chroot_mounts"),
            "{text}"
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected the busybox (JSON, HCL), debian and app templates, checked {checked}"
    );
}

#[test]
fn validate_reports_every_error_and_json() {
    let dir = TempDir::new();
    let p = dir.write(
        "bad.json",
        &json_builder(r#""ami_name": "x", "ami_nmae": "y""#),
    );
    let path = p.display().to_string();
    let out = kiln(&["validate", &path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ami_name must be between 3 and 128 characters long"),
        "{err}"
    );
    assert!(
        err.contains("source_ami or source_ami_filter is required."),
        "{err}"
    );
    assert!(err.contains("did you mean `ami_name`?"), "{err}");
    let out = kiln(&["validate", "--json", &path]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["errors"][0]["file"], path.as_str());
    assert!(v["errors"][0]["line"].as_u64().is_some_and(|l| l >= 1));
    let out = kiln(&["validate", "/nonexistent/template.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn examples() -> Vec<(String, String)> {
        let root = crate::support::repo_root().join("templates");
        let mut out = Vec::new();
        for p in [
            root.join("busybox.json"),
            root.join("busybox.pkr.hcl"),
            root.join("app.json"),
            root.join("debian/debian.pkr.hcl"),
        ] {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, std::fs::read_to_string(&p).expect("example template")));
        }
        out
    }

    fn load_text(name: &str, text: &str) {
        let dir = TempDir::new();
        let p = dir.write(name, text);
        let _ = template::load(&p, &inputs());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Arbitrary text through both parsers and the template engine.
        #[test]
        fn arbitrary_text(text in ".{0,400}") {
            load_text("a.json", &text);
            load_text("a.pkr.hcl", &text);
            load_text("a.pkr.json", &text);
            let _ = kiln::template::json::parse(&std::sync::Arc::from("x"), &text);
        }

        /// The example templates with random edits: bytes cut, inserted, swapped.
        #[test]
        fn mutated_examples(which in 0usize..4, edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..8)) {
            let ex = examples();
            let (name, text) = &ex[which % ex.len()];
            let mut chars: Vec<char> = text.chars().collect();
            for (idx, op, c) in edits {
                if chars.is_empty() { break; }
                let i = idx.index(chars.len());
                match op {
                    0 => { chars.remove(i); }
                    1 => chars.insert(i, c),
                    2 => chars[i] = c,
                    _ => chars.truncate(i),
                }
            }
            let text: String = chars.into_iter().collect();
            load_text(name, &text);
        }

        /// Go-template actions of arbitrary shape.
        #[test]
        fn template_actions(inner in "[ -~]{0,40}") {
            let t = format!(r#"{{"builders": [{{"type": "amazon-chroot", "ami_name": "{{{{{}}}}}", "source_ami": "ami-1"}}]}}"#, inner.replace(['\\', '"'], ""));
            load_text("t.json", &t);
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        for (name, text) in [
            ("deep.json", "[".repeat(100_000)),
            (
                "deep.pkr.hcl",
                format!("locals {{\n  x = {}\n}}\n", "[".repeat(10_000)),
            ),
        ] {
            let dir = TempDir::new();
            let p = dir.write(name, &text);
            let loaded = template::load(&p, &inputs());
            let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
            assert!(!errors.is_empty(), "{name}: deep nesting must be an error");
            assert!(
                errors.iter().any(|e| e.contains(name)),
                "{name}: the error names the file: {errors:?}"
            );
        }
    }
}

/// Relative paths resolve against the working directory, as in Packer: `kiln build
/// packer/app.json` from a repository's root finds `packer/app.sh`, not `packer/packer/app.sh`;
/// `{{template_dir}}` and HCL2's `path.root`/`path.cwd` are there for the other; no `./` noise.
#[test]
fn relative_paths_resolve_against_the_working_directory() {
    let repo = TempDir::new();
    repo.write("packer/app.sh", "echo hi\n");
    repo.write("files/conf", "x\n");
    let json = repo.write(
        "packer/app.json",
        &format!(
            r#"{{"builders": [{{"type": "amazon-chroot", {BASE}}}],
  "provisioners": [{{"type": "shell", "script": "packer/app.sh"}},
    {{"type": "file", "source": "./files/conf", "destination": "/etc/conf"}},
    {{"type": "shell", "script": "{{{{template_dir}}}}/app.sh"}}]}}"#
        ),
    );
    let from_root = Inputs {
        cwd: repo.0.clone(),
        ..inputs()
    };
    let l = template::load(&json, &from_root);
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    let files = l.plans[0].local_files();
    assert!(files.contains(&repo.0.join("packer/app.sh")), "{files:?}");
    assert!(
        files.contains(&repo.0.join("files/conf")),
        "no ./ noise: {files:?}"
    );
    // The same template run from its own folder does not find packer/app.sh there.
    let from_packer = Inputs {
        cwd: repo.0.join("packer"),
        ..inputs()
    };
    let e = errors(&template::load(&json, &from_packer)).join("\n");
    assert!(
        e.contains(&format!(
            "Bad script 'packer/app.sh': stat {}: no such file or directory",
            repo.0.join("packer/packer/app.sh").display()
        )),
        "{e}"
    );
    // HCL2: path.root is the template's folder, path.cwd the working directory.
    let hcl = repo.write(
        "packer/app.pkr.hcl",
        r#"source "amazon-chroot" "a" {
  source_ami = "ami-12345678"
  ami_name   = "abcd"
}
build {
  sources = ["source.amazon-chroot.a"]
  provisioner "shell" { script = "${path.root}/app.sh" }
  provisioner "shell" { script = "packer/app.sh" }
  provisioner "file" {
    content     = "${path.cwd}|${file("files/conf")}"
    destination = "/etc/where"
  }
}
"#,
    );
    let l = template::load(&hcl, &from_root);
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    let content = l.plans[0]
        .provisioners
        .iter()
        .find_map(|p| match &p.kind {
            template::provisioner::Kind::File(f) => f.content.clone(),
            _ => None,
        })
        .expect("file content");
    assert_eq!(content, format!("{}|x\n", repo.0.display()));
}

/// Every HCL2 function Packer documents, each with an example from its documentation (results
/// compared as `jsonencode` output where they are not strings).
#[test]
fn hcl_functions_from_packers_documentation() {
    let dir = TempDir::new();
    dir.write("files/a.sh", "a");
    dir.write("files/sub/b.sh", "b");
    dir.write("files/c.txt", "c");
    dir.write(
        "hello.tpl",
        "Hello, ${name}! %{ for a in addrs }[${a}]%{ endfor }",
    );
    let cases: &[(&str, &str)] = &[
        // Numeric.
        ("ceil(5.1)", "6"),
        ("floor(4.9)", "4"),
        ("log(16, 2)", "4"),
        ("pow(3, 2)", "9"),
        ("signum(-13)", "-1"),
        (r#"parseint("FF", 16)"#, "255"),
        (r#"parseint("-10", 2)"#, "-2"),
        ("sum([10, 13, 6, 4.5])", "33.5"),
        // Strings.
        (
            r#"jsonencode(formatlist("Hello, %s!", ["Valentina", "Ander"]))"#,
            r#"["Hello, Valentina!","Hello, Ander!"]"#,
        ),
        (r#"indent(2, "a\nb")"#, "a\n  b"),
        (
            r#"jsonencode(regexall("[a-z]+", "1234abcd5678efgh9"))"#,
            r#"["abcd","efgh"]"#,
        ),
        (r#"strrev("hello")"#, "olleh"),
        // Collections.
        (
            r#"jsonencode(chunklist(["a", "b", "c", "d", "e"], 2))"#,
            r#"[["a","b"],["c","d"],["e"]]"#,
        ),
        (
            r#"jsonencode(coalescelist(["a", "b"], ["c", "d"]))"#,
            r#"["a","b"]"#,
        ),
        (r#"index(["a", "b", "c"], "b")"#, "1"),
        ("jsonencode(range(3))", "[0,1,2]"),
        ("jsonencode(range(1, 8, 2))", "[1,3,5,7]"),
        ("jsonencode(reverse([1, 2, 3]))", "[3,2,1]"),
        (
            r#"jsonencode(slice(["a", "b", "c", "d"], 1, 3))"#,
            r#"["b","c"]"#,
        ),
        (
            r#"jsonencode(sort(["e", "d", "a", "x"]))"#,
            r#"["a","d","e","x"]"#,
        ),
        (
            r#"jsonencode(setunion(["a", "b"], ["b", "c"]))"#,
            r#"["a","b","c"]"#,
        ),
        (
            r#"jsonencode(setintersection(["a", "b"], ["b", "c"], ["b", "d"]))"#,
            r#"["b"]"#,
        ),
        (
            r#"jsonencode(setproduct(["development", "staging"], ["app1", "app2"]))"#,
            r#"[["development","app1"],["development","app2"],["staging","app1"],["staging","app2"]]"#,
        ),
        (
            r#"jsonencode(transpose({"a" = ["1", "2"], "b" = ["2", "3"]}))"#,
            r#"{"1":["a"],"2":["a","b"],"3":["b"]}"#,
        ),
        (
            r#"jsonencode(zipmap(["a", "b"], [1, 2]))"#,
            r#"{"a":1,"b":2}"#,
        ),
        (r#"alltrue(["true", true])"#, "true"),
        ("anytrue([false, true])", "true"),
        (r#"one(["hello"])"#, "hello"),
        // Encoding and hashing.
        (r#"base64encode("Hello World")"#, "SGVsbG8gV29ybGQ="),
        (r#"base64decode("SGVsbG8gV29ybGQ=")"#, "Hello World"),
        (
            r#"textencodebase64("Hello World", "UTF-8")"#,
            "SGVsbG8gV29ybGQ=",
        ),
        (
            r#"textdecodebase64("SGVsbG8gV29ybGQ=", "UTF-8")"#,
            "Hello World",
        ),
        (r#"jsondecode("{\"hello\": \"world\"}").hello"#, "world"),
        (r#"yamldecode("hello: world").hello"#, "world"),
        (r#"yamlencode({"a" = "b"})"#, "a: b\n"),
        (
            r#"jsonencode(csvdecode("a,b,c\n1,2,3\n4,5,6"))"#,
            r#"[{"a":"1","b":"2","c":"3"},{"a":"4","b":"5","c":"6"}]"#,
        ),
        (r#"urlencode("Hello World!")"#, "Hello+World%21"),
        (r#"md5("hello world")"#, "5eb63bbbe01eeed093cb22bb8f5acdc3"),
        (
            r#"sha1("hello world")"#,
            "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed",
        ),
        (
            r#"sha256("hello world")"#,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
        ),
        (
            r#"substr(sha512("hello world"), 0, 16)"#,
            "309ecc489c12d6eb",
        ),
        (
            r#"base64sha256("hello world")"#,
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=",
        ),
        (
            r#"uuidv5("dns", "www.terraform.io")"#,
            "a5008fae-b28c-5ba5-96cd-82b4c53552d6",
        ),
        // Files (relative to the working directory).
        (r#"jsonencode(fileset("files", "*.sh"))"#, r#"["a.sh"]"#),
        (
            r#"jsonencode(fileset("files", "**/*.sh"))"#,
            r#"["a.sh","sub/b.sh"]"#,
        ),
        (
            r#"templatefile("hello.tpl", { name = "kiln", addrs = ["a", "b"] })"#,
            "Hello, kiln! [a][b]",
        ),
        // Dates.
        (
            r#"timeadd("2017-11-22T00:00:00Z", "10m")"#,
            "2017-11-22T00:10:00Z",
        ),
        (
            r#"timeadd("2017-11-22T00:00:00Z", "-1h")"#,
            "2017-11-21T23:00:00Z",
        ),
        (r#"legacy_isotime("2006-01-02")"#, "2024-03-05"),
        (r#"legacy_strftime("%Y-%m-%d %H:%M")"#, "2024-03-05 07:08"),
        // IP networks.
        (r#"cidrhost("10.12.112.0/20", 16)"#, "10.12.112.16"),
        (r#"cidrhost("10.12.112.0/20", 268)"#, "10.12.113.12"),
        (r#"cidrnetmask("172.16.0.0/12")"#, "255.240.0.0"),
        (r#"cidrsubnet("172.16.0.0/12", 4, 2)"#, "172.18.0.0/16"),
        (r#"cidrsubnet("10.1.2.0/24", 4, 15)"#, "10.1.2.240/28"),
        (
            r#"jsonencode(cidrsubnets("10.1.0.0/16", 4, 4, 8, 4))"#,
            r#"["10.1.0.0/20","10.1.16.0/20","10.1.32.0/24","10.1.48.0/20"]"#,
        ),
        // Type conversion and errors.
        (r#"try(jsondecode("{").a, "fallback")"#, "fallback"),
        (r#"can(jsondecode("{"))"#, "false"),
        (r#"can(jsondecode("{}"))"#, "true"),
        (
            r#"jsonencode(convert(["a", 1], list(string)))"#,
            r#"["a","1"]"#,
        ),
        (r#"convert("12", number) + 1"#, "13"),
    ];
    let mut failures = Vec::new();
    for (expr, want) in cases {
        let t = format!(
            "locals {{\n  v = {expr}\n}}\nsource \"amazon-chroot\" \"x\" {{\n  ami_name = \"name\"\n  ami_description = local.v\n  source_ami = \"ami-1\"\n}}\nbuild {{\n  sources = [\"source.amazon-chroot.x\"]\n}}\n"
        );
        let p = dir.write("f.pkr.hcl", &t);
        let l = template::load(
            &p,
            &Inputs {
                cwd: dir.0.clone(),
                ..inputs()
            },
        );
        let got = l
            .plans
            .first()
            .and_then(|p| p.config.ami_description.clone());
        if !errors(&l).is_empty() || got.as_deref() != Some(*want) {
            failures.push(format!(
                "{expr}: want {want:?}, got {got:?} {:?}",
                errors(&l)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // try inside a string, and locals that try each other in any order.
    let t = r#"
locals {
  b = try(local.a.missing, "from-b")
  a = { present = "x" }
  name = "app-${try(local.a.present, "none")}"
}
source "amazon-chroot" "x" {
  ami_name        = local.name
  ami_description = local.b
  source_ami      = "ami-1"
}
build {
  sources = ["source.amazon-chroot.x"]
}
"#;
    let l = load_file("f.pkr.hcl", t, &inputs());
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    assert_eq!(l.plans[0].config.ami_name, "app-x");
    assert_eq!(l.plans[0].config.ami_description.as_deref(), Some("from-b"));
    // try in a for expression (per element, with the loop's variables, a filter and a grouped
    // object) and in a heredoc.
    let t = r#"
locals {
  users = [{ name = "a", shell = "/bin/zsh" }, { name = "b" }, { name = "c", skip = true }]
  shells = [for u in local.users : try(u.shell, "/bin/sh") if !try(u.skip, false)]
  by_shell = { for i, u in local.users : try(u.shell, "none") => "${i}-${u.name}"... }
  doc = <<-EOT
    shell=${try(local.users[1].shell, "default")}
    EOT
}
source "amazon-chroot" "x" {
  ami_name        = "app ${join(" ", local.shells)} ${join(" ", local.by_shell["none"])}"
  ami_description = trimspace(local.doc)
  source_ami      = "ami-1"
}
build {
  sources = ["source.amazon-chroot.x"]
}
"#;
    let l = load_file("f.pkr.hcl", t, &inputs());
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    assert_eq!(l.plans[0].config.ami_name, "app /bin/zsh /bin/sh 1-b 2-c");
    assert_eq!(
        l.plans[0].config.ami_description.as_deref(),
        Some("shell=default")
    );
    // The two kiln refuses say why.
    let t = "locals {\n  h = bcrypt(\"x\")\n}\nsource \"amazon-chroot\" \"x\" {\n  ami_name = local.h\n  source_ami = \"ami-1\"\n}\nbuild {\n  sources = [\"source.amazon-chroot.x\"]\n}\n";
    let e = errors(&load_file("f.pkr.hcl", t, &inputs())).join("\n");
    assert!(e.contains("bcrypt is not supported by kiln"), "{e}");
}

/// Packer's plural `variables { }` block declares variables with defaults; `packer { }` holds
/// only `required_version` and `required_plugins` (a block written inside it is an error, with
/// Packer's message, not silently dropped).
#[test]
fn plural_variables_and_a_strict_packer_block() {
    let t = r#"
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.0.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
variables {
  name = "plural-abc"
  size = 3
}
source "amazon-chroot" "y" {
  ami_name         = var.name
  source_ami       = "ami-12345678"
  root_volume_size = var.size
}
build {
  sources = ["source.amazon-chroot.y"]
}
"#;
    let l = load_file("p.pkr.hcl", t, &inputs());
    assert!(errors(&l).is_empty(), "{:?}", errors(&l));
    assert_eq!(l.plans[0].config.ami_name, "plural-abc");
    assert_eq!(l.plans[0].config.root_volume_size, Some(3));
    let mut vars = inputs();
    vars.vars.push(("name".into(), "from-cli".into()));
    assert_eq!(
        load_file("p.pkr.hcl", t, &vars).plans[0].config.ami_name,
        "from-cli"
    );
    let bad = t.replace(
        "required_version = \">= 1.7.0\"",
        "required_version = \">= 1.7.0\"\n  build {\n    sources = []\n  }",
    );
    let e = errors(&load_file("p.pkr.hcl", &bad, &inputs())).join("\n");
    assert!(
        e.contains("Blocks of type \"build\" are not expected here") && e.contains("p.pkr.hcl:4"),
        "{e}"
    );
}
