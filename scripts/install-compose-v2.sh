#!/usr/bin/env bash
# Installs Compose v2 (`docker compose`) on a Debian bookworm host, whose own docker-compose is 1.29: the
# CLI plugin from Debian trixie's `docker-compose` package (2.26, a static Go binary needing only libc6 >= 2.34).
# trixie is never added to the system's sources: apt reads its index into a temporary folder (checked against
# the system's Debian keyring), downloads the one package there, and only its plugin binary is copied to
# /usr/local/lib/docker/cli-plugins/docker-compose, where both Debian's docker 20.10 CLI and newer CLIs look.
# Needs root and a Debian mirror. Does nothing when `docker compose version` already answers v2.
#   sudo scripts/install-compose-v2.sh [MIRROR]
set -euo pipefail
MIRROR=${1:-http://deb.debian.org/debian}
SUITE=${COMPOSE_SUITE:-trixie}
PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose

is_v2() { docker compose version 2>/dev/null | grep -Eq 'version v?2\.'; }
if is_v2; then
  echo "Compose v2 already installed: $(docker compose version)"
  exit 0
fi
command -v docker >/dev/null || { echo "no docker CLI: apt-get install -y docker.io" >&2; exit 1; }

WORK=$(mktemp -d /tmp/compose-v2.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial"
chmod 0755 "$WORK" && { chown _apt "$WORK" 2>/dev/null || true; }   # apt downloads as its user _apt
echo "deb $MIRROR $SUITE main" > "$WORK/sources.list"
# apt, with only this sources.list and its own lists and cache: the system's sources stay as they are
APT=(apt-get -q -o Dir::Etc::sourcelist="$WORK/sources.list" -o Dir::Etc::sourceparts=-
     -o Dir::State::Lists="$WORK/lists" -o Dir::Cache="$WORK/cache")
"${APT[@]}" update
(cd "$WORK" && "${APT[@]}" download docker-compose)   # hash-checked against the signed index
dpkg-deb -x "$WORK"/docker-compose_*.deb "$WORK/root"

# only the plugin: trixie's /usr/bin/docker-compose would shadow Debian's 1.29, which may stay installed
install -D -m 0755 "$WORK/root/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN"
is_v2 || { echo "installed $PLUGIN, but \`docker compose version\` does not answer v2" >&2; exit 1; }
echo "installed $PLUGIN: $(docker compose version)"
