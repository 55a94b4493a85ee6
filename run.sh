#!/usr/bin/env bash
# Sets up .venv and runs Improbable on the embedded defaults (SQLite and storage under
# ~/.local/share/improbable, jobs run in-process unless IMPROBABLE_BROKER_URL is set): with a DISCORD_TOKEN
# (in the environment or .env) the Discord bot, otherwise the console chat with the same commands (/help).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export IMPROBABLE_CORPUS_PATH=${IMPROBABLE_CORPUS_PATH:-$(cd .. && pwd)/shared/corpora}
if [ -n "${DISCORD_TOKEN:-${IMPROBABLE_DISCORD_TOKEN:-}}" ] || grep -qsE '^(IMPROBABLE_)?DISCORD_TOKEN=.+' .env; then
  exec .venv/bin/improbable bot
fi
exec .venv/bin/improbable chat "$@"
