#!/usr/bin/env bash
# Writes .env from .env.example with random passwords for PostgreSQL and Flower filled in, so that
#   scripts/init-env.sh && docker compose up -d --build
# brings up the CPU deployment with nothing edited by hand (add DISCORD_TOKEN for the bot to log in).
# An existing file is never overwritten. Usage: scripts/init-env.sh [OUTPUT, default .env]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.env}
if [ -e "$out" ]; then
  echo "$out exists; not overwriting it (delete it first to start from .env.example again)" >&2
  exit 1
fi
# hex: safe inside URLs and .env files without quoting
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
postgres_password=$(random_hex 24)
flower_password=$(random_hex 16)
umask 077  # the file holds secrets: readable by its owner only
sed -e "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$postgres_password/" \
    -e "s/^FLOWER_BASIC_AUTH=.*/FLOWER_BASIC_AUTH=admin:$flower_password/" \
    .env.example >"$out"
echo "wrote $out with random POSTGRES_PASSWORD and FLOWER_BASIC_AUTH (Flower login: admin / $flower_password)" >&2
