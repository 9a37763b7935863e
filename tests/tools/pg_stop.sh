#!/usr/bin/env bash
# Stops a server started by tests/tools/pg_start.sh DIR and removes DIR.
# Usage: tests/tools/pg_stop.sh DIR
set -uo pipefail
dir=${1:?usage: pg_stop.sh DIR}
[ -f "$dir/data/PG_VERSION" ] || { echo "pg_stop: $dir holds no cluster" >&2; exit 1; }
# The pg_ctl of the cluster's own major version.
bindir=${PG_BINDIR:-/usr/lib/postgresql/$(cat "$dir/data/PG_VERSION")/bin}
[ -x "$bindir/pg_ctl" ] || bindir=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
if [ "$(id -u)" -eq 0 ]; then
  runuser -u "$(stat -c %U "$dir/data")" -- "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
else
  "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
fi
rm -rf -- "$dir"
