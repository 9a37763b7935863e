#!/usr/bin/env bash
# The per-collection query-expansion default (`medsearch qe`): 3 for a new
# collection, `ingest --qe N` sets it before the images go in; once set,
# search (CLI), eval and info follow it, and give exactly what an explicit
# --qe gives; --qe 0 still turns it off (the image itself first, score 1);
# bad arguments exit 2 and create nothing; a value
# damaged by hand is refused by search and check with the command that
# repairs it, and `medsearch qe N` repairs it. (The API and the page: see
# http_api.sh and tests/browser.)
set -u
. "$(dirname "$0")/devset/common.sh"
DATA=$SHARED/data/kermany_pneumonia_224
N=${COLLECTION_QE_IMAGES:-80}
devset_require "$DATA"

# Every 50th file: all three classes (the sorted list is grouped by class).
find "$DATA/images" -name '*.jpeg' | LC_ALL=C sort | awk 'NR % 50 == 1' | head -n "$N" >"$tmp/files"
[ "$(wc -l <"$tmp/files")" -eq "$N" ] || fail "fewer than $N Kermany images"
query=$(sed -n 5p "$tmp/files")
db=$tmp/q.db
xargs -d '\n' "$BIN" ingest --db "$db" --model "$MODEL" --labels "$DATA/labels.csv" --quiet \
  <"$tmp/files" >"$tmp/ingest.log" 2>&1 || { tail -5 "$tmp/ingest.log"; fail "ingest"; }

field() {  # FILE EXPR-ON-d
  $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
search() {  # OUT [options]
  local out=$1
  shift
  "$BIN" search "$query" --db "$db" --model "$MODEL" -k 8 --json "$@" >"$out" 2>"$tmp/search.err" ||
    { cat "$tmp/search.err"; fail "search $*"; }
}
same_results() {  # A B: the same ids and scores
  $PY -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]);
sys.exit(0 if [(r["id"],r["score"]) for r in a["results"]]==[(r["id"],r["score"]) for r in b["results"]] else 1)' "$1" "$2"
}
map_of() {  # FILE: mAP@10 of an eval --json report
  field "$1" 'd["metrics"]["mAP@10"]'
}

# A new collection: 3, what an explicit --qe 3 gives.
"$BIN" qe --db "$db" >"$tmp/show.txt" 2>&1 || { cat "$tmp/show.txt"; fail "qe"; }
grep -Eq '^qe +3 ' "$tmp/show.txt" || fail "a new collection's default is not 3: $(cat "$tmp/show.txt")"
"$BIN" qe --db "$db" --json >"$tmp/show.json" || fail "qe --json"
[ "$(field "$tmp/show.json" 'd["qe"]')" = 3 ] || fail "qe --json: $(cat "$tmp/show.json")"
search "$tmp/default3.json"
[ "$(field "$tmp/default3.json" 'd["qe"]')" = 3 ] || fail "search does not report qe 3"
search "$tmp/explicit3.json" --qe 3
same_results "$tmp/default3.json" "$tmp/explicit3.json" || fail "the new collection's default differs from --qe 3"
search "$tmp/default0.json" --qe 0
search "$tmp/explicit2.json" --qe 2
same_results "$tmp/default0.json" "$tmp/explicit2.json" && fail "qe 2 changes nothing on this query: the test cannot tell"
same_results "$tmp/default3.json" "$tmp/explicit2.json" && fail "qe 2 and 3 agree on this query: the test cannot tell"
# The text table says what its scores are when they are not plain similarities.
"$BIN" search "$query" --db "$db" --model "$MODEL" -k 3 >"$tmp/t3.txt" 2>/dev/null || fail "search (text)"
grep -q "^scores: similarity to the query expanded with its top 3 results" "$tmp/t3.txt" ||
  fail "the text table does not say the scores are expanded: $(cat "$tmp/t3.txt")"
"$BIN" search "$query" --db "$db" --model "$MODEL" -k 3 --qe 0 >"$tmp/t0.txt" 2>/dev/null || fail "search --qe 0 (text)"
grep -q "^scores:" "$tmp/t0.txt" && fail "the plain table has a note on expanded scores"

# ingest --qe N: a new collection's default set before its images go in;
# given again with the value it has, it says nothing; a bad value exits 2.
db0=$tmp/q0.db
head -n 3 "$tmp/files" | xargs -d '\n' "$BIN" ingest --db "$db0" --model "$MODEL" --qe 0 \
  >"$tmp/ingest0.log" 2>&1 || { cat "$tmp/ingest0.log"; fail "ingest --qe 0"; }
grep -q "query-expansion default 0 (was 3)" "$tmp/ingest0.log" || fail "ingest --qe 0 said nothing: $(cat "$tmp/ingest0.log")"
"$BIN" qe --db "$db0" --json >"$tmp/q0.json" && [ "$(field "$tmp/q0.json" 'd["qe"]')" = 0 ] ||
  fail "ingest --qe 0: $(cat "$tmp/q0.json")"
sed -n 4p "$tmp/files" | xargs -d '\n' "$BIN" ingest --db "$db0" --model "$MODEL" --qe 0 \
  >"$tmp/ingest0b.log" 2>&1 || { cat "$tmp/ingest0b.log"; fail "ingest --qe 0 again"; }
grep -q "query-expansion default" "$tmp/ingest0b.log" && fail "ingest --qe 0 again said it changed"
for bad in -1 101 x; do
  rc=0
  "$BIN" ingest --db "$tmp/bad.db" --model "$MODEL" --qe "$bad" "$query" >/dev/null 2>"$tmp/badi.err" || rc=$?
  [ "$rc" -eq 2 ] && [ ! -e "$tmp/bad.db" ] || fail "ingest --qe '$bad': exit $rc, $(cat "$tmp/badi.err")"
done

# Set to 2: search, eval and info follow it.
"$BIN" qe 2 --db "$db" >"$tmp/set.txt" 2>&1 || { cat "$tmp/set.txt"; fail "qe 2"; }
grep -q "was 3" "$tmp/set.txt" || fail "qe 2 does not say what changed: $(cat "$tmp/set.txt")"
"$BIN" qe 2 --db "$db" --json >"$tmp/again.json" 2>&1 || fail "qe 2 again"
[ "$(field "$tmp/again.json" 'd["changed"]')" = False ] && [ "$(field "$tmp/again.json" 'd["previous"]')" = 2 ] ||
  fail "qe 2 twice: $(cat "$tmp/again.json")"
search "$tmp/default2.json"
[ "$(field "$tmp/default2.json" 'd["qe"]')" = 2 ] || fail "search does not report the default 2"
same_results "$tmp/default2.json" "$tmp/explicit2.json" || fail "the default 2 differs from --qe 2"
search "$tmp/off.json" --qe 0
same_results "$tmp/off.json" "$tmp/default0.json" || fail "--qe 0 is not off"
[ "$(field "$tmp/off.json" 'd["results"][0]["score"] > 0.9999')" = True ] ||
  fail "--qe 0: the image itself does not score 1"
"$BIN" search "$query" --db "$db" --model "$MODEL" -k 3 -v >/dev/null 2>"$tmp/v.err" || fail "search -v"
grep -q "query expansion: 2;" "$tmp/v.err" || fail "search -v does not say the query expansion: $(cat "$tmp/v.err")"

"$BIN" eval --db "$db" --rule exact --json >"$tmp/eval-default.json" 2>"$tmp/eval.err" || { cat "$tmp/eval.err"; fail "eval"; }
"$BIN" eval --db "$db" --rule exact --qe 2 --json >"$tmp/eval-2.json" 2>"$tmp/eval.err" || { cat "$tmp/eval.err"; fail "eval --qe 2"; }
"$BIN" eval --db "$db" --rule exact --qe 0 --json >"$tmp/eval-0.json" 2>"$tmp/eval.err" || { cat "$tmp/eval.err"; fail "eval --qe 0"; }
[ "$(map_of "$tmp/eval-default.json")" = "$(map_of "$tmp/eval-2.json")" ] ||
  fail "eval without --qe ($(map_of "$tmp/eval-default.json")) is not eval --qe 2 ($(map_of "$tmp/eval-2.json"))"
[ "$(map_of "$tmp/eval-default.json")" != "$(map_of "$tmp/eval-0.json")" ] || fail "eval: qe 2 and 0 give the same mAP"
[ "$(field "$tmp/eval-default.json" 'd["qe"], d["qe_from_collection"]')" = "(2, True)" ] &&
  [ "$(field "$tmp/eval-0.json" 'd["qe"], d["qe_from_collection"]')" = "(0, False)" ] ||
  fail "eval does not say where its qe came from"
"$BIN" eval --db "$db" --rule exact >"$tmp/eval.txt" 2>&1 || fail "eval (text)"
grep -q "query expansion with the top 2 (the collection's default)" "$tmp/eval.txt" || fail "eval text: $(head -3 "$tmp/eval.txt")"
"$BIN" eval --db "$db" --rule exact --compare "" "qe=0" --json >"$tmp/cmp.json" 2>"$tmp/eval.err" ||
  { cat "$tmp/eval.err"; fail "eval --compare"; }
[ "$(field "$tmp/cmp.json" '[r["qe"] for r in d["configs"]]')" = "[2, 0]" ] ||
  fail "compare: \"\" is not the collection's qe: $(head -c 400 "$tmp/cmp.json")"

"$BIN" info --db "$db" --json >"$tmp/info.json" 2>/dev/null || fail "info"
[ "$(field "$tmp/info.json" 'd["search_qe"]')" = 2 ] || fail "info --json does not show the default"
"$BIN" info --db "$db" 2>/dev/null | grep -Eq '^query expansion +2$' || fail "info (text) does not show the default"

# eval --tune on a centred collection: every QE with centering on and off,
# the current default (2, centred) among them.
"$BIN" eval --db "$db" --rule exact --tune --json -q >"$tmp/tune.json" 2>"$tmp/tune.err" || { cat "$tmp/tune.err"; fail "eval --tune"; }
[ "$(field "$tmp/tune.json" '[(c["center"], c["qe"], c["current"]) for c in d["candidates"]]')" = \
  "[('on', 0, False), ('on', 1, False), ('on', 2, True), ('on', 3, False), ('on', 5, False), ('off', 0, False), ('off', 1, False), ('off', 2, False), ('off', 3, False), ('off', 5, False)]" ] ||
  fail "--tune candidates on $N images: $(field "$tmp/tune.json" 'd["candidates"]')"
# ... and on a collection too small for a center (12 images, under
# ENGINE_CENTER_MIN): only query expansion varies.
awk 'NR % 6 == 1' "$tmp/files" | head -n 12 >"$tmp/small"
[ "$(wc -l <"$tmp/small")" -eq 12 ] || fail "fewer than 12 files for the small collection"
small=$tmp/small.db
xargs -d '\n' "$BIN" ingest --db "$small" --model "$MODEL" --labels "$DATA/labels.csv" --quiet --qe 2 \
  <"$tmp/small" >"$tmp/ingest-small.log" 2>&1 || { tail -5 "$tmp/ingest-small.log"; fail "ingest (12 images)"; }
"$BIN" eval --db "$small" --rule exact --tune --json -q >"$tmp/tune-small.json" 2>"$tmp/tune.err" ||
  { cat "$tmp/tune.err"; fail "eval --tune (12 images)"; }
[ "$(field "$tmp/tune-small.json" '[(c["center"], c["qe"], c["current"]) for c in d["candidates"]]')" = \
  "[('off', 0, False), ('off', 1, False), ('off', 2, True), ('off', 3, False), ('off', 5, False)]" ] ||
  fail "--tune candidates on 12 images: $(field "$tmp/tune-small.json" 'd["candidates"]')"
"$BIN" eval --db "$small" --rule exact --tune -q 2>/dev/null | grep -q "no center, so only query expansion varies" ||
  fail "--tune (text) does not say why the centering is not tried"

# Bad arguments: usage errors, nothing created, nothing changed.
for bad in -1 abc 101 1.5 "" 2x; do
  rc=0
  "$BIN" qe "$bad" --db "$db" >/dev/null 2>"$tmp/bad.err" || rc=$?
  [ "$rc" -eq 2 ] || fail "qe '$bad': exit $rc, not 2"
done
rc=0
"$BIN" qe 1 2 --db "$db" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "qe 1 2: exit $rc, not 2"
rc=0
"$BIN" qe 3 --db "$tmp/none.db" >/dev/null 2>"$tmp/none.err" || rc=$?
[ "$rc" -eq 1 ] && [ ! -e "$tmp/none.db" ] && grep -q "no collection" "$tmp/none.err" ||
  fail "qe on a missing collection: exit $rc, $(cat "$tmp/none.err")"
"$BIN" qe --db "$db" --json >"$tmp/after.json" && [ "$(field "$tmp/after.json" 'd["qe"]')" = 2 ] ||
  fail "a refused qe changed the default"

# Damaged by hand (its CHECK constraint bypassed): refused with the repair, repaired by qe N.
$PY -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("PRAGMA ignore_check_constraints=ON");
c.execute("UPDATE collection SET search_qe=500"); c.commit()' "$db"
rc=0
"$BIN" search "$query" --db "$db" --model "$MODEL" >/dev/null 2>"$tmp/dmg.err" || rc=$?
[ "$rc" -ne 0 ] && grep -q "query-expansion default" "$tmp/dmg.err" && grep -q "medsearch qe N" "$tmp/dmg.err" ||
  fail "search on a damaged default: exit $rc, $(cat "$tmp/dmg.err")"
"$BIN" check --db "$db" >/dev/null 2>&1 && fail "check accepts a damaged default"
"$BIN" qe --db "$db" >/dev/null 2>&1 && fail "qe (show) accepts a damaged default"
"$BIN" qe 1 --db "$db" --json >"$tmp/repair.json" 2>&1 || { cat "$tmp/repair.json"; fail "qe 1 on a damaged default"; }
[ "$(field "$tmp/repair.json" 'd["previous"], d["qe"]')" = "('damaged', 1)" ] || fail "repair: $(cat "$tmp/repair.json")"
"$BIN" check --db "$db" >/dev/null 2>&1 || fail "check after the repair"
search "$tmp/repaired.json"
[ "$(field "$tmp/repaired.json" 'd["qe"]')" = 1 ] || fail "search after the repair"
echo "ok: collection query-expansion default ($N images)"
