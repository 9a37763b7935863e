#!/usr/bin/env bash
# `medsearch eval` on the Kermany dev set reproduces the independent numpy
# checker (tests/tools/eval_check.py over `medsearch export --vectors`) to
# 1e-9, for every rule, with and without query expansion, per query and in
# total; the checker must notice figures of another rule (negative control);
# --compare's paired figures equal the separate runs.
# The subset has more than 16 images, so the collection is centred: the
# export writes the center (vec.center.npy) and the checker ranks by
# cos(l2(q - c), l2(v - c)) itself, in float64. Negative control: the
# checker without the center must disagree. center=off (eval --compare)
# must agree with the checker's plain cosine. --feedback's two rounds agree
# with the checker's implementation of relevance feedback.
#
# Under ASan a patient-complete subset is used (every patient whose key
# hashes to 0 mod EVAL_SUBSET_MOD, default 8, about 600 images);
# EVAL_SUBSET_MOD=1 runs the full set (4,759 images).
set -u
. "$(dirname "$0")/devset/common.sh"
DATA=$SHARED/data/kermany_pneumonia_224
MOD=${EVAL_SUBSET_MOD:-8}
devset_require "$DATA"

# The subset keeps whole patients, so same-patient exclusion is exercised.
$PY tests/tools/patient_subset.py "$DATA" "$MOD" >"$tmp/files" || fail "cannot list the subset"
echo "subset: $(wc -l <"$tmp/files") images (1 patient in $MOD)"

db=$tmp/k.db
# --qe 0: the collection's own settings ("" below) are then the runs with --qe 0.
xargs -d '\n' "$BIN" ingest --db "$db" --model "$MODEL" --pool avg --qe 0 --labels "$DATA/labels.csv" \
  <"$tmp/files" >"$tmp/ingest.log" 2>&1 || { tail -5 "$tmp/ingest.log"; fail "ingest"; }
"$BIN" export --vectors --db "$db" --out "$tmp/vec" 2>"$tmp/export.log" || { cat "$tmp/export.log"; fail "export"; }

[ -f "$tmp/vec.center.npy" ] || fail "the export wrote no center for a collection of more than 16 images"
grep -q "center" "$tmp/export.log" || fail "export does not mention the center: $(cat "$tmp/export.log")"

checks=0
for rule in exact any single; do
  for qe in 0 2; do
    "$BIN" eval --db "$db" --rule "$rule" --qe "$qe" --json --quiet --per-query "$tmp/pq.csv" \
      >"$tmp/eval.json" 2>"$tmp/eval.err" || { cat "$tmp/eval.err"; fail "eval --rule $rule --qe $qe"; }
    $PY tests/tools/eval_check.py "$tmp/vec.npy" --rule "$rule" --qe "$qe" --compare "$tmp/eval.json" \
      --per-query "$tmp/pq.csv" --tolerance 1e-9 >"$tmp/check.out" 2>&1 ||
      { grep -E 'DIFFERS|eval_check' "$tmp/check.out" | head -20; fail "checker disagrees: rule $rule, qe $qe"; }
    grep 'eval_check:' "$tmp/check.out" | sed "s/^/rule $rule qe $qe: /"
    checks=$((checks + 1))
    cp "$tmp/eval.json" "$tmp/eval_${rule}_$qe.json"
  done
done

# Negative control: the figures of rule "any" are not those of rule "exact".
if $PY tests/tools/eval_check.py "$tmp/vec.npy" --rule exact --compare "$tmp/eval_any_0.json" \
  >/dev/null 2>&1; then
  fail "the checker accepted another rule's figures"
fi

# Negative control: the same figures are not those of plain cosine.
if $PY tests/tools/eval_check.py "$tmp/vec.npy" --no-center --rule exact --compare "$tmp/eval_exact_0.json" \
  >/dev/null 2>&1; then
  fail "the checker accepted centred figures without the center"
fi

# center=off: the same collection ranked by plain cosine agrees with the
# checker without the center, and leaves the collection as it was.
before=$(sha256sum <"$db")
"$BIN" eval --db "$db" --rule exact --json --quiet --compare "center=off" "" >"$tmp/off.json" 2>"$tmp/off.err" ||
  { cat "$tmp/off.err"; fail "eval --compare center=off"; }
[ "$(sha256sum <"$db")" = "$before" ] || fail "center=off changed the collection"
$PY - "$tmp/off.json" "$tmp/off_a.json" "$tmp/eval_exact_0.json" <<'EOF' || fail "center=off report"
import json, sys
cmp = json.load(open(sys.argv[1]))
A, B = cmp["configs"]
assert A["center"]["on"] is False and B["center"]["on"] is True and B["center"]["from"] > 256, (A, B)
json.dump(A, open(sys.argv[2], "w"))
ref = json.load(open(sys.argv[3]))
assert all(abs(B["metrics"][k] - v) <= 1e-12 for k, v in ref["metrics"].items())
p = cmp["paired"]["mAP@10"]
print(f"centering: mAP@10 {A['metrics']['mAP@10']:.4f} plain -> {B['metrics']['mAP@10']:.4f} centred "
      f"({p['diff']:+.4f}, SE {p['se']:.4f})")
EOF
$PY tests/tools/eval_check.py "$tmp/vec.npy" --no-center --rule exact --compare "$tmp/off_a.json" \
  --tolerance 1e-9 >"$tmp/check.out" 2>&1 ||
  { grep -E 'DIFFERS|eval_check' "$tmp/check.out" | head -20; fail "checker disagrees with center=off"; }
grep 'eval_check:' "$tmp/check.out" | sed "s/^/center=off: /"

# tests/tools/center_sizes.py (the measurement behind ENGINE_CENTER_MIN) and
# tests/tools/heldout_draws.py (the held-out projection under "The issue's
# targets") on the whole collection must give the product's figures, plain
# (center=off) and centred on its own mean: center_sizes.py with one draw of
# all n images, heldout_draws.py with a --compose of every label set at its
# full count.
n=$($PY -c 'import numpy,sys; print(len(numpy.load(sys.argv[1])))' "$tmp/vec.npy")
$PY tests/tools/center_sizes.py "$tmp/vec.npy" --rule exact --qe 0 --sizes "$n:1" >"$tmp/sizes.out" 2>&1 ||
  { cat "$tmp/sizes.out"; fail "center_sizes.py"; }
compose=$($PY -c '
import collections, sys
sys.path.insert(0, "tests/tools")
import eval_check
_, _, labels = eval_check.read_metadata(sys.argv[1])
print(",".join(f"{k}={v}" for k, v in collections.Counter("|".join(sorted(x)) for x in labels).items()))
' "$tmp/vec.csv") || fail "label counts of the export"
$PY tests/tools/heldout_draws.py "$tmp/vec.npy" "$tmp/vec.npy" --rule exact --compose "$compose" --draws 1 \
  --base-center off --base-qe 0 --cand-center on --cand-qe 0 >"$tmp/heldout.out" 2>&1 ||
  { cat "$tmp/heldout.out"; fail "heldout_draws.py"; }
$PY - "$tmp/sizes.out" "$tmp/heldout.out" "$tmp/off_a.json" "$tmp/eval_exact_0.json" "$n" <<'EOF' ||
import json, re, sys
sizes, held = (open(p).read() for p in sys.argv[1:3])
plain, centred = (json.load(open(p)) for p in sys.argv[3:5])
n = int(sys.argv[5])
want = {"plain": plain["metrics"]["mAP@10"], "centred": centred["metrics"]["mAP@10"],
        "chance": centred["chance"]["mAP@10"]}
m = re.search(r"size +(\d+) +draws +1 +plain (\S+) +centred (\S+) ", sizes)
assert m and int(m.group(1)) == n, sizes
from_sizes = {"plain": float(m.group(2)), "centred": float(m.group(3))}
m = re.search(r"draws 1 +images (\d+) +chance (\S+) +base (\S+) +cand (\S+) ", held)
assert m and int(m.group(1)) == n, held
from_held = {"plain": float(m.group(3)), "centred": float(m.group(4)), "chance": float(m.group(2))}
# printed to 4 decimals; the chance is the gallery's, the same either way
for tool, got in (("center_sizes.py", from_sizes), ("heldout_draws.py", from_held)):
    assert all(abs(v - want[k]) <= 5e-5 for k, v in got.items()), (tool, got, want)
    print(f"{tool} on the whole collection: " + ", ".join(f"{k} {v:.4f}" for k, v in got.items()) + ", as eval")
EOF
  fail "center_sizes.py / heldout_draws.py: $(cat "$tmp/sizes.out" "$tmp/heldout.out")"

# The figures are not trivial: well above chance with a pretrained model.
$PY - "$tmp/eval_exact_0.json" <<'EOF' || fail "exact-rule figures look wrong"
import json, sys
r = json.load(open(sys.argv[1]))
m, c = r["metrics"]["mAP@10"], r["chance"]["mAP@10"]
print(f"mAP@10 {m:.4f}, chance {c:.4f}, {r['queries']['scored']} queries scored")
assert r["queries"]["scored"] > 100 and m > c + 0.2, (m, c)
EOF

# --compare "" "qe=2": each side equals its separate run, and the paired
# difference is B - A of those means.
"$BIN" eval --db "$db" --rule exact --json --quiet --compare "" "qe=2" >"$tmp/cmp.json" 2>"$tmp/cmp.err" ||
  { cat "$tmp/cmp.err"; fail "eval --compare"; }
$PY - "$tmp/cmp.json" "$tmp/eval_exact_0.json" "$tmp/eval_exact_2.json" <<'EOF' || fail "--compare figures"
import json, sys
cmp, a, b = (json.load(open(p)) for p in sys.argv[1:])
A, B = cmp["configs"]
for side, ref in ((A, a), (B, b)):
    for k, v in ref["metrics"].items():
        assert abs(side["metrics"][k] - v) <= 1e-12, (k, side["metrics"][k], v)
p = cmp["paired"]["mAP@10"]
assert p["n"] == a["queries"]["scored"], p
assert abs(p["diff"] - (b["metrics"]["mAP@10"] - a["metrics"]["mAP@10"])) <= 1e-12, p
assert p["se"] is not None and p["se"] > 0, p
print(f"paired mAP@10 difference qe=2 - off: {p['diff']:+.4f} (SE {p['se']:.4f}, n {p['n']})")
EOF

# --feedback N (relevance feedback simulated with the labels): both rounds,
# per query and in total, and the paired difference agree with the checker's
# own implementation; a checker with another unlike weight must disagree.
for rule in exact any; do
  for qe in 0 2; do
    "$BIN" eval --db "$db" --rule "$rule" --qe "$qe" --feedback 5 --json --quiet --per-query "$tmp/fpq.csv" \
      >"$tmp/fb.json" 2>"$tmp/fb.err" || { cat "$tmp/fb.err"; fail "eval --feedback 5 --rule $rule --qe $qe"; }
    $PY tests/tools/eval_check.py "$tmp/vec.npy" --rule "$rule" --qe "$qe" --feedback 5 --compare "$tmp/fb.json" \
      --per-query "$tmp/fpq.csv" --tolerance 1e-9 >"$tmp/check.out" 2>&1 ||
      { grep -E 'DIFFERS|eval_check' "$tmp/check.out" | head -20; fail "checker disagrees: feedback, rule $rule, qe $qe"; }
    grep 'eval_check:' "$tmp/check.out" | sed "s/^/feedback 5, rule $rule qe $qe: /"
    cp "$tmp/fb.json" "$tmp/fb_${rule}_$qe.json"
  done
done
if $PY tests/tools/eval_check.py "$tmp/vec.npy" --rule exact --qe 2 --feedback 5 --unlike-weight 0.5 \
  --compare "$tmp/fb_exact_2.json" >/dev/null 2>&1; then
  fail "the checker accepted feedback figures made with another weight"
fi
$PY - "$tmp/fb_exact_2.json" <<'EOF' || fail "--feedback report"
import json, sys
r = json.load(open(sys.argv[1]))
A, B = r["configs"]
p = r["paired"]["mAP@10"]
assert r["feedback"]["judged"] == 5 and "first round" in A["config"] and "second round" in B["config"], r["feedback"]
assert p["n"] == A["queries"]["scored"] == B["queries"]["scored"] > 100, p
print(f"feedback on 5: mAP@10 {p['a']:.4f} -> {p['b']:.4f} ({p['diff']:+.4f}, SE {p['se']:.4f}) on the images not judged")
EOF
"$BIN" eval --db "$db" --feedback 0 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--feedback 0 must exit 2"
"$BIN" eval --db "$db" --feedback 101 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--feedback 101 must exit 2"
"$BIN" eval --db "$db" --feedback 5 --compare "" "qe=2" >/dev/null 2>&1; [ $? -eq 2 ] || fail "--feedback with --compare must exit 2"
"$BIN" eval --db "$db" --feedback 5 --tune >/dev/null 2>&1; [ $? -eq 2 ] || fail "--feedback with --tune must exit 2"
"$BIN" eval --db "$db" --feedback 100 -k 901 >/dev/null 2>"$tmp/fk.err"; [ $? -eq 2 ] || fail "-k 901 --feedback 100 must exit 2"
grep -q "at most 1000" "$tmp/fk.err" || fail "-k plus --feedback is not explained: $(cat "$tmp/fk.err")"

# Usage errors and a missing collection.
"$BIN" eval --db "$db" --rule nearest >/dev/null 2>&1; [ $? -eq 2 ] || fail "a bad --rule must exit 2"
"$BIN" eval --db "$db" --compare "pool=avg" >/dev/null 2>&1; [ $? -eq 2 ] || fail "--compare with one config must exit 2"
"$BIN" eval --db "$db" --compare "pool=avg" "colour=blue" >/dev/null 2>&1; [ $? -eq 2 ] || fail "a bad config key must exit 2"
"$BIN" eval --db "$db" --compare "center=off" "center=maybe" >/dev/null 2>"$tmp/c.err"; [ $? -eq 2 ] || fail "a bad center= must exit 2"
grep -q "center 'maybe' is not on or off" "$tmp/c.err" || fail "a bad center= is not explained: $(cat "$tmp/c.err")"
"$BIN" eval --db "$tmp/none.db" >/dev/null 2>"$tmp/none.err"; [ $? -eq 1 ] || fail "a missing collection must exit 1"
grep -q "no collection" "$tmp/none.err" || fail "the missing collection is not named: $(cat "$tmp/none.err")"
[ ! -e "$tmp/none.db" ] || fail "eval created a collection"

echo "ok: $checks rule/QE combinations agree with the checker to 1e-9"
