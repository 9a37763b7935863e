#!/usr/bin/env bash
# Crash safety: `medsearch ingest` killed with SIGKILL at random moments
# (while loading the model, decoding, storing, saving the index), 20 times.
# After every kill the collection must open and pass `medsearch check`; at
# the end a last run resumes to the full count, with no duplicates.
# KILLS (default 20) and SEED (default random, printed) can be set.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
KER=$SHARED/data/kermany_pneumonia_224
[ -r "$MODEL" ] && [ -r "$KER/labels.csv" ] || { echo "skip: $MODEL or $KER not found"; exit 77; }
KILLS=${KILLS:-20}
SEED=${SEED:-$$}
RANDOM=$SEED
echo "seed $SEED (SEED=$SEED reproduces the delays)"
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-kill.XXXXXX")
trap 'rm -rf "$T"' EXIT
export MEDSEARCH_MODEL=$MODEL
DB=$T/k.db
N=400
mkdir -p "$T/set/images"
awk -F, 'NR > 1 && NR % 11 == 3 {print $1}' "$KER/labels.csv" | head -n $N |
  while read -r img; do ln -s "$KER/$img" "$T/set/images/"; done
[ "$(ls "$T/set/images" | wc -l)" -eq $N ] || { echo "could not link $N images"; exit 1; }

fails=0
for i in $(seq 1 "$KILLS"); do
  # 0.2 to 4.2 s: from model loading to the middle of the stream
  ms=$((200 + RANDOM % 4000))
  delay=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
  "$BIN" ingest "$T/set" --labels "$KER/labels.csv" --db "$DB" -q >"$T/ingest.log" 2>&1 &
  pid=$!
  sleep "$delay"
  kill -KILL $pid 2>/dev/null
  wait $pid 2>/dev/null
  if [ -e "$DB" ]; then
    if ! "$BIN" check --db "$DB" >"$T/check.log" 2>&1; then
      echo "FAIL: check after kill $i (after ${delay}s):"
      cat "$T/check.log"
      fails=$((fails + 1))
    fi
    n=$("$BIN" info --db "$DB" --json 2>/dev/null | sed -n 's/.*"images": \([0-9]*\).*/\1/p')
    echo "kill $i after ${delay}s: ${n:-?} images stored; $(tail -n 1 "$T/check.log")"
  else
    echo "kill $i after ${delay}s: before the collection was created"
  fi
done

"$BIN" ingest "$T/set" --labels "$KER/labels.csv" --db "$DB" -q --json >"$T/final.json" 2>"$T/final.err" ||
  { echo "FAIL: the resuming ingest failed:"; cat "$T/final.err"; fails=$((fails + 1)); }
"$BIN" check --db "$DB" || fails=$((fails + 1))
n=$("$BIN" info --db "$DB" --json | sed -n 's/.*"images": \([0-9]*\).*/\1/p')
[ "$n" = "$N" ] || { echo "FAIL: $n images stored, expected $N (lost or duplicated)"; fails=$((fails + 1)); }
# every stored image is a distinct file of the set, with its labels
"$BIN" export --vectors --db "$DB" --out "$T/x" 2>/dev/null || fails=$((fails + 1))
dup=$(tail -n +2 "$T/x.csv" | cut -d, -f2 | sort | uniq -d | head -3)
[ -z "$dup" ] || { echo "FAIL: stored twice: $dup"; fails=$((fails + 1)); }
unlabelled=$(tail -n +2 "$T/x.csv" | awk -F, '$8 == ""' | wc -l)
[ "$unlabelled" -eq 0 ] || { echo "FAIL: $unlabelled images lost their labels"; fails=$((fails + 1)); }
"$BIN" ingest "$T/set" --db "$DB" -q --json | grep -q '"ingested": 0' ||
  { echo "FAIL: a further run ingested again"; fails=$((fails + 1)); }
[ $fails -eq 0 ] && echo "all passed: $KILLS kills, $N images, no loss, no duplicate"
[ $fails -eq 0 ]
