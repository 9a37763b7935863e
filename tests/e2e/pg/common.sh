# Shared by the e2e scripts that run against PostgreSQL (sourced, never run
# alone; set PG_NAME first, the name of the scratch folder): skips without
# the model, the NIH set or /usr/bin/python3; goes to the repository root;
# starts a throwaway PostgreSQL (tests/tools/pg_start.sh) in $T/pg, its URI
# in $URI, stopped and removed on exit; fail() counts failures in $fails,
# json FILE EXPR reads a JSON file.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
NIH=$SHARED/data/nih_cxr14_64px
[ -r "$MODEL" ] && [ -r "$NIH/labels.csv" ] || { echo "skip: $MODEL or $NIH not found"; exit 77; }
PY=/usr/bin/python3
[ -x $PY ] || { echo "skip: /usr/bin/python3 (used to read JSON) not found"; exit 77; }
cd "$(dirname "$0")/../.."
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-${PG_NAME:?}.XXXXXX")
chmod 711 "$T" # as root the cluster belongs to another user
URI=$(tests/tools/pg_start.sh "$T/pg")
rc=$?
[ $rc -eq 77 ] && { echo "skip: PostgreSQL is not installed"; rm -rf "$T"; exit 77; }
[ $rc -eq 0 ] || { echo "could not start PostgreSQL"; rm -rf "$T"; exit 1; }
trap 'tests/tools/pg_stop.sh "$T/pg" >/dev/null 2>&1; rm -rf "$T"' EXIT
export MEDSEARCH_MODEL=$MODEL
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
json() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
