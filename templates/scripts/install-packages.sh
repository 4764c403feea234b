#!/bin/sh
# Installs $PACKAGES with the image's package manager, when it has one and packages were asked for.
set -e
if [ -z "$PACKAGES" ]; then
  echo "no packages requested"
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES
elif command -v dnf >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  dnf install -y $PACKAGES
else
  echo "this image has no package manager; cannot install: $PACKAGES" >&2
  exit 1
fi
