#!/usr/bin/env python3
"""kiln's local AWS: moto server, patched where moto differs from AWS in ways kiln depends on.

Started by `scripts/emulator up`; never imported by kiln itself. Every patch makes the emulator behave
as AWS documents, so kiln's own code needs no emulator workaround:

1. RegisterImage keeps BlockDeviceMappings, RootDeviceName, Architecture, VirtualizationType, EnaSupport,
   SriovNetSupport, BootMode, TpmSupport, ImdsSupport, kernel/ramdisk and TagSpecifications, and
   DescribeImages returns them (moto keeps only Name and Description and invents a snapshot).
   CopyImage copies the mappings with a new snapshot per mapping in the target region, honours
   ClientToken and TagSpecifications.
2. CreateVolume honours ClientToken: the same token returns the same volume (a different request with the
   same token fails with IdempotentParameterMismatch).
3. DeleteSnapshot of a snapshot that a registered image maps fails with InvalidSnapshot.InUse.
4. DetachVolume with only VolumeId works; AttachVolume refuses a volume that is not available, one that is
   attached already, and a device name the instance already uses (as AWS does).
5. An IMDSv2 stand-in per builder host (token PUT with the TTL header; the token is required on reads)
   serving instance-id, placement, the identity document. More hosts can be added at run time.
7. Conditional PutObject (`If-None-Match: *`, `If-Match`) is atomic, as on AWS: moto checks, then
   writes, so two concurrent creates could both succeed.
11. RunInstances of an image whose root snapshot has a loop-backend data file boots it in QEMU;
   GetConsoleOutput serves its serial console; TerminateInstances stops it (see the patch).
12. On request, a share of EC2 calls answer RequestLimitExceeded (POST /_kiln/throttle).
13. HTTP/1.1 keep-alive, as AWS's endpoints.
6. Optional delays per region: volumes stay `creating`, attachments `attaching` (and `detaching`),
   snapshots `pending` and images `pending` for a configured number of seconds.
14. The EBS data plane (`emulator_ebs.py`): volumes and snapshots keep their data in sparse files, and
   an attachment to a builder host on this machine is a loop device with the nodes EC2 would make
   (Xen or Nitro naming, per host).
15. The EBS direct APIs (`emulator_direct.py`) replace moto's: 512 KiB blocks kept in the data plane's
   snapshot files (EC2 sees the same snapshot: VolumeId vol-ffffffff, pending until CompleteSnapshot
   and the `direct` delay), checksums, ChangedBlocksCount, block/page tokens, ClientToken, children of
   a ParentSnapshotId; StartSnapshot from kiln needs the kiln:build-id tag (as patch 9); on request a
   share of the calls answer 400 RequestThrottledException (POST /_kiln/throttle-direct).
16. AMI deprecation (`emulator_images.py`): EnableImageDeprecation (owner only; rounded to the nearest
   minute; not in the past, at most 10 years out) and DisableImageDeprecation; DescribeImages reports
   DeprecationTime and, without ImageIds or IncludeDeprecated, leaves out other owners' deprecated AMIs.

Control endpoints (under the moto port, never used by kiln): GET /_kiln/state, POST /_kiln/reset,
POST /_kiln/hosts {"name": ..., "az": ..., "naming": "xen"|"nitro", "dev_dir": ..., "nodes": bool,
"detach_delay": s},
POST /_kiln/delays {"region": ..., "volume": s, "attachment": s, "detachment": s, "snapshot": s, "image": s,
"direct": s (CompleteSnapshot to completed), "put-block": s (each PutSnapshotBlock's latency)},
POST /_kiln/metadata {"host": ..., "path": ..., "value": ... or null},
POST /_kiln/throttle-direct {"share": 0..1, "actions": [EBS direct actions; default all six],
"snapshot": substring of the snapshot id (default any)}.
"""

from __future__ import annotations

import argparse
import base64
import glob
import io
import json
import os
import random
import re
import secrets
import selectors
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

from moto.core.responses import ActionResult  # noqa: E402
from moto.ec2.exceptions import EC2ClientError, InvalidSnapshotInUse  # noqa: E402
from moto.ec2.models import ec2_backends  # noqa: E402
from moto.ec2.models.amis import Ami, AmiBackend  # noqa: E402
from moto.ec2.models.elastic_block_store import (  # noqa: E402
    EBSBackend,
    Snapshot,
    Volume,
    VolumeAttachment,
)
from moto.ec2.responses.amis import AmisResponse  # noqa: E402
from moto.ec2.responses.elastic_block_store import ElasticBlockStore  # noqa: E402
from moto.moto_api._internal import moto_api_backend  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
import werkzeug.serving  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

ACCOUNT_ID = "123456789012"
LOCK = threading.RLock()

# ---------------------------------------------------------------------------------------------------
# 6. Delays, per region, in seconds. Kinds: volume, attachment, detachment, snapshot, image; for the
#    EBS direct APIs (section 15) direct (CompleteSnapshot to `completed`) and put-block (how long
#    each PutSnapshotBlock takes to answer).
# ---------------------------------------------------------------------------------------------------
DELAYS: dict[str, dict[str, float]] = {}
DELAY_KINDS = ("volume", "attachment", "detachment", "snapshot", "image", "direct", "put-block")


def delay_for(region: str, kind: str) -> float:
    return float(DELAYS.get(region, {}).get(kind, 0.0))


def _ready_at(region: str, kind: str) -> float:
    return time.time() + delay_for(region, kind)


def _pending(obj) -> bool:
    return time.time() < getattr(obj, "_kiln_ready_at", 0.0)


# Volume: `creating` until ready.
_orig_volume_init = Volume.__init__


def _volume_init(self, ec2_backend, *args, **kwargs):
    _orig_volume_init(self, ec2_backend, *args, **kwargs)
    self._kiln_ready_at = _ready_at(ec2_backend.region_name, "volume")


Volume.__init__ = _volume_init
_orig_volume_status = Volume.status.fget


def _volume_status(self):
    if _pending(self):
        return "creating"
    return _orig_volume_status(self)


Volume.status = property(_volume_status)
Volume.state = property(_volume_status)


# Attachment: `attaching` until ready.
def _attachment_status_get(self):
    status = self.__dict__.get("_kiln_status", "attached")
    if status == "attached" and _pending(self):
        return "attaching"
    return status


def _attachment_status_set(self, value):
    self.__dict__["_kiln_status"] = value


VolumeAttachment.status = property(_attachment_status_get, _attachment_status_set)
VolumeAttachment.state = property(_attachment_status_get)


# Snapshot: `pending` with a growing progress until ready.
_orig_snapshot_init = Snapshot.__init__


def _snapshot_init(self, ec2_backend, *args, **kwargs):
    self._kiln_started = time.time()
    self._kiln_ready_at = _ready_at(ec2_backend.region_name, "snapshot")
    _orig_snapshot_init(self, ec2_backend, *args, **kwargs)


def _snapshot_status_get(self):
    status = self.__dict__.get("_kiln_status", "completed")
    if status == "completed" and _pending(self):
        return "pending"
    return status


def _snapshot_status_set(self, value):
    self.__dict__["_kiln_status"] = value


def _snapshot_progress(self):
    if not _pending(self):
        return "100%"
    total = max(self._kiln_ready_at - self._kiln_started, 1e-6)
    done = (time.time() - self._kiln_started) / total
    return f"{min(99, int(done * 100))}%"


Snapshot.__init__ = _snapshot_init
Snapshot.status = property(_snapshot_status_get, _snapshot_status_set)
Snapshot.state = property(_snapshot_status_get)
Snapshot.progress = property(_snapshot_progress)


# Image: `pending` until ready.
def _ami_state_get(self):
    state = self.__dict__.get("_kiln_state", "available")
    if state == "available" and _pending(self):
        return "pending"
    return state


def _ami_state_set(self, value):
    self.__dict__["_kiln_state"] = value


Ami.state = property(_ami_state_get, _ami_state_set)
Ami.image_state = property(_ami_state_get)

# ---------------------------------------------------------------------------------------------------
# 1. RegisterImage and CopyImage keep what AWS keeps.
# ---------------------------------------------------------------------------------------------------
_orig_bdm = Ami.block_device_mappings.fget


def _ami_bdm(self):
    if hasattr(self, "_kiln_bdm"):
        return self._kiln_bdm
    return _orig_bdm(self)


Ami.block_device_mappings = property(_ami_bdm)


def _bool(value, default=None):
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def _drop_invented_snapshot(backend, image) -> None:
    invented = getattr(image, "ebs_snapshot", None)
    if invented is not None:
        backend.snapshots.pop(invented.id, None)
        image.ebs_snapshot = None


def _mappings_from_request(backend, requested) -> list[dict]:
    mappings = []
    for m in requested or []:
        device = m.get("DeviceName")
        if not device:
            raise EC2ClientError(
                "InvalidBlockDeviceMapping", "A block device mapping needs a DeviceName."
            )
        out: dict = {"DeviceName": device}
        if m.get("VirtualName"):
            out["VirtualName"] = m["VirtualName"]
        if m.get("NoDevice") is not None:
            out["NoDevice"] = m["NoDevice"]
        ebs = m.get("Ebs")
        if ebs is not None:
            snap = None
            if ebs.get("SnapshotId"):
                snap = backend.get_snapshot(ebs["SnapshotId"])
            size = ebs.get("VolumeSize")
            size = int(size) if size is not None else None
            if snap is not None:
                if size is None:
                    size = snap.volume_size
                elif size < snap.volume_size:
                    raise EC2ClientError(
                        "InvalidBlockDeviceMapping",
                        f"Volume of size {size}GB is smaller than snapshot "
                        f"'{snap.id}', expect size >= {snap.volume_size}GB",
                    )
            if size is None:
                raise EC2ClientError(
                    "InvalidBlockDeviceMapping",
                    f"The block device mapping for {device} needs a SnapshotId or a VolumeSize.",
                )
            e: dict = {
                "DeleteOnTermination": _bool(ebs.get("DeleteOnTermination"), True),
                "VolumeSize": size,
                "VolumeType": ebs.get("VolumeType") or "gp2",
                "Encrypted": bool(snap.encrypted) if snap else _bool(ebs.get("Encrypted"), False),
            }
            if snap is not None:
                e["SnapshotId"] = snap.id
            for key in ("Iops", "Throughput", "KmsKeyId"):
                if ebs.get(key) is not None:
                    e[key] = ebs[key]
            out["Ebs"] = e
        mappings.append(out)
    return mappings


def _register_image(self) -> ActionResult:
    p = self._get_param
    name = p("Name")
    if not name:
        raise EC2ClientError("MissingParameter", "The request must contain the parameter name")
    self.error_on_dryrun()
    backend = self.ec2_backend
    with LOCK:
        # AWS: an account's AMI names are unique per region.
        taken = next(
            (
                a
                for a in backend.amis.values()
                if a.name == name and str(getattr(a, "owner_id", "")) == str(backend.account_id)
            ),
            None,
        )
        if taken is not None:
            raise EC2ClientError(
                "InvalidAMIName.Duplicate",
                f"AMI name {name} is already in use by AMI {taken.id}",
            )
        mappings = _mappings_from_request(backend, p("BlockDeviceMappings", []))
        root = p("RootDeviceName")
        if mappings and root and not any(m["DeviceName"] == root for m in mappings):
            raise EC2ClientError(
                "InvalidBlockDeviceMapping",
                f"The root device name {root} has no block device mapping.",
            )
        image = backend.register_image(name, p("Description", ""))
        _drop_invented_snapshot(backend, image)
        image._kiln_bdm = mappings
        image.root_device_name = root or (mappings[0]["DeviceName"] if mappings else "/dev/sda1")
        root_map = next((m for m in mappings if m["DeviceName"] == image.root_device_name), None)
        image.root_device_type = "ebs" if root_map and "Ebs" in root_map else "instance-store"
        image.architecture = p("Architecture") or "i386"  # AWS's documented default
        image.virtualization_type = p("VirtualizationType") or "paravirtual"
        image.ena_support = _bool(p("EnaSupport"))
        image.sriov_net_support = p("SriovNetSupport")
        image.sriov = p("SriovNetSupport")
        image.boot_mode = p("BootMode")
        image.tpm_support = p("TpmSupport")
        image.imds_support = p("ImdsSupport")
        image.uefi = p("UefiData")
        image.kernel_id = p("KernelId")
        image.ramdisk_id = p("RamdiskId")
        image.image_location = f"{ACCOUNT_ID}/{name}"
        billing = p("BillingProducts", []) or []
        image.product_codes = set(billing)
        tags = self._parse_tag_specification()
        image.add_tags(tags.get("image", {}))
        image._kiln_ready_at = _ready_at(backend.region_name, "image")
    return ActionResult({"ImageId": image.id})


AmisResponse.register_image = _register_image

COPY_TOKENS: dict[tuple, tuple[str, str]] = {}


def _copy_image(self) -> ActionResult:
    p = self._get_param
    source_image_id = p("SourceImageId")
    source_region = p("SourceRegion")
    token = p("ClientToken")
    self.error_on_dryrun()
    backend = self.ec2_backend
    with LOCK:
        key = (backend.account_id, backend.region_name, token)
        fingerprint = json.dumps([source_image_id, source_region, p("Name")], sort_keys=True)
        if token and key in COPY_TOKENS:
            image_id, seen = COPY_TOKENS[key]
            if seen != fingerprint:
                raise EC2ClientError(
                    "IdempotentParameterMismatch",
                    f"The client token {token} was used with different parameters.",
                )
            if image_id in backend.amis:
                return ActionResult({"ImageId": image_id})
        source_backend = ec2_backends[backend.account_id][source_region]
        source = source_backend.describe_images(ami_ids=[source_image_id])[0]
        image = backend.copy_image(source_image_id, source_region, p("Name"), p("Description"))
        _drop_invented_snapshot(backend, image)
        mappings = []
        for m in source.block_device_mappings:
            copy = json.loads(json.dumps(m))
            ebs = copy.get("Ebs")
            if ebs and ebs.get("SnapshotId"):
                volume = backend.create_volume(
                    size=ebs["VolumeSize"], zone_name=f"{backend.region_name}a"
                )
                snap = backend.create_snapshot(
                    volume.id, f"Copied for DestinationAmi {image.id} from SourceAmi {source.id}"
                )
                backend.volumes.pop(volume.id, None)
                if PLANE is not None:
                    PLANE.volume_deleted(volume.id)
                    PLANE.snapshot_copied(ebs["SnapshotId"], snap.id)
                tags = self._parse_tag_specification()
                snap.add_tags(tags.get("snapshot", {}))
                ebs["SnapshotId"] = snap.id
            mappings.append(copy)
        image._kiln_bdm = mappings
        for attr in (
            "root_device_name",
            "root_device_type",
            "architecture",
            "virtualization_type",
            "boot_mode",
            "kernel_id",
        ):
            setattr(image, attr, getattr(source, attr, None))
        for attr in ("ena_support", "sriov_net_support", "tpm_support", "imds_support", "ramdisk_id"):
            setattr(image, attr, getattr(source, attr, None))
        if p("Description") is None:
            image.description = source.description
        tags = self._parse_tag_specification()
        image.add_tags(tags.get("image", {}))
        image._kiln_ready_at = _ready_at(backend.region_name, "image")
        if token:
            COPY_TOKENS[key] = (image.id, fingerprint)
    return ActionResult({"ImageId": image.id})


AmisResponse.copy_image = _copy_image

# ---------------------------------------------------------------------------------------------------
# 2. CreateVolume honours ClientToken.
# ---------------------------------------------------------------------------------------------------
VOLUME_TOKENS: dict[tuple, tuple[str, str]] = {}
_orig_create_volume = ElasticBlockStore.create_volume


def _create_volume(self) -> ActionResult:
    token = self._get_param("ClientToken")
    if not token:
        return _orig_create_volume(self)
    backend = self.ec2_backend
    fingerprint = json.dumps(
        [
            self._get_param(k)
            for k in ("Size", "AvailabilityZone", "SnapshotId", "VolumeType", "Iops", "Throughput")
        ],
        sort_keys=True,
        default=str,
    )
    key = (backend.account_id, backend.region_name, token)
    with LOCK:
        if key in VOLUME_TOKENS:
            volume_id, seen = VOLUME_TOKENS[key]
            if seen != fingerprint:
                raise EC2ClientError(
                    "IdempotentParameterMismatch",
                    f"The client token {token} was used with different parameters.",
                )
            volume = backend.volumes.get(volume_id)
            if volume is not None:
                return ActionResult(volume)
            # AWS answers a deleted volume's id for the same token; so do we.
            raise EC2ClientError(
                "IdempotentParameterMismatch",
                f"The client token {token} was used for {volume_id}, which is deleted.",
            )
        result = _orig_create_volume(self)
        volume = result.result if hasattr(result, "result") else None
        volume_id = getattr(volume, "id", None)
        if volume_id:
            VOLUME_TOKENS[key] = (volume_id, fingerprint)
        return result


ElasticBlockStore.create_volume = _create_volume

# ---------------------------------------------------------------------------------------------------
# 3. DeleteSnapshot refuses a snapshot a registered image maps.
# ---------------------------------------------------------------------------------------------------
_orig_delete_snapshot = EBSBackend.delete_snapshot


def _delete_snapshot(self, snapshot_id: str):
    with LOCK:
        for ami in list(getattr(self, "amis", {}).values()):
            for m in getattr(ami, "_kiln_bdm", []):
                if m.get("Ebs", {}).get("SnapshotId") == snapshot_id:
                    raise InvalidSnapshotInUse(snapshot_id, ami.id)
        return _orig_delete_snapshot(self, snapshot_id)


EBSBackend.delete_snapshot = _delete_snapshot

# ---------------------------------------------------------------------------------------------------
# 4. DetachVolume with only VolumeId; AttachVolume's state checks.
# ---------------------------------------------------------------------------------------------------
_orig_detach = EBSBackend.detach_volume
_orig_attach = EBSBackend.attach_volume


def _detach_volume(self, volume_id, instance_id=None, device_path=None):
    with LOCK:
        volume = self.get_volume(volume_id)
        if volume.attachment is None:
            raise EC2ClientError(
                "IncorrectState", f"Volume '{volume_id}' is in the 'available' state."
            )
        if not instance_id:
            instance_id = volume.attachment.instance.id
        if not device_path:
            device_path = volume.attachment.device
        return _orig_detach(self, volume_id, instance_id, device_path)


_orig_attach_response = ElasticBlockStore.attach_volume


def _attach_volume_checked(self) -> ActionResult:
    """AttachVolume as the API answers it (moto's own RunInstances attaches without these checks)."""
    backend = self.ec2_backend
    volume_id = self._get_param("VolumeId")
    with LOCK:
        volume = backend.get_volume(volume_id)
        if volume.status == "creating":
            raise EC2ClientError("IncorrectState", f"{volume_id} is not 'available'.")
        if volume.attachment is not None:
            raise EC2ClientError(
                "VolumeInUse", f"{volume_id} is already attached to an instance"
            )
        instance = backend.get_instance(self._get_param("InstanceId"))
        device = self._get_param("Device")
        if not re.fullmatch(r"/dev/(sd|xvd)[a-z]{1,2}([1-9][0-9]?)?", device or ""):
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name.",
            )
        volume_zone = getattr(volume.zone, "name", volume.zone)
        if volume_zone != instance.placement.zone:
            raise EC2ClientError(
                "InvalidVolume.ZoneMismatch",
                f"The volume '{volume_id}' is not in the same availability zone as instance "
                f"'{instance.id}'",
            )
        if device in instance.block_device_mapping:
            raise EC2ClientError(
                "InvalidParameterValue", f"Attachment point {device} is already in use"
            )
        return _orig_attach_response(self)


def _attach_volume(self, volume_id, instance_id, device_path, delete_on_termination=False):
    attachment = _orig_attach(self, volume_id, instance_id, device_path, delete_on_termination)
    if attachment is not None:
        attachment._kiln_ready_at = _ready_at(self.region_name, "attachment")
    return attachment


EBSBackend.detach_volume = _detach_volume
EBSBackend.attach_volume = _attach_volume
ElasticBlockStore.attach_volume = _attach_volume_checked

# ---------------------------------------------------------------------------------------------------
# 14. The EBS data plane (emulator_ebs.py): data files follow the EBS calls, attachments to a builder
#     host on this machine make its device nodes, a detach can be reported late (`detachment` delay).
# ---------------------------------------------------------------------------------------------------
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import emulator_ebs  # noqa: E402

PLANE: emulator_ebs.Plane | None = None  # made by main() once the port is known


def _host_of_instance(instance_id: str) -> dict | None:
    return next((h for h in HOSTS.values() if h.get("instance_id") == instance_id), None)


def _hook(method_name: str, after):
    orig = getattr(EBSBackend, method_name)

    def wrapper(self, *args, **kwargs):
        with LOCK:
            result = orig(self, *args, **kwargs)
            if PLANE is not None:
                after(self, result, *args, **kwargs)
            return result

    setattr(EBSBackend, method_name, wrapper)


_hook(
    "create_volume",
    lambda self, vol, *a, **k: PLANE.volume_created(vol.id, vol.size, vol.snapshot_id),
)
_hook(
    "create_snapshot",
    lambda self, snap, volume_id, *a, **k: PLANE.snapshot_created(snap.id, volume_id),
)
_hook(
    "copy_snapshot",
    # moto's CopySnapshot passes its arguments by keyword.
    lambda self, snap, *a, **k: PLANE.snapshot_copied(k.get("source_snapshot_id", *a[:1]), snap.id),
)
_hook("delete_volume", lambda self, vol, volume_id: PLANE.volume_deleted(volume_id))
_hook("delete_snapshot", lambda self, snap, snapshot_id: PLANE.snapshot_deleted(snapshot_id))


def _attached_to_host(self, attachment, volume_id, instance_id, *args, **kwargs):
    host = _host_of_instance(instance_id)
    if attachment is not None and host is not None:
        PLANE.attach(volume_id, host, attachment.device, getattr(attachment, "_kiln_ready_at", 0.0))


_hook("attach_volume", _attached_to_host)
_detach_now = EBSBackend.detach_volume


def _detach_volume_late(self, volume_id, instance_id=None, device_path=None):
    """The device leaves the host at once; EC2 reports `detaching` for the `detachment` delay."""
    with LOCK:
        volume = self.get_volume(volume_id)
        attachment = volume.attachment
        if attachment is not None and attachment.status == "detaching":
            return attachment
        if attachment is not None and PLANE is not None:
            PLANE.detach(volume_id)
        host = _host_of_instance(attachment.instance.id) if attachment is not None else None
        late = max(delay_for(self.region_name, "detachment"), float((host or {}).get("detach_delay", 0)))
        if attachment is None or late <= 0:
            return _detach_now(self, volume_id, instance_id, device_path)
        attachment.status = "detaching"

        def finish():
            with LOCK:
                if volume.attachment is attachment:
                    _detach_now(self, volume_id, instance_id, device_path)

        timer = threading.Timer(late, finish)
        timer.daemon = True
        timer.start()
        return attachment


EBSBackend.detach_volume = _detach_volume_late

# ---------------------------------------------------------------------------------------------------
# 15. The EBS direct APIs (emulator_direct.py): KilnControl hands it every request signed for the
#     `ebs` service (moto's own EBS direct backend is never reached); its snapshots are EC2 snapshots
#     whose data is the plane's snapshot file. DeleteSnapshot ends a direct snapshot's writes.
# ---------------------------------------------------------------------------------------------------
import emulator_direct  # noqa: E402

DIRECT = emulator_direct.Direct(LOCK, lambda: PLANE, delay_for)
_hook("delete_snapshot", lambda self, snap, snapshot_id: DIRECT.snapshot_deleted(snapshot_id))

# ---------------------------------------------------------------------------------------------------
# 16. AMI deprecation (emulator_images.py): EnableImageDeprecation, DisableImageDeprecation and
#     DescribeImages' DeprecationTime, on moto's own AMIs.
# ---------------------------------------------------------------------------------------------------
import emulator_images  # noqa: E402

emulator_images.install(LOCK)

# ---------------------------------------------------------------------------------------------------
# 7. Conditional PutObject is atomic, and as on AWS a conditional write to a key that another
#    conditional write is still writing answers 409 ConditionalRequestConflict.
# ---------------------------------------------------------------------------------------------------
from moto.s3.responses import S3Response  # noqa: E402

_orig_put_object = S3Response.put_object
S3_PUT_LOCK = threading.Lock()
S3_IN_FLIGHT: set = set()
CONFLICT_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code>'
    "<Message>A conflicting operation occurred. If using PutObject you can retry the request."
    "</Message><RequestId>kiln-conflict</RequestId></Error>"
)


def _put_object_atomic(self):
    if not (self.headers.get("If-None-Match") or self.headers.get("If-Match")):
        return _orig_put_object(self)
    key = (getattr(self, "bucket_name", ""), self.path.split("?")[0])
    with LOCK:
        if key in S3_IN_FLIGHT:
            return 409, {"Content-Type": "application/xml"}, CONFLICT_XML
        S3_IN_FLIGHT.add(key)
    try:
        with S3_PUT_LOCK:
            return _orig_put_object(self)
    finally:
        with LOCK:
            S3_IN_FLIGHT.discard(key)


S3Response.put_object = _put_object_atomic

# ---------------------------------------------------------------------------------------------------
# 5. IMDSv2 stand-ins, one per builder host.
# ---------------------------------------------------------------------------------------------------
HOSTS: dict[str, dict] = {}
HOST_IMAGE_ID = "ami-0000000000000b17d"  # not validated by moto; the builder hosts' own image


def _launch_host_instance(host: dict) -> None:
    """Start the host's instance in the emulator (again after a reset)."""
    backend = ec2_backends[ACCOUNT_ID][host["region"]]
    reservation = backend.run_instances(
        HOST_IMAGE_ID,
        1,
        None,
        [],
        instance_type="c6i.large",
        placement=host["az"],
        is_instance_type_default=False,
    )
    instance = reservation.instances[0]
    instance.add_tags({"Name": f"kiln-emulator-{host['name']}"})
    host["instance_id"] = instance.id
    host["private_ip"] = getattr(instance, "private_ip", "10.0.0.10")
    host["launched"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ImdsHandler(BaseHTTPRequestHandler):
    server_version = "EC2ws"
    host: dict = {}
    tokens: dict[str, float] = {}

    def log_message(self, fmt, *args):  # quiet
        pass

    def _reply(self, code: int, body: str = "", headers: dict | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path != "/latest/api/token":
            return self._reply(404, "Not Found")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        try:
            seconds = int(ttl or "")
        except ValueError:
            return self._reply(400, "Bad Request")
        if not 1 <= seconds <= 21600:
            return self._reply(400, "Bad Request")
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.time() + seconds
        self._reply(200, token, {"X-aws-ec2-metadata-token-ttl-seconds": str(seconds)})

    def do_GET(self):
        token = self.headers.get("X-aws-ec2-metadata-token")
        if not token or self.tokens.get(token, 0) < time.time():
            return self._reply(401, "Unauthorized")
        h = self.host
        with LOCK:
            identity = {
                "accountId": ACCOUNT_ID,
                "architecture": "x86_64",
                "availabilityZone": h["az"],
                "imageId": HOST_IMAGE_ID,
                "instanceId": h["instance_id"],
                "instanceType": "c6i.large",
                "pendingTime": h["launched"],
                "privateIp": h["private_ip"],
                "region": h["region"],
                "version": "2017-09-30",
            }
            paths = {
                "/latest/meta-data/instance-id": h["instance_id"],
                "/latest/meta-data/instance-type": "c6i.large",
                "/latest/meta-data/ami-id": HOST_IMAGE_ID,
                "/latest/meta-data/local-ipv4": h["private_ip"],
                "/latest/meta-data/placement/availability-zone": h["az"],
                "/latest/meta-data/placement/region": h["region"],
                "/latest/dynamic/instance-identity/document": json.dumps(identity, indent=2),
            }
            paths.update(h.get("extra", {}))
        path = self.path.split("?")[0]
        if path in paths:
            return self._reply(200, paths[path])
        if path in ("/latest/meta-data", "/latest/meta-data/"):
            names = sorted({p[len("/latest/meta-data/"):].split("/")[0] for p in paths if p.startswith("/latest/meta-data/")})
            return self._reply(200, "\n".join(names))
        self._reply(404, "Not Found")


def add_host(
    name: str,
    region: str,
    az: str | None = None,
    naming: str = "nitro",
    dev_dir: str | None = None,
    nodes: bool = True,
    detach_delay: float = 0.0,
) -> dict:
    """A builder host: an instance, its IMDS, and how attached volumes appear on it (`naming`: xen or
    nitro; `dev_dir`: its `/dev`, by default a private directory; `nodes`: false for a host whose
    kernel never shows an attached volume; `detach_delay`: seconds EC2 reports its volumes
    `detaching`, as a busy host's are)."""
    if naming not in emulator_ebs.NAMINGS:
        raise ValueError(f"naming must be one of {emulator_ebs.NAMINGS}, got {naming!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError(f"host name {name!r}: letters, digits, '_', '.', '-' only")
    with LOCK:
        if name in HOSTS:
            return HOSTS[name]
        host = {"name": name, "region": region, "az": az or f"{region}a", "extra": {},
                "naming": naming, "nodes": bool(nodes), "detach_delay": float(detach_delay)}
        host["dev_dir"] = dev_dir or PLANE.host_dev_dir(host)
        _launch_host_instance(host)
        handler = type(f"Imds_{name}", (ImdsHandler,), {"host": host, "tokens": {}})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host["imds_endpoint"] = f"http://127.0.0.1:{server.server_address[1]}"
        HOSTS[name] = host
        return host


# ---------------------------------------------------------------------------------------------------
# 10. The lifecycle calls moto leaves unimplemented (500): accepted and recorded, so a test can see
#     that a worker kept its termination hook alive and completed it.
# ---------------------------------------------------------------------------------------------------
from moto.autoscaling.responses import AutoScalingResponse  # noqa: E402

LIFECYCLE_CALLS: list[dict] = []


def _lifecycle_call(action: str):
    def handler(self) -> ActionResult:
        call = {
            "action": action,
            "group": self._get_param("AutoScalingGroupName"),
            "hook": self._get_param("LifecycleHookName"),
            "instance": self._get_param("InstanceId"),
        }
        if action == "CompleteLifecycleAction":
            call["result"] = self._get_param("LifecycleActionResult")
        with LOCK:
            LIFECYCLE_CALLS.append(call)
        return ActionResult({})

    return handler


AutoScalingResponse.complete_lifecycle_action = _lifecycle_call("CompleteLifecycleAction")
AutoScalingResponse.record_lifecycle_action_heartbeat = _lifecycle_call(
    "RecordLifecycleActionHeartbeat"
)


# ---------------------------------------------------------------------------------------------------
# 11. Instances boot: RunInstances of an image whose root snapshot has a data file (the loop backend's
#     `snapshots/<id>.img`) boots that file in QEMU (copy-on-write, no network, the firmware the
#     image's BootMode asks for, the disk as the instance type sees EBS: NVMe on Nitro, virtio for
#     Xen types), GetConsoleOutput serves its serial console (base64, the last 64 KiB,
#     as AWS does), and TerminateInstances stops QEMU. Other instances behave as moto's.
# ---------------------------------------------------------------------------------------------------
from moto.core.utils import utcnow  # noqa: E402
from moto.ec2.responses.general import General  # noqa: E402
from moto.ec2.responses.instances import InstanceResponse  # noqa: E402

# Where snapshot data files are looked for, `{id}` being the snapshot id: kiln's default state
# directory and the tests' (`$TMPDIR/kiln-test-state-PID`). KILN_EMULATOR_DISKS overrides
# (colon-separated glob patterns).
DISK_PATTERNS = os.environ.get(
    "KILN_EMULATOR_DISKS",
    "/var/lib/kiln/snapshots/{id}.img:/tmp/kiln-test-state-*/snapshots/{id}.img",
).split(":")
OVMF = ["/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd"]
AAVMF = ["/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "/usr/share/AAVMF/AAVMF_CODE.fd"]
# AWS keeps the last 64 KiB of an instance's console output.
CONSOLE_BYTES = 64 * 1024
VM_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kiln-emulator-vms-{os.getpid()}")
VMS: dict[str, dict] = {}


def _disk_of(backend, image_id: str) -> tuple[str, str, str] | None:
    """(data file, boot mode, architecture) of the image's root snapshot, if it has a data file."""
    image = backend.amis.get(image_id)
    if image is None:
        return None
    root = getattr(image, "root_device_name", None)
    for m in image.block_device_mappings or []:
        if not isinstance(m, dict) or (root and m.get("DeviceName") != root):
            continue
        snap = (m.get("Ebs") or {}).get("SnapshotId")
        own = PLANE.snapshot_file(snap) if PLANE is not None and snap else None
        patterns = [own.replace("{", "{{").replace("}", "}}")] if own else []
        # The loop backend's file first: with that backend the emulator's own file holds no data.
        for pattern in [*DISK_PATTERNS, *patterns] if snap else []:
            hits = glob.glob(pattern.format(id=snap))
            if hits:
                return (
                    hits[0],
                    getattr(image, "boot_mode", None) or "",
                    getattr(image, "architecture", None) or "x86_64",
                )
    return None


# The instance families that run on Xen (AWS's list "Instances built on the AWS Nitro System" lacks
# them); their `.metal` sizes and every other type are Nitro. kiln's `ec2::instance_types` keeps the
# same table (its unit test compares them): keep this a tuple of double-quoted names.
XEN_FAMILIES = (
    "c1", "c3", "c4", "cc1", "cc2", "cg1", "cr1", "d2", "f1", "g2", "g3", "g3s", "h1", "hi1",
    "hs1", "i2", "i3", "m1", "m2", "m3", "m4", "p2", "p3", "r3", "r4", "t1", "t2", "x1", "x1e",
)
# NVMe serial numbers are at most 20 characters; EC2's are `vol` and the volume id's 17 hex digits.
NVME_SERIAL_MAX = 20


def _is_xen(instance_type: str) -> bool:
    family, _, size = (instance_type or "").strip().lower().partition(".")
    return family in XEN_FAMILIES and not size.startswith("metal")


def _ebs_serial(instance) -> str:
    """The root volume's NVMe serial as EC2 shows it (`vol0123...`): its volume id without the dash."""
    root = (getattr(instance, "block_device_mapping", None) or {}).get(
        getattr(instance, "root_device_name", None)
    )
    volume = getattr(root, "volume_id", None) or instance.id
    digits = "".join(c for c in volume.partition("-")[2] or volume if c.isalnum())
    return ("vol" + digits)[:NVME_SERIAL_MAX]


def _drive(disk: str, instance_type: str, serial: str) -> list[str]:
    """The root disk as the instance type sees an EBS volume: an NVMe controller on Nitro; on Xen,
    where the kernel reaches its root through the paravirtual xen-blkfront (emulated IDE serves only
    the firmware and is unplugged), QEMU's paravirtual virtio-blk, the nearest QEMU has outside Xen
    (IDE would ask for an AHCI driver that cloud kernels, Debian's among them, leave out)."""
    file = f"file={disk.replace(',', ',,')},format=raw,snapshot=on"
    if _is_xen(instance_type):
        return ["-drive", f"{file},if=virtio"]
    return ["-drive", f"{file},if=none,id=root",
            "-device", f"nvme,drive=root,serial={serial},bootindex=0"]


def _boot(instance_id: str, disk: str, boot_mode: str, arch: str, *, instance_type: str,
          serial: str) -> None:
    os.makedirs(VM_DIR, exist_ok=True)
    log = os.path.join(VM_DIR, f"{instance_id}.log")
    common = ["-m", "1024", "-smp", "2", "-display", "none", "-monitor", "none",
              "-serial", f"file:{log}", "-nic", "none", "-no-reboot",
              *_drive(disk, instance_type, serial)]
    if arch == "arm64":
        # arm64 instances boot with UEFI only.
        cmd = ["qemu-system-aarch64", "-machine", "virt,accel=tcg", "-cpu", "cortex-a72", *common]
        firmware, package = AAVMF, "qemu-efi-aarch64"
    else:
        cmd = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", *common]
        uefi = boot_mode in ("uefi", "uefi-preferred")
        firmware, package = (OVMF if uefi else None), "ovmf"
    if firmware is not None:
        found = next((f for f in firmware if os.path.exists(f)), None)
        if found is None:
            raise EC2ClientError(
                "KilnEmulatorNoFirmware", f"UEFI firmware is missing: apt-get install -y {package}"
            )
        cmd += ["-bios", found]
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise EC2ClientError(
            "KilnEmulatorNoQemu", f"{cmd[0]} is missing: apt-get install -y qemu-system-x86 qemu-system-arm"
        ) from None
    VMS[instance_id] = {"proc": proc, "log": log, "disk": disk}


def _stop_vm(instance_id: str) -> None:
    vm = VMS.pop(instance_id, None)
    if vm is None:
        return
    try:
        os.killpg(vm["proc"].pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    vm["proc"].wait()
    try:
        os.remove(vm["log"])
    except FileNotFoundError:
        pass


def stop_all_vms() -> None:
    for instance_id in list(VMS):
        _stop_vm(instance_id)


_orig_run_instances = InstanceResponse.run_instances


def _run_instances(self) -> ActionResult:
    result = _orig_run_instances(self)
    reservation = getattr(result, "result", None)
    with LOCK:
        for instance in getattr(reservation, "instances", []):
            found = _disk_of(self.ec2_backend, instance.image_id)
            if found:
                _boot(instance.id, *found, instance_type=instance.instance_type,
                      serial=_ebs_serial(instance))
    return result


InstanceResponse.run_instances = _run_instances
_orig_terminate = InstanceResponse.terminate_instances


def _terminate_instances(self) -> ActionResult:
    result = _orig_terminate(self)
    with LOCK:
        for instance_id in self._get_param("InstanceIds", []):
            _stop_vm(instance_id)
    return result


InstanceResponse.terminate_instances = _terminate_instances
_orig_console = General.get_console_output


def _get_console_output(self) -> ActionResult:
    instance_id = self._get_param("InstanceId")
    vm = VMS.get(instance_id)
    if vm is None:
        return _orig_console(self)
    instance = self.ec2_backend.get_instance(instance_id)
    try:
        with open(vm["log"], "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - CONSOLE_BYTES))
            data = f.read()
    except FileNotFoundError:
        data = b""
    result = {"InstanceId": instance.id, "Timestamp": utcnow()}
    if data:
        result["Output"] = base64.b64encode(data).decode()
    return ActionResult(result)


General.get_console_output = _get_console_output


def public_state() -> dict:
    return {
        "lifecycle_calls": LIFECYCLE_CALLS,
        "hosts": {
            n: {k: v for k, v in h.items() if k != "extra"} for n, h in HOSTS.items()
        },
        "delays": DELAYS,
        "throttle": THROTTLE,
        "ebs": PLANE.state() if PLANE is not None else None,
        "direct": DIRECT.state(),
        "throttle_direct": dict(DIRECT.throttle),
    }


def reset() -> None:
    with LOCK:
        moto_api_backend.reset()
        VOLUME_TOKENS.clear()
        COPY_TOKENS.clear()
        DELAYS.clear()
        FAULTS.clear()
        LIFECYCLE_CALLS.clear()
        THROTTLE.update({"share": 0.0, "actions": [], "body": ""})
        stop_all_vms()
        DIRECT.reset()
        if PLANE is not None:
            PLANE.reset()
        for host in HOSTS.values():
            host["extra"] = {}
            _launch_host_instance(host)


# ---------------------------------------------------------------------------------------------------
# Control endpoints and the server.
# ---------------------------------------------------------------------------------------------------


# 8. Faults on request: the next COUNT requests with this method, path prefix (S3 is path-style:
#    /bucket/key) and, if given, a substring of the body (an EC2 action and a parameter unique to
#    one test) get STATUS with an AWS error CODE, as a brief outage or a limit of AWS would answer.
FAULTS: list[dict] = []


def _take_fault(method: str, path: str, body: bytes) -> dict | None:
    text = body.decode("utf-8", "replace")
    with LOCK:
        for f in FAULTS:
            if (
                f["count"] > 0
                and f["method"] == method
                and path.startswith(f["path"])
                and f["body"] in text
            ):
                f["count"] -= 1
                if f["count"] == 0:
                    FAULTS.remove(f)
                return dict(f)
    return None


# 9. kiln's own creation calls (user agent `app/kiln`) must carry kiln's tag at creation.
KILN_AGENT = re.compile(r"(^|\s)app/kiln(\s|$)")
KILN_CREATIONS = ("CreateVolume", "CreateSnapshot", "RegisterImage", "CopyImage", "RunInstances")


def _untagged_creation(body: bytes) -> str | None:
    """The action, when `body` is an EC2 creation call without a kiln:build-id tag."""
    text = body.decode("utf-8", "replace")
    if not ("Action=" in text and "Version=" in text):
        return None
    action = next(
        (a for a in KILN_CREATIONS if f"Action={a}&" in text or text.endswith(f"Action={a}")),
        None,
    )
    if action is None or "kiln%3Abuild-id" in text or "kiln:build-id" in text:
        return None
    return action


# 12. Throttling on request: a share of the EC2 calls with the given actions (all when none are
#     given) and, if given, a substring of the body (a resource id: one test's calls only) answer
#     503 RequestLimitExceeded, as EC2 does when an account calls too fast.
THROTTLE: dict = {"share": 0.0, "actions": [], "body": ""}


def _throttled(body: bytes) -> bool:
    share = THROTTLE["share"]
    if share <= 0 or not (body.startswith(b"Action=") or b"&Action=" in body):
        return False
    m = re.search(rb"(?:^|&)Action=([A-Za-z]+)", body)
    action = m.group(1).decode() if m else ""
    if THROTTLE["actions"] and action not in THROTTLE["actions"]:
        return False
    if THROTTLE["body"] and THROTTLE["body"].encode() not in body:
        return False
    return random.random() < share


def _fault_reply(fault: dict, ec2: bool) -> bytes:
    code = fault["code"]
    message = fault.get("message", "injected by the kiln emulator")
    if ec2:  # EC2's query protocol
        return (
            f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code>"
            f"<Message>{message}</Message></Error></Errors><RequestID>kiln-fault</RequestID></Response>"
        ).encode()
    return (
        f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
        f"<Message>{message}</Message><RequestId>kiln-fault</RequestId></Error>"
    ).encode()


class KilnControl:
    """WSGI middleware: /_kiln/* goes to the emulator's control, everything else to moto."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        # The whole body is read before anything answers (keep-alive needs it drained).
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = environ["wsgi.input"].read()
            environ["CONTENT_LENGTH"] = str(len(body))
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if not path.startswith("/_kiln/") and DIRECT.region_of(environ) is not None:
            return self.direct(environ, start_response, path, body)
        if not path.startswith("/_kiln/"):
            from_kiln = KILN_AGENT.search(
                environ.get("HTTP_USER_AGENT", "") + " " + environ.get("HTTP_X_AMZ_USER_AGENT", "")
            )
            if not FAULTS and not from_kiln and THROTTLE["share"] <= 0:
                return self.app(environ, start_response)
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            untagged = _untagged_creation(body) if from_kiln else None
            if untagged is not None:
                data = _fault_reply(
                    {
                        "code": "KilnUntaggedResource",
                        "message": f"{untagged} without the kiln:build-id tag: kiln tags everything it "
                        "creates at creation (the kiln emulator refuses this so no test misses a leak)",
                    },
                    True,
                )
                start_response(
                    "400 Bad Request",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(data)))],
                )
                return [data]
            if _throttled(body):
                data = _fault_reply(
                    {"code": "RequestLimitExceeded", "message": "Request limit exceeded."}, True
                )
                start_response(
                    "503 Service Unavailable",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(data)))],
                )
                return [data]
            fault = _take_fault(environ.get("REQUEST_METHOD", ""), path, body)
            if fault is not None:
                data = _fault_reply(fault, body.startswith(b"Action=") or b"&Action=" in body)
                start_response(
                    f"{fault['status']} Injected",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(data)))],
                )
                return [data]
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
            out = self.handle(environ["REQUEST_METHOD"], path, body)
            status = "200 OK"
        except (KeyError, ValueError, TypeError) as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
            status = "400 Bad Request"
        data = json.dumps(out).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def direct(self, environ, start_response, path: str, body: bytes):
        """An EBS direct API call (section 15); an injected fault (section 8) answers first, in the
        service's restJson1 error shape."""
        fault = _take_fault(environ.get("REQUEST_METHOD", ""), path, body) if FAULTS else None
        if fault is not None:
            data = json.dumps({"Message": fault.get("message", "injected by the kiln emulator")}).encode()
            start_response(
                f"{fault['status']} Injected",
                [("Content-Type", "application/json"), ("x-amzn-ErrorType", fault["code"]),
                 ("Content-Length", str(len(data)))],
            )
            return [data]
        from_kiln = KILN_AGENT.search(
            environ.get("HTTP_USER_AGENT", "") + " " + environ.get("HTTP_X_AMZ_USER_AGENT", "")
        )
        status, headers, data = DIRECT.handle(environ, body, bool(from_kiln), ACCOUNT_ID)
        start_response(status, headers)
        return [data]

    def handle(self, method: str, path: str, body: dict) -> dict:
        if path == "/_kiln/state":
            return public_state()
        if method != "POST":
            raise ValueError(f"{method} {path} is not supported")
        if path == "/_kiln/reset":
            reset()
            return public_state()
        if path == "/_kiln/hosts":
            host = add_host(
                body["name"],
                body.get("region", DEFAULT_REGION),
                body.get("az"),
                body.get("naming", "nitro"),
                body.get("dev_dir"),
                body.get("nodes", True),
                body.get("detach_delay", 0.0),
            )
            return {k: v for k, v in host.items() if k != "extra"}
        if path == "/_kiln/delays":
            region = body["region"]
            unknown = set(body) - {"region", *DELAY_KINDS}
            if unknown:
                raise ValueError(f"unknown delay kinds {sorted(unknown)}; known: {DELAY_KINDS}")
            with LOCK:
                DELAYS[region] = {k: float(body[k]) for k in DELAY_KINDS if k in body}
            return public_state()
        if path == "/_kiln/faults":
            fault = {
                "method": str(body["method"]).upper(),
                "path": str(body["path"]),
                "status": int(body["status"]),
                "code": str(body["code"]),
                "count": int(body["count"]),
                "body": str(body.get("body", "")),
            }
            with LOCK:
                FAULTS.append(fault)
            return {"faults": FAULTS}
        if path == "/_kiln/throttle":
            share = float(body["share"])
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"share must be within 0..1, got {share}")
            with LOCK:
                THROTTLE["share"] = share
                THROTTLE["actions"] = [str(a) for a in body.get("actions", [])]
                THROTTLE["body"] = str(body.get("body", ""))
            return public_state()
        if path == "/_kiln/throttle-direct":
            DIRECT.set_throttle(body)
            return public_state()
        if path == "/_kiln/metadata":
            with LOCK:
                extra = HOSTS[body["host"]]["extra"]
                if body.get("value") is None:
                    extra.pop(body["path"], None)
                else:
                    extra[body["path"]] = str(body["value"])
            return public_state()
        raise ValueError(f"no control endpoint {path}")


DEFAULT_REGION = os.environ.get("AWS_REGION", "us-east-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-file", required=True, help="where to write the ports and hosts")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()

    app = KilnControl(DomainDispatcherApplication(create_backend_app))

    # 13. Keep-alive: HTTP/1.1 connections stay open between requests, as AWS's endpoints keep them
    #     (the SDK reuses them); werkzeug's default HTTP/1.0 closes each after one request.
    #     werkzeug always answers `Connection: close` because it cannot drain an unread request
    #     body (after each response it reads whatever the socket holds, which on a kept-alive
    #     connection is the next request); KilnControl reads every body first, so the header and
    #     that drain (werkzeug.serving's only use of `selectors`) go.
    class _NoDrain:
        EVENT_READ = selectors.EVENT_READ

        class DefaultSelector:
            def register(self, *args):
                pass

            def select(self, timeout=None):
                return []

            def close(self):
                pass

    werkzeug.serving.selectors = _NoDrain
    #     Nagle's algorithm off (as on AWS's endpoints): werkzeug writes headers and body
    #     separately, and on a kept-alive connection the body would wait for the client's delayed
    #     ACK (40 ms a response).
    class KeepAliveHandler(MotoRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def send_header(self, keyword, value):
            if keyword.lower() == "connection" and value.lower() == "close":
                return
            super().send_header(keyword, value)

    server = make_server(
        "127.0.0.1", args.port, app, threaded=True, request_handler=KeepAliveHandler
    )
    port = server.server_port
    os.environ["MOTO_PORT"] = str(port)
    global PLANE
    PLANE = emulator_ebs.Plane(
        os.path.join(os.path.dirname(os.path.abspath(args.state_file)), f"ebs-{port}"),
        os.path.join(emulator_ebs.DEV_ROOT, f"e{port}"),
        LOCK,
    )
    add_host("builder-1", DEFAULT_REGION)
    state = {
        "pid": os.getpid(),
        "endpoint": f"http://127.0.0.1:{port}",
        "region": DEFAULT_REGION,
        **public_state(),
    }
    tmp = args.state_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, args.state_file)
    print(f"kiln emulator on {state['endpoint']}", flush=True)
    # `scripts/emulator down` sends SIGTERM: no QEMU of an emulated instance outlives the emulator.
    def _terminate(signum, frame):
        stop_all_vms()
        PLANE.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop_all_vms()
        PLANE.close()


if __name__ == "__main__":
    sys.exit(main())
