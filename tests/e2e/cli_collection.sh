#!/usr/bin/env bash
# The collection commands end to end on real X-rays: ingest subsets of the
# Kermany and NIH dev sets with their labels.csv, search with an image of the
# set (it comes back first with score 1.0 and its metadata), filters, one per
# patient, info, check, export (NPY + CSV), delete, resume, exit codes.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
KER=$SHARED/data/kermany_pneumonia_224
NIH=$SHARED/data/nih_cxr14_64px
for f in "$MODEL" "$KER/labels.csv" "$NIH/labels.csv"; do
  [ -r "$f" ] || { echo "skip: $f not found (MEDSEARCH_SHARED=$SHARED)"; exit 77; }
done
PY=/usr/bin/python3
[ -x $PY ] || { echo "skip: /usr/bin/python3 (used to read JSON) not found"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-cli.XXXXXX")
trap 'rm -rf "$T"' EXIT
export MEDSEARCH_MODEL=$MODEL
DB=$T/c.db
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
json() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# 300 Kermany images, every 15th row (both classes), linked into a folder
mkdir -p "$T/kermany/images"
awk -F, 'NR > 1 && NR % 15 == 2 {print $1}' "$KER/labels.csv" | head -n 300 |
  while read -r img; do ln -s "$KER/$img" "$T/kermany/images/"; done
n_ker=$(ls "$T/kermany/images" | wc -l)
[ "$n_ker" -eq 300 ] || fail "expected 300 Kermany images, linked $n_ker"

echo "== ingest Kermany subset and the NIH dev set"
"$BIN" ingest "$T/kermany" --labels "$KER/labels.csv" --db "$DB" --json >"$T/ing1.json" 2>"$T/ing1.err"
rc=$?
[ $rc -eq 0 ] || { cat "$T/ing1.err"; fail "ingest kermany exit $rc"; }
[ "$(json "$T/ing1.json" "d['ingested']")" = 300 ] || fail "kermany: not 300 ingested: $(cat "$T/ing1.json")"
[ "$(json "$T/ing1.json" "d['unlabelled']")" = 0 ] || fail "kermany: unlabelled images"
"$BIN" ingest "$NIH" --labels "$NIH/labels.csv" --db "$DB" --json >"$T/ing2.json" 2>"$T/ing2.err"
[ $? -eq 0 ] || { cat "$T/ing2.err"; fail "ingest nih"; }
[ "$(json "$T/ing2.json" "d['ingested']")" = 750 ] || fail "nih: not 750 ingested"
[ "$(json "$T/ing2.json" "d['skipped_not_images']")" = 2 ] || fail "nih: README.md and labels.csv not skipped"
grep -q "skip: .*README.md: not a PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM" "$T/ing2.err" || fail "non-image not reported"

echo "== search with images of the set"
for img in "$(ls "$T/kermany/images" | sed -n 7p)" "$(ls "$T/kermany/images" | sed -n 201p)"; do
  # The collection's default expands the query (top 3): the image itself is
  # still first, scored against the expanded query; plain, it scores 1.
  "$BIN" search "$T/kermany/images/$img" --db "$DB" -k 5 --json >"$T/s.json" || fail "search $img"
  [ "$(json "$T/s.json" "d['qe']")" = 3 ] || fail "search $img: not expanded by the new collection's default"
  name=$(json "$T/s.json" "d['results'][0]['original_name']")
  [ "$name" = "images/$img" ] || fail "search $img: first result is $name"
  score=$(json "$T/s.json" "d['results'][0]['score']")
  $PY -c "import sys; sys.exit(0 if 0.5 < float('$score') < 0.9999 else 1)" || fail "search $img: expanded score $score"
  "$BIN" search "$T/kermany/images/$img" --db "$DB" -k 5 --qe 0 --json >"$T/s0.json" || fail "search $img --qe 0"
  [ "$(json "$T/s0.json" "d['results'][0]['original_name']")" = "images/$img" ] || fail "search $img --qe 0: not first"
  score=$(json "$T/s0.json" "d['results'][0]['score']")
  $PY -c "import sys; sys.exit(0 if float('$score') >= 0.9999 else 1)" || fail "search $img --qe 0: score $score < 0.9999"
  row=$(grep "^images/$img," "$KER/labels.csv")
  want="$(echo "$row" | cut -d, -f2 | tr '|' '\n' | sort | paste -sd'|'),$(echo "$row" | cut -d, -f4)"
  got=$(json "$T/s.json" "'|'.join(sorted(d['results'][0]['labels'])) + ',' + d['results'][0]['patient_id']")
  [ "$got" = "$want" ] || fail "search $img: metadata '$got', labels.csv says '$want'"
done
q=$NIH/images/00000013_005.png
"$BIN" search "$q" --db "$DB" -k 3 --json >"$T/s.json" || fail "search nih"
[ "$(json "$T/s.json" "d['results'][0]['original_name']")" = images/00000013_005.png ] || fail "nih image not first"
[ "$(json "$T/s.json" "d['results'][0]['age']")" = "$(grep '^images/00000013_005.png,' "$NIH/labels.csv" | cut -d, -f4)" ] ||
  fail "nih age"

echo "== filters"
"$BIN" search "$T/kermany/images/$(ls "$T/kermany/images" | head -1)" --db "$DB" -k 50 \
  --filter labels:PNEUMONIA --json >"$T/f.json" || fail "filtered search"
[ "$(json "$T/f.json" "len(d['results'])")" = 50 ] || fail "filter: not 50 results"
[ "$(json "$T/f.json" "all('PNEUMONIA' in r['labels'] for r in d['results'])")" = True ] ||
  fail "filter labels:PNEUMONIA returned other images"
"$BIN" search "$q" --db "$DB" -k 20 --filter 'sex:F age:40-60 view:PA' --json >"$T/f.json" || fail "search sex/age/view"
[ "$(json "$T/f.json" "all(r['sex']=='F' and 40<=r['age']<=60 and r['view']=='PA' for r in d['results'])")" = True ] ||
  fail "sex/age/view filter"
"$BIN" search "$q" --db "$DB" -k 10 --one-per-patient --exclude-patient 13 --json >"$T/f.json" || fail "grouped search"
[ "$(json "$T/f.json" "len(set(r['patient_id'] for r in d['results'])) == len(d['results']) == 10")" = True ] ||
  fail "one-per-patient repeated a patient"
[ "$(json "$T/f.json" "'13' not in [r['patient_id'] for r in d['results']]")" = True ] || fail "--exclude-patient"
# --id needs no model: the stored vector is the query. Without any model
# the results equal those with the collection's model.
"$BIN" search --db "$DB" --id 5 -k 5 --json >"$T/id1.json" || fail "search --id with the model"
env -u MEDSEARCH_MODEL "$BIN" search --db "$DB" --id 5 -k 5 --json >"$T/id2.json" 2>"$T/id2.err" ||
  fail "search --id without a model: $(cat "$T/id2.err")"
[ "$(json "$T/id1.json" "[(r['id'], round(r['score'], 6)) for r in d['results']]")" = \
  "$(json "$T/id2.json" "[(r['id'], round(r['score'], 6)) for r in d['results']]")" ] || fail "search --id differs without the model"
# One patient owning most of a collection: the engine's first candidates
# (64) are nearly all that patient's, so it must ask the index for more
# until k distinct patients are found, and stop when the candidates run out.
mkdir "$T/opp"
ls "$NIH/images" | sort | head -90 >"$T/opp.txt"
{
  echo "image,labels,patient_id"
  i=0
  while read -r f; do
    i=$((i + 1))
    ln -s "$NIH/images/$f" "$T/opp/$f"
    if [ $i -le 80 ]; then echo "$f,Mass,A"; else echo "$f,Mass,P$i"; fi
  done <"$T/opp.txt"
} >"$T/opp.csv"
"$BIN" ingest "$T/opp" --labels "$T/opp.csv" --db "$T/opp.db" -q >/dev/null 2>&1 || fail "ingest of the one-patient set"
oq=$T/opp/$(head -1 "$T/opp.txt")
for k in 11 20; do
  "$BIN" search "$oq" --db "$T/opp.db" -k $k --qe 0 --one-per-patient --json >"$T/o.json" || fail "one per patient, k $k"
  [ "$(json "$T/o.json" "sorted(r['patient_id'] for r in d['results']) == sorted(['A'] + ['P%d' % i for i in range(81, 91)])")" = True ] ||
    fail "one per patient, k $k: not the 11 patients: $(json "$T/o.json" "[r['patient_id'] for r in d['results']]")"
done
"$BIN" search "$q" --db "$DB" -k 10 --filter '-patient:12' --exclude-patient 13 >/dev/null 2>"$T/e"
[ $? -eq 2 ] && grep -q "name different patients" "$T/e" ||
  fail "--exclude-patient next to the filter's -patient: of another patient must be a usage error"
"$BIN" search "$q" --db "$DB" -k 10 --filter '-patient:13' --exclude-patient 13 --json >"$T/f.json" ||
  fail "the same patient in -patient: and --exclude-patient"
[ "$(json "$T/f.json" "'13' not in [r['patient_id'] for r in d['results']]")" = True ] || fail "-patient: with --exclude-patient"
"$BIN" search "$q" --db "$DB" --filter 'labels:NoSuchFinding' >/dev/null 2>&1
[ $? -eq 1 ] || fail "a search that finds nothing must exit 1"
"$BIN" search "$q" --db "$DB" --filter 'age:abc' >/dev/null 2>"$T/e"
[ $? -eq 2 ] || fail "a bad filter must exit 2"
"$BIN" search "$q" --db "$DB" -k 3 --qe 2 --verbose >"$T/v.out" 2>"$T/v.err" || fail "search --qe --verbose"
grep -q "timing: open .* decode .* embed .* index .* store" "$T/v.err" || fail "--verbose timing breakdown"

echo "== info, check, export"
"$BIN" info --db "$DB" --json >"$T/i.json" || fail "info"
[ "$(json "$T/i.json" "d['images']")" = 1050 ] || fail "info: not 1050 images"
[ "$(json "$T/i.json" "d['dim']")" = 1280 ] || fail "info: dim"
"$BIN" info --model "$MODEL" | grep -q "identity: mobilenet_v2_1.0_224_imagenet.onnx" || fail "info --model"
"$BIN" check --db "$DB" >"$T/c.out" 2>&1 || { cat "$T/c.out"; fail "check"; }
"$BIN" export --vectors --db "$DB" --out "$T/vec" 2>/dev/null || fail "export npy"
"$BIN" export --vectors --format csv --db "$DB" --out "$T/all.csv" 2>/dev/null || fail "export csv"
[ "$(($(wc -l <"$T/vec.csv") - 1))" -eq 1050 ] || fail "export: metadata rows"
[ "$(head -1 "$T/all.csv" | tr ',' '\n' | wc -l)" -eq $((9 + 1280)) ] || fail "export csv: columns"
if $PY -c "import numpy" 2>/dev/null; then
  $PY - "$T/vec.npy" "$T/all.csv" <<'EOF' || fail "export: NPY content"
import csv, sys, numpy as np
v = np.load(sys.argv[1])
assert v.shape == (1050, 1280) and v.dtype == np.float32, v.shape
assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
rows = list(csv.reader(open(sys.argv[2])))[1:]
w = np.array([[float(x) for x in r[9:]] for r in rows], dtype=np.float32)
assert np.allclose(v, w, atol=1e-6)
EOF
fi

echo "== delete, resume, exit codes"
id=$(json "$T/s.json" "d['results'][0]['id']")
# An id that is not a positive whole number is a usage error, and nothing of
# the command line is deleted (the valid id beside it stays).
for bad in abc 0 -5 1x 99999999999999999999 ""; do
  "$BIN" delete --db "$DB" -- "$id" "$bad" >/dev/null 2>"$T/del.err"
  [ $? -eq 2 ] || fail "delete '$bad' must exit 2"
  grep -q "is not an image id" "$T/del.err" || fail "delete '$bad': $(cat "$T/del.err")"
done
"$BIN" search --id "$id" --db "$DB" >/dev/null || fail "a refused delete removed image $id"
"$BIN" delete "$id" --db "$DB" >/dev/null || fail "delete"
"$BIN" delete "$id" --db "$DB" >/dev/null 2>&1
[ $? -eq 1 ] || fail "deleting a missing id must exit 1"
"$BIN" search --id "$id" --db "$DB" >/dev/null 2>&1
[ $? -eq 2 ] || fail "search --id of a deleted image must exit 2"
"$BIN" check --db "$DB" >/dev/null 2>&1 || fail "check after delete"
"$BIN" ingest "$NIH" "$T/kermany" --db "$DB" --json -q >"$T/r.json" 2>/dev/null || fail "re-ingest"
[ "$(json "$T/r.json" "(d['ingested'], d['skipped_existing'])")" = "(1, 1049)" ] ||
  fail "re-ingest: expected 1 new (the deleted one) and 1049 skipped: $(cat "$T/r.json")"
"$BIN" search "$T/missing.png" --db "$DB" >/dev/null 2>&1
[ $? -eq 2 ] || fail "a missing query file must exit 2"
"$BIN" search "$q" --db "$DB" --nope >/dev/null 2>&1
[ $? -eq 2 ] || fail "an unknown option must exit 2"
"$BIN" search --help | grep -q "one-per-patient" || fail "search --help"
for c in ingest search info check delete export reembed; do
  "$BIN" $c --help >/dev/null || fail "$c --help"
done
(cd "$T" && env -u MEDSEARCH_MODEL XDG_DATA_HOME="$T/xdg" "$BIN" search "$q" --db "$DB" >/dev/null 2>"$T/nomodel.err")
[ $? -eq 3 ] || fail "no model must exit 3"
grep -q "resnet50-v1-12.onnx" "$T/nomodel.err" && grep -q "torch.onnx.export" "$T/nomodel.err" ||
  fail "no model: the advice on getting ResNet-50 is missing"

echo "== another model's collection"
FT=$SHARED/models/mobilenet_v2_cxr_finetuned.onnx
"$BIN" search "$q" --db "$DB" --model "$FT" >/dev/null 2>"$T/conflict.err"
[ $? -eq 3 ] || fail "another model must exit 3"
grep -q "medsearch reembed" "$T/conflict.err" || fail "model conflict: no reembed advice"
"$BIN" reembed --db "$DB" --model "$FT" -q >"$T/re.out" 2>&1 || { cat "$T/re.out"; fail "reembed"; }
grep -q "re-embedded 1050 images with mobilenet_v2_cxr_finetuned.onnx" "$T/re.out" || fail "reembed summary"
"$BIN" check --db "$DB" --model "$FT" >/dev/null 2>&1 || fail "check after reembed"
"$BIN" search "$q" --db "$DB" --model "$FT" -k 1 --json >"$T/s.json" || fail "search with the new model"
[ "$(json "$T/s.json" "d['results'][0]['original_name']")" = images/00000013_005.png ] || fail "after reembed"
"$BIN" search "$q" --db "$DB" >/dev/null 2>&1
[ $? -eq 3 ] || fail "the old model must be refused after reembed"

[ $fails -eq 0 ] && echo "all passed"
[ $fails -eq 0 ]
