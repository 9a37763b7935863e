#!/usr/bin/env bash
# `medsearch eval --tune [--apply]` on the 750 NIH 64 px dev images (rule any):
# with centering switched off, it tries query expansion 0-5 with centering on
# and off; every candidate's figures equal a separate `eval --compare`; the
# best is the largest mAP@10 and is recommended only beyond two standard
# errors; without --apply nothing changes; --apply records the pick (the
# policy back to auto, the query-expansion default), after which plain
# `eval` gives the pick's figure and tuning again changes nothing; usage
# errors exit 2. Back at qe 0 the best gains less than two standard errors:
# nothing is recommended or applied.
set -u
. "$(dirname "$0")/devset/common.sh"
DATA=$SHARED/data/nih_cxr14_64px
devset_require "$DATA"

db=$tmp/t.db
# From plain cosine without query expansion, where the tune has something to find.
"$BIN" ingest "$DATA/images" --labels "$DATA/labels.csv" --db "$db" --model "$MODEL" --pool output --qe 0 --quiet \
  >"$tmp/ingest.log" 2>&1 || { tail -5 "$tmp/ingest.log"; fail "ingest"; }
"$BIN" center off --db "$db" >/dev/null 2>&1 || fail "center off"

field() {  # FILE EXPR-ON-d
  $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
"$BIN" eval --db "$db" --rule any --tune --json -q >"$tmp/tune.json" 2>"$tmp/tune.err" ||
  { cat "$tmp/tune.err"; fail "eval --tune"; }
[ "$(field "$tmp/tune.json" 'len(d["candidates"])')" = 10 ] || fail "not 10 candidates: $(head -c 600 "$tmp/tune.json")"
[ "$(field "$tmp/tune.json" 'd["current"]')" = "{'vectors': 'output', 'center': 'off', 'qe': 0, 'policy': 'off'}" ] ||
  fail "current settings: $(field "$tmp/tune.json" 'd["current"]')"

# Each candidate is what eval --compare measures for it, paired with the current settings.
for cfg in "on 0" "on 2" "on 5" "off 3"; do
  set -- $cfg
  "$BIN" eval --db "$db" --rule any --compare "center=off,qe=0" "center=$1,qe=$2" --json -q >"$tmp/cmp.json" 2>"$tmp/cmp.err" ||
    { cat "$tmp/cmp.err"; fail "eval --compare center=$1,qe=$2"; }
  $PY - "$tmp/tune.json" "$tmp/cmp.json" "$1" "$2" <<'PYEOF' || fail "candidate center=$1 qe=$2 differs from eval --compare"
import json, sys
t, c = (json.load(open(f)) for f in sys.argv[1:3])
cand = [x for x in t["candidates"] if x["center"] == sys.argv[3] and x["qe"] == int(sys.argv[4])][0]
p = c["paired"]["mAP@10"]
ok = cand["mAP@10"] == c["configs"][1]["metrics"]["mAP@10"] and cand["diff"] == p["diff"] and cand["se"] == p["se"]
sys.exit(0 if ok else 1)
PYEOF
done

# The best is the largest mAP@10; it is recommended because it clears two standard errors.
$PY - "$tmp/tune.json" <<'PYEOF' || fail "best/recommended: $(field "$tmp/tune.json" 'd["best"], d["recommended"]')"
import json, sys
d = json.load(open(sys.argv[1]))
top = max(d["candidates"], key=lambda c: c["mAP@10"])
b, r = d["best"], d["recommended"]
assert (b["center"], b["qe"]) == (top["center"], top["qe"]), "best is not the top mAP"
assert b["significant"] == (b["diff"] > d["margin_se"] * b["se"]), "significance"
assert b["significant"] and b["center"] == "on", "centring should win clearly on NIH"
assert (r["center"], r["qe"]) == (b["center"], b["qe"]) and d["changed"] and not d["applied"]
assert f"medsearch qe {b['qe']} --db" in d["commands"] and "medsearch center auto" in d["commands"]
PYEOF
best_qe=$(field "$tmp/tune.json" 'd["best"]["qe"]')
best_map=$(field "$tmp/tune.json" '[c["mAP@10"] for c in d["candidates"] if c["center"]=="on" and c["qe"]==d["best"]["qe"]][0]')

# Without --apply nothing changed.
"$BIN" qe --db "$db" --json >"$tmp/qe.json" && [ "$(field "$tmp/qe.json" 'd["qe"]')" = 0 ] || fail "--tune alone changed the qe"
"$BIN" center --db "$db" --json >"$tmp/c.json" && [ "$(field "$tmp/c.json" 'd["policy"]')" = off ] ||
  fail "--tune alone changed the policy"

# --apply records it; plain eval then measures the pick; tuning again changes nothing.
"$BIN" eval --db "$db" --rule any --tune --apply -q >"$tmp/apply.txt" 2>&1 || { cat "$tmp/apply.txt"; fail "--tune --apply"; }
grep -q "^applied: medsearch qe $best_qe" "$tmp/apply.txt" || fail "--apply does not say what it did: $(tail -3 "$tmp/apply.txt")"
"$BIN" qe --db "$db" --json >"$tmp/qe.json" && [ "$(field "$tmp/qe.json" 'd["qe"]')" = "$best_qe" ] || fail "--apply: qe"
"$BIN" center --db "$db" --json >"$tmp/c.json" && [ "$(field "$tmp/c.json" 'd["policy"], d["centered"]')" = "('auto', True)" ] ||
  fail "--apply: policy $(cat "$tmp/c.json")"
"$BIN" eval --db "$db" --rule any --json -q >"$tmp/after.json" 2>/dev/null || fail "eval after --apply"
[ "$(field "$tmp/after.json" 'd["metrics"]["mAP@10"]')" = "$best_map" ] ||
  fail "eval after --apply gives $(field "$tmp/after.json" 'd["metrics"]["mAP@10"]'), the pick had $best_map"
"$BIN" eval --db "$db" --rule any --tune --json -q >"$tmp/again.json" 2>/dev/null || fail "second --tune"
[ "$(field "$tmp/again.json" 'd["changed"], d["current"]["qe"]')" = "(False, $best_qe)" ] ||
  fail "tuning again: $(field "$tmp/again.json" 'd["changed"], d["best"]')"
"$BIN" check --db "$db" >/dev/null 2>&1 || fail "check after --apply"

# Back to qe 0: the best (qe 5) now gains less than two standard errors, so
# the current settings are kept, and --apply changes nothing.
"$BIN" qe 0 --db "$db" >/dev/null 2>&1 || fail "qe 0"
"$BIN" eval --db "$db" --rule any --tune --apply --json -q >"$tmp/keep.json" 2>/dev/null || fail "--tune at qe 0"
$PY - "$tmp/keep.json" <<'PYEOF' || fail "within the margin: $(field "$tmp/keep.json" 'd["best"], d["recommended"], d["changed"]')"
import json, sys
d = json.load(open(sys.argv[1]))
b, r = d["best"], d["recommended"]
assert d["current"]["qe"] == 0 and d["current"]["center"] == "on"
assert (b["center"], b["qe"]) != ("on", 0) and 0 < b["diff"] <= d["margin_se"] * b["se"] and not b["significant"]
assert (r["center"], r["qe"]) == ("on", 0) and not d["changed"] and not d["applied"] and d["commands"] == ""
PYEOF
"$BIN" qe --db "$db" --json >"$tmp/qe.json" && [ "$(field "$tmp/qe.json" 'd["qe"]')" = 0 ] ||
  fail "--apply changed a default it did not recommend changing"

# Usage errors.
for args in "--apply" "--tune --qe 2" "--tune --compare '' qe=2" "--tune --out $tmp/r.md"; do
  rc=0
  eval "\"$BIN\" eval --db \"$db\" $args" >/dev/null 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || fail "eval $args: exit $rc, not 2"
done
echo "ok: eval --tune recommends centred qe $best_qe (mAP@10 $best_map) and --apply records it"
