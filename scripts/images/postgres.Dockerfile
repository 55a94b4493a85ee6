# PostgreSQL for docker-compose.yml's `postgres` service on a host without a registry: Debian's PostgreSQL on
# the locally built base image (scripts/docker-base-image.sh). Built by scripts/docker-service-images.sh; used
# with POSTGRES_IMAGE=improbable-postgres:bookworm in .env. It reads what the official image reads: on first
# start with an empty /var/lib/postgresql/data (the postgres-data volume) it creates the cluster with
# POSTGRES_USER (superuser, password POSTGRES_PASSWORD, required) and the database POSTGRES_DB; `pg_isready`
# answers the healthcheck. Debian bookworm ships PostgreSQL 15: a data volume is tied to the major version it
# was created by (pg_dump / pg_restore between versions, see docs/deploy.md, Backups).
ARG BASE_IMAGE=improbable-base:bookworm
FROM ${BASE_IMAGE}
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    bin=$(ls -d /usr/lib/postgresql/*/bin); \
    for tool in postgres initdb pg_ctl pg_isready psql pg_dump pg_restore; do ln -sf "$bin/$tool" /usr/local/bin/$tool; done; \
    mkdir -p /var/lib/postgresql/data /var/run/postgresql; \
    chown postgres:postgres /var/lib/postgresql /var/lib/postgresql/data /var/run/postgresql; \
    chmod 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
# fast shutdown: open sessions are closed, nothing is lost
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint"]
CMD ["postgres"]
