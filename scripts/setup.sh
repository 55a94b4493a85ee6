#!/usr/bin/env bash
# Creates .venv and installs Improbable into it, saying what it installs and how long that takes.
#
# A stamp in .venv records a hash of what decides the install (pyproject.toml, requirements.lock, the
# Python version, this script): when nothing of it changed since the last successful run, this is a no-op
# that takes well under a second, so ./run.sh and ./test.sh start at once the second time.
# FORCE_SETUP=1 reinstalls anyway.
#
# PyTorch goes first, pinned (torch==2.13.0): on a CPU-only machine pip takes the CPU wheel (here from a
# local folder), and the package's own `torch>=...` is then already met. A plain `torch` requirement would
# make pip download a CUDA build of several GB instead. Everything else is constrained to the exact
# versions of requirements.lock (regenerate it with scripts/lock.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC="torch==2.13.0"
VENV=.venv
STAMP=$VENV/.setup-stamp
LOG=$VENV/setup.log

fingerprint() {
  {
    "$PYTHON" -c 'import sys; print(sys.version)'
    echo "$TORCH_SPEC"
    cat pyproject.toml requirements.lock scripts/setup.sh
  } | sha256sum | cut -d' ' -f1
}

wanted=$(fingerprint)
# the fast path: a stamp that matches, and a venv whose interpreter still runs (a Python upgrade or a
# moved checkout breaks it without changing any file above)
if [ -z "${FORCE_SETUP:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] \
    && [ -x "$VENV/bin/improbable" ] && "$VENV/bin/python" -c "" 2>/dev/null; then
  exit 0
fi

say() { printf '[setup] %s\n' "$*" >&2; }
started=$SECONDS
step_started=$SECONDS
step() { step_started=$SECONDS; say "$*"; }
step_done() { say "  done in $((SECONDS - step_started)) s"; }

# pip's output goes to $LOG in full; the terminal gets one line per package it fetches (so there is always
# something moving) and, if pip fails, the log's tail
shown_lines=0
show_progress() {
  local lines
  lines=$(wc -l <"$LOG")
  [ "$lines" -gt "$shown_lines" ] || return 0
  sed -n "$((shown_lines + 1)),${lines}p" "$LOG" | sed -n \
    -e 's/^Collecting \([^ ]*\).*/  collecting \1/p' \
    -e 's/^Installing collected packages: .*/  unpacking the packages (the longest part).../p' >&2
  shown_lines=$lines
}

pip_install() {
  local status=0
  "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off "$@" >>"$LOG" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.5
    show_progress
  done
  wait "$pid" || status=$?
  show_progress
  if [ "$status" -ne 0 ]; then
    say "pip failed (exit $status); the end of $LOG:"
    grep -v '^WARNING: Location' "$LOG" | tail -n 25 >&2
    say "fix the cause above and run this again (FORCE_SETUP=1 to reinstall everything)"
    exit "$status"
  fi
}

if [ -f "$STAMP" ]; then
  say "dependencies changed since the last setup (pyproject.toml, requirements.lock or Python): updating $VENV"
else
  say "first setup of $VENV: about 1-2 min with the PyTorch wheel on local disk, 5-10 min if pip downloads it"
fi
rm -f "$STAMP"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "" 2>/dev/null; then
  step "[1/3] creating $VENV with $("$PYTHON" --version 2>&1) (a few seconds)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  step_done
else
  say "[1/3] $VENV exists ($("$VENV/bin/python" --version 2>&1))"
fi
mkdir -p "$VENV"
: >"$LOG"

step "[2/3] installing $TORCH_SPEC (~200 MB CPU wheel; 20-60 s from local disk, a few minutes downloaded)"
pip_install -c requirements.lock "$TORCH_SPEC"
step_done

step "[3/3] installing Improbable and its dependencies with the dev extras (~120 packages, about 1 min)"
pip_install -c requirements.lock -e ".[dev]"
step_done

"$VENV/bin/python" -c "import torch, improbable" || {
  say "the install finished but \`import torch, improbable\` fails (above); see $LOG"
  exit 1
}
echo "$wanted" >"$STAMP"
say "ready in $((SECONDS - started)) s: torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'); next runs skip this step"
