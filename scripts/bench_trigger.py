"""scripts/bench trigger: kiln-trigger's size, cold start and per-event latency, each against a
baseline measured in the same run (see BENCHMARKS.md).

    python scripts/bench_trigger.py TRIGGER_BINARY KILN_BINARY [ZIP]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import boto3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lambda_local import LocalLambda  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stripped_size(path: str) -> int:
    tmp = f"/tmp/kiln-bench-strip-{uuid.uuid4().hex}"
    subprocess.run(["strip", "-o", tmp, path], check=True)
    size = os.path.getsize(tmp)
    os.remove(tmp)
    return size


def main() -> int:
    trigger, kiln = sys.argv[1], sys.argv[2]
    zip_path = sys.argv[3] if len(sys.argv) > 3 else ""
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    name = f"kiln-bench-trigger-{uuid.uuid4().hex[:8]}"
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    s3.create_bucket(Bucket=name)
    env = {"KILN_QUEUE": queue, "KILN_BUCKET": name, "RUST_LOG": "warn"}
    key = "templates/busybox/busybox.pkr.hcl"
    s3.put_object(Bucket=name, Key=key, Body=open(os.path.join(ROOT, "templates/busybox.pkr.hcl"), "rb").read())
    etag = s3.head_object(Bucket=name, Key=key)["ETag"].strip('"')
    upload = json.load(open(os.path.join(ROOT, "tests/fixtures/events/s3-put.json")))
    obj = upload["Records"][0]["s3"]
    obj["bucket"]["name"] = name
    obj["object"].update(key=key, versionId="", eTag=etag, sequencer="0055AED6DCD90281E5")
    schedule = {"nightly": {"templates": ["templates/none.pkr.hcl"]}}

    # Cold start: process start to the first answer (an event that needs no AWS call beyond the
    # function's set-up), against the same function's warm answer to the same event.
    colds, warms = [], []
    for _ in range(5):
        t0 = time.monotonic()
        fn = LocalLambda(trigger, env)
        ok, body, _ = fn.invoke({"nightly": {"templates": ["elsewhere/x.json"]}})
        colds.append(time.monotonic() - t0)
        ok, body, secs = fn.invoke({"nightly": {"templates": ["elsewhere/x.json"]}})
        warms.append(secs)
        fn.stop()

    # Per-event latency: an upload event (list and fetch the template's files, parse it, send
    # the request), against the emulator's own SendMessage, both 30 times in this run.
    fn = LocalLambda(trigger, env)
    fn.invoke(upload)
    events = [fn.invoke(upload)[2] for _ in range(30)]
    fn.stop()
    sends = []
    for _ in range(30):
        t0 = time.monotonic()
        sqs.send_message(QueueUrl=queue, MessageBody="{}")
        sends.append(time.monotonic() - t0)

    sqs.delete_queue(QueueUrl=queue)
    for o in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=o["Key"])
    s3.delete_bucket(Bucket=name)
    _ = schedule

    ts, ks = stripped_size(trigger), stripped_size(kiln)
    mib = lambda b: b / (1 << 20)  # noqa: E731
    ms = lambda s: s * 1000  # noqa: E731
    c, w = statistics.median(colds), statistics.median(warms)
    e, b = statistics.median(events), statistics.median(sends)
    print("| measurement (same machine, same run) | baseline | kiln-trigger | ratio |")
    print("|---|---|---|---|")
    print(f"| binary size, stripped | kiln (worker) {mib(ks):.1f} MiB | {mib(ts):.1f} MiB | {ts / ks:.2f}x |")
    if zip_path and os.path.exists(zip_path):
        zs = os.path.getsize(zip_path)
        print(f"| bootstrap.zip (cargo lambda, x86_64) | binary {mib(ts):.1f} MiB | {mib(zs):.1f} MiB | {zs / ts:.2f}x |")
    print(f"| cold start: process start to first answer, median of 5 | warm answer {ms(w):.1f} ms | {ms(c):.0f} ms | {c / w:.0f}x |")
    print(f"| upload event to request enqueued, median of 30 | emulator SendMessage {ms(b):.1f} ms | {ms(e):.1f} ms | {e / b:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
