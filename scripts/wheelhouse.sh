#!/usr/bin/env bash
# Fills wheels/ with every wheel the image installs, for image builds that reach no package index
# (`docker compose build` with OFFLINE=1, see README, Docker): the torch build (CPU by default) and every
# package of requirements.lock, downloaded by pip from its configured indexes on this machine, which must
# be Linux x86_64 with Python 3.11 like the image.
#   scripts/wheelhouse.sh                               # torch==2.13.0+cpu
#   TORCH_SPEC=torch==2.13.0 scripts/wheelhouse.sh      # the CUDA build from PyPI (several GB)
# A CPU build not on this machine's indexes: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
echo "downloading $TORCH_SPEC and the $(grep -c '^[^#]' requirements.lock) packages of requirements.lock into wheels/ ..." >&2
# the lock is complete, so no dependency resolution is needed (--no-deps); binary wheels only: nothing
# is compiled in the image. Markers are dropped: a pin for older Python 3.11 releases (Debian's 3.11.2)
# is fetched too, as the image's Python may need it where this one does not.
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
sed -e 's/ *;.*//' requirements.lock >"$pins"
"$PYTHON" -m pip download --quiet --dest wheels --only-binary=:all: --no-deps \
    "$TORCH_SPEC" -r "$pins" 2> >(grep -v "^WARNING: Location" >&2)
echo "wheels/ holds $(ls wheels/*.whl | wc -l) wheels ($(du -sh wheels | cut -f1))" >&2
