#!/usr/bin/env python3
"""`scripts/bench packer`: kiln against the real Packer (Debian's 1.6.6, amazon-chroot) on the same
template in the same run, against the emulator (scripts/emulator_launcher.py with its EBS data
plane: attachments make loop devices and device nodes).

    bench_packer.py KILN WORK [RUNS]      (as root; the emulator's exports in the environment)

- Each tool gets its own emulator builder host (xen naming): Packer's makes its nodes in /dev
  (Packer 1.6.6 mounts `/dev/sdn1` by that name), kiln's in a private directory (`--device-dir`).
- Packer runs in a network namespace of its own (scripts/packer_netns.py) where 127.0.0.1:PORT is
  the emulator (its `custom_endpoint_ec2`) and where its instance-metadata requests reach its
  host's IMDS; only the network namespace is entered, so it mounts and chroots for real.
- kiln reaches the emulator through the same kind of counting proxy on the machine's loopback,
  so both pay one proxy hop and both have every EC2 call and IMDS request counted.
- Wall time is process start to exit, RUNS builds each, interleaved (median).
- Then each is killed (SIGKILL to its process) while its provisioner sleeps, and what it left is
  listed: EC2 volumes (state, attachment), snapshots, AMIs; mounts, loop devices, device nodes,
  processes, and kiln's build sandbox (network namespace, nftables table, cgroup). Then the bench
  removes all of it.

Prints the tables for BENCHMARKS.md on stdout; progress on stderr.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boto3  # noqa: E402

import packer_netns  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "kiln-bench-provisioning"
# The template's mount_path is below this run's own directory, so nothing of another build on the
# machine (other tests mount under /mnt/packer-amazon-chroot-volumes too) is ever taken for ours.
MOUNT_ROOT = os.environ.get("KILN_BENCH_MOUNT_ROOT") or f"/mnt/kiln-bench-packer-{os.getpid()}"
SANDBOX_STATE = "/run/kiln/sandbox"
KILN_LOCKS = "/run/kiln/locks"
# EBS-like times for one more build each (scripts/emulator delays): seconds a volume stays creating,
# an attachment attaching, a detachment detaching, a snapshot pending, an image pending.
DELAYS = {"volume": 2, "attachment": 1, "detachment": 1, "snapshot": 5, "image": 3}
# The attachment point both use (`device_path`): not sdf, the one other builds on this machine use
# first (kiln's device locks in /run/kiln/locks are the machine's: a build taking a dead build's lock
# cleans what that build left, which would change what this bench lists).
DEVICE = "sdn"
KILL_SLEEP = 10  # the provisioner's sleep in the kill runs (killed 1 s into it)

TEMPLATE = {
    "_comment": "scripts/bench packer: one template for kiln and Packer 1.6.6 (amazon-chroot, from scratch). "
    "partx --update: this machine's kernel reads no partition tables (BLKRRPART finds none on a loop "
    "device), so the partition is added from user space (BLKPG), as kiln's loop backend does; the loop "
    "waits for the emulator's stand-in for udev to make its node.",
    "variables": {"endpoint": "", "region": "us-east-1", "name": "kiln-vs-packer", "sleep": "0",
                  "mount_root": "/mnt/packer-amazon-chroot-volumes"},
    "builders": [
        {
            "type": "amazon-chroot",
            "region": "{{user `region`}}",
            "custom_endpoint_ec2": "{{user `endpoint`}}",
            "from_scratch": True,
            "ami_name": "{{user `name`}}",
            "ami_description": "scripts/bench packer",
            "ami_virtualization_type": "hvm",
            "root_device_name": "/dev/xvda",
            "root_volume_size": 1,
            "device_path": f"/dev/{DEVICE}",
            "mount_path": "{{user `mount_root`}}/{{.Device}}",
            "copy_files": [],
            "ami_block_device_mappings": [
                {"device_name": "/dev/xvda", "volume_type": "gp2", "delete_on_termination": True}
            ],
            "pre_mount_commands": [
                "sfdisk --quiet {{.Device}} <<'PARTS'\nlabel: gpt\n,,L\nPARTS",
                "partx --update {{.Device}}",
                "for i in $(seq 50); do [ -b {{.Device}}1 ] && break; sleep 0.1; done",
                "mkfs.ext4 -q -L root {{.Device}}1",
            ],
            "post_mount_commands": [
                "mkdir -p {{.MountPath}}/bin {{.MountPath}}/etc {{.MountPath}}/proc {{.MountPath}}/sys "
                "{{.MountPath}}/dev {{.MountPath}}/tmp",
                "cp /bin/busybox {{.MountPath}}/bin/busybox",
                "chroot {{.MountPath}} /bin/busybox --install -s /bin",
            ],
            "chroot_mounts": [
                ["proc", "proc", "/proc"],
                ["sysfs", "sysfs", "/sys"],
                ["bind", "/dev", "/dev"],
            ],
            "tags": {"Name": "{{user `name`}}", "BuiltBy": "scripts/bench packer"},
        }
    ],
    "provisioners": [
        {
            "type": "shell",
            "inline": [
                "echo 'built by scripts/bench packer' > /etc/motd",
                "echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd",
                f"echo {MARKER}",
                "sleep {{user `sleep`}}",
            ],
        }
    ],
}


def log(msg: str) -> None:
    print(f"bench packer: {msg}", file=sys.stderr, flush=True)


def emulator(*args: str) -> str:
    out = subprocess.run([os.path.join(ROOT, "scripts", "emulator"), *args], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/emulator {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def emulator_state() -> dict:
    url = os.environ["AWS_ENDPOINT_URL"] + "/_kiln/state"
    return json.load(urllib.request.urlopen(url, timeout=30))


# ---------------------------------------------------------------------------------------------------
# What exists: EC2 (the emulator is this bench's own, so everything in it is ours or a host's) and
# the machine.
# ---------------------------------------------------------------------------------------------------
def ec2_inventory(ec2) -> dict:
    vols = {v["VolumeId"]: v for v in ec2.describe_volumes()["Volumes"]}
    snaps = {s["SnapshotId"]: s for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    images = {i["ImageId"]: i for i in ec2.describe_images(Owners=["self"])["Images"]}
    return {"volumes": vols, "snapshots": snaps, "images": images}


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, file system type, source) of every mount in this mount namespace."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            a, _, b = line.partition(" - ")
            fields, rest = a.split(), b.split()
            point = fields[4].replace("\\040", " ")
            out.append((point, rest[0], rest[1] if len(rest) > 1 else ""))
    return out


def processes() -> dict[int, dict]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            try:
                root = os.readlink(f"/proc/{pid}/root")
            except OSError:
                root = "?"
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
                cgroup = f.read()
        except (OSError, ValueError):
            continue
        if fields[0] in ("Z", "X"):
            continue  # exited, not yet reaped
        out[pid] = {"ppid": int(fields[1]), "sid": int(fields[3]), "cmd": cmd, "root": root,
                    "cgroup": cgroup}
    return out


def netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def cgroups_named(prefix: str) -> set[str]:
    found = set()
    for base in ("/sys/fs/cgroup",):
        for dirpath, dirnames, _ in os.walk(base):
            for d in dirnames:
                if d.startswith(prefix):
                    found.add(os.path.join(dirpath, d))
            if dirpath.count("/") > 6:
                dirnames[:] = []
    return found


def loops() -> dict[str, str]:
    out = subprocess.run(["losetup", "-J"], capture_output=True, text=True, check=False)
    try:
        return {d["name"]: d.get("back-file") or "" for d in json.loads(out.stdout or "{}").get("loopdevices", [])}
    except ValueError:
        return {}


def nodes(dev_dir: str, names: re.Pattern) -> set[str]:
    found = set()
    for dirpath, dirnames, files in os.walk(dev_dir):
        for n in files:
            p = os.path.join(dirpath, n)
            if names.search(os.path.relpath(p, dev_dir)):
                found.add(p)
        if dev_dir == "/dev":
            dirnames[:] = []  # the machine's /dev: only the top level (sdX, xvdX)
    return found


def machine_inventory(dev_dir: str, node_names: re.Pattern) -> dict:
    return {
        "mounts": mounts(),
        "loops": loops(),
        "nodes": nodes(dev_dir, node_names),
        "procs": processes(),
        "netns": netns_names(),
        "nft": nft_tables(),
        "cgroups": cgroups_named("build-"),
        "sandbox_dirs": set(os.listdir(SANDBOX_STATE)) if os.path.isdir(SANDBOX_STATE) else set(),
    }


# ---------------------------------------------------------------------------------------------------
# One tool.
# ---------------------------------------------------------------------------------------------------
class Tool:
    def __init__(self, name: str, host: dict, calls: packer_netns.Calls):
        self.name, self.host, self.calls = name, host, calls
        self.debug_log: str | None = None  # Packer's PACKER_LOG_PATH (the kill runs)

    def argv(self, ami_name: str, sleep: int) -> tuple[list[str], dict]:
        raise NotImplementedError

    def run(self, ami_name: str, sleep: int = 0, kill_after_marker: float | None = None,
            log_path: str | None = None, kill_all: bool = False) -> dict:
        argv, env = self.argv(ami_name, sleep)
        self.calls.reset()
        out = open(log_path or os.devnull, "w", encoding="utf-8")
        t0 = time.time()
        start = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.cwd)
        marker = threading.Event()

        def read():
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                out.write(line)
                out.flush()
                if MARKER in line and not line.rstrip().endswith(f"echo {MARKER}"):
                    marker.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        killed_at = None
        if kill_after_marker is not None:
            if not marker.wait(timeout=300):
                proc.kill()
                raise RuntimeError(f"{self.name}: the provisioner never started (log: {log_path})")
            time.sleep(kill_after_marker)
            killed_at = time.monotonic() - start
            if kill_all:
                # Every process of the build (its session and their descendants), as an OOM kill
                # of the service or systemd's KillMode=control-group would.
                procs = processes()
                victims = {pid for pid, p in procs.items() if p["sid"] == proc.pid}
                grew = True
                while grew:
                    more = {pid for pid, p in procs.items() if p["ppid"] in victims} - victims
                    grew = bool(more)
                    victims |= more
                for pid in victims:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            else:
                os.kill(proc.pid, signal.SIGKILL)  # the process the user started, as `kill -9 PID`
        rc = proc.wait()
        wall = time.monotonic() - start
        if kill_after_marker is None:
            reader.join(timeout=5)
        self.reader, self.out = reader, out
        if kill_after_marker is None:
            out.close()
        calls = self.calls.snapshot()
        ec2_times = [t - t0 for t, label in zip(calls["times"], calls["order"]) if label.startswith("ec2 ")]
        return {"rc": rc, "wall": wall, "calls": calls, "pid": proc.pid, "killed_at": killed_at,
                "first_call": ec2_times[0] if ec2_times else None,
                "last_call": ec2_times[-1] if ec2_times else None}


class Packer(Tool):
    def __init__(self, host, calls, ns: packer_netns.Namespace, endpoint: str, template: str, cwd: str):
        super().__init__("packer", host, calls)
        self.ns, self.endpoint, self.template, self.cwd = ns, endpoint, template, cwd

    def argv(self, ami_name, sleep):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_EC2_METADATA")}
        env.update({"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1", "PACKER_LOG": ""})
        if self.debug_log:
            env.update({"PACKER_LOG": "1", "PACKER_LOG_PATH": self.debug_log})
        cmd = ["packer", "build", "-color=false", f"-var=endpoint={self.endpoint}",
               f"-var=name={ami_name}", f"-var=sleep={sleep}", f"-var=mount_root={MOUNT_ROOT}", self.template]
        return self.ns.command(cmd), env


class Kiln(Tool):
    def __init__(self, host, calls, kiln: str, proxy_url: str, imds_url: str, template: str, cwd: str):
        super().__init__("kiln", host, calls)
        self.kiln, self.proxy_url, self.imds_url, self.template, self.cwd = kiln, proxy_url, imds_url, template, cwd
        self.history: str | None = None  # another build's name: use its wait history

    def argv(self, ami_name, sleep):
        env = dict(os.environ)
        env.update({"AWS_ENDPOINT_URL": self.proxy_url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds_url,
                    # Its own wait history (ec2/history.rs), never the machine's: a fresh builder's
                    # unless a build names another's.
                    "KILN_WAIT_HISTORY": os.path.join(self.cwd, f"wait-history-{self.history or ami_name}.json")})
        cmd = [self.kiln, "build", "--backend", "ebs", "--device-dir", self.host["dev_dir"],
               "--device-naming", "xen", "--var", f"endpoint={os.environ['AWS_ENDPOINT_URL']}",
               "--var", f"name={ami_name}", "--var", f"sleep={sleep}", "--var", f"mount_root={MOUNT_ROOT}",
               self.template]
        return cmd, env


def describe_calls(counts: dict) -> tuple[int, int, str]:
    ec2 = {k[4:]: v for k, v in counts.items() if k.startswith("ec2 ")}
    imds = sum(v for k, v in counts.items() if k.startswith("imds "))
    detail = ", ".join(f"{k} {v}" if v > 1 else k for k, v in sorted(ec2.items()))
    return sum(ec2.values()), imds, detail


def remove_artifacts(ec2, before: dict) -> None:
    now = ec2_inventory(ec2)
    for i in set(now["images"]) - set(before["images"]):
        ec2.deregister_image(ImageId=i)
    for s in set(now["snapshots"]) - set(before["snapshots"]):
        ec2.delete_snapshot(SnapshotId=s)


# ---------------------------------------------------------------------------------------------------
# After a SIGKILL: what is left, then removing it.
# ---------------------------------------------------------------------------------------------------
def leftovers(tool: Tool, ec2, ec2_before: dict, before: dict, after: dict, run: dict,
              mount_root: str, sid: str | None = None) -> dict:
    now = ec2_inventory(ec2)
    vols = []
    for vid in sorted(set(now["volumes"]) - set(ec2_before["volumes"])):
        v = now["volumes"][vid]
        att = v.get("Attachments") or []
        where = ", ".join(f"{a['State']} to {a['InstanceId']} as {a['Device']}" for a in att)
        tags = {t["Key"]: t["Value"] for t in v.get("Tags") or []}
        vols.append({"id": vid, "state": v["State"], "attachment": where or "none",
                     "tagged": bool(tags), "tags": tags})
    snaps = sorted(set(now["snapshots"]) - set(ec2_before["snapshots"]))
    images = sorted(set(now["images"]) - set(ec2_before["images"]))
    ebs = (emulator_state().get("ebs") or {}).get("attached", {})
    our_loops = {a.get("loop") for v, a in ebs.items() if v in {x["id"] for x in vols} and a.get("loop")}
    new_mounts = [m for m in after["mounts"] if m not in before["mounts"]]
    ours = [m for m in new_mounts
            if m[0] == mount_root or m[0].startswith(mount_root + "/") or m[2] in our_loops
            or (tool.host["dev_dir"] != "/dev" and m[2].startswith(tool.host["dev_dir"] + "/"))
            or (tool.host["dev_dir"] == "/dev" and re.fullmatch(rf"/dev/(sd|xvd){DEVICE[-1]}\d*", m[2]))]
    procs = {}
    for pid, p in after["procs"].items():
        if pid in before["procs"] and before["procs"][pid]["cmd"] == p["cmd"]:
            continue
        if (p["sid"] == run["pid"] or (p["root"] not in ("/", "?") and p["root"].startswith(mount_root))
                or mount_root in p["cmd"]):
            procs[pid] = p
    sandbox = {}
    # kiln names a build's sandbox by its device lock (host::sandbox::id_for_lock): the lock whose
    # note names our volume gives the id; nothing of another build is looked at.
    if sid is None and tool.name == "kiln":
        sid = kiln_sandbox_id({v["id"] for v in vols})
    new_netns = sorted(n for n in after["netns"] if sid and n == f"kiln-{sid}")
    new_nft = sorted(t for t in after["nft"] if sid and t.endswith(f" kiln_{sid}"))
    new_cg = sorted(c for c in after["cgroups"] if sid and c.endswith(f"/build-{sid}"))
    new_dirs = sorted(d for d in after["sandbox_dirs"] if sid and d == sid)
    if tool.name == "kiln":
        # Sandbox processes (bubblewrap's own session) are found by their build cgroup.
        for pid, p in after["procs"].items():
            if sid and f"/build-{sid}" in p["cgroup"]:
                procs[pid] = p
        sandbox = {"network namespaces": new_netns, "nftables tables": new_nft, "cgroups": new_cg,
                   "sandbox state": [os.path.join(SANDBOX_STATE, d) for d in new_dirs]}
    return {
        "volumes": vols,
        "snapshots": snaps,
        "images": images,
        "mounts": ours,
        "loops": sorted(l for l in our_loops if l in after["loops"]),
        "nodes": sorted(after["nodes"] - before["nodes"]),
        "procs": procs,
        "sandbox": sandbox,
        "sid": sid,
    }


def clean_up(ec2, left: dict) -> list[str]:
    """Removes what a killed build left; returns what it had to do."""
    done = []
    for pid in left["procs"]:
        try:
            os.kill(pid, signal.SIGKILL)
            done.append(f"killed {pid}")
        except ProcessLookupError:
            pass
    time.sleep(0.2)
    for point, _, _ in sorted(left["mounts"], key=lambda m: -m[0].count("/")):
        r = subprocess.run(["umount", point], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        done.append(f"umount {point}")
    for v in left["volumes"]:
        if v["attachment"] != "none":
            ec2.detach_volume(VolumeId=v["id"], Force=True)
            done.append(f"DetachVolume {v['id']}")
            for _ in range(100):
                if ec2.describe_volumes(VolumeIds=[v["id"]])["Volumes"][0]["State"] == "available":
                    break
                time.sleep(0.1)
        ec2.delete_volume(VolumeId=v["id"])
        done.append(f"DeleteVolume {v['id']}")
    for i in left["images"]:
        ec2.deregister_image(ImageId=i)
        done.append(f"DeregisterImage {i}")
    for s in left["snapshots"]:
        ec2.delete_snapshot(SnapshotId=s)
        done.append(f"DeleteSnapshot {s}")
    sb = left.get("sandbox") or {}
    for t in sb.get("nftables tables", []):
        subprocess.run(["nft", "delete", *t.split()], capture_output=True, check=False)
        done.append(f"nft delete {t}")
    for n in sb.get("network namespaces", []):
        subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)
        done.append(f"ip netns del {n}")
        link = "kv" + n[len("kiln-"):]
        if os.path.exists(f"/sys/class/net/{link}"):
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
    for c in sorted(sb.get("cgroups", []), key=lambda c: -c.count("/")):
        for dirpath, dirnames, _ in sorted(os.walk(c, topdown=False)):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
        done.append(f"rmdir {c}")
    for d in sb.get("sandbox state", []):
        subprocess.run(["rm", "-rf", "--one-file-system", d], check=False)
        done.append(f"rm -r {d}")
    if left.get("lock"):
        path = left["lock"].split(": ", 1)[0]
        open(path, "w").close()
        done.append(f"clear the note of {path}")
    for n in left["nodes"]:
        if os.path.lexists(n):
            os.remove(n)
            done.append(f"rm {n}")
    return done


def fmt_left(left: dict) -> dict[str, str]:
    def procs(ps):
        if not ps:
            return "none"
        return "; ".join(f"`{p['cmd'][:60]}`" + (f" (chroot {p['root']})" if p["root"] not in ("/", "?") else "")
                         for p in ps.values())

    rows = {
        "EBS volumes": "; ".join(
            f"{v['id']} {v['state']}, attached: {v['attachment']}, {'tagged ' + ','.join(sorted(v['tags'])) if v['tagged'] else 'untagged'}"
            for v in left["volumes"]) or "none",
        "snapshots": ", ".join(left["snapshots"]) or "none",
        "AMIs": ", ".join(left["images"]) or "none",
        "mounts": ", ".join(f"{p} ({t})" for p, t, _ in left["mounts"]) or "none",
        "loop devices": ", ".join(left["loops"]) or "none",
        "device nodes": ", ".join(left["nodes"]) or "none",
        "processes": procs(left["procs"]),
    }
    if left.get("lock"):
        rows["lock note"] = left["lock"]
    sb = left.get("sandbox")
    rows["build sandbox (netns, nftables, cgroup)"] = (
        "; ".join(f"{k}: {', '.join(v)}" for k, v in sb.items() if v) or "none") if sb else "- (none made)"
    return rows


def kiln_sandbox_id(volume_ids: set[str]) -> str | None:
    """The sandbox id of the kiln build whose device lock note names one of `volume_ids`."""
    import hashlib

    note = kiln_lock_note(volume_ids)
    if note is None:
        return None
    lock = os.path.basename(note.split(": ", 1)[0])[: -len(".lock")]
    return hashlib.sha256(f"kiln-sandbox:{lock}".encode()).hexdigest()[:12]


def kiln_lock_note(volume_ids: set[str]) -> str | None:
    """kiln's device lock whose note names one of `volume_ids` (the dead build's), as `file: note`."""
    try:
        names = os.listdir(KILN_LOCKS)
    except FileNotFoundError:
        return None
    for n in names:
        try:
            with open(os.path.join(KILN_LOCKS, n), encoding="utf-8") as f:
                note = f.read().strip()
        except OSError:
            continue
        if any(v in note for v in volume_ids):
            return f"{os.path.join(KILN_LOCKS, n)}: {note!r}"
    return None


def kill_run(tool: Tool, ec2, mode: str, ami_name: str, work: str) -> dict:
    """Builds with a sleeping provisioner, SIGKILLs 1 s into the sleep (`pid`: the process started;
    `all`: every process of the build), lets what survives finish (up to a minute), lists what is
    left and removes it."""
    # Packer's host makes its nodes in the machine's /dev: only the template's device's.
    node_names = re.compile(rf"^(sd|xvd){DEVICE[-1]}\d*$") if tool.host["dev_dir"] == "/dev" else re.compile(".")
    ec2_before = ec2_inventory(ec2)
    before = machine_inventory(tool.host["dev_dir"], node_names)
    logp = os.path.join(work, f"{tool.name}-kill-{mode}.log")
    tool.debug_log = os.path.join(work, f"{tool.name}-kill-{mode}.debug.log")
    try:
        r = tool.run(ami_name, KILL_SLEEP, 1.0, logp, kill_all=(mode == "all"))
    finally:
        tool.debug_log = None
    killed = time.monotonic()
    time.sleep(1)
    survivors = leftovers(tool, ec2, ec2_before, before,
                          machine_inventory(tool.host["dev_dir"], node_names), r, MOUNT_ROOT)["procs"]
    # What outlives the kill may go on with the build: wait until it is done (or a minute).
    while time.monotonic() - killed < 60:
        after = machine_inventory(tool.host["dev_dir"], node_names)
        left = leftovers(tool, ec2, ec2_before, before, after, r, MOUNT_ROOT)
        if not left["procs"]:
            break
        time.sleep(0.5)
    settled = time.monotonic() - killed
    if left["procs"]:
        log(f"{tool.name} (kill {mode}): still running a minute after the kill: "
            + "; ".join(f"{pid} {p['cmd'][:80]}" for pid, p in left["procs"].items()))
    tool.reader.join(timeout=5)
    tool.out.close()
    left["lock"] = kiln_lock_note({v["id"] for v in left["volumes"]}) if tool.name == "kiln" else None
    rows = fmt_left(left)
    done = clean_up(ec2, left)
    time.sleep(0.5)
    again = leftovers(tool, ec2, ec2_before, before, machine_inventory(tool.host["dev_dir"], node_names),
                      r, MOUNT_ROOT, left["sid"])
    remaining = {k: v for k, v in fmt_left(again).items() if v not in ("none", "- (none made)")}
    log(f"{tool.name} (kill {mode}) killed at {r['killed_at']:.2f} s, settled {settled:.1f} s later; "
        f"cleanup: {len(done)} actions; still there: {remaining or 'nothing'}")
    return {"left": rows, "survivors": survivors, "settled": settled, "cleanup": done,
            "remaining": remaining, "killed_at": r["killed_at"], "calls": r["calls"], "log": logp}


def emergency_cleanup(ec2, ec2_start: dict, mounts_start: list) -> None:
    """After a failure: whatever this run made that is still there (the emulator is the bench's own)."""
    log("failed: removing what this run left")
    for pid, p in processes().items():
        # Both tools' command lines name the run's mount root (the template's mount_root variable).
        if pid != os.getpid() and (p["root"].startswith(MOUNT_ROOT) or MOUNT_ROOT in p["cmd"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.3)
    for point, _, _ in sorted((m for m in mounts() if m not in mounts_start and m[0].startswith(MOUNT_ROOT)),
                              key=lambda m: -m[0].count("/")):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    try:
        now = ec2_inventory(ec2)
        for i in set(now["images"]) - set(ec2_start["images"]):
            ec2.deregister_image(ImageId=i)
        for s in set(now["snapshots"]) - set(ec2_start["snapshots"]):
            ec2.delete_snapshot(SnapshotId=s)
        for v in set(now["volumes"]) - set(ec2_start["volumes"]):
            if now["volumes"][v].get("Attachments"):
                ec2.detach_volume(VolumeId=v, Force=True)
                for _ in range(100):
                    if ec2.describe_volumes(VolumeIds=[v])["Volumes"][0]["State"] == "available":
                        break
                    time.sleep(0.1)
            ec2.delete_volume(VolumeId=v)
    except Exception as e:  # the emulator's shutdown detaches what is left
        log(f"cleanup in EC2 failed: {e}")


def main() -> int:
    kiln_bin, work = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    version = subprocess.run(["packer", "version"], capture_output=True, text=True, check=False).stdout
    if "1.6.6" not in version:
        sys.exit(f"bench packer: needs Debian's Packer 1.6.6 (apt-get install -y packer); found {version.strip() or 'none'}")
    for p in (f"/dev/{DEVICE}", f"/dev/{DEVICE}1", f"/dev/xvd{DEVICE[-1]}", f"/dev/xvd{DEVICE[-1]}1"):
        if os.path.exists(p):
            sys.exit(f"bench packer: {p} exists: Packer 1.6.6 would refuse it (Device is in use); remove what holds it")
    # SIGTERM and SIGHUP unwind like ^C: the cleanup in `finally` runs.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    region = os.environ.get("AWS_REGION", "us-east-1")
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    tag = f"{os.getpid()}"
    packer_host = json.loads(emulator("host", f"packer-bench-{tag}", f"{region}a", "--naming", "xen", "--dev-dir", "/dev"))
    kiln_host = json.loads(emulator("host", f"kiln-bench-{tag}", f"{region}a", "--naming", "xen"))
    template = os.path.join(work, "kiln-vs-packer.json")
    with open(template, "w", encoding="utf-8") as f:
        json.dump(TEMPLATE, f, indent=2)
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint)

    packer_calls, kiln_calls = packer_netns.Calls(), packer_netns.Calls()
    ns = packer_netns.Namespace(os.environ.get("KILN_BENCH_NETNS_PREFIX", "kiln-packer"))
    proxies = []
    ec2_start, mounts_start = ec2_inventory(ec2), mounts()
    ok = False
    try:
        ns.open()
        ep = packer_netns.host_port(endpoint)
        imds_p = packer_netns.host_port(packer_host["imds_endpoint"])
        # Packer 1.6.6 sets custom_endpoint_ec2 on its whole AWS session, so its IMDS client asks
        # that endpoint too (/latest/api/token, /latest/dynamic/instance-identity/document); the
        # proxy sends /latest/ there to the host's IMDS. 169.254.169.254 answers as well.
        ns.proxy(ep, ep, imds_p, packer_calls)
        link_local = packer_netns.Calls()
        ns.forward((packer_netns.IMDS_ADDRESS, 80), imds_p, "imds", link_local)
        kp = packer_netns.HttpProxy(packer_netns.listen_host(), ep, None, kiln_calls)
        ki = packer_netns.Forwarder(packer_netns.listen_host(), packer_netns.host_port(kiln_host["imds_endpoint"]),
                                    "imds", kiln_calls)
        proxies += [kp, ki]
        kiln_proxy = f"http://127.0.0.1:{kp.listener.getsockname()[1]}"
        kiln_imds = f"http://127.0.0.1:{ki.listener.getsockname()[1]}"
        tools = {
            "packer": Packer(packer_host, packer_calls, ns, endpoint, template, work),
            "kiln": Kiln(kiln_host, kiln_calls, kiln_bin, kiln_proxy, kiln_imds, template, work),
        }
        log(f"namespace {ns.name}; packer host {packer_host['instance_id']} (/dev), kiln host "
            f"{kiln_host['instance_id']} ({kiln_host['dev_dir']})")

        walls = {"packer": [], "kiln": []}
        phases = {"packer": [], "kiln": []}
        calls = {}
        for i in range(runs):
            order = ["packer", "kiln"] if i % 2 == 0 else ["kiln", "packer"]
            for name in order:
                before = ec2_inventory(ec2)
                logp = os.path.join(work, f"{name}-{i}.log")
                r = tools[name].run(f"kvp-{name}-{tag}-{i}", 0, None, logp)
                if r["rc"] != 0:
                    with open(logp, encoding="utf-8") as f:
                        tail = "".join(f.readlines()[-25:])
                    raise RuntimeError(f"{name} build failed (exit {r['rc']}); log {logp}:\n{tail}")
                walls[name].append(r["wall"])
                phases[name].append((r["first_call"], r["last_call"] - r["first_call"], r["wall"] - r["last_call"]))
                calls[name] = r["calls"]
                remove_artifacts(ec2, before)
                log(f"run {i + 1}: {name} {r['wall']:.2f} s, {describe_calls(r['calls']['counts'])[0]} EC2 calls")

        # The same with EBS-like times (the emulator's delays): each tool's waits now count.
        emulator("delays", region, *(f"{k}={v}" for k, v in DELAYS.items()))
        delayed = {}
        try:
            for name in ("packer", "kiln"):
                before = ec2_inventory(ec2)
                logp = os.path.join(work, f"{name}-delayed.log")
                r = tools[name].run(f"kvp-{name}-{tag}-delayed", 0, None, logp)
                if r["rc"] != 0:
                    raise RuntimeError(f"{name} build with delays failed (exit {r['rc']}); log {logp}")
                delayed[name] = r
                remove_artifacts(ec2, before)
                log(f"with delays: {name} {r['wall']:.2f} s, {describe_calls(r['calls']['counts'])[0]} EC2 calls")
            # kiln once more on the same builder: with the wait history the first build left.
            before = ec2_inventory(ec2)
            tools["kiln"].history = f"kvp-kiln-{tag}-delayed"
            try:
                r = tools["kiln"].run(f"kvp-kiln-{tag}-delayed-again", 0, None, os.path.join(work, "kiln-delayed-again.log"))
            finally:
                tools["kiln"].history = None
            if r["rc"] != 0:
                raise RuntimeError(f"kiln's second build with delays failed (exit {r['rc']})")
            delayed["kiln-again"] = r
            remove_artifacts(ec2, before)
            log(f"with delays, again: kiln {r['wall']:.2f} s, {describe_calls(r['calls']['counts'])[0]} EC2 calls")
        finally:
            emulator("delays", region)

        # Kill each in the middle of provisioning, two ways.
        kills = {}
        for mode in ("pid", "all"):
            for name in ("packer", "kiln"):
                kills[(mode, name)] = kill_run(tools[name], ec2, mode, f"kvp-{name}-{tag}-kill-{mode}", work)
        ok = True
    finally:
        if not ok:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
            emergency_cleanup(ec2, ec2_start, mounts_start)
        for d in (os.path.join(MOUNT_ROOT, DEVICE), MOUNT_ROOT):
            try:
                os.rmdir(d)  # empty mount points only: never removes anything mounted or written
            except OSError:
                pass
        for p in proxies:
            p.close()
        ns.close()

    # ---- report ----
    mp, mk = statistics.median(walls["packer"]), statistics.median(walls["kiln"])
    pc, pi, pd = describe_calls(calls["packer"]["counts"])
    kc, ki_, kd = describe_calls(calls["kiln"]["counts"])
    print(f"| measurement (same template, same machine, same run; median of {runs}) | Packer 1.6.6 | kiln | kiln / Packer |")
    print("|---|---|---|---|")
    print(f"| wall time, process start to exit | {mp:.2f} s | {mk:.2f} s | {mk / mp:.2f}x |")
    med = {n: [statistics.median(x[i] for x in phases[n]) for i in range(3)] for n in phases}
    for i, what in enumerate(("start to the first EC2 call (process start, template, plugins)",
                              "first to last EC2 call (the build)", "last EC2 call to exit")):
        a, b = med["packer"][i], med["kiln"][i]
        print(f"| {what} | {a:.2f} s | {b:.2f} s | {b / a:.2f}x |" if a > 0.005 else f"| {what} | {a:.3f} s | {b:.3f} s | |")
    print(f"| EC2 calls per build | {pc} | {kc} | {kc / pc:.2f}x |")
    print(f"| instance-metadata requests per build | {pi} | {ki_} | |")
    print(f"| ... of them to 169.254.169.254 (all runs) | {sum(link_local.snapshot()['counts'].values())} | - | |")
    dp, dk = delayed["packer"], delayed["kiln"]
    print(f"| one build with EBS-like times ({', '.join(f'{k} {v} s' for k, v in DELAYS.items())}): wall time "
          f"| {dp['wall']:.1f} s | {dk['wall']:.1f} s | {dk['wall'] / dp['wall']:.2f}x |")
    print(f"| ... its EC2 calls | {describe_calls(dp['calls']['counts'])[0]} | {describe_calls(dk['calls']['counts'])[0]} "
          f"| {describe_calls(dk['calls']['counts'])[0] / describe_calls(dp['calls']['counts'])[0]:.2f}x |")
    da = delayed["kiln-again"]
    print(f"| ... kiln's next build on the same builder (its wait history): wall time, EC2 calls | {dp['wall']:.1f} s, "
          f"{describe_calls(dp['calls']['counts'])[0]} | {da['wall']:.1f} s, {describe_calls(da['calls']['counts'])[0]} "
          f"| {da['wall'] / dp['wall']:.2f}x, {describe_calls(da['calls']['counts'])[0] / describe_calls(dp['calls']['counts'])[0]:.2f}x |")
    print()
    print(f"EC2 calls, Packer: {pd}")
    print(f"EC2 calls, kiln: {kd}")
    print(f"EC2 calls with EBS-like times, Packer: {describe_calls(dp['calls']['counts'])[2]}")
    print(f"EC2 calls with EBS-like times, kiln: {describe_calls(dk['calls']['counts'])[2]}")
    print(f"EC2 calls with EBS-like times, kiln with its wait history: {describe_calls(da['calls']['counts'])[2]}")
    print(f"walls: packer {' '.join(f'{w:.2f}' for w in walls['packer'])}; kiln {' '.join(f'{w:.2f}' for w in walls['kiln'])}")
    print()
    for mode, what in (("pid", "`kill -9` of the process started (packer / kiln)"),
                       ("all", "SIGKILL to every process of the build (its session and descendants)")):
        p, k = kills[(mode, "packer")], kills[(mode, "kiln")]
        print()
        print(f"After {what}, 1 s into the provisioner's sleep; listed once what survived the kill had finished "
              f"(Packer {p['settled']:.1f} s, kiln {k['settled']:.1f} s later):")
        print()
        print("| left behind | Packer 1.6.6 | kiln |")
        print("|---|---|---|")
        rows = list(dict.fromkeys([*p["left"], *k["left"]]))
        for row in rows:
            print(f"| {row} | {p['left'].get(row, 'none')} | {k['left'].get(row, 'none')} |")
        for name, x in (("packer", p), ("kiln", k)):
            surv = "; ".join(f"`{q['cmd'][:70]}`" for q in x["survivors"].values()) or "none"
            print()
            print(f"{name}: killed {x['killed_at']:.2f} s after start ({describe_calls(x['calls']['counts'])[0]} EC2 calls "
                  f"by then); alive 1 s after the kill: {surv}")
            print(f"{name}: removed by the bench: {'; '.join(x['cleanup']) or 'nothing'}; "
                  f"after that: {x['remaining'] or 'nothing left'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
