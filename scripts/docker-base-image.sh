#!/usr/bin/env bash
# Builds a Debian bookworm base image locally, for machines whose Docker cannot pull from a registry (an
# offline host, CI without registry access): debootstrap a minimal root filesystem with Python 3.11 and
# `docker import` it. Build the Improbable image on it with `--build-arg BASE_IMAGE=improbable-base:bookworm`
# (the Dockerfile only needs `python3` with its venv module). Needs root, debootstrap and a Debian mirror:
#   apt-get install -y debootstrap && sudo scripts/docker-base-image.sh [TAG] [MIRROR]
# tests/deploy/test_compose_smoke.py runs only where this image exists.
set -euo pipefail
TAG=${1:-improbable-base:bookworm}
MIRROR=${2:-http://deb.debian.org/debian}
ROOTFS=${ROOTFS:-$(mktemp -d /tmp/improbable-rootfs.XXXXXX)}
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  echo "debootstrap bookworm into $ROOTFS (a few minutes) ..." >&2
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR"
fi
# what an image does not need: package caches and lists (apt still works after `apt-get update`)
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
echo "importing $ROOTFS as $TAG ..." >&2
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$TAG"
docker run --rm "$TAG" python3 -c 'import sys, venv; print("base image ok:", sys.version.split()[0])'
