#!/usr/bin/env bash
# Runs MedSearch's tests and prints one closing line "N passed, N failed, N skipped".
# Usage: tests/run.sh [unit|e2e|browser|all]   (default all)
# A test program exits 0 (pass), 77 (skip, having said why) or anything else (fail).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export MEDSEARCH_BIN=${MEDSEARCH_BIN:-$PWD/$BUILD/medsearch-asan}
export MEDSEARCH_SHARED=${MEDSEARCH_SHARED:-$(cd .. && pwd)/shared}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp}
what=${1:-all}
pass=0 fail=0 skip=0 failed=()

run_one() {
  local name=$1; shift
  local log="$BUILD/test-logs/${name//\//_}.log"
  mkdir -p "$BUILD/test-logs"
  local t0=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$?
  case $rc in
    0) pass=$((pass+1)); printf 'PASS  %-40s %3ds\n' "$name" $((SECONDS-t0));;
    77) skip=$((skip+1)); printf 'SKIP  %-40s %s\n' "$name" "$(grep -m1 -i 'skip' "$log" | cut -c1-100)";;
    *) fail=$((fail+1)); failed+=("$name"); printf 'FAIL  %-40s (exit %d)\n' "$name" $rc
       tail -n 30 "$log" | sed 's/^/    | /';;
  esac
}

if [ "$what" = unit ] || [ "$what" = all ]; then
  for t in "$BUILD"/asan/tests/test_*; do
    [ -x "$t" ] && run_one "unit/$(basename "$t")" "$t"
  done
fi
if [ "$what" = e2e ] || [ "$what" = all ]; then
  for t in tests/e2e/*.sh; do
    [ -f "$t" ] && run_one "e2e/$(basename "$t" .sh)" bash "$t"
  done
fi
if [ "$what" = browser ] || [ "$what" = all ]; then
  for t in tests/browser/*.test.mjs; do
    [ -f "$t" ] && run_one "browser/$(basename "$t" .test.mjs)" node "$t"
  done
fi

[ ${#failed[@]} -gt 0 ] && printf 'failed: %s\n' "${failed[*]}"
echo "tests: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
