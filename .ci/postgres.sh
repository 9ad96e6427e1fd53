#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for the scale-out test of `harness tune`.
# Installs Debian's postgresql if missing. Prints the URL to use; prints nothing if it fails
# (the test then skips with a reason).
set -uo pipefail
port=${HARNESS_PG_PORT:-54329}
dir=${HARNESS_PG_DIR:-/tmp/harness-pg}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2 || exit 0
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
[ -x "$bin/initdb" ] || exit 0
run_as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
if ! run_as_postgres "$bin/pg_ctl -D $dir status" >/dev/null 2>&1; then
  rm -rf "$dir" && mkdir -p "$dir" && { [ "$(id -u)" != 0 ] || chown postgres "$dir"; }
  run_as_postgres "$bin/initdb -D $dir -U postgres --auth=trust" >/dev/null 2>&1 || exit 0
  run_as_postgres "$bin/pg_ctl -D $dir -l $dir/log -o '-p $port -k /tmp -c listen_addresses=127.0.0.1' -w start" >/dev/null 2>&1 || exit 0
fi
echo "postgresql://postgres@127.0.0.1:$port/postgres"
