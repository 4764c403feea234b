//! The system-call filter of a build's processes, compiled with `seccompiler` (Firecracker's seccomp
//! compiler) and handed to bubblewrap as BPF programs (`--add-seccomp-fd`). It refuses what no
//! image build needs and what reaches past the sandbox: kernel modules, kexec, file handles
//! (`open_by_handle_at`, the "shocker" escape), bpf, perf, keyrings, swap, reboot, ptrace and
//! cross-process memory access, and new user namespaces (which would hand back the capabilities
//! the sandbox dropped). Docker's default profile is the reference for the list.

use super::SandboxError;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Refused with `EPERM`, whatever their arguments.
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("add_key", libc::SYS_add_key),
    ("keyctl", libc::SYS_keyctl),
    ("request_key", libc::SYS_request_key),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("acct", libc::SYS_acct),
    ("pivot_root", libc::SYS_pivot_root),
    ("setns", libc::SYS_setns),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    // io_uring reaches much of the kernel past this filter (Docker blocks it since 2023).
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// The main filter: [`DENIED`], and `unshare`/`clone` asking for a new user namespace.
fn main_filter(arch: TargetArch) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let newuser = libc::CLONE_NEWUSER as u64;
    for nr in [libc::SYS_unshare, libc::SYS_clone] {
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(newuser),
            newuser,
        )
        .map_err(compile)?;
        rules.insert(nr, vec![SeccompRule::new(vec![cond]).map_err(compile)?]);
    }
    refusing(rules, libc::EPERM, arch)
}

/// A program that answers `errno` to calls matching `rules` and allows everything else.
fn refusing(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<BpfProgram, SandboxError> {
    let errno =
        u32::try_from(errno).map_err(|_| SandboxError::Invalid(format!("bad errno {errno}")))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch,
    )
    .map_err(compile)?;
    filter.try_into().map_err(compile)
}

/// `clone3` answers `ENOSYS`: its flags live in memory a filter cannot read, and C libraries fall
/// back to `clone` (which the main filter checks) on `ENOSYS`, as under Docker's profile.
fn clone3_filter(arch: TargetArch) -> Result<BpfProgram, SandboxError> {
    refusing(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        libc::ENOSYS,
        arch,
    )
}

fn compile(e: seccompiler::BackendError) -> SandboxError {
    SandboxError::Invalid(format!("compiling the seccomp filter: {e}"))
}

/// The filters as bubblewrap reads them: raw `struct sock_filter` arrays, native byte order.
/// Returns one byte string per filter.
///
/// Side effects: none. Safe to call any number of times.
pub fn programs() -> Result<Vec<Vec<u8>>, SandboxError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| {
        SandboxError::Invalid(format!(
            "no seccomp filter for this architecture ({}): {e}",
            std::env::consts::ARCH
        ))
    })?;
    Ok([main_filter(arch)?, clone3_filter(arch)?]
        .iter()
        .map(|p| {
            p.iter()
                .flat_map(|i| {
                    let mut b = Vec::with_capacity(8);
                    b.extend_from_slice(&i.code.to_ne_bytes());
                    b.push(i.jt);
                    b.push(i.jf);
                    b.extend_from_slice(&i.k.to_ne_bytes());
                    b
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    /// Each program is a whole number of 8-byte instructions ending in a return.
    #[test]
    fn programs_compile() {
        let p = super::programs().unwrap();
        assert_eq!(p.len(), 2);
        for prog in p {
            assert!(prog.len() >= 8 * 4 && prog.len() % 8 == 0);
        }
    }
}
