//! The `ansible` and `ansible-local` provisioners for real, against a Debian root with Python
//! (tests/integration/debian.rs): Ansible from the pinned virtualenv scripts/setup makes
//! (`.kiln/ansible`), the chroot connection for `ansible`, the image's own ansible-core for
//! `ansible-local`. Checks what the playbooks changed in the image, that a failing task fails the
//! build with the task's message and leaves nothing, and that sensitive values stay masked.

use crate::debian::debian_template;
use crate::pipeline::{Tpl, assert_nothing_left, build_env, read_from_result};
use crate::support::{Emulator, repo_root, tagged, track_result, unique, with_janitor};

/// `PATH` with the pinned Ansible first. Panics with the command that installs it.
fn ansible_path() -> (&'static str, String) {
    let bin = repo_root().join(".kiln/ansible/bin");
    assert!(
        bin.join("ansible-playbook").is_file(),
        "Ansible is missing: run scripts/setup (it installs the pinned ansible into .kiln/ansible)"
    );
    (
        "PATH",
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    )
}

/// Writes `text` to `rel` under the template directory.
fn put(t: &Tpl, rel: &str, text: &str) {
    let p = t.0.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
    std::fs::write(p, text).expect("write");
}

/// Role `name` whose one task is `task`, packed as the tarball `tarball` (relative to the
/// template directory), as galaxy installs it from a `file://` source.
fn pack_role(t: &Tpl, name: &str, task: &str, tarball: &str) {
    put(t, &format!("role-src/{name}/tasks/main.yml"), task);
    put(
        t,
        &format!("role-src/{name}/meta/main.yml"),
        "galaxy_info:\n  author: kiln\n  description: test\n  license: MIT\n  min_ansible_version: '2.9'\n  platforms: []\ndependencies: []\n",
    );
    std::fs::create_dir_all(t.0.join(tarball).parent().expect("parent")).expect("dir");
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(t.0.join("role-src"))
        .arg("-czf")
        .arg(t.0.join(tarball))
        .arg(name)
        .status()
        .expect("tar")
        .success();
    assert!(ok, "packing the role {name}");
}

/// A role packed as a tarball and named by a galaxy requirements file (installed offline).
fn galaxy_role(t: &Tpl) {
    pack_role(
        t,
        "galaxyrole",
        "- name: from the galaxy role\n  copy:\n    dest: /etc/from-galaxy-role\n    content: \"galaxy role ran\\n\"\n",
        "files/galaxyrole.tar.gz",
    );
    let tarball = t.0.join("files/galaxyrole.tar.gz");
    put(
        t,
        "files/requirements.yml",
        &format!("- src: file://{}\n  name: galaxyrole\n", tarball.display()),
    );
}

#[tokio::test]
async fn ansible_and_ansible_local_provision_a_debian_image() {
    with_janitor(|janitor| async move {
        let path = ansible_path();
        let t = Tpl::new();
        galaxy_role(&t);
        let secret = format!("s3cr3t-{}", unique("token"));
        put(
            &t,
            "files/site.yml",
            "- hosts: web\n  gather_facts: false\n  roles:\n    - galaxyrole\n  tasks:\n    - name: write a file\n      copy:\n        dest: /etc/from-ansible\n        content: \"built by {{ packer_build_name }} as {{ packer_builder_type }}\\n\"\n    - name: show the token\n      debug:\n        msg: \"token is {{ token }}\"\n",
        );
        put(
            &t,
            "files/as-written.yml",
            "- hosts: all\n  gather_facts: false\n  tasks:\n    - file:\n        path: /etc/as-written\n        state: touch\n",
        );
        put(
            &t,
            "files/local.yml",
            "- hosts: local\n  connection: local\n  gather_facts: false\n  roles:\n    - motd\n  tasks:\n    - copy:\n        dest: /etc/from-ansible-local\n        content: \"{{ greeting }}\\n\"\n",
        );
        put(
            &t,
            "files/roles/motd/tasks/main.yml",
            "- copy:\n    dest: /etc/motd\n    content: \"kiln motd\\n\"\n",
        );
        put(&t, "files/group_vars/local.yml", "greeting: hello from group_vars\n");
        let mount = format!("/mnt/{}", unique("ansible"));
        let roles = t.0.join("roles");
        let provs = format!(
            r#"provisioner "ansible" {{
    playbook_file    = "files/site.yml"
    galaxy_file      = "files/requirements.yml"
    roles_path       = "{roles}"
    groups           = ["web"]
    extra_arguments  = ["--extra-vars", "token=${{var.token}}"]
    use_proxy        = false
  }}
  provisioner "ansible" {{
    playbook_file   = "files/as-written.yml"
    extra_arguments = ["--connection=chroot", "--inventory-file={mount},"]
  }}
  provisioner "ansible-local" {{
    playbook_file    = "files/local.yml"
    role_paths       = ["files/roles/motd"]
    group_vars       = "files/group_vars"
    inventory_groups = ["local"]
    staging_directory = "/var/tmp/kiln-staging"
  }}"#,
            roles = roles.display()
        );
        let text = format!(
            "variable \"token\" {{\n  default   = \"{secret}\"\n  sensitive = true\n}}\n{}",
            debian_template(&unique("ansible"), &format!("mount_path = \"{mount}\""), &provs)
        );
        let tpl = t.write("ansible.pkr.hcl", &text);
        let (ok, doc, stderr) = build_env(&tpl, &[], &[path]);
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{doc:#}\n{stderr}", doc["error"]);
        assert!(!stderr.contains(&secret), "the sensitive value leaked:\n{stderr}");
        assert!(stderr.contains("token is <sensitive>"), "{stderr}");
        assert!(
            !stderr.contains("\u{1b}["),
            "colour codes in the log:\n{stderr}"
        );
        let got = read_from_result(
            &doc,
            &[
                "/etc/from-ansible",
                "/etc/from-galaxy-role",
                "/etc/as-written",
                "/etc/from-ansible-local",
                "/etc/motd",
                "/var/tmp/kiln-staging/local.yml",
            ],
        );
        assert_eq!(
            got[0].as_deref(),
            Some("built by amazon-chroot.debian as amazon-chroot\n")
        );
        assert_eq!(got[1].as_deref(), Some("galaxy role ran\n"));
        assert_eq!(got[2].as_deref(), Some(""), "the template's own inventory and connection");
        assert_eq!(got[3].as_deref(), Some("hello from group_vars\n"));
        assert_eq!(got[4].as_deref(), Some("kiln motd\n"));
        assert!(
            got[5].is_some(),
            "ansible-local keeps its staging directory, as Packer does by default"
        );
        let vols = tagged(Emulator::get().region(), doc["build_id"].as_str().expect("id"))
            .await
            .volumes;
        assert!(vols.is_empty(), "{vols:?}");
    })
    .await;
}

#[tokio::test]
async fn a_failing_ansible_task_fails_the_build_with_its_message() {
    with_janitor(|janitor| async move {
        let path = ansible_path();
        let t = Tpl::new();
        let marker = unique("task-failed");
        put(
            &t,
            "files/fail.yml",
            &format!(
                "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: refuse\n      fail:\n        msg: \"{marker}\"\n"
            ),
        );
        let provs = r#"provisioner "ansible" {
    playbook_file = "files/fail.yml"
  }"#;
        let tpl = t.write(
            "fail.pkr.hcl",
            &debian_template(&unique("ansible-fail"), "", provs),
        );
        let (ok, doc, stderr) = build_env(&tpl, &[], &[path]);
        track_result(&janitor, &doc);
        assert!(!ok, "{doc:#}");
        let msg = doc["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&marker) && msg.contains("provisioner 1 (ansible)"),
            "{msg}\n{stderr}"
        );
        assert_eq!(doc["error"]["step"], "provision");
        assert_nothing_left(doc["build_id"].as_str().expect("id"), &doc).await;
    })
    .await;
}

/// Every field of both ansible provisioners in one template (the README lists them), building
/// an image: what each one does is visible in the image or on the host afterwards.
#[tokio::test]
async fn every_field_of_both_ansible_provisioners() {
    with_janitor(|janitor| async move {
        let path = ansible_path();
        let t = Tpl::new();
        galaxy_role(&t);
        let inv_dir = t.0.join("inventories");
        std::fs::create_dir_all(&inv_dir).expect("inventory dir");
        put(
            &t,
            "files/all.yml",
            "- hosts: edge\n  gather_facts: false\n  roles:\n    - galaxyrole\n  tasks:\n    - copy:\n        dest: /etc/remote-fields\n        content: \"{{ inventory_hostname }} {{ lookup('env', 'KILN_TEST_ENV') }} {{ groups['spare'] | length }}\\n\"\n",
        );
        // ansible-local: a playbook directory (with a role tarball for the in-image galaxy), two
        // playbooks, host_vars, its own inventory.
        put(&t, "local/first.yml", "- hosts: box\n  connection: local\n  gather_facts: false\n  tasks:\n    - copy:\n        dest: /etc/local-first\n        content: \"{{ colour }}\\n\"\n");
        put(&t, "local/second.yml", "- hosts: box\n  connection: local\n  gather_facts: false\n  roles:\n    - localrole\n");
        put(&t, "local/host_vars/127.0.0.1.yml", "colour: blue\n");
        put(&t, "local/inventory.ini", "[box]\n127.0.0.1\n");
        pack_role(
            &t,
            "localrole",
            "- copy:\n    dest: /etc/local-galaxy\n    content: \"in-image galaxy\\n\"\n",
            "local/localrole.tar.gz",
        );
        let staging = "/opt/kiln-staging";
        put(
            &t,
            "local/requirements.yml",
            &format!("- src: file://{staging}/localrole.tar.gz\n  name: localrole\n"),
        );
        let provs = format!(
            r#"provisioner "ansible" {{
    command                = "{bin}/ansible-playbook"
    playbook_file          = "files/all.yml"
    galaxy_file            = "files/requirements.yml"
    galaxy_command         = "{bin}/ansible-galaxy"
    galaxy_force_install   = true
    roles_path             = "{roles}"
    collections_path       = "{collections}"
    host_alias             = "builder-image"
    groups                 = ["edge"]
    empty_groups           = ["spare"]
    user                   = "root"
    inventory_directory    = "{inv}"
    keep_inventory_file    = true
    ansible_env_vars       = ["KILN_TEST_ENV=from-env-vars"]
    extra_arguments        = ["-v"]
    skip_version_check     = false
    use_proxy              = false
  }}
  provisioner "ansible-local" {{
    command                 = "ansible-playbook"
    playbook_files          = ["local/first.yml", "local/second.yml"]
    playbook_dir            = "local"
    host_vars               = "local/host_vars"
    galaxy_file             = "local/requirements.yml"
    galaxy_command          = "ansible-galaxy"
    inventory_file          = "local/inventory.ini"
    extra_arguments         = ["--diff"]
    staging_directory       = "{staging}"
    clean_staging_directory = true
  }}"#,
            bin = repo_root().join(".kiln/ansible/bin").display(),
            roles = t.0.join("roles").display(),
            collections = t.0.join("collections").display(),
            inv = inv_dir.display(),
        );
        let tpl = t.write(
            "fields.pkr.hcl",
            &debian_template(&unique("ansible-fields"), "", &provs),
        );
        let (ok, doc, stderr) = build_env(&tpl, &[], &[path]);
        track_result(&janitor, &doc);
        assert!(ok, "{}\n{doc:#}\n{stderr}", doc["error"]);
        let warnings = stderr.lines().filter(|l| l.contains("use_proxy is ignored")).count();
        assert_eq!(warnings, 1, "the SSH-only field warns: {stderr}");
        let kept: Vec<_> = std::fs::read_dir(&inv_dir)
            .expect("inventory dir")
            .flatten()
            .collect();
        assert_eq!(kept.len(), 1, "keep_inventory_file keeps it in inventory_directory");
        let inventory = std::fs::read_to_string(kept[0].path()).expect("inventory");
        assert!(
            inventory.contains("builder-image ansible_host=")
                && inventory.contains("ansible_user=root")
                && inventory.contains("[edge]\nbuilder-image\n")
                && inventory.contains("[spare]\n"),
            "{inventory}"
        );
        assert!(t.0.join("roles/galaxyrole").is_dir(), "galaxy installed into roles_path");
        let got = read_from_result(
            &doc,
            &[
                "/etc/remote-fields",
                "/etc/from-galaxy-role",
                "/etc/local-first",
                "/etc/local-galaxy",
                "/opt/kiln-staging/first.yml",
            ],
        );
        assert_eq!(got[0].as_deref(), Some("builder-image from-env-vars 0\n"));
        assert_eq!(got[1].as_deref(), Some("galaxy role ran\n"));
        assert_eq!(got[2].as_deref(), Some("blue\n"), "host_vars and the template's inventory");
        assert_eq!(got[3].as_deref(), Some("in-image galaxy\n"), "galaxy_file inside the image");
        assert_eq!(got[4], None, "clean_staging_directory removed the staging directory");
    })
    .await;
}
