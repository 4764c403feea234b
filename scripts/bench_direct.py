#!/usr/bin/env python3
"""`scripts/bench direct`: kiln's `direct` backend against `ebs` on an app layer over the Debian
example, in one run on the emulator with AWS-like resource times (scaled down).

    bench_direct.py KILN WORK RUNS

Run by `scripts/bench direct` with the emulator's exports in the environment (its own emulator
directory). Steps:

1. The base: `templates/debian` (volume_size 2) built once on `ebs` with no delays, copied by
   CopyImage to COPY_REGION (kiln tags the copy's snapshot `kiln:copy-of`, which is how `direct`
   finds the parent there).
2. AWS-like delays in both regions (DELAYS_AWS below, divided by BENCH_SCALE, default 10; the
   PutSnapshotBlock latency is not scaled). BENCHMARKS.md gives their sources.
3. RUNS times, interleaved: an app layer (BENCH_APP_MB of random data and a small file) on the
   base, built (a) on ebs in one region, (b) on direct in one region with a cold cache (the base
   read with GetSnapshotBlock first) and again warm, (c) on ebs with ami_regions = [COPY_REGION]
   (CopyImage; that region's image delay is then the CopyImage time), (d) on direct with the same
   two regions (RegisterImage there: its image delay is RegisterImage's again).
4. Medians: time to AMI (wall time of `kiln build --json`, and the storage steps' sum from the
   result's steps[].duration_s), blocks and bytes moved, EBS direct calls (the emulator's
   per-snapshot counts), ratios direct / ebs.

Settings (environment): BENCH_SCALE, BENCH_APP_MB, BENCH_COPY_REGION, BENCH_PUT_BLOCK_S, and
BENCH_BASE_RESULT (the base's result document from an earlier run on the same emulator: no base
build). Every app build's AMIs and snapshots are removed after it is measured; the base and the
emulator go with the run (`scripts/bench` stops the emulator and removes WORK).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import boto3

KILN, WORK, RUNS = sys.argv[1], sys.argv[2], int(sys.argv[3])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGION = os.environ.get("AWS_REGION", "us-east-1")
COPY_REGION = os.environ.get("BENCH_COPY_REGION", "us-west-2")
SCALE = float(os.environ.get("BENCH_SCALE", "10"))
APP_MB = int(os.environ.get("BENCH_APP_MB", "200"))
BLOCK = 512 * 1024
DATA = os.environ["KILN_EMULATOR_DATA"]
STATE = os.path.join(WORK, "state")

# AWS-like times in seconds (sources in BENCHMARKS.md), divided by SCALE in the emulator.
DELAYS_AWS = {
    "volume": 10.0,  # CreateVolume from a snapshot: creating -> available
    "attachment": 5.0,  # AttachVolume: attaching -> attached
    "detachment": 5.0,  # DetachVolume: detaching -> detached
    "snapshot": 180.0,  # CreateSnapshot of a volume with a few hundred MB changed: pending -> completed
    "image": 10.0,  # RegisterImage of a completed snapshot: pending -> available
    "direct": 30.0,  # CompleteSnapshot -> completed (no published figure: an assumption)
}
COPY_IMAGE_AWS = 900.0  # CopyImage to another region: pending -> available (15 min)
PUT_BLOCK_S = float(os.environ.get("BENCH_PUT_BLOCK_S", "0.1"))  # per request, not scaled

EBS_STEPS = ["create-volume", "attach-volume", "early-cleanup", "snapshot", "register-image", "copy-regions"]
DIRECT_STEPS = ["read-source", "early-cleanup", "upload-delta", "register-image", "register-regions"]


def log(msg: str) -> None:
    print(f"bench direct: {msg}", file=sys.stderr, flush=True)


def emulator(*args: str) -> str:
    return subprocess.run([os.path.join(ROOT, "scripts", "emulator"), *args], check=True,
                          capture_output=True, text=True).stdout


def set_delays(region: str, image_s: float) -> None:
    d = {k: v / SCALE for k, v in DELAYS_AWS.items()}
    d["image"] = image_s / SCALE
    d["put-block"] = PUT_BLOCK_S
    emulator("delays", region, *(f"{k}={v:g}" for k, v in d.items()))


def no_delays(region: str) -> None:
    emulator("delays", region)


def build(template: str, backend: str, label: str, extra: list[str] | None = None) -> tuple[float, dict]:
    out = os.path.join(WORK, f"result-{label}.json")
    err = os.path.join(WORK, f"log-{label}.txt")
    cmd = [KILN, "-q", "build", "--backend", backend, "--state-dir", STATE, "--json", *(extra or []), template]
    t0 = time.monotonic()
    with open(out, "w") as fo, open(err, "w") as fe:
        rc = subprocess.run(cmd, stdout=fo, stderr=fe).returncode
    wall = time.monotonic() - t0
    try:
        doc = json.load(open(out))
    except ValueError:
        doc = {}
    if rc != 0:
        log(f"{label}: `{' '.join(cmd)}` exited {rc}: {json.dumps(doc.get('error'))}")
        sys.stderr.write("".join(open(err).readlines()[-30:]))
        sys.exit(1)
    return wall, doc


def steps(doc: dict) -> dict[str, dict]:
    return {s["name"]: s for s in doc["steps"]}


def step_sum(doc: dict, names: list[str]) -> float:
    st = steps(doc)
    return sum(st[n]["duration_s"] for n in names if n in st)


def cleanup(doc: dict) -> None:
    for region, a in doc.get("artifacts", {}).items():
        ec2 = boto3.client("ec2", region_name=region)
        ec2.deregister_image(ImageId=a["ami_id"])
        for s in a["snapshot_ids"]:
            ec2.delete_snapshot(SnapshotId=s)


# -- blocks of the emulator's snapshot files ---------------------------------------------------------
def snapshot_file(snapshot_id: str) -> str:
    return os.path.join(DATA, "snapshots", f"{snapshot_id}.img")


def data_blocks(path: str) -> set[int]:
    """The 512 KiB blocks of a sparse file that hold allocated data (SEEK_DATA/SEEK_HOLE)."""
    out: set[int] = set()
    fd = os.open(path, os.O_RDONLY)
    try:
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.update(range(d // BLOCK, (h + BLOCK - 1) // BLOCK))
            off = h
    finally:
        os.close(fd)
    return out


_BASE_BLOCKS: dict[str, set[int]] = {}


def changed_against(child: str, parent: str) -> int:
    """Blocks whose contents differ between two snapshot files (what an incremental snapshot of
    the child on top of the parent must hold at least)."""
    pb = _BASE_BLOCKS.setdefault(parent, data_blocks(parent))
    n = 0
    with open(child, "rb") as fc, open(parent, "rb") as fp:
        for i in sorted(pb | data_blocks(child)):
            fc.seek(i * BLOCK)
            fp.seek(i * BLOCK)
            if fc.read(BLOCK) != fp.read(BLOCK):
                n += 1
    return n


# -- templates ----------------------------------------------------------------------------------------
def base_template() -> str:
    """templates/debian with ami_regions = [COPY_REGION] (a copy in WORK; the example is untouched)."""
    d = os.path.join(WORK, "debian")
    shutil.copytree(os.path.join(ROOT, "templates", "debian"), d)
    path = os.path.join(d, "debian.pkr.hcl")
    text = open(path).read()
    text, n = re.subn(r"(\n  root_volume_size\s*=.*\n)", rf'\1  ami_regions             = ["{COPY_REGION}"]\n', text)
    assert n == 1, "templates/debian: no root_volume_size line to put ami_regions after"
    open(path, "w").write(text)
    return d


def app_template(source_ami: str, regions: list[str], label: str) -> str:
    path = os.path.join(WORK, f"app-{label}.pkr.hcl")
    regs = ", ".join(f'"{r}"' for r in regions)
    open(path, "w").write(f'''
source "amazon-chroot" "app" {{
  source_ami  = "{source_ami}"
  ami_name    = "kiln-bench-direct-{label}-{{{{timestamp}}}}-{{{{uuid}}}}"
  ami_regions = [{regs}]
  # templates/debian: partition 1 is the EFI system partition, the root file system is 2.
  mount_partition = "2"
  tags        = {{ Name = "kiln-bench-direct-app" }}
}}
build {{
  sources = ["source.amazon-chroot.app"]
  provisioner "shell" {{
    inline = [
      "dd if=/dev/urandom of=/opt/app.bin bs=1M count={APP_MB} 2>/dev/null",
      "echo app-1.0 > /etc/app-version",
    ]
  }}
}}
''')
    return path


# -- the run ------------------------------------------------------------------------------------------
def main() -> None:
    for r in (REGION, COPY_REGION):
        no_delays(r)
    log(f"base: templates/debian (volume_size 2) on ebs, copied to {COPY_REGION} (debootstrap: needs the network)")
    t0 = time.monotonic()
    if os.environ.get("BENCH_BASE_RESULT"):  # a base an earlier run made on this emulator
        base = json.load(open(os.environ["BENCH_BASE_RESULT"]))
    else:
        _, base = build(base_template(), "ebs", "base", ["--var", "volume_size=2"])
    log(f"base built in {time.monotonic() - t0:.0f} s: {base['artifacts'][REGION]['ami_id']}")
    base_ami = base["artifacts"][REGION]["ami_id"]
    base_snap = base["artifacts"][REGION]["snapshot_ids"][0]
    base_file = snapshot_file(base_snap)
    base_data_blocks = len(data_blocks(base_file))

    for r in (REGION, COPY_REGION):
        set_delays(r, DELAYS_AWS["image"])

    rows: dict[str, list[dict]] = {k: [] for k in ("ebs1", "cold1", "warm1", "ebs2", "direct2")}
    step_names: dict[str, list[str]] = {}

    def measure(key: str, backend: str, regions: list[str], i: int) -> dict:
        label = f"{key}-{i}"
        wall, doc = build(app_template(base_ami, regions, label), backend, label)
        st = steps(doc)
        step_names.setdefault(key, [s["name"] for s in doc["steps"]])
        row = {"wall": wall, "duration": doc["duration_s"],
               "steps": {n: s["duration_s"] for n, s in st.items()}}
        if backend == "ebs":
            row["storage"] = step_sum(doc, EBS_STEPS)
            child = doc["artifacts"][REGION]["snapshot_ids"][0]
            row["changed_blocks"] = changed_against(snapshot_file(child), base_file)
            row["image_blocks"] = len(data_blocks(snapshot_file(child)))
        else:
            row["storage"] = step_sum(doc, DIRECT_STEPS)
            rs, up = st["read-source"]["outputs"], st["upload-delta"]["outputs"]
            row.update(cache_hit=rs["cache_hit"], bytes_read=rs["bytes_read"], source_blocks=rs["source_blocks"],
                       changed_blocks=up["changed_blocks"], changed_bytes=up["changed_bytes"],
                       image_blocks=up["image_blocks"],
                       regions=[{k: r[k] for k in ("region", "puts", "bytes", "full_upload", "throttled")}
                                for r in up["regions"]])
            direct = json.loads(emulator("state")).get("direct", {})
            row["emulator"] = {r["region"]: direct.get(r["snapshot_id"], {}) for r in up["regions"]}
        cleanup(doc)
        rows[key].append(row)
        return row

    for i in range(1, RUNS + 1):
        a = measure("ebs1", "ebs", [], i)
        shutil.rmtree(os.path.join(STATE, "direct", "cache"), ignore_errors=True)
        b1 = measure("cold1", "direct", [], i)
        b2 = measure("warm1", "direct", [], i)
        set_delays(COPY_REGION, COPY_IMAGE_AWS)  # its images are CopyImage's now
        try:
            c = measure("ebs2", "ebs", [COPY_REGION], i)
        finally:
            set_delays(COPY_REGION, DELAYS_AWS["image"])
        d = measure("direct2", "direct", [COPY_REGION], i)
        log(f"run {i}: ebs {a['wall']:.1f} s, direct cold {b1['wall']:.1f} s, warm {b2['wall']:.1f} s; "
            f"two regions: ebs+CopyImage {c['wall']:.1f} s, direct {d['wall']:.1f} s")

    for r in (REGION, COPY_REGION):
        no_delays(r)
    json.dump({"rows": rows, "step_names": step_names, "base_data_blocks": base_data_blocks,
               "delays_aws": DELAYS_AWS, "copy_image_aws": COPY_IMAGE_AWS, "scale": SCALE,
               "put_block_s": PUT_BLOCK_S, "app_mb": APP_MB},
              open(os.path.join(WORK, "bench-direct.json"), "w"), indent=1)
    report(rows, step_names, base_data_blocks)


def report(rows: dict[str, list[dict]], step_names: dict[str, list[str]], base_data_blocks: int) -> None:
    med = lambda key, f: statistics.median(f(r) for r in rows[key])  # noqa: E731
    mib = lambda b: b / 1048576  # noqa: E731
    w = {k: med(k, lambda r: r["wall"]) for k in rows}
    s = {k: med(k, lambda r: r["storage"]) for k in rows}
    ebs_changed = med("ebs1", lambda r: r["changed_blocks"])
    ebs_image = med("ebs1", lambda r: r["image_blocks"])
    d1 = rows["warm1"][0]
    d2 = rows["direct2"][0]
    cold = rows["cold1"][0]
    puts2 = [r["puts"] for r in d2["regions"]]
    emu_puts2 = [d2["emulator"][r["region"]].get("puts") for r in d2["regions"]]
    print(f"Delays (AWS-like seconds / {SCALE:g}): " + ", ".join(f"{k} {v / SCALE:g} s" for k, v in DELAYS_AWS.items())
          + f", CopyImage (image in {COPY_REGION} for the ebs two-region build) {COPY_IMAGE_AWS / SCALE:g} s, "
            f"PutSnapshotBlock {PUT_BLOCK_S:g} s per request (not scaled)")
    print()
    print(f"| measurement (median of {RUNS} runs, same run) | ebs | direct | direct / ebs |")
    print("|---|---|---|---|")
    print(f"| one region, time to AMI (wall time of `kiln build --json`), warm cache | {w['ebs1']:.1f} s | {w['warm1']:.1f} s | {w['warm1'] / w['ebs1']:.2f}x |")
    print(f"| one region, time to AMI, cold cache (the base read first) | {w['ebs1']:.1f} s | {w['cold1']:.1f} s | {w['cold1'] / w['ebs1']:.2f}x |")
    print(f"| one region, storage steps (sum of their duration_s) | {s['ebs1']:.1f} s | warm {s['warm1']:.1f} s, cold {s['cold1']:.1f} s | {s['warm1'] / s['ebs1']:.2f}x, {s['cold1'] / s['ebs1']:.2f}x |")
    print(f"| two regions, time to AMI in both (ebs: CopyImage) | {w['ebs2']:.1f} s | {w['direct2']:.1f} s | {w['direct2'] / w['ebs2']:.2f}x |")
    print(f"| two regions, storage steps | {s['ebs2']:.1f} s | {s['direct2']:.1f} s | {s['direct2'] / s['ebs2']:.2f}x |")
    print(f"| blocks that differ from the parent (512 KiB) | {ebs_changed:.0f} ({mib(ebs_changed * BLOCK):.0f} MiB, child vs parent snapshot files) | {d1['changed_blocks']} ({mib(d1['changed_bytes']):.0f} MiB, upload-delta) | {d1['changed_blocks'] / ebs_changed:.2f}x |")
    print(f"| bytes read from snapshots by the builder | 0 (EBS loads the volume) | cold {mib(cold['bytes_read']):.0f} MiB ({cold['source_blocks']} GetSnapshotBlock), warm {mib(d1['bytes_read']):.0f} MiB | |")
    print(f"| bytes to the second region | CopyImage: image {mib(ebs_image * BLOCK):.0f} MiB in full on a first copy | {mib(d2['regions'][-1]['bytes']):.0f} MiB ({puts2[-1]} PutSnapshotBlock), full_upload {d2['regions'][-1]['full_upload']} | {d2['regions'][-1]['bytes'] / (ebs_image * BLOCK):.2f}x |")
    print(f"| EBS direct calls per build (one region / two regions) | 0 | PutSnapshotBlock {d1['regions'][0]['puts']} / {'+'.join(map(str, puts2))} (emulator: {'+'.join(map(str, emu_puts2))}), throttled {sum(r['throttled'] for r in d2['regions'])} | |")
    print()
    print(f"Base image: {base_data_blocks} blocks with data ({mib(base_data_blocks * BLOCK):.0f} MiB).")
    print("Median step durations (s):")
    for k in rows:
        names = step_names[k]
        print(f"  {k}: " + ", ".join(f"{n} {statistics.median(r['steps'].get(n, 0) for r in rows[k]):.2f}" for n in names))
    print("Every run:")
    for k in rows:
        print(f"  {k}: wall " + " ".join(f"{r['wall']:.1f}" for r in rows[k]) + "; storage " + " ".join(f"{r['storage']:.1f}" for r in rows[k]))


if __name__ == "__main__":
    main()
