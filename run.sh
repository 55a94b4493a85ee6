#!/usr/bin/env bash
# Sets up .venv and runs Improbable on the embedded defaults: trains the `alice` persona for one
# minute the first time (checkpoints under ~/.local/share/improbable/runs/alice), then generates text.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export IMPROBABLE_CORPUS_PATH=${IMPROBABLE_CORPUS_PATH:-$(cd .. && pwd)/shared/corpora}
RUN="${IMPROBABLE_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/improbable}/runs/alice"
[ -f "$RUN/best.safetensors" ] || .venv/bin/improbable train --recipe alice --minutes 1 --out "$RUN"
exec .venv/bin/improbable generate "$RUN/best.safetensors" --prompt "Alice was" --max-tokens 400 "$@"
