#!/usr/bin/env bash
# Builds the Redis and PostgreSQL images of docker-compose.yml from the local base image (Debian's packages
# on improbable-base:bookworm, see scripts/docker-base-image.sh), for a host whose Docker reaches no registry.
# The packages come from the Debian mirror the base image was bootstrapped from (the builds use the host's
# network, as debootstrap did). Then set in .env the two lines it prints.
#   scripts/docker-service-images.sh [BASE_IMAGE, default improbable-base:bookworm]
set -euo pipefail
cd "$(dirname "$0")/images"
BASE=${1:-improbable-base:bookworm}
docker image inspect "$BASE" >/dev/null 2>&1 \
  || { echo "$BASE is not built here: run scripts/docker-base-image.sh first" >&2; exit 1; }
for name in redis postgres; do
  echo "building improbable-$name:bookworm from $BASE ..." >&2
  DOCKER_BUILDKIT=0 docker build --network host --build-arg "BASE_IMAGE=$BASE" -t "improbable-$name:bookworm" \
    -f "$name.Dockerfile" . >&2
done
redis=$(docker run --rm --entrypoint redis-server improbable-redis:bookworm --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
postgres=$(docker run --rm --entrypoint postgres improbable-postgres:bookworm --version | awk '{print $3}')
echo "built improbable-redis:bookworm (Redis $redis) and improbable-postgres:bookworm (PostgreSQL $postgres); in .env:" >&2
echo "REDIS_IMAGE=improbable-redis:bookworm"
echo "POSTGRES_IMAGE=improbable-postgres:bookworm"
