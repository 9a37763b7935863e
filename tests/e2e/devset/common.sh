# common.sh - the set-up shared by the end-to-end tests that run on the dev
# sets of $MEDSEARCH_SHARED (eval_kermany.sh, eval_compare.sh,
# center_policy.sh). Sourced after `set -u`: moves to the repository root and
# sets BIN (the binary under test), SHARED, PY (Debian's python3, which has
# numpy) and MODEL (the ImageNet MobileNetV2); `devset_require DATA [FILE...]`
# skips (exit 77) unless the data set, the model, every FILE, the binary and
# numpy are there, then makes the scratch directory $tmp (removed on exit);
# fail MESSAGE ends the test.
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
BIN=${MEDSEARCH_BIN:-$PWD/build/medsearch-asan}
SHARED=${MEDSEARCH_SHARED:-}
PY=/usr/bin/python3
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx

devset_require() {  # DATA [FILE...]
  local data=$1 f
  shift
  [ -n "$SHARED" ] && [ -f "$data/labels.csv" ] ||
    { echo "skip: \$MEDSEARCH_SHARED/data/$(basename "$data") not found"; exit 77; }
  for f in "$MODEL" "$@"; do
    [ -f "$f" ] || { echo "skip: $f not found"; exit 77; }
  done
  [ -x "$BIN" ] || { echo "skip: $BIN not built"; exit 77; }
  $PY -c 'import numpy' 2>/dev/null || { echo "skip: $PY has no numpy (Debian python3-numpy)"; exit 77; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
}

fail() { echo "FAIL: $*"; exit 1; }
