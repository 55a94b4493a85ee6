#!/bin/sh
# redis-server without a config file listens on every interface in protected mode, which refuses every client
# but localhost; on the compose network the other services are those clients (the official image does the same).
set -eu
if [ "${1:-}" = redis-server ]; then
  case "${2:-}" in
    /*|-v|--version|-h|--help) ;;  # a config file of its own, or no server at all
    *) shift; exec redis-server --protected-mode no "$@" ;;
  esac
fi
exec "$@"
