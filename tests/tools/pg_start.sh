#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for tests and benchmarks and prints its
# URI (postgresql://medsearch@127.0.0.1:PORT/medsearch) on stdout.
#
# Usage: tests/tools/pg_start.sh [DIR]
#   DIR (created, must not exist or be empty) holds the cluster, its Unix socket
#   and its log; without DIR a fresh one is made with mktemp. Stop the server and
#   remove DIR with tests/tools/pg_stop.sh DIR.
# The server listens on 127.0.0.1 only, on a free port, with trust
# authentication (it is for tests: nothing outside this machine can reach it).
# initdb refuses to run as root, so as root the cluster belongs to the
# unprivileged user $PG_TEST_USER (default: postgres).
# PostgreSQL binaries are found in $PG_BINDIR, on PATH, or in
# /usr/lib/postgresql/*/bin. Exit codes: 0 started, 77 binaries absent (a
# message containing "skip" says so), 1 anything else (the log tail is shown).
set -euo pipefail

find_bindir() {
  local d
  for d in "${PG_BINDIR:-}" "$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")")" \
           $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

bindir=$(find_bindir) || { echo "skip: PostgreSQL binaries (initdb, pg_ctl) not found; set PG_BINDIR" >&2; exit 77; }

dir=${1:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-pg.XXXXXX")
  echo "pg_start: cluster in $dir; stop it with tests/tools/pg_stop.sh $dir" >&2
fi
mkdir -p "$dir"
if [ -n "$(ls -A "$dir")" ]; then
  echo "pg_start: $dir is not empty" >&2
  exit 1
fi

# as_owner CMD...: runs CMD as the cluster's owner (ourselves unless root).
if [ "$(id -u)" -eq 0 ]; then
  owner=${PG_TEST_USER:-postgres}
  id "$owner" >/dev/null 2>&1 || { echo "pg_start: running as root and user '$owner' does not exist (set PG_TEST_USER)" >&2; exit 1; }
  chown "$owner" "$dir"
  chmod 700 "$dir"
  as_owner() { runuser -u "$owner" -- "$@"; }
else
  as_owner() { "$@"; }
fi

as_owner "$bindir/initdb" -D "$dir/data" -U medsearch -A trust -E UTF8 --locale=C --no-sync \
  >"$dir/initdb.log" 2>&1 || { echo "pg_start: initdb failed:" >&2; tail -n 20 "$dir/initdb.log" >&2; exit 1; }

# A free port: pick one at random and let the server try it; another user of
# the port makes pg_ctl fail, and we try the next candidate.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  port=$((20000 + RANDOM % 40000))
  if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
       -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=40" start >/dev/null 2>&1; then
    if ! as_owner "$bindir/createdb" -h "$dir" -p "$port" -U medsearch medsearch >"$dir/createdb.log" 2>&1; then
      echo "pg_start: createdb failed:" >&2
      cat "$dir/createdb.log" >&2
      as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
      exit 1
    fi
    echo "postgresql://medsearch@127.0.0.1:$port/medsearch"
    exit 0
  fi
  grep -qi "address already in use\|could not bind\|could not create lock file" "$dir/server.log" 2>/dev/null || break
  : >"$dir/server.log"
done
echo "pg_start: the server did not start:" >&2
tail -n 20 "$dir/server.log" >&2 2>/dev/null || true
exit 1
