"""The emulator's EBS data plane: where volumes' and snapshots' data live, and what a builder host on
this machine sees when a volume is attached to it.

Imported by `emulator_launcher.py` (never by kiln). Every volume has a sparse file, every snapshot a
sparse copy of its volume's file taken at CreateSnapshot (a point-in-time copy, as EBS's), CreateVolume
from a snapshot starts from a copy of the snapshot's file, CopyImage and CopySnapshot copy the data,
DeleteVolume and DeleteSnapshot remove it.

AttachVolume to a builder host made by `scripts/emulator host NAME --naming xen|nitro` attaches a loop
device (with partition scanning) to the volume's file once EC2 reports the attachment, and makes the
nodes EC2's host would see, in the host's device directory (its own `/dev`, a private directory per
host unless `--dev-dir` says otherwise):

- xen: a block node named as the requested device (`sdf` or `xvdf`), partitions `sdf1`, `xvdf1`, ...
- nitro: `nvmeKn1` (K from 1: nvme0 is the root volume) with partitions `nvmeKn1pN`, and udev's links
  `disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>` (and `-partN`) to them.

Partition nodes follow the kernel: a thread listens to the kernel's uevents, as udev does, and also
looks every `SYNC_INTERVAL` (a missed event), so a partition table written by a build appears under
the host's names within milliseconds. DetachVolume removes the nodes and the loop device at once (the
device leaves the host first); EC2 reports the volume available after the `detachment` delay.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import threading
import time

GIB = 1 << 30
# How often the partition nodes are compared with the kernel's partitions besides the uevents (which a
# container may not get): a listing of a few sysfs directories, cheap enough at 50 a second; a
# missed event costs at most this much.
SYNC_INTERVAL = 0.02
# The name udev gives an EBS volume on a Nitro host (`/dev/disk/by-id/...`), the volume id without `-`.
NITRO_LINK = "nvme-Amazon_Elastic_Block_Store_"
NAMINGS = ("xen", "nitro")
# Where the hosts' device directories are made (`e<port>/<host>`): a devtmpfs allows block nodes,
# and like /dev it is emptied at boot.
DEV_ROOT = "/dev/kiln-ebs"


class Plane:
    """The data files, loop devices and nodes of one emulator. Every method holds `lock`."""

    def __init__(self, data_dir: str, dev_root: str, lock: threading.RLock):
        self.data_dir = data_dir
        self.dev_root = dev_root
        self.lock = lock
        # volume id -> {"host": dict, "device": requested name, "ready_at": t, "loop": "/dev/loopN"
        #               or None, "nodes": [paths made], "base": node path}
        self.attached: dict[str, dict] = {}
        self._clear_leftovers()
        for sub in ("volumes", "snapshots"):
            os.makedirs(os.path.join(data_dir, sub), exist_ok=True)
        threading.Thread(target=self._uevents, daemon=True).start()
        threading.Thread(target=self._poll, daemon=True).start()

    # -- data files ---------------------------------------------------------------------------------
    def volume_file(self, volume_id: str) -> str:
        return os.path.join(self.data_dir, "volumes", f"{volume_id}.img")

    def snapshot_file(self, snapshot_id: str) -> str:
        return os.path.join(self.data_dir, "snapshots", f"{snapshot_id}.img")

    def volume_created(self, volume_id: str, size_gib: int, snapshot_id: str | None) -> None:
        dst = self.volume_file(volume_id)
        src = self.snapshot_file(snapshot_id) if snapshot_id else None
        if src and os.path.exists(src):
            _sparse_copy(src, dst)
        else:
            open(dst, "wb").close()
        size = int(size_gib) * GIB
        if os.path.getsize(dst) < size:
            os.truncate(dst, size)

    def snapshot_created(self, snapshot_id: str, volume_id: str) -> None:
        src = self.volume_file(volume_id)
        att = self.attached.get(volume_id)
        if att and att["loop"]:
            _flush(att["loop"])  # a snapshot of an attached volume: what was written so far
        if os.path.exists(src):
            _sparse_copy(src, self.snapshot_file(snapshot_id))

    def snapshot_copied(self, source_id: str, copy_id: str) -> None:
        src = self.snapshot_file(source_id)
        if os.path.exists(src):
            _sparse_copy(src, self.snapshot_file(copy_id))

    def volume_deleted(self, volume_id: str) -> None:
        _remove(self.volume_file(volume_id))

    def snapshot_deleted(self, snapshot_id: str) -> None:
        _remove(self.snapshot_file(snapshot_id))

    # -- attachments ------------------------------------------------------------------------------
    def host_dev_dir(self, host: dict) -> str:
        return host.get("dev_dir") or os.path.join(self.dev_root, host["name"])

    def attach(self, volume_id: str, host: dict, device: str, ready_at: float) -> None:
        """Records an attachment to a host on this machine; its nodes appear once it is ready."""
        if host.get("naming") not in NAMINGS:
            return
        self.attached[volume_id] = {
            "host": host, "device": os.path.basename(device), "ready_at": ready_at,
            "loop": None, "nodes": [], "base": None,
        }
        self._sync(volume_id)

    def detach(self, volume_id: str) -> None:
        """Removes the volume's nodes and loop device (safe to run twice)."""
        att = self.attached.pop(volume_id, None)
        if att is None:
            return
        for path in reversed(att["nodes"]):
            _remove(path)
        if att["loop"]:
            # What the host wrote reaches the volume's file before the device goes (EC2's
            # detach, too, keeps every write the instance completed).
            _flush(att["loop"])
            # A device still mounted is detached when it is unmounted (autoclear).
            subprocess.run(["losetup", "-d", att["loop"]], capture_output=True, check=False)

    def reset(self) -> None:
        for volume_id in list(self.attached):
            self.detach(volume_id)
        for sub in ("volumes", "snapshots"):
            d = os.path.join(self.data_dir, sub)
            for name in os.listdir(d):
                _remove(os.path.join(d, name))

    def close(self) -> None:
        """Everything this emulator made on the machine goes: loop devices, nodes, data files."""
        with self.lock:
            self.reset()
            _remove(self.dev_root)
            _remove(self.data_dir)

    def _clear_leftovers(self) -> None:
        """What an emulator that died on the same port left (its loop devices first)."""
        for sub in ("volumes", "snapshots"):
            d = os.path.join(self.data_dir, sub)
            for name in os.listdir(d) if os.path.isdir(d) else []:
                _detach_loops_of(os.path.join(d, name))
        _remove(self.dev_root)
        _remove(self.data_dir)

    def state(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "attached": {
                v: {"host": a["host"]["name"], "device": a["device"], "loop": a["loop"],
                    "node": a["base"], "nodes": list(a["nodes"])}
                for v, a in self.attached.items()
            },
            "volumes": sorted(f[:-4] for f in os.listdir(os.path.join(self.data_dir, "volumes"))),
            "snapshots": sorted(f[:-4] for f in os.listdir(os.path.join(self.data_dir, "snapshots"))),
        }

    # -- the host's nodes ("udev") ------------------------------------------------------------------
    def _sync(self, volume_id: str) -> None:
        att = self.attached.get(volume_id)
        if att is None or time.time() < att["ready_at"] or not att["host"].get("nodes", True):
            return
        if att["loop"] is None:
            out = subprocess.run(
                ["losetup", "--find", "--show", "--partscan", self.volume_file(volume_id)],
                capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                att["error"] = out.stderr.strip()
                return
            att["loop"] = out.stdout.strip()
            att["base"] = self._base_node(att, volume_id)
            self._mknod(att, att["base"], os.path.basename(att["loop"]))
            if att["host"]["naming"] == "nitro":
                self._link(att, _by_id(att, volume_id), att["base"])
        loop = os.path.basename(att["loop"])
        parts = _partitions(loop)
        base = att["base"]
        for n, kname in parts.items():
            path = f"{base}p{n}" if base[-1].isdigit() else f"{base}{n}"
            # A partition the kernel made again (a new table) may have another number: the node
            # follows, as udev's would.
            if path not in att["nodes"] or _devt(path) != _sys_devt(kname):
                if path in att["nodes"]:
                    att["nodes"].remove(path)
                self._mknod(att, path, kname)
                link = f"{_by_id(att, volume_id)}-part{n}"
                if att["host"]["naming"] == "nitro" and link not in att["nodes"]:
                    self._link(att, link, path)
        # Partitions the kernel dropped (a new table): their nodes go too.
        for path in [p for p in att["nodes"] if _partition_number(base, p) not in (None, *parts)]:
            _remove(path)
            att["nodes"].remove(path)

    def _base_node(self, att: dict, volume_id: str) -> str:
        d = self.host_dev_dir(att["host"])
        if att["host"]["naming"] == "xen":
            return os.path.join(d, att["device"])
        used = {a["base"] for v, a in self.attached.items() if v != volume_id and a["base"]}
        k = 1
        while os.path.join(d, f"nvme{k}n1") in used or os.path.exists(os.path.join(d, f"nvme{k}n1")):
            k += 1
        return os.path.join(d, f"nvme{k}n1")

    def _mknod(self, att: dict, path: str, kname: str) -> None:
        major, minor = _sys_devt(kname)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _remove(path)
        os.mknod(path, 0o660 | stat.S_IFBLK, os.makedev(major, minor))
        att["nodes"].append(path)

    def _link(self, att: dict, link: str, target: str) -> None:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        _remove(link)
        os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
        att["nodes"].append(link)

    def _sync_all(self) -> None:
        with self.lock:
            for volume_id in list(self.attached):
                try:
                    self._sync(volume_id)
                except OSError as e:  # a device that went away between the listing and the node
                    self.attached.get(volume_id, {})["error"] = str(e)

    def _poll(self) -> None:
        while True:
            time.sleep(SYNC_INTERVAL)
            self._sync_all()

    def _uevents(self) -> None:
        try:
            # NETLINK_KOBJECT_UEVENT (15): not every Python names it.
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, getattr(socket, "NETLINK_KOBJECT_UEVENT", 15))
            sock.bind((0, 1))
        except OSError:
            return  # no uevents here (a container without them): the poll alone keeps the nodes
        while True:
            msg = sock.recv(65536)
            if b"SUBSYSTEM=block" in msg and b"DEVTYPE=partition" in msg:
                self._sync_all()


def _sys_devt(kname: str) -> tuple[int, int]:
    """The (major, minor) the kernel gave block device `kname`."""
    with open(f"/sys/class/block/{kname}/dev", encoding="ascii") as f:
        major, minor = (int(x) for x in f.read().strip().split(":"))
    return major, minor


def _devt(path: str) -> tuple[int, int] | None:
    try:
        rdev = os.stat(path, follow_symlinks=False).st_rdev
    except FileNotFoundError:
        return None
    return os.major(rdev), os.minor(rdev)


def _by_id(att: dict, volume_id: str) -> str:
    d = os.path.dirname(att["base"])
    return os.path.join(d, "disk", "by-id", NITRO_LINK + volume_id.replace("-", ""))


def _partitions(loop: str) -> dict[int, str]:
    """The kernel's partitions of `loop`: number -> kernel name (`loop3p1`)."""
    out = {}
    try:
        names = os.listdir(f"/sys/class/block/{loop}")
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith(f"{loop}p") and name[len(loop) + 1:].isdigit():
            out[int(name[len(loop) + 1:])] = name
    return out


def _partition_number(base: str, path: str) -> int | None:
    rest = path[len(base):] if path.startswith(base) else ""
    rest = rest[1:] if rest.startswith("p") and base[-1].isdigit() else rest
    return int(rest) if rest.isdigit() else None


def _flush(loop: str) -> None:
    """Writes the loop device's dirty blocks to its file (BLKFLSBUF, as `blockdev --flushbufs`)."""
    subprocess.run(["blockdev", "--flushbufs", loop], capture_output=True, check=False)


def _detach_loops_of(path: str) -> None:
    out = subprocess.run(["losetup", "-j", path], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        dev = line.split(":", 1)[0]
        if dev.startswith("/dev/loop"):
            subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


def _sparse_copy(src: str, dst: str) -> None:
    tmp = dst + ".tmp"
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", src, tmp], check=True)
    os.replace(tmp, dst)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass
