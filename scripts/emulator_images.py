"""AMI deprecation in the emulator (EnableImageDeprecation, DisableImageDeprecation, DeprecationTime), as
AWS's API reference and the EC2 User Guide ("Deprecate an AMI") describe it.

Imported by `emulator_launcher.py` (section 16; never by kiln), which calls `install(lock)` once. moto 5.2.5
answers neither action and never reports a DeprecationTime; this patch adds them to moto's own AMIs:

- EnableImageDeprecation (ImageId, DeprecateAt, DryRun): only the image's owner may (AuthFailure
  otherwise). The time is rounded to the nearest minute (half a minute rounds up). A DeprecateAt before
  the request arrives fails with InvalidParameterValue ("You can't specify a date in the past"), as does
  one more than 10 years from now, or, for a public AMI, more than 2 years after its creation. An id
  that is not `ami-...` is InvalidAMIID.Malformed, a deregistered image InvalidAMIID.Unavailable, an
  unknown one InvalidAMIID.NotFound (as moto answers its other image calls). Answers `return` true.
- DisableImageDeprecation (ImageId, DryRun): the same checks; clears the time.
- DescribeImages reports `deprecationTime` (`2026-12-02T15:04:00.000Z`) for an image that has one,
  however the images are asked for. An image whose deprecation time has passed is deprecated: the
  owner still sees it; for anyone else it is left out unless asked for by ImageIds or
  IncludeDeprecated=true. (The emulator's one account owns what it registers, so only images of other
  owners can ever be left out.)
- CopyImage's copy has no deprecation time (a new moto Ami; the launcher's CopyImage copies only the
  attributes it names); DeregisterImage of a deprecated image works as before.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from moto.core.parse import default_timestamp_parser
from moto.core.responses import ActionResult
from moto.ec2.exceptions import (
    EC2ClientError,
    InvalidAMIIdError,
    MalformedAMIIdError,
    UnvailableAMIIdError,
)
from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse

# AWS: "The upper limit for DeprecateAt is 10 years from now, except for public AMIs, where the upper
# limit is 2 years from the creation date."
MAX_YEARS = 10
MAX_YEARS_PUBLIC = 2
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.000Z"

_LOCK: threading.RLock | None = None


def _utc(value) -> datetime:
    """DeprecateAt as moto's query parser hands it (a datetime, or the raw string), in UTC."""
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = default_timestamp_parser(str(value))
        except Exception as exc:  # noqa: BLE001 - any unparsable value is the caller's error
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Value ({value}) for parameter deprecateAt is invalid. Expected an ISO 8601 time "
                "such as 2030-01-01T00:00:00Z.",
            ) from exc
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def _years_after(dt: datetime, years: int) -> datetime:
    try:
        return dt.replace(year=dt.year + years)
    except ValueError:  # 29 February
        return dt.replace(year=dt.year + years, day=28)


def round_to_minute(dt: datetime) -> datetime:
    """AWS: "If you specify a value for seconds, Amazon EC2 rounds the seconds to the nearest minute."."""
    floor = dt.replace(second=0, microsecond=0)
    if dt - floor >= timedelta(seconds=30):
        return floor + timedelta(minutes=1)
    return floor


def deprecation(image: Ami) -> datetime | None:
    return image.__dict__.get("_kiln_deprecation_time")


def is_deprecated(image: Ami, now: datetime | None = None) -> bool:
    """AWS: "A deprecated AMI is an AMI whose deprecation date is in the past."."""
    at = deprecation(image)
    return at is not None and at <= (now or datetime.now(timezone.utc))


def _deprecation_time(self: Ami) -> str | None:
    at = deprecation(self)
    return at.strftime(TIME_FORMAT) if at is not None else None


def _creation(image: Ami) -> datetime:
    created = getattr(image, "creation_date", None)
    if isinstance(created, datetime):
        return created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    return datetime.now(timezone.utc)


def _owned_image(response: AmisResponse) -> Ami:
    """The request's ImageId, which the caller's account must own; moto's answers for other ids."""
    image_id = response._get_param("ImageId")
    if not image_id:
        raise EC2ClientError("MissingParameter", "The request must contain the parameter imageId")
    backend = response.ec2_backend
    if not str(image_id).startswith("ami-"):
        raise MalformedAMIIdError([image_id])
    if image_id in backend.deleted_amis and image_id not in backend.amis:
        raise UnvailableAMIIdError(image_id)
    image = backend.amis.get(image_id)
    if image is None:
        raise InvalidAMIIdError(image_id)
    if str(image.owner_id) != str(backend.account_id):
        raise EC2ClientError("AuthFailure", f"Not authorized for image:{image_id}")
    return image


def _enable_image_deprecation(self: AmisResponse) -> ActionResult:
    raw = self._get_param("DeprecateAt")
    if raw is None or raw == "":
        raise EC2ClientError("MissingParameter", "The request must contain the parameter deprecateAt")
    with _LOCK:
        image = _owned_image(self)
        at = _utc(raw)
        now = datetime.now(timezone.utc)
        if at < now:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"The deprecation time {at.strftime('%Y-%m-%dT%H:%M:%SZ')} is in the past. You can't "
                "specify a date in the past.",
            )
        if at > _years_after(now, MAX_YEARS):
            raise EC2ClientError(
                "InvalidParameterValue",
                f"The deprecation time {at.strftime('%Y-%m-%dT%H:%M:%SZ')} is more than {MAX_YEARS} "
                "years from now. The upper limit for DeprecateAt is 10 years from now.",
            )
        if image.is_public and at > _years_after(_creation(image), MAX_YEARS_PUBLIC):
            raise EC2ClientError(
                "InvalidParameterValue",
                f"The deprecation time {at.strftime('%Y-%m-%dT%H:%M:%SZ')} is more than "
                f"{MAX_YEARS_PUBLIC} years after the creation of the public AMI {image.id}.",
            )
        self.error_on_dryrun()
        image._kiln_deprecation_time = round_to_minute(at)
    return ActionResult({"Return": True})


def _disable_image_deprecation(self: AmisResponse) -> ActionResult:
    with _LOCK:
        image = _owned_image(self)
        self.error_on_dryrun()
        image.__dict__.pop("_kiln_deprecation_time", None)
    return ActionResult({"Return": True})


def _bool_param(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() == "true"


def install(lock: threading.RLock) -> None:
    """Patches moto's Ami and AmisResponse (once; `lock` is the launcher's)."""
    global _LOCK
    if _LOCK is not None:
        return
    _LOCK = lock
    Ami.deprecation_time = property(_deprecation_time)
    AmisResponse.enable_image_deprecation = _enable_image_deprecation
    AmisResponse.disable_image_deprecation = _disable_image_deprecation

    orig_describe_images = AmisResponse.describe_images

    def describe_images(self: AmisResponse) -> ActionResult:
        result = orig_describe_images(self)
        if self._get_param("ImageIds", []) or _bool_param(self._get_param("IncludeDeprecated", False)):
            return result
        account = str(self.ec2_backend.account_id)
        now = datetime.now(timezone.utc)
        images = [
            i
            for i in result.result["Images"]
            if str(i.owner_id) == account or not is_deprecated(i, now)
        ]
        return ActionResult({"Images": images})

    AmisResponse.describe_images = describe_images
