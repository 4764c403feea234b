//! Loop devices over `/dev/loop-control` and the loop ioctls: attach a file with partition
//! scanning, detach, and find the device backing a file (for cleanup after a crash).

use super::HostError;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: u16 = 0x4C82;
const LOOP_SET_FD: u16 = 0x4C00;
const LOOP_CLR_FD: u16 = 0x4C01;
const LOOP_SET_STATUS64: u16 = 0x4C04;
const LO_FLAGS_PARTSCAN: u32 = 8;
/// Attempts at claiming a free loop device: another process may claim the one the kernel
/// offered between GET_FREE and SET_FD (EBUSY); a handful of retries rides that out.
const CLAIM_ATTEMPTS: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_int_bad!(loop_set_fd, LOOP_SET_FD);
nix::ioctl_none_bad!(loop_clr_fd, LOOP_CLR_FD);
nix::ioctl_write_ptr_bad!(loop_set_status64, LOOP_SET_STATUS64, LoopInfo64);

/// Attaches `file` to a free loop device with partition scanning; returns `/dev/loopN`.
///
/// Side effects: claims a loop device (system-wide). Not idempotent: a second call claims a second
/// device; use [`find_for_file`] first when resuming.
pub fn attach(file: &Path) -> Result<PathBuf, HostError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .map_err(HostError::io("opening the volume file", file))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(HostError::io(
            "opening (modprobe loop if missing)",
            "/dev/loop-control",
        ))?;
    let mut last = None;
    for _ in 0..CLAIM_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { loop_ctl_get_free(ctl.as_raw_fd()) }.map_err(HostError::sys(
            "finding a free loop device",
            "/dev/loop-control",
        ))?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(d) => d,
            Err(e) => {
                last = Some(HostError::Io {
                    what: "opening",
                    path,
                    source: e,
                });
                continue;
            }
        };
        // SAFETY: LOOP_SET_FD takes the backing file's descriptor, which stays open for the call.
        match unsafe { loop_set_fd(dev.as_raw_fd(), backing.as_raw_fd()) } {
            Ok(_) => {}
            Err(nix::Error::EBUSY) => continue,
            Err(e) => {
                return Err(HostError::Sys {
                    what: "attaching a loop device",
                    path,
                    source: e,
                });
            }
        }
        let mut info: LoopInfo64 = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_PARTSCAN,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = file.as_os_str().as_encoded_bytes();
        let len = name.len().min(63);
        info.lo_file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: `info` is a valid loop_info64 for the duration of the call.
        if let Err(e) = unsafe { loop_set_status64(dev.as_raw_fd(), &info) } {
            // SAFETY: LOOP_CLR_FD takes no argument.
            let _ = unsafe { loop_clr_fd(dev.as_raw_fd()) };
            return Err(HostError::Sys {
                what: "configuring loop device",
                path,
                source: e,
            });
        }
        return Ok(path);
    }
    Err(last.unwrap_or_else(|| {
        HostError::NoDevice("every free loop device was taken by another process; retry".into())
    }))
}

/// Detaches a loop device. Detaching one that is already free succeeds (safe to run twice).
pub fn detach(dev: &Path) -> Result<(), HostError> {
    let f = match OpenOptions::new().read(true).open(dev) {
        Ok(f) => f,
        // Gone, or no longer bound (ENXIO): nothing to detach.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENXIO) =>
        {
            return Ok(());
        }
        Err(e) => {
            return Err(HostError::Io {
                what: "opening",
                path: dev.to_owned(),
                source: e,
            });
        }
    };
    // SAFETY: LOOP_CLR_FD takes no argument.
    match unsafe { loop_clr_fd(f.as_raw_fd()) } {
        Ok(_) | Err(nix::Error::ENXIO) => Ok(()),
        Err(e) => Err(HostError::Sys {
            what: "detaching loop device",
            path: dev.to_owned(),
            source: e,
        }),
    }
}

/// The loop devices whose backing file is `file` (from /sys/block/loop*/loop/backing_file).
pub fn find_for_file(file: &Path) -> Vec<PathBuf> {
    let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(b.trim()) == want
        {
            out.push(PathBuf::from(format!("/dev/{name}")));
        }
    }
    out
}
