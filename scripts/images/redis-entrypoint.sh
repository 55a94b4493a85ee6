#!/bin/sh
# redis-server without a config file listens on every interface in protected mode, which refuses every client
# but localhost; on the compose network the other services are those clients (the official image does the same).
set -eu
if [ "${1:-}" = redis-server ] && [ "${2:-}" = "${2#/}" ]; then  # no config file path as the first argument
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
