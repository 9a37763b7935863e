#!/usr/bin/env bash
# `medsearch duplicates` on a collection of real X-rays with copies planted
# by PIL (tests/tools or a dataset would have them by accident):
#  - a full-resolution radiograph stored four more times: half size as a
#    JPEG of quality 60, with gamma 0.7 as a PNG, inverted back and forth
#    (pixel-identical, other bytes), and under another patient id with
#    other labels. The five are one group: every pair of them is reported
#    (10 pairs), the last one's as of other patients with different labels;
#  - a second radiograph with a 90%-crop copy: not a copy at the default
#    correlation, found when it is lowered to 0.85;
#  - a byte-identical file is one image already: nothing to report;
#  - `--other-patients` lists the four pairs of the other patient's copy;
#  - the API's GET /api/images/{id}/copies gives one image's copies (A's
#    four others, the crop with min_correlation lowered), refuses bad
#    parameters (400), a missing image (404) and other methods (405);
#    `--json` has the counts and both sides of each pair; a collection
#    without copies exits 1; no model is needed; bad options exit 2 and a
#    missing collection is not created.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
DATA=$SHARED/data
PY=/usr/bin/python3
[ -r "$MODEL" ] || { echo "skip: $MODEL not found"; exit 77; }
[ -d "$DATA/nih_cxr14_64px" ] && [ -d "$DATA/nih_cxr14_fullres" ] || { echo "skip: shared NIH data not found"; exit 77; }
"$PY" -c 'import PIL' 2>/dev/null || { echo "skip: $PY lacks PIL (Debian python3-pil)"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-duplicates.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
unset MEDSEARCH_MODEL

mkdir -p "$T/in" "$T/clean"
A=00000001_000.png B=00000002_000.png
# 60 small images (not the 64-pixel versions of A and B, which would be copies too)
ls "$DATA/nih_cxr14_64px/images" | sort | grep -v -e "^$A$" -e "^$B$" | head -n 60 |
    while read -r f; do cp "$DATA/nih_cxr14_64px/images/$f" "$T/in/"; done
cp "$T"/in/*.png "$T/clean/"
cp "$DATA/nih_cxr14_fullres/images/$A" "$DATA/nih_cxr14_fullres/images/$B" "$T/in/"
cp "$DATA/nih_cxr14_fullres/images/$A" "$T/in/byte_copy_of_A.png"
"$PY" - "$T/in" "$A" "$B" <<'EOF' || { echo "FAIL: writing the copies"; exit 1; }
import sys
from PIL import Image, ImageOps
d, a, b = sys.argv[1:4]
im = Image.open(f"{d}/{a}").convert("L")
im.resize((im.width // 2, im.height // 2), Image.BILINEAR).save(f"{d}/A_half.jpg", quality=60)
im.point(lambda v: round(255 * (v / 255) ** 0.7)).save(f"{d}/A_gamma.png")
ImageOps.invert(ImageOps.invert(im)).save(f"{d}/A_same_pixels.png", compress_level=1)
im.save(f"{d}/A_other_patient.png", optimize=True)
jb = Image.open(f"{d}/{b}").convert("L")
w, h = jb.size
jb.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(f"{d}/B_crop90.png")
EOF
{
    echo "Image Index,Finding Labels,Patient ID,Patient Age,Patient Gender,View Position"
    for f in "$T"/in/*; do
        n=$(basename "$f")
        case $n in
            A_other_patient.png) echo "$n,Mass,999,40,F,PA" ;;
            A_*|byte_copy_of_A.png|"$A") echo "$n,Cardiomegaly,1,57,M,PA" ;;
            B_*|"$B") echo "$n,No Finding,2,81,M,PA" ;;
        esac
    done
} >"$T/labels.csv"
"$BIN" ingest "$T/in" --labels "$T/labels.csv" --db "$T/c.db" --model "$MODEL" -q >"$T/ingest.log" 2>&1 ||
    { cat "$T/ingest.log"; echo "FAIL: ingest"; exit 1; }
grep -q "skipped 1 " "$T/ingest.log" && ok "the byte-identical copy is one image at ingest" ||
    fail "ingest: $(cat "$T/ingest.log")"

echo "== the copies, without a model"
"$BIN" duplicates --db "$T/c.db" >"$T/out" 2>"$T/err"
rc=$?
[ $rc -eq 0 ] && ok "exit 0 with copies found" || fail "exit $rc: $(cat "$T/err")"
summary=$(tail -n 1 "$T/out")
case $summary in
    "10 pairs of copies in 1 group among 67 images "*"4 of other patients, 4 with different labels;"*)
        ok "10 pairs in one group, 4 of another patient with other labels ($summary)" ;;
    *) fail "summary: $summary"; cat "$T/out" ;;
esac
grep -q "B_crop90" "$T/out" && fail "the 90% crop is reported at the default" || ok "the 90% crop is not a copy at the default"
pairs=$(grep -c '^correlation' "$T/out")
[ "$pairs" -eq 10 ] && ok "10 pairs listed" || fail "$pairs pairs listed"
grep '^correlation' "$T/out" | awk '{print $2}' | sort -rc 2>/dev/null && ok "strongest first" || fail "not sorted by correlation"
grep -A2 "OTHER PATIENTS  LABELS DIFFER" "$T/out" | grep -q "patient 999 " && ok "the other patient's copy is flagged, with its patient" ||
    fail "no OTHER PATIENTS flag on the other patient's copy"

"$BIN" duplicates --db "$T/c.db" --json >"$T/all.json" || fail "--json exit $?"
"$PY" - "$T/all.json" "$A" <<'EOF' && ok "--json: counts, both sides, flags" || fail "--json content"
import json, sys
d = json.load(open(sys.argv[1]))
names = {"A_half.jpg", "A_gamma.png", "A_same_pixels.png", "A_other_patient.png", sys.argv[2]}
assert d["images"] == 67 and d["count"] == 10 and d["groups"] == 1 and d["k"] == 5, d
assert d["other_patients"] == 4 and d["labels_differ"] == 4 and abs(d["min_correlation"] - 0.99) < 1e-12, d
got = {frozenset((p["a"]["original_name"], p["b"]["original_name"])) for p in d["pairs"]}
want = {frozenset((x, y)) for x in names for y in names if x < y}
assert got == want, (got ^ want)
for p in d["pairs"]:
    assert 0.99 <= p["correlation"] <= 1 and -1 <= p["score"] <= 1.0001, p
    other = "A_other_patient.png" in (p["a"]["original_name"], p["b"]["original_name"])
    assert p["other_patients"] == other and p["labels_differ"] == other, p
    assert set(p["a"]) == {"id", "original_name", "patient_id", "labels"}, p["a"]
assert [p["correlation"] for p in d["pairs"]] == sorted((p["correlation"] for p in d["pairs"]), reverse=True)
EOF

"$BIN" duplicates --db "$T/c.db" --other-patients --json >"$T/other.json" || fail "--other-patients exit $?"
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["count"] == 10 and len(d["pairs"]) == 4 and all(p["other_patients"] for p in d["pairs"]), d' \
    "$T/other.json" && ok "--other-patients lists the 4 pairs of two patients" || fail "--other-patients: $(head -c 300 "$T/other.json")"

"$BIN" duplicates --db "$T/c.db" --min-correlation 0.85 --json >"$T/low.json"
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert any("B_crop90.png" in (p["a"]["original_name"], p["b"]["original_name"]) for p in d["pairs"]), [p["correlation"] for p in d["pairs"]]' \
    "$T/low.json" && ok "--min-correlation 0.85 finds the 90% crop" || fail "the crop at 0.85"

echo "== the API: GET /api/images/{id}/copies"
"$BIN" serve --db "$T/c.db" --model "$MODEL" --listen 127.0.0.1:0 -q >"$T/server.out" 2>"$T/server.err" &
SERVER=$!
URL=
for _ in $(seq 300); do
    URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$T/server.out" 2>/dev/null | head -n 1)
    [ -n "$URL" ] && break
    sleep 0.2
done
if [ -z "$URL" ]; then
    fail "the server did not start: $(cat "$T/server.err")"
else
    a_id=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(next(p["a"]["id"] if p["a"]["original_name"] == sys.argv[2] else p["b"]["id"] for p in d["pairs"] if sys.argv[2] in (p["a"]["original_name"], p["b"]["original_name"])))' "$T/all.json" "$A")
    code=$(curl -s -o "$T/copies.json" -w '%{http_code}' "$URL/api/images/$a_id/copies")
    "$PY" - "$T/copies.json" "$a_id" <<'EOF2' && [ "$code" = 200 ] && ok "the copies of $A: its four others, strongest first, with their metadata" || fail "copies of $A ($code): $(head -c 400 "$T/copies.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["id"] == int(sys.argv[2]) and d["k"] == 5 and d["min_correlation"] == 0.99 and d["count"] == 4, d
names = sorted(c["original_name"] for c in d["copies"])
assert names == ["A_gamma.png", "A_half.jpg", "A_other_patient.png", "A_same_pixels.png"], names
assert [c["correlation"] for c in d["copies"]] == sorted((c["correlation"] for c in d["copies"]), reverse=True)
assert [c["rank"] for c in d["copies"]] == [1, 2, 3, 4]
other = next(c for c in d["copies"] if c["original_name"] == "A_other_patient.png")
assert other["patient_id"] == "999" and other["labels"] == ["Mass"] and other["thumbnail_url"].endswith("/thumbnail"), other
EOF2
    # an image in no pair (the ids are 1..67)
    small_id=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); used={p[s]["id"] for p in d["pairs"] for s in "ab"}; print(min(set(range(1, 68)) - used))' "$T/low.json")
    code=$(curl -s -o "$T/none.json" -w '%{http_code}' "$URL/api/images/$small_id/copies")
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["count"] == 0 and d["copies"] == [], d' "$T/none.json" &&
        [ "$code" = 200 ] && ok "an image without copies: an empty list" || fail "no copies ($code): $(cat "$T/none.json")"
    b_id=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(next(p["a"]["id"] if p["a"]["original_name"] == sys.argv[2] else p["b"]["id"] for p in d["pairs"] if "B_crop90.png" in (p["a"]["original_name"], p["b"]["original_name"])))' "$T/low.json" "$B")
    curl -s "$URL/api/images/$b_id/copies?min_correlation=0.85&k=10" >"$T/crop.json"
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["k"] == 10 and any(c["original_name"] in ("B_crop90.png", sys.argv[2]) for c in d["copies"]), d' "$T/crop.json" "$B" &&
        ok "min_correlation and k are taken" || fail "min_correlation=0.85: $(head -c 300 "$T/crop.json")"
    for q in "k=0" "k=101" "k=x" "min_correlation=1.01" "min_correlation=-1" "min_correlation=nan" "min_correlation=1e-3" "min_correlation="; do
        code=$(curl -s -o "$T/bad.json" -w '%{http_code}' "$URL/api/images/$a_id/copies?$q")
        [ "$code" = 400 ] && grep -q invalid_argument "$T/bad.json" && ok "copies?$q: 400" || fail "copies?$q: $code $(cat "$T/bad.json")"
    done
    code=$(curl -s -o "$T/bad.json" -w '%{http_code}' "$URL/api/images/987654/copies")
    [ "$code" = 404 ] && ok "copies of a missing image: 404" || fail "missing image: $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/api/images/$a_id/copies")
    [ "$code" = 405 ] && ok "POST copies: 405" || fail "POST copies: $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -I "$URL/api/images/$a_id/copies")
    [ "$code" = 200 ] && ok "HEAD copies: 200" || fail "HEAD copies: $code"
fi
kill -TERM "$SERVER" 2>/dev/null
wait "$SERVER"
rc=$?
[ $rc -eq 0 ] && ok "the server stopped cleanly" || fail "the server exited $rc"
if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$T/server.err"; then
    fail "sanitizer report in the server log"
    grep -m 10 -A 10 -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$T/server.err"
fi

echo "== no copies, bad options"
"$BIN" ingest "$T/clean" --db "$T/clean.db" --model "$MODEL" -q >/dev/null 2>&1 || fail "ingest of the clean set"
"$BIN" duplicates --db "$T/clean.db" >"$T/out" 2>&1
rc=$?
[ $rc -eq 1 ] && grep -q "^0 pairs of copies in 0 groups among 60 images" "$T/out" && ok "no copies: exit 1 and says so" ||
    fail "no copies: exit $rc, $(cat "$T/out")"
for bad in "--min-correlation 1.5" "--min-correlation -1" "--min-correlation x" "-k 0" "-k 101" "extra"; do
    # shellcheck disable=SC2086
    "$BIN" duplicates --db "$T/c.db" $bad >/dev/null 2>"$T/err"
    rc=$?
    [ $rc -eq 2 ] && ok "duplicates $bad: exit 2" || fail "duplicates $bad: exit $rc $(cat "$T/err")"
done
"$BIN" duplicates --db "$T/none.db" >/dev/null 2>"$T/err"
rc=$?
[ $rc -eq 1 ] && [ ! -e "$T/none.db" ] && ok "a missing collection: exit 1, not created" || fail "missing collection: exit $rc"

[ $fails -eq 0 ] && echo "all checks passed"
exit $((fails > 0))
