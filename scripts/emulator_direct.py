"""The emulator's EBS direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot, GetSnapshotBlock,
ListSnapshotBlocks, ListChangedBlocks), as AWS's API reference describes them.

Imported by `emulator_launcher.py` (section 15; never by kiln). moto's own implementation is unfaithful
(512-byte blocks, no checksums, no pagination, a leaked volume per snapshot, blocks in memory); this one
answers every request whose SigV4 credential scope names the `ebs` service, from the launcher's WSGI
middleware:

- Blocks are 524288 bytes. A snapshot's data is the data plane's snapshot file (`Plane.snapshot_file`),
  so EC2 sees the same data: the snapshot is an EC2 snapshot (VolumeId `vol-ffffffff`, `pending` until
  CompleteSnapshot and the region's `direct` delay, then `completed`), CreateVolume, RegisterImage,
  CopyImage and CopySnapshot use its file, DeleteSnapshot removes it.
- A child (ParentSnapshotId) starts as a sparse copy of its parent's file and inherits the parent's
  written blocks.
- Checksums (per block and the linear aggregate), ChangedBlocksCount, block and page tokens, MaxResults,
  Timeout and ClientToken are checked as AWS checks them; errors are restJson1 (`x-amzn-ErrorType`,
  `{"Message", "Reason"}`) with AWS's status codes.
- On request (`POST /_kiln/throttle-direct`) a share of the calls answer 400 RequestThrottledException;
  every snapshot's calls are counted (`direct` in `/_kiln/state`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import uuid
from typing import Callable
from urllib.parse import parse_qs, unquote

from moto.ec2.models import ec2_backends
from moto.ec2.models.elastic_block_store import Snapshot
from moto.ec2.utils import random_snapshot_id

import emulator_ebs

# AWS: "Currently, the only supported size is 524288 bytes" (PutSnapshotBlock DataLength).
BLOCK_SIZE = 524288
ZERO_BLOCK = bytes(BLOCK_SIZE)
GIB = 1 << 30
BLOCKS_PER_GIB = GIB // BLOCK_SIZE
# AWS: "The maximum size is 65536 GiB (64 TiB)" (StartSnapshot VolumeSize).
MAX_VOLUME_SIZE = 65536
# StartSnapshot Timeout: minutes, default 60, valid 10..4320 (API reference).
DEFAULT_TIMEOUT_MIN = 60
TIMEOUT_RANGE = (10, 4320)
# ListSnapshotBlocks/ListChangedBlocks MaxResults: 100..10000, default 10000 (API reference).
MAX_RESULTS_RANGE = (100, 10000)
DEFAULT_MAX_RESULTS = 10000
# How long a block token stays valid (ExpiryTime); AWS does not document its value.
TOKEN_TTL = 7 * 24 * 3600
# AWS: snapshots made by StartSnapshot report this VolumeId ("arbitrary volume ID").
DIRECT_VOLUME_ID = "vol-ffffffff"
ACTIONS = (
    "StartSnapshot",
    "PutSnapshotBlock",
    "CompleteSnapshot",
    "GetSnapshotBlock",
    "ListSnapshotBlocks",
    "ListChangedBlocks",
)
# The restJson1 status of each success (the service model's responseCode).
SUCCESS = {"StartSnapshot": 201, "PutSnapshotBlock": 201, "CompleteSnapshot": 202}
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 404: "Not Found",
           409: "Conflict", 500: "Internal Server Error"}
SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/ebs/aws4_request")


class DirectError(Exception):
    """An AWS error answer: HTTP status, error type (`x-amzn-ErrorType`), message, reason."""

    def __init__(self, status: int, code: str, message: str, reason: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.reason = status, code, message, reason


def _invalid(message: str, reason: str = "INVALID_PARAMETER_VALUE") -> DirectError:
    return DirectError(400, "ValidationException", message, reason)


def _not_found(snapshot_id: str) -> DirectError:
    return DirectError(404, "ResourceNotFoundException",
                       f"The snapshot '{snapshot_id}' does not exist.", "SNAPSHOT_NOT_FOUND")


class DirectVolume:
    """The volume an EBS-direct snapshot reports: none really exists (DescribeVolumes never shows it)."""

    def __init__(self, size: int, encrypted: bool):
        self.id = DIRECT_VOLUME_ID
        self.size = size
        self.encrypted = encrypted


class Record:
    """One StartSnapshot snapshot's EBS-direct state."""

    def __init__(self, snapshot_id: str, region: str, account: str, size: int, parent: str | None,
                 timeout_min: int, inherited: set[int]):
        self.id = snapshot_id
        self.region = region
        self.account = account
        self.size = size
        self.parent = parent
        self.started = time.time()
        self.deadline = self.started + timeout_min * 60
        self.inherited = inherited  # blocks an ancestor wrote
        self.written: dict[int, bytes] = {}  # block index -> raw SHA-256 digest
        self.sealed = False  # CompleteSnapshot accepted
        self.ready_at = 0.0  # when a sealed snapshot is completed (the `direct` delay)
        self.sealed_at = 0.0
        self.progress = 0
        self.deleted = False
        self.lock = threading.Lock()  # puts and completion of this snapshot

    def status(self) -> str:
        if self.sealed:
            return "completed" if time.time() >= self.ready_at else "pending"
        return "error" if time.time() > self.deadline else "pending"

    def ec2_progress(self) -> str:
        if self.sealed:
            if time.time() >= self.ready_at:
                return "100%"
            total = max(self.ready_at - self.sealed_at, 1e-6)
            done = (time.time() - self.sealed_at) / total
            return f"{min(99, self.progress + int(done * (99 - self.progress)))}%"
        return f"{min(99, self.progress)}%"


class DirectSnapshot(Snapshot):
    """The EC2 view of an EBS-direct snapshot: its state follows the direct record."""

    # moto's model metaclass files every model under the service its module names.
    __module__ = "moto.ec2.kiln_direct"
    _kiln_direct: Record | None = None

    def _status_get(self) -> str:
        rec = self._kiln_direct
        return rec.status() if rec is not None else self.__dict__.get("_kiln_status", "completed")

    def _status_set(self, value: str) -> None:
        self.__dict__["_kiln_status"] = value

    status = property(_status_get, _status_set)
    state = property(_status_get)

    @property
    def progress(self) -> str:
        rec = self._kiln_direct
        return rec.ec2_progress() if rec is not None else "100%"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _block_indices_with_data(path: str, limit: int) -> set[int]:
    """The blocks below `limit` that hold a non-zero byte: SEEK_DATA/SEEK_HOLE find the allocated
    ranges (an 8 GiB sparse file is a few calls), then only their blocks are read."""
    out: set[int] = set()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return out
    try:
        end = min(os.fstat(fd).st_size, limit * BLOCK_SIZE)
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            if start >= end:
                break
            stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
            for index in range(start // BLOCK_SIZE, (stop - 1) // BLOCK_SIZE + 1):
                if index in out:
                    continue
                data = os.pread(fd, BLOCK_SIZE, index * BLOCK_SIZE)
                if data != ZERO_BLOCK[: len(data)]:
                    out.add(index)
            pos = stop
    finally:
        os.close(fd)
    return out


class Direct:
    """The EBS direct APIs of one emulator. `lock` is the launcher's global lock (held only around
    moto's EC2 state, never while a block is hashed, written, or a delay sleeps)."""

    def __init__(self, lock: threading.RLock, plane: Callable[[], emulator_ebs.Plane | None],
                 delay_for: Callable[[str, str], float]):
        self.lock = lock
        self.plane = plane
        self.delay_for = delay_for
        self.mutex = threading.Lock()  # the records, tokens, stats and throttle below
        self.start_lock = threading.Lock()  # one StartSnapshot at a time (ClientToken checks)
        self.secret = secrets.token_bytes(32)
        self.records: dict[str, Record] = {}
        self.tokens: dict[tuple, tuple[str, str]] = {}  # (account, region, token) -> (id, params)
        self.stats: dict[str, dict] = {}
        self.throttle: dict = {"share": 0.0, "actions": list(ACTIONS), "snapshot": "", "region": "",
                               "seen": 0, "throttled": 0}
        self.listed: dict[str, tuple[tuple, set[int]]] = {}  # path -> (stat key, blocks with data)

    # -- control ----------------------------------------------------------------------------------
    def set_throttle(self, body: dict) -> dict:
        share = float(body["share"])
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within 0..1, got {share}")
        actions = [str(a) for a in body.get("actions") or ACTIONS]
        unknown = set(actions) - set(ACTIONS)
        if unknown:
            raise ValueError(f"unknown actions {sorted(unknown)}; known: {list(ACTIONS)}")
        with self.mutex:
            self.throttle = {"share": share, "actions": actions,
                             "snapshot": str(body.get("snapshot") or ""),
                             "region": str(body.get("region") or ""), "seen": 0, "throttled": 0}
            return dict(self.throttle)

    def state(self) -> dict:
        with self.mutex:
            out = {}
            for sid, s in self.stats.items():
                rec = self.records.get(sid)
                entry = dict(s)
                if rec is not None:
                    entry.update(written=len(rec.written), parent=rec.parent,
                                 status="deleted" if rec.deleted else rec.status())
                out[sid] = entry
            return out

    def reset(self) -> None:
        with self.mutex:
            self.records.clear()
            self.tokens.clear()
            self.stats.clear()
            self.listed.clear()
            self.throttle = {"share": 0.0, "actions": list(ACTIONS), "snapshot": "", "region": "",
                             "seen": 0, "throttled": 0}

    def snapshot_deleted(self, snapshot_id: str) -> None:
        """DeleteSnapshot (hooked by the launcher): the snapshot's puts now fail, its stats stay."""
        rec = self.records.get(snapshot_id)
        if rec is not None:
            rec.deleted = True

    def _stat(self, snapshot_id: str) -> dict:
        return self.stats.setdefault(
            snapshot_id, {"puts": 0, "throttled": 0, "written": 0, "parent": None, "status": None}
        )

    # -- dispatch ---------------------------------------------------------------------------------
    @staticmethod
    def region_of(environ: dict) -> str | None:
        """The region of a request signed for the `ebs` service, else None."""
        m = SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        return m.group(1) if m else None

    def handle(self, environ: dict, body: bytes, from_kiln: bool, account: str):
        """Answers one EBS direct request: (status line, headers, body)."""
        region = self.region_of(environ) or "us-east-1"
        method = environ.get("REQUEST_METHOD", "")
        parts = [unquote(p) for p in environ.get("PATH_INFO", "").strip("/").split("/")]
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        try:
            action, snapshot_id = self._route(method, parts)
            self._maybe_throttle(action, snapshot_id, region)
            handler = getattr(self, "_" + re.sub(r"(?<!^)([A-Z])", r"_\1", action).lower())
            status, out_headers, data = handler(
                region=region, account=account, parts=parts, query=query, headers=headers,
                body=body, from_kiln=from_kiln,
            )
        except DirectError as e:
            doc = {"Message": e.message}
            if e.reason:
                doc["Reason"] = e.reason
            status, data = e.status, json.dumps(doc).encode()
            out_headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", e.code)]
        out_headers.append(("x-amzn-RequestId", str(uuid.uuid4())))
        out_headers.append(("Content-Length", str(len(data))))
        return f"{status} {REASONS.get(status, 'Error')}", out_headers, data

    @staticmethod
    def _route(method: str, parts: list[str]) -> tuple[str, str | None]:
        if parts == ["snapshots"] and method == "POST":
            return "StartSnapshot", None
        if len(parts) == 3 and parts[:2] == ["snapshots", "completion"] and method == "POST":
            return "CompleteSnapshot", parts[2]
        if len(parts) == 4 and parts[0] == "snapshots" and parts[2] == "blocks":
            if method == "PUT":
                return "PutSnapshotBlock", parts[1]
            if method == "GET":
                return "GetSnapshotBlock", parts[1]
        if len(parts) == 3 and parts[0] == "snapshots" and method == "GET":
            if parts[2] == "blocks":
                return "ListSnapshotBlocks", parts[1]
            if parts[2] == "changedblocks":
                return "ListChangedBlocks", parts[1]
        raise DirectError(404, "UnknownOperationException",
                          f"No EBS direct operation {method} /{'/'.join(parts)}")

    def _maybe_throttle(self, action: str, snapshot_id: str | None, region: str) -> None:
        """Answers a `share` of the matching calls as AWS answers a throttled one: evenly spread
        (the k-th matching call is throttled when floor(k * share) grows), so a test can count."""
        with self.mutex:
            t = self.throttle
            if t["share"] <= 0 or action not in t["actions"]:
                return
            if t["snapshot"] and t["snapshot"] not in (snapshot_id or ""):
                return
            if t["region"] and t["region"] != region:
                return
            seen = t["seen"]
            t["seen"] = seen + 1
            if int((seen + 1) * t["share"]) == int(seen * t["share"]):
                return
            t["throttled"] += 1
            if snapshot_id:
                self._stat(snapshot_id)["throttled"] += 1
        raise DirectError(
            400, "RequestThrottledException",
            "The number of API requests has exceeded the maximum allowed API request throttling "
            "limit for the snapshot.",
            "RESOURCE_LEVEL_THROTTLE" if snapshot_id else "ACCOUNT_THROTTLED",
        )

    # -- snapshots --------------------------------------------------------------------------------
    def _ec2_snapshot(self, account: str, region: str, snapshot_id: str):
        with self.lock:
            snap = ec2_backends[account][region].snapshots.get(snapshot_id)
        if snap is None:
            raise _not_found(snapshot_id)
        return snap

    def _file(self, snapshot_id: str) -> str:
        plane = self.plane()
        if plane is None:
            raise DirectError(500, "InternalServerException", "the data plane is not ready")
        return plane.snapshot_file(snapshot_id)

    def _pending_record(self, account: str, region: str, snapshot_id: str) -> Record:
        """The record of a snapshot that accepts writes (call with its lock held)."""
        rec = self.records.get(snapshot_id)
        if rec is None or rec.deleted or rec.region != region:
            self._ec2_snapshot(account, region, snapshot_id)  # 404 if it does not exist at all
            raise _invalid(f"The snapshot '{snapshot_id}' was not started by StartSnapshot and "
                           "accepts no blocks.", "INVALID_SNAPSHOT_ID")
        status = rec.status()
        if rec.sealed or status != "pending":
            raise _invalid(f"The snapshot '{snapshot_id}' is in the '{status}' state, not "
                           "'pending'; it accepts no more blocks.", "INVALID_SNAPSHOT_ID")
        return rec

    def _size_of(self, snap) -> int:
        return int(snap.volume_size)

    def _start_snapshot(self, *, region: str, account: str, body: bytes, from_kiln: bool, **_):
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            raise _invalid("The request body is not JSON.") from None
        size = req.get("VolumeSize")
        if not isinstance(size, int) or isinstance(size, bool):
            raise _invalid("VolumeSize is required (an integer number of GiB).", "INVALID_VOLUME_SIZE")
        if not 1 <= size <= MAX_VOLUME_SIZE:
            raise _invalid(f"Invalid volume size: {size}", "INVALID_VOLUME_SIZE")
        tags = req.get("Tags") or []
        if not all(isinstance(t, dict) and isinstance(t.get("Key"), str) for t in tags):
            raise _invalid("Every tag needs a Key.", "INVALID_TAG")
        if from_kiln and not any(t["Key"] == "kiln:build-id" for t in tags):
            raise DirectError(
                400, "KilnUntaggedResource",
                "StartSnapshot without the kiln:build-id tag: kiln tags everything it creates at "
                "creation (the kiln emulator refuses this so no test misses a leak)",
            )
        timeout = req.get("Timeout", DEFAULT_TIMEOUT_MIN)
        if not isinstance(timeout, int) or not TIMEOUT_RANGE[0] <= timeout <= TIMEOUT_RANGE[1]:
            raise _invalid(f"Timeout must be {TIMEOUT_RANGE[0]}..{TIMEOUT_RANGE[1]} minutes, "
                           f"got {timeout}")
        parent_id = req.get("ParentSnapshotId")
        if parent_id is not None and "Encrypted" in req:
            # AWS: "You can't specify ParentSnapshotId and Encrypted in the same request."
            raise _invalid("ParentSnapshotId and Encrypted cannot be specified in the same request.")
        token = req.get("ClientToken")
        params = json.dumps({k: v for k, v in req.items() if k != "ClientToken"}, sort_keys=True)
        with self.start_lock:
            key = (account, region, token)
            if token and key in self.tokens:
                snapshot_id, seen = self.tokens[key]
                if seen != params:
                    # AWS (Idempotency for StartSnapshot): same token, other parameters.
                    raise DirectError(409, "ConflictException",
                                      f"The client token {token} was used with other parameters.")
                return self._started(account, region, snapshot_id)
            parent = None
            inherited: set[int] = set()
            if parent_id is not None:
                with self.lock:
                    parent = ec2_backends[account][region].snapshots.get(parent_id)
                if parent is None:
                    raise _not_found(parent_id)
                prec = self.records.get(parent_id)
                # A direct parent once CompleteSnapshot sealed it; any other once EC2 completed it.
                done = prec.sealed if prec is not None else parent.status == "completed"
                if not done:
                    raise _invalid(f"The parent snapshot '{parent_id}' is not completed.",
                                   "INVALID_SNAPSHOT_ID")
                if size < self._size_of(parent):
                    raise _invalid(
                        f"The volume size {size} GiB is smaller than the parent snapshot's "
                        f"{self._size_of(parent)} GiB.", "INVALID_VOLUME_SIZE")
                if prec is not None:
                    inherited = prec.inherited | set(prec.written)
            encrypted = bool(parent.encrypted) if parent is not None else bool(req.get("Encrypted"))
            kms = req.get("KmsKeyArn")
            if parent is not None:
                kms = getattr(parent, "kms_key_id", None)
            if encrypted and not kms:
                kms = f"arn:aws:kms:{region}:{account}:alias/aws/ebs"  # the account's default key
            snapshot_id = random_snapshot_id()
            path = self._file(snapshot_id)
            src = self._file(parent_id) if parent_id else None
            if src and os.path.exists(src):
                emulator_ebs._sparse_copy(src, path)
            else:
                open(path, "wb").close()
            if os.path.getsize(path) < size * GIB:
                os.truncate(path, size * GIB)
            rec = Record(snapshot_id, region, account, size, parent_id, timeout, inherited)
            with self.lock:
                backend = ec2_backends[account][region]
                snap = DirectSnapshot(backend, snapshot_id, DirectVolume(size, encrypted),
                                      req.get("Description") or "", encrypted=encrypted,
                                      kms_key_id=kms if encrypted else None)
                snap._kiln_direct = rec
                snap._kiln_ready_at = 0.0
                snap._kiln_direct_kms = kms if encrypted else None
                snap.add_tags({t["Key"]: t.get("Value", "") for t in tags})
                backend.snapshots[snapshot_id] = snap
            with self.mutex:
                self.records[snapshot_id] = rec
                self._stat(snapshot_id)["parent"] = parent_id
                if token:
                    self.tokens[key] = (snapshot_id, params)
            return self._started(account, region, snapshot_id)

    def _started(self, account: str, region: str, snapshot_id: str):
        rec = self.records[snapshot_id]
        with self.lock:
            snap = ec2_backends[account][region].snapshots.get(snapshot_id)
            tags = [{"Key": t["key"], "Value": t["value"]} for t in snap.get_tags()] if snap else []
            description = snap.description if snap else ""
            kms = getattr(snap, "_kiln_direct_kms", None)
        doc = {
            "SnapshotId": snapshot_id,
            "OwnerId": account,
            "Status": rec.status(),
            "StartTime": rec.started,
            "VolumeSize": rec.size,
            "BlockSize": BLOCK_SIZE,
            "Tags": tags,
            "Description": description,
            "SseType": ("sse-kms" if kms and ":key/" in kms else "sse-ebs") if kms else "none",
        }
        if rec.parent:
            doc["ParentSnapshotId"] = rec.parent
        if kms:
            doc["KmsKeyArn"] = kms
        return 201, [("Content-Type", "application/json")], json.dumps(doc).encode()

    def _put_snapshot_block(self, *, region: str, account: str, parts: list[str], headers: dict,
                            body: bytes, **_):
        snapshot_id, index = parts[1], self._index(parts[3])
        length = headers.get("x-amz-data-length")
        if length is None or not length.isdigit() or int(length) != BLOCK_SIZE:
            raise _invalid(f"DataLength must be {BLOCK_SIZE}, got {length}.")
        if len(body) != BLOCK_SIZE:
            raise _invalid(f"The block data is {len(body)} bytes, DataLength says {length}.")
        if headers.get("x-amz-checksum-algorithm") != "SHA256":
            raise _invalid("ChecksumAlgorithm must be SHA256.")
        digest = hashlib.sha256(body).digest()  # outside every lock: hashlib releases the GIL
        if headers.get("x-amz-checksum") != _b64(digest):
            raise _invalid(f"The checksum {headers.get('x-amz-checksum')!r} does not match the "
                           "block data.")
        progress = headers.get("x-amz-progress")
        delay = self.delay_for(region, "put-block")
        if delay > 0:
            time.sleep(delay)  # no lock held: concurrent puts overlap, as on AWS
        with self.mutex:
            rec = self.records.get(snapshot_id)
        if rec is None:
            self._pending_record(account, region, snapshot_id)  # raises the right error
        with rec.lock:
            self._pending_record(account, region, snapshot_id)
            if index >= rec.size * BLOCKS_PER_GIB:
                raise _invalid(f"Block index {index} is beyond the volume's "
                               f"{rec.size * BLOCKS_PER_GIB} blocks.", "INVALID_BLOCK")
            try:
                fd = os.open(self._file(snapshot_id), os.O_WRONLY)
            except FileNotFoundError:
                raise _not_found(snapshot_id) from None
            try:
                os.pwrite(fd, body, index * BLOCK_SIZE)
            finally:
                os.close(fd)
            rec.written[index] = digest
            if progress and progress.isdigit():
                rec.progress = max(rec.progress, min(100, int(progress)))
        with self.mutex:
            self._stat(snapshot_id)["puts"] += 1
        return 201, [("x-amz-Checksum", _b64(digest)), ("x-amz-Checksum-Algorithm", "SHA256")], b""

    def _complete_snapshot(self, *, region: str, account: str, parts: list[str], headers: dict, **_):
        snapshot_id = parts[2]
        count = headers.get("x-amz-changedblockscount")
        if count is None or not count.isdigit():
            raise _invalid("ChangedBlocksCount is required (x-amz-ChangedBlocksCount).")
        with self.mutex:
            rec = self.records.get(snapshot_id)
        if rec is None:
            self._pending_record(account, region, snapshot_id)
        with rec.lock:
            if rec.sealed and not rec.deleted:
                # A retried CompleteSnapshot: the snapshot is completing already.
                return 202, [("Content-Type", "application/json")], json.dumps(
                    {"Status": rec.status()}).encode()
            self._pending_record(account, region, snapshot_id)
            if int(count) != len(rec.written):
                raise _invalid(f"ChangedBlocksCount {count} does not match the {len(rec.written)} "
                               "blocks written to the snapshot.")
            checksum = headers.get("x-amz-checksum")
            if checksum is not None:
                if headers.get("x-amz-checksum-algorithm") != "SHA256":
                    raise _invalid("ChecksumAlgorithm must be SHA256.")
                if headers.get("x-amz-checksum-aggregation-method") != "LINEAR":
                    raise _invalid("ChecksumAggregationMethod must be LINEAR.")
                aggregate = hashlib.sha256(b"".join(rec.written[i] for i in sorted(rec.written)))
                if checksum != _b64(aggregate.digest()):
                    raise _invalid(f"The aggregate checksum {checksum!r} does not match the "
                                   "blocks written to the snapshot.")
            rec.sealed_at = time.time()
            rec.ready_at = rec.sealed_at + self.delay_for(region, "direct")
            rec.sealed = True
            status = rec.status()
        return 202, [("Content-Type", "application/json")], json.dumps({"Status": status}).encode()

    # -- reads --------------------------------------------------------------------------------------
    @staticmethod
    def _index(text: str | None) -> int:
        if text is None or not text.isdigit():
            raise _invalid(f"Invalid block index {text!r}.", "INVALID_BLOCK")
        return int(text)

    def _completed(self, account: str, region: str, snapshot_id: str):
        snap = self._ec2_snapshot(account, region, snapshot_id)
        status = snap.status
        if status != "completed":
            raise _invalid(f"The snapshot '{snapshot_id}' is in the '{status}' state; only "
                           "completed snapshots can be read.", "INVALID_SNAPSHOT_ID")
        return snap

    def _block_token(self, snapshot_id: str, index: int) -> str:
        mac = hmac.new(self.secret, f"block/{snapshot_id}/{index}".encode(), hashlib.sha256)
        return _b64(index.to_bytes(8, "big") + mac.digest()[:24])

    def _page_token(self, what: str, index: int) -> str:
        mac = hmac.new(self.secret, f"page/{what}/{index}".encode(), hashlib.sha256)
        return _b64(index.to_bytes(8, "big") + mac.digest()[:16])

    def _page_start(self, what: str, token: str | None) -> int:
        if token is None:
            return 0
        try:
            index = int.from_bytes(base64.b64decode(token, validate=True)[:8], "big")
        except ValueError:
            raise _invalid("Invalid page token.", "INVALID_PAGE_TOKEN") from None
        if not hmac.compare_digest(token, self._page_token(what, index)):
            raise _invalid("Invalid page token.", "INVALID_PAGE_TOKEN")
        return index

    def _blocks(self, snapshot_id: str, size_gib: int) -> set[int]:
        """The blocks of a snapshot that hold data: not all zeros in its file, or written by
        PutSnapshotBlock to it or an ancestor."""
        path = self._file(snapshot_id)
        limit = size_gib * BLOCKS_PER_GIB
        try:
            st = os.stat(path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        with self.mutex:
            cached = self.listed.get(path)
        if key is not None and cached is not None and cached[0] == key:
            data = cached[1]
        else:
            data = _block_indices_with_data(path, limit) if key is not None else set()
            if key is not None:
                with self.mutex:
                    self.listed[path] = (key, data)
        rec = self.records.get(snapshot_id)
        extra = (rec.inherited | set(rec.written)) if rec is not None else set()
        return {i for i in data | extra if i < limit}

    @staticmethod
    def _max_results(query: dict) -> int:
        text = query.get("maxResults")
        if text is None:
            return DEFAULT_MAX_RESULTS
        if not text.isdigit() or not MAX_RESULTS_RANGE[0] <= int(text) <= MAX_RESULTS_RANGE[1]:
            raise _invalid(f"MaxResults must be {MAX_RESULTS_RANGE[0]}..{MAX_RESULTS_RANGE[1]}, "
                           f"got {text}.")
        return int(text)

    def _page(self, what: str, indices: list[int], query: dict) -> tuple[list[int], str | None]:
        limit = self._max_results(query)
        start = max(self._page_start(what, query.get("pageToken")),
                    self._index(query["startingBlockIndex"]) if "startingBlockIndex" in query else 0)
        rest = [i for i in indices if i >= start]
        page = rest[:limit]
        token = self._page_token(what, rest[limit]) if len(rest) > limit else None
        return page, token

    def _list_snapshot_blocks(self, *, region: str, account: str, parts: list[str], query: dict, **_):
        snapshot_id = parts[1]
        snap = self._completed(account, region, snapshot_id)
        size = self._size_of(snap)
        page, token = self._page(snapshot_id, sorted(self._blocks(snapshot_id, size)), query)
        doc = {
            "Blocks": [{"BlockIndex": i, "BlockToken": self._block_token(snapshot_id, i)}
                       for i in page],
            "ExpiryTime": time.time() + TOKEN_TTL,
            "VolumeSize": size,
            "BlockSize": BLOCK_SIZE,
        }
        if token:
            doc["NextToken"] = token
        return 200, [("Content-Type", "application/json")], json.dumps(doc).encode()

    def _list_changed_blocks(self, *, region: str, account: str, parts: list[str], query: dict, **_):
        second_id = parts[1]
        first_id = query.get("firstSnapshotId")
        second = self._completed(account, region, second_id)
        size = self._size_of(second)
        theirs = self._blocks(second_id, size)
        if first_id is None:
            changed = {i: (None, i) for i in theirs}
        else:
            first = self._completed(account, region, first_id)
            ours = self._blocks(first_id, self._size_of(first))
            changed = {}
            only = (ours ^ theirs)
            for i in only:
                changed[i] = (i if i in ours else None, i if i in theirs else None)
            both = sorted(ours & theirs)
            if both:
                with open(self._file(first_id), "rb") as a, open(self._file(second_id), "rb") as b:
                    for i in both:
                        if os.pread(a.fileno(), BLOCK_SIZE, i * BLOCK_SIZE) != os.pread(
                            b.fileno(), BLOCK_SIZE, i * BLOCK_SIZE
                        ):
                            changed[i] = (i, i)
        page, token = self._page(f"{first_id}/{second_id}", sorted(changed), query)
        blocks = []
        for i in page:
            entry: dict = {"BlockIndex": i}
            if changed[i][0] is not None:
                entry["FirstBlockToken"] = self._block_token(first_id, i)
            if changed[i][1] is not None:
                entry["SecondBlockToken"] = self._block_token(second_id, i)
            blocks.append(entry)
        doc = {"ChangedBlocks": blocks, "ExpiryTime": time.time() + TOKEN_TTL,
               "VolumeSize": size, "BlockSize": BLOCK_SIZE}
        if token:
            doc["NextToken"] = token
        return 200, [("Content-Type", "application/json")], json.dumps(doc).encode()

    def _get_snapshot_block(self, *, region: str, account: str, parts: list[str], query: dict, **_):
        snapshot_id, index = parts[1], self._index(parts[3])
        snap = self._completed(account, region, snapshot_id)
        if index >= self._size_of(snap) * BLOCKS_PER_GIB:
            raise _invalid(f"Block index {index} is beyond the snapshot's volume.", "INVALID_BLOCK")
        token = query.get("blockToken")
        if not token or not hmac.compare_digest(token, self._block_token(snapshot_id, index)):
            raise _invalid("The block token is not valid for this snapshot and block.",
                           "INVALID_BLOCK_TOKEN")
        try:
            with open(self._file(snapshot_id), "rb") as f:
                data = os.pread(f.fileno(), BLOCK_SIZE, index * BLOCK_SIZE)
        except FileNotFoundError:
            raise _not_found(snapshot_id) from None
        data = data.ljust(BLOCK_SIZE, b"\0")
        return 200, [
            ("Content-Type", "application/octet-stream"),
            ("x-amz-Data-Length", str(BLOCK_SIZE)),
            ("x-amz-Checksum", _b64(hashlib.sha256(data).digest())),
            ("x-amz-Checksum-Algorithm", "SHA256"),
        ], data
