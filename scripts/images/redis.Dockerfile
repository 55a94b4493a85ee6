# Redis for docker-compose.yml's `redis` service on a host without a registry: Debian's redis-server on the
# locally built base image (scripts/docker-base-image.sh). Built by scripts/docker-service-images.sh; used with
# REDIS_IMAGE=improbable-redis:bookworm in .env. Like the official image: data in /data (the redis-data volume),
# `redis-cli` for the healthcheck, and protected mode off when the command gives no config file (the port is
# reachable on the compose network only).
ARG BASE_IMAGE=improbable-base:bookworm
FROM ${BASE_IMAGE}
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    mkdir -p /data; \
    chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/bin/sh", "/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]
