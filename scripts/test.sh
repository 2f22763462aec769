#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing (Debian packages) and
# starts the services they use when they are not running, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# --- packages --------------------------------------------------------------------------------
missing=()
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v pebble-challtestsrv >/dev/null 2>&1 || missing+=(pebble)   # DNS server the tests program
[ -x /usr/sbin/nsd ] || missing+=(nsd)                                # authoritative DNS (NXDOMAIN)
[ -x /usr/sbin/unbound ] || missing+=(unbound)                        # recursive resolver in front of test zones
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- PostgreSQL on 127.0.0.1:5432, trust auth for the postgres role ---------------------------
pg_url="${CERTPLANE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
export CERTPLANE_TEST_POSTGRES="$pg_url"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
  done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL does not answer on 127.0.0.1:5432"; exit 1; }
if ! psql "$pg_url" -Atqc 'select 1' >/dev/null 2>&1; then
  # A freshly installed cluster asks for passwords on TCP; the tests connect without one.
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  log "allowing trust auth on loopback in $hba"
  sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+)[^[:space:]]+/\1trust/' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  sleep 1
  psql "$pg_url" -Atqc 'select 1' >/dev/null
fi

# --- tests -----------------------------------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
