#!/usr/bin/env python3
"""`scripts/bench worker`: dispatch latency, memory and throughput of `kiln worker`, each next to a
baseline measured in the same run. Run by scripts/bench (which starts the emulator and builds kiln)."""

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime

import boto3

KILN = sys.argv[1]
WORK = sys.argv[2]
N_LATENCY = int(os.environ.get("BENCH_LATENCY_BUILDS", "50"))
N_THROUGHPUT = int(os.environ.get("BENCH_THROUGHPUT_BUILDS", "8"))

sqs, s3 = boto3.client("sqs"), boto3.client("s3")
ec2 = boto3.client("ec2")

TEMPLATE = """
variable "pause" {
  default = "0"
}
source "amazon-chroot" "b" {
  from_scratch            = true
  ami_name                = "kiln-bench-{{uuid}}"
  ami_virtualization_type = "hvm"
  root_device_name        = "/dev/xvda"
  root_volume_size        = 1
  copy_files              = []
  chroot_mounts           = []
  ami_block_device_mappings {
    device_name = "/dev/xvda"
  }
  pre_mount_commands  = ["mkfs.ext4 -q {{.Device}}"]
  mount_partition     = "0"
  post_mount_commands = ["sleep ${var.pause}", "echo built > {{.MountPath}}/built"]
}
build {
  sources = ["source.amazon-chroot.b"]
}
"""


def queue(name):
    return sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "120"})["QueueUrl"]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_worker(q, bucket, concurrency):
    return subprocess.Popen(
        [KILN, "-q", "worker", "--queue", q, "--bucket", bucket, "--backend", "loop",
         "--state-dir", os.path.join(WORK, "state"), "--concurrency", str(concurrency)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)


def request(build_id, bucket, key, pause=0):
    return json.dumps({"version": 1, "build_id": build_id, "template": {"bucket": bucket, "key": key},
                       "variables": {"pause": str(pause)}})


def wait_result(bucket, build_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return json.loads(s3.get_object(Bucket=bucket, Key=f"results/{build_id}.json")["Body"].read())
        except s3.exceptions.NoSuchKey:
            time.sleep(0.05)
    raise SystemExit(f"no result for {build_id}")


def cleanup(doc):
    for region, a in doc.get("artifacts", {}).items():
        c = boto3.client("ec2", region_name=region)
        c.deregister_image(ImageId=a["ami_id"])
        for s in a["snapshot_ids"]:
            c.delete_snapshot(SnapshotId=s)
        for f in a.get("snapshot_files", []):
            try:
                os.remove(f)
            except FileNotFoundError:
                pass


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")[:26] + "+00:00" if "." in s else s.replace("Z", "+00:00")).timestamp()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    tag = uuid.uuid4().hex[:8]
    bucket = f"kiln-bench-{tag}"
    s3.create_bucket(Bucket=bucket)
    key = f"t/{tag}/bench.pkr.hcl"
    s3.put_object(Bucket=bucket, Key=key, Body=TEMPLATE.encode())

    # Baseline: the emulator's own send -> receive latency with a receiver idle in a long poll.
    q0 = queue(f"kiln-bench-rtt-{tag}")
    rtts = []
    for _ in range(N_LATENCY):
        got = {}

        def recv():
            r = sqs.receive_message(QueueUrl=q0, WaitTimeSeconds=20, MaxNumberOfMessages=1)
            got["t"] = time.time()
            for m in r.get("Messages", []):
                sqs.delete_message(QueueUrl=q0, ReceiptHandle=m["ReceiptHandle"])
        t = threading.Thread(target=recv)
        t.start()
        time.sleep(0.2)  # the receiver is in its long poll
        sent = time.time()
        sqs.send_message(QueueUrl=q0, MessageBody="ping")
        t.join()
        rtts.append(got["t"] - sent)

    # kiln: send -> first step started, worker idle in its long poll.
    q1 = queue(f"kiln-bench-lat-{tag}")
    w = start_worker(q1, bucket, 1)
    time.sleep(2)
    idle_rss = rss_kib(w.pid)
    lat = []
    for i in range(N_LATENCY):
        bid = f"lat-{tag}-{i}"
        time.sleep(0.3)  # back in its long poll
        sent = time.time()
        sqs.send_message(QueueUrl=q1, MessageBody=request(bid, bucket, key))
        doc = wait_result(bucket, bid)
        lat.append(ts(doc["steps"][0]["started_at"]) - sent)
        cleanup(doc)
    stop(w)

    # Checkpoint cost: the journal writes of one build (the journal counts them: create, batched
    # step records, renewals, finish), timed one after another against the emulator, next to the
    # mean wall time of the builds above.
    durations = []
    writes_per_build = []
    for i in range(N_LATENCY):
        bid = f"lat-{tag}-{i}"
        doc = json.loads(s3.get_object(Bucket=bucket, Key=f"results/{bid}.json")["Body"].read())
        durations.append(doc["duration_s"])
        j = json.loads(s3.get_object(Bucket=bucket, Key=f"checkpoints/{bid}.json")["Body"].read())
        writes_per_build.append(j["writes"])
    journal = {"build_id": "bench", "owner": {"instance_id": "i-1", "worker_id": "w"}, "lease_expires": 0,
               "attempt": 1, "status": "running", "steps": []}
    key_j = f"checkpoints/bench-{tag}.json"
    writes = round(statistics.mean(writes_per_build))
    t0 = time.time()
    etag = s3.put_object(Bucket=bucket, Key=key_j, Body=json.dumps(journal).encode(), IfNoneMatch="*")["ETag"]
    for k in range(writes - 1):
        journal["steps"].append([f"step-{k}", {"volume_id": "vol-0123456789abcdef0", "device": "/dev/kiln/xvdf"}])
        etag = s3.put_object(Bucket=bucket, Key=key_j, Body=json.dumps(journal).encode(), IfMatch=etag)["ETag"]
    journal_s = time.time() - t0
    mean_build = statistics.mean(durations)

    # Throughput and memory with four builds running.
    results = {}
    peak = {}
    for conc in (1, 4):
        q = queue(f"kiln-bench-tp{conc}-{tag}")
        w = start_worker(q, bucket, conc)
        time.sleep(1)
        ids = [f"tp{conc}-{tag}-{i}" for i in range(N_THROUGHPUT)]
        start = time.time()
        for bid in ids:
            sqs.send_message(QueueUrl=q, MessageBody=request(bid, bucket, key, pause=1))
        peak[conc] = 0
        docs = []
        for bid in ids:
            while True:
                peak[conc] = max(peak[conc], rss_kib(w.pid))
                try:
                    docs.append(json.loads(s3.get_object(Bucket=bucket, Key=f"results/{bid}.json")["Body"].read()))
                    break
                except s3.exceptions.NoSuchKey:
                    time.sleep(0.05)
        elapsed = time.time() - start
        stop(w)
        assert all(d["status"] == "succeeded" for d in docs), [d.get("error") for d in docs]
        for d in docs:
            cleanup(d)
        results[conc] = N_THROUGHPUT / elapsed * 60

    ms = lambda x: f"{x * 1000:.0f} ms"
    print(f"| measurement (same machine, same run) | baseline | kiln | ratio / difference |")
    print("|---|---|---|---|")
    p50r, p95r, p50k, p95k = statistics.median(rtts), pct(rtts, 95), statistics.median(lat), pct(lat, 95)
    print(f"| dispatch latency p50, {N_LATENCY} builds (send -> first step started; baseline: emulator send -> receive) | {ms(p50r)} | {ms(p50k)} | +{ms(p50k - p50r)} |")
    print(f"| dispatch latency p95 | {ms(p95r)} | {ms(p95k)} | +{ms(p95k - p95r)} |")
    print(f"| resident memory, idle worker in a long poll | - | {idle_rss / 1024:.1f} MiB | goal < 30 MiB |")
    print(f"| resident memory, peak with 4 builds running | idle {idle_rss / 1024:.1f} MiB | {peak[4] / 1024:.1f} MiB | {peak[4] / max(idle_rss, 1):.2f}x |")
    print(f"| builds per minute, {N_THROUGHPUT} small builds (1 s provisioning each) | concurrency 1: {results[1]:.1f} | concurrency 4: {results[4]:.1f} | {results[4] / results[1]:.2f}x |")
    print(f"| checkpoint journal: {writes} conditional S3 writes per build (measured from the journals) | build wall time {mean_build * 1000:.0f} ms (mean of {N_LATENCY}) | the same writes, timed one after another: {journal_s * 1000:.0f} ms | +{journal_s / mean_build * 100:.1f}% if on the critical path |")


main()
