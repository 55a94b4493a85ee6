#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite against the real corpora in ../shared/corpora.
# Extra arguments go to pytest (e.g. ./test.sh tests/test_sample.py -x).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export IMPROBABLE_CORPUS_PATH=${IMPROBABLE_CORPUS_PATH:-$(cd .. && pwd)/shared/corpora}
exec .venv/bin/python -m pytest "$@"
