#!/bin/sh
# Entry point of the Improbable image (every service): refuses to start with an empty or placeholder password,
# so that a copied .env.example never runs a deployment with a published default, then runs the command.
#
# Checked: POSTGRES_PASSWORD and PGPASSWORD, the passwords inside IMPROBABLE_DATABASE_URL, IMPROBABLE_BROKER_URL
# and IMPROBABLE_RESULT_BACKEND, and for Flower FLOWER_BASIC_AUTH (user:password, required: Flower is the
# queue's control panel). `scripts/init-env.sh` writes a .env with random passwords.
set -eu

refuse() {
  echo "improbable: refusing to start: $1" >&2
  echo "improbable: set real passwords in .env (scripts/init-env.sh writes a .env with random ones), then start again" >&2
  exit 64
}

# weak: empty, shorter than 8 characters, or a well-known placeholder (compared case-insensitively)
weak() {
  [ "${#1}" -ge 8 ] || return 0
  case "$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" in
    change-me|changeme|change_me|change-this|changethis|changeit|replace-me|replaceme|password|passw0rd|\
    secret|example|improbable|postgres|admin|12345678|123456789|qwertyuiop|xxxxxxxx*|*placeholder*|"<"*">")
      return 0 ;;
  esac
  return 1
}

# the password of scheme://user:password@host/..., or nothing when the URL holds none
url_password() {
  case "$1" in
    *://*@*) ;;
    *) return 0 ;;
  esac
  userinfo=${1#*://}
  userinfo=${userinfo%%@*}
  case "$userinfo" in
    *:*) printf '%s' "${userinfo#*:}" ;;
  esac
}

# PGPASSWORD: libpq's, which docker-compose.yml sets from POSTGRES_PASSWORD for a database URL without one
for name in POSTGRES_PASSWORD PGPASSWORD; do
  eval "set=\${$name+set} value=\${$name:-}"
  if [ -n "$set" ] && weak "$value"; then
    refuse "$name is empty, shorter than 8 characters or a placeholder"
  fi
done

database_url=${IMPROBABLE_DATABASE_URL:-}
case "$database_url" in
  postgres*://*@*)  # a PostgreSQL URL that names a user: its password must be real
    password=$(url_password "$database_url")
    if weak "$password"; then
      refuse "the password in IMPROBABLE_DATABASE_URL is empty, shorter than 8 characters or a placeholder"
    fi ;;
esac

for name in IMPROBABLE_BROKER_URL IMPROBABLE_RESULT_BACKEND; do
  eval "url=\${$name:-}"
  password=$(url_password "$url")
  if [ -n "$password" ] && weak "$password"; then
    refuse "the password in $name is shorter than 8 characters or a placeholder"
  fi
done

runs_flower=no
for arg in "$@"; do
  [ "$arg" = flower ] && runs_flower=yes
done
if [ "$runs_flower" = yes ]; then
  auth=${FLOWER_BASIC_AUTH:-}
  [ -n "$auth" ] || refuse "FLOWER_BASIC_AUTH is not set: Flower needs a user:password login"
  # Flower takes several logins separated by commas
  old_ifs=$IFS
  IFS=,
  for login in $auth; do
    case "$login" in
      ?*:*) weak "${login#*:}" && refuse "a password in FLOWER_BASIC_AUTH is shorter than 8 characters or a placeholder" ;;
      *) refuse "FLOWER_BASIC_AUTH must be user:password (several separated by commas)" ;;
    esac
  done
  IFS=$old_ifs
fi

exec "$@"
