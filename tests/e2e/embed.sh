#!/usr/bin/env bash
# `medsearch embed` on real X-rays of shared/data with the shared MobileNetV2:
# every format and size embeds (PNG, JPEG, RGB-stored grey, 64 px to ~4000 px),
# vectors are unit length, the same image gives the same vector in any batch
# position, --raw/--out/--dump-input/--output/--pool behave (embed's default is
# the graph's output; --pool auto, a new collection's, is GeM for this model), bad files and bad
# models fail with clear messages. With the release binary next to the ASan
# one, `bench embed` must report zero page faults per forward in steady state.
set -u
BIN=${MEDSEARCH_BIN:?MEDSEARCH_BIN is not set (tests/run.sh sets it)}
SHARED=${MEDSEARCH_SHARED:-}
MODEL=$SHARED/models/mobilenet_v2_1.0_224_imagenet.onnx
DATA=$SHARED/data
[ -r "$MODEL" ] && [ -d "$DATA/nih_cxr14_fullres/images" ] || { echo "skip: $MODEL or $DATA not found"; exit 77; }
PY=$(command -v python3 || true)
[ -n "$PY" ] || { echo "skip: no python3 to read the JSON and float32 output"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-embed.XXXXXX")
trap 'rm -rf "$T"' EXIT
export MEDSEARCH_MODEL=$MODEL
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# a few of each kind, sorted for a stable choice
pick() { find "$1" -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) | sort | head -n "$2"; }
mapfile -t IMGS < <( { pick "$DATA/nih_cxr14_fullres/images" 4; pick "$DATA/nih_cxr14_64px/images" 3;
                      pick "$DATA/kermany_pneumonia_224/images" 3; pick "$DATA/covid_chestxray_2020/images" 6; } )
[ ${#IMGS[@]} -ge 10 ] || { echo "skip: too few images under $DATA"; exit 77; }

echo "== help"
"$BIN" embed --help >"$T/help" 2>&1 || fail "embed --help must exit 0"
grep -q -- "--out FILE" "$T/help" || fail "help does not describe --out"

echo "== ${#IMGS[@]} real X-rays, JSON"
"$BIN" embed --json "${IMGS[@]}" >"$T/all.json" 2>"$T/all.err" || fail "embed of real X-rays failed: $(cat "$T/all.err")"
"$PY" - "$T/all.json" "${#IMGS[@]}" <<'EOF' || fail "JSON output wrong"
import json, math, sys
doc = json.load(open(sys.argv[1]))
assert doc["dim"] == 1280 and doc["normalised"] is True, doc["dim"]
assert doc["model"].startswith("mobilenet_v2_1.0_224_imagenet.onnx:387662a9"), doc["model"]
vs = doc["vectors"]
assert len(vs) == int(sys.argv[2]), len(vs)
for v in vs:
    assert len(v["vector"]) == 1280, v["image"]
    n = math.sqrt(sum(x * x for x in v["vector"]))
    assert abs(n - 1) < 1e-5, (v["image"], n)
# different X-rays give different vectors
assert max(abs(a - b) for a, b in zip(vs[0]["vector"], vs[1]["vector"])) > 1e-3
EOF

echo "== same image, any batch position (within 1e-5)"
A=${IMGS[0]} B=${IMGS[5]} C=${IMGS[9]}
"$BIN" embed -o "$T/one.f32" "$A" >/dev/null || fail "embed one"
"$BIN" embed -o "$T/abc.f32" "$A" "$B" "$C" >/dev/null || fail "embed abc"
"$BIN" embed -o "$T/cba.f32" "$C" "$B" "$A" >/dev/null || fail "embed cba"
"$BIN" embed -b 2 -o "$T/b2.f32" "$B" "$C" "$A" >/dev/null || fail "embed batch 2"
"$PY" - "$T" <<'EOF' || fail "batch position changes the vector"
import struct, sys
d = sys.argv[1]
def rows(name):
    raw = open(f"{d}/{name}", "rb").read()
    assert len(raw) % (1280 * 4) == 0, name
    v = struct.unpack(f"<{len(raw) // 4}f", raw)
    return [v[i:i + 1280] for i in range(0, len(v), 1280)]
a = rows("one.f32")[0]
for name, pos in (("abc.f32", 0), ("cba.f32", 2), ("b2.f32", 2)):
    other = rows(name)[pos]
    diff = max(abs(x - y) for x, y in zip(a, other))
    assert diff <= 1e-5, (name, diff)
EOF

echo "== --raw, --dump-input, --output, --pool"
"$BIN" embed --raw -o "$T/raw.f32" --dump-input "$T/in.f32" "$A" "$B" >"$T/raw.out" || fail "embed --raw"
grep -q "wrote 2 vectors of 1280 float32 (raw)" "$T/raw.out" || fail "--out summary: $(cat "$T/raw.out")"
[ "$(stat -c %s "$T/in.f32")" = $((2 * 3 * 224 * 224 * 4)) ] || fail "--dump-input size"
"$BIN" embed --output logits --raw -o "$T/logits.f32" "$A" >/dev/null || fail "--output logits"
[ "$(stat -c %s "$T/logits.f32")" = $((1001 * 4)) ] || fail "logits are 1001 values"
"$BIN" embed --pool gem -o "$T/gem.f32" "$A" >/dev/null || fail "--pool gem"
"$BIN" embed --pool avg --raw -o "$T/avg.f32" "$A" >/dev/null || fail "--pool avg"
"$BIN" embed --pool auto -o "$T/auto.f32" "$A" >/dev/null || fail "--pool auto"
"$PY" - "$T" <<'EOF' || fail "--raw / --pool values"
import math, struct, sys
d = sys.argv[1]
f = lambda n: struct.unpack(f"<{1280}f", open(f"{d}/{n}", "rb").read()[:1280 * 4])
raw, one, gem, avg, auto = f("raw.f32"), f("one.f32"), f("gem.f32"), f("avg.f32"), f("auto.f32")
n = math.sqrt(sum(x * x for x in raw))
assert n > 2, n                                   # the raw MobileNet feature is far from unit length
assert max(abs(x / n - y) for x, y in zip(raw, one)) < 1e-5                  # embed's default: the graph's output
assert max(abs(x - y) for x, y in zip(raw, avg)) < 1e-4 * max(map(abs, raw))  # avg pooling = the GAP output
assert max(abs(x - y) for x, y in zip(gem, one)) > 1e-3                       # GeM differs
assert auto == gem                         # --pool auto (a new collection's) is GeM for this model
EOF

echo "== bad images and bad models"
printf 'not an image\n' >"$T/notes.png"
head -c 300 "$A" >"$T/truncated.png"
"$BIN" embed "$A" "$T/notes.png" "$T/missing.png" "$T/truncated.png" >"$T/mixed.out" 2>"$T/mixed.err"
[ $? -eq 1 ] || fail "bad images among good ones must exit 1"
[ "$(wc -l <"$T/mixed.out")" = 1 ] || fail "the good image must still be printed"
for f in notes.png missing.png truncated.png; do
  grep -q "$T/$f: ." "$T/mixed.err" || fail "$f not reported: $(cat "$T/mixed.err")"
done
# --out holds one row per image that succeeded, in the order given: a failure
# between two good images leaves no gap; the rows equal the text output's.
B="${IMGS[1]}"
"$BIN" embed --out "$T/mixed.f32" "$A" "$T/notes.png" "$B" >/dev/null 2>&1
[ $? -eq 1 ] || fail "--out with a bad image must exit 1"
"$BIN" embed "$A" "$B" >"$T/two.out" || fail "embed of two good images"
$PY - "$T/mixed.f32" "$T/two.out" <<'PYEOF' || fail "--out rows are not the good images in order"
import struct, sys
raw = open(sys.argv[1], "rb").read()
rows = [line.split("\t")[1].split() for line in open(sys.argv[2])]
dim = len(rows[0])
assert len(raw) == 2 * dim * 4, (len(raw), dim)
got = struct.unpack("<%df" % (2 * dim), raw)
for r in range(2):
    for k in range(dim):
        assert abs(got[r * dim + k] - float(rows[r][k])) <= 1e-6 * max(1.0, abs(float(rows[r][k]))), (r, k)
PYEOF
# The JSON lists every image in the order given, failures in their place.
"$BIN" embed --json "$A" "$T/notes.png" "$B" "$T/missing.png" >"$T/mixed.json" 2>/dev/null
[ $? -eq 1 ] || fail "--json with bad images must exit 1"
$PY - "$T/mixed.json" "$A" "$T/notes.png" "$B" "$T/missing.png" <<'PYEOF' || fail "the JSON is not in the order given"
import json, sys
d = json.load(open(sys.argv[1]))
got = [(v["image"], "vector" in v) for v in d["vectors"]]
assert got == [(sys.argv[2], True), (sys.argv[3], False), (sys.argv[4], True), (sys.argv[5], False)], got
PYEOF
# A name with control characters is shown with '?' in the text output and
# on stderr; the JSON keeps it, escaped.
ESCNAME=$T/$'esc\033[2Jname.png'
cp "$A" "$ESCNAME"
BADNAME=$T/$'bad\033]0;t\a.png'
"$BIN" embed "$ESCNAME" "$BADNAME" >"$T/esc.out" 2>"$T/esc.err"
LC_ALL=C grep -q $'[\033\a]' "$T/esc.out" "$T/esc.err" && fail "a control character reached the text output"
grep -q "esc?\[2Jname.png	" "$T/esc.out" || fail "the name is not shown with '?': $(cat -A "$T/esc.out" | cut -c1-80)"
grep -q "bad?\]0;t?.png: " "$T/esc.err" || fail "the failing name is not shown with '?': $(cat -A "$T/esc.err")"
"$BIN" embed --json "$ESCNAME" >"$T/esc.json" || fail "embed --json of the escaped name"
$PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["vectors"][0]["image"].endswith("esc\x1b[2Jname.png")' \
  "$T/esc.json" || fail "the JSON does not keep the name"
head -c 100000 "$MODEL" >"$T/cut.onnx"
"$BIN" embed --model "$T/cut.onnx" "$A" >/dev/null 2>"$T/cut.err"
rc=$?
[ $rc -ne 0 ] || fail "a truncated model must fail"
grep -q "cut.onnx: .*ONNX" "$T/cut.err" || fail "truncated model message: $(cat "$T/cut.err")"
"$BIN" embed --model "$T/none.onnx" "$A" >/dev/null 2>"$T/none.err"
[ $? -eq 3 ] || fail "a missing model must exit 3"
"$BIN" embed --output nothing "$A" >/dev/null 2>"$T/out.err"
grep -q "nothing" "$T/out.err" || fail "unknown --output not named"
"$BIN" embed --mean 1,2 "$A" >/dev/null 2>"$T/mean.err"
[ $? -eq 2 ] || fail "a bad --mean must exit 2: $(cat "$T/mean.err")"

REL=$(cd "$(dirname "$BIN")/.." && pwd)/medsearch
if [ -x "$REL" ]; then
  echo "== steady-state page faults (release binary)"
  "$REL" bench embed --model "$MODEL" --no-peer --batch 1,4 --seconds 1 --json >"$T/bench.json" 2>"$T/bench.err" ||
    fail "bench embed failed: $(cat "$T/bench.err")"
  "$PY" - "$T/bench.json" <<'EOF' || fail "page faults per forward must be 0: $(cat "$T/bench.json")"
import json, sys
doc = json.load(open(sys.argv[1]))
for b in doc["batches"]:
    assert b["faults_per_forward"] == 0, b
    assert b["images_per_s"] > 0
EOF
else
  echo "(no release binary at $REL: page-fault check skipped)"
fi

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all embed checks passed"
