#!/usr/bin/env bash
# The per-collection centering policy (`medsearch center`, `ingest --center`):
# a collection of 300 Kermany images is centred by default (policy auto);
# `center off` makes search rank by plain cosine (checked against numpy over
# the exported vectors, and the identical image still scores 1), `center
# auto` brings the centred scores back exactly, `ingest --center off` sets
# the policy of a new collection, and bad arguments exit 2.
set -u
. "$(dirname "$0")/devset/common.sh"
DATA=$SHARED/data/kermany_pneumonia_224
N=${CENTER_POLICY_IMAGES:-300}
devset_require "$DATA"

find "$DATA/images" -name '*.jpeg' | LC_ALL=C sort | head -n "$N" >"$tmp/files"
[ "$(wc -l <"$tmp/files")" -eq "$N" ] || fail "fewer than $N Kermany images"
query=$(sed -n 17p "$tmp/files")
db=$tmp/c.db
xargs -d '\n' "$BIN" ingest --db "$db" --model "$MODEL" --labels "$DATA/labels.csv" --quiet \
  <"$tmp/files" >"$tmp/ingest.log" 2>&1 || { tail -5 "$tmp/ingest.log"; fail "ingest"; }

state() {  # OUT: `medsearch center --json`
  "$BIN" center --db "$db" --json >"$1" 2>"$tmp/center.err" || { cat "$tmp/center.err"; fail "center --json"; }
}
search() {  # OUT: without query expansion, so that scores are the cosines numpy computes
  "$BIN" search "$query" --db "$db" --model "$MODEL" -k 10 --qe 0 --json >"$1" 2>"$tmp/search.err" ||
    { cat "$tmp/search.err"; fail "search"; }
}
field() {  # FILE KEY
  $PY -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(str(v).lower())' "$1" "$2"
}

# Default: auto, centred from every vector.
"$BIN" center --db "$db" >"$tmp/show.txt" 2>&1 || { cat "$tmp/show.txt"; fail "center"; }
grep -Eq '^policy +auto$' "$tmp/show.txt" || fail "a new collection's policy is not auto: $(cat "$tmp/show.txt")"
grep -q "mean of $N vectors" "$tmp/show.txt" || fail "not centred from $N vectors: $(cat "$tmp/show.txt")"
state "$tmp/s0.json"
[ "$(field "$tmp/s0.json" policy)" = auto ] && [ "$(field "$tmp/s0.json" centered)" = true ] &&
  [ "$(field "$tmp/s0.json" center_from)" = "$N" ] || fail "center --json: $(cat "$tmp/s0.json")"
search "$tmp/centred.json"

# Off: plain cosine, as numpy computes it from the stored vectors.
"$BIN" center off --db "$db" >"$tmp/off.txt" 2>&1 || { cat "$tmp/off.txt"; fail "center off"; }
grep -q "off (was auto)" "$tmp/off.txt" || fail "center off does not say what changed: $(cat "$tmp/off.txt")"
state "$tmp/s1.json"
[ "$(field "$tmp/s1.json" policy)" = off ] && [ "$(field "$tmp/s1.json" centered)" = false ] ||
  fail "after center off: $(cat "$tmp/s1.json")"
"$BIN" info --db "$db" --json >"$tmp/info.json" 2>/dev/null || fail "info"
[ "$(field "$tmp/info.json" center_policy)" = off ] || fail "info does not show the policy: $(cat "$tmp/info.json")"
"$BIN" info --db "$db" 2>&1 | grep -Eq '^center policy +off$' || fail "info (text) does not show the policy"
search "$tmp/plain.json"
"$BIN" search "$query" --db "$db" --model "$MODEL" -k 10 -v >/dev/null 2>"$tmp/v.err" || fail "search -v"
grep -q "index loaded from its file" "$tmp/v.err" || fail "the index saved by center off was not reused: $(cat "$tmp/v.err")"
"$BIN" export --vectors --db "$db" --out "$tmp/vec" 2>"$tmp/export.log" || { cat "$tmp/export.log"; fail "export"; }
[ ! -f "$tmp/vec.center.npy" ] || fail "policy off, but export wrote a center"
"$BIN" check --db "$db" >/dev/null 2>&1 || fail "check after center off"

# Auto again: the same center (the same vectors), the same scores.
"$BIN" center auto --db "$db" >"$tmp/auto.txt" 2>&1 || { cat "$tmp/auto.txt"; fail "center auto"; }
state "$tmp/s2.json"
[ "$(field "$tmp/s2.json" centered)" = true ] && [ "$(field "$tmp/s2.json" center_tag)" = "$(field "$tmp/s0.json" center_tag)" ] ||
  fail "center auto did not restore the center: $(cat "$tmp/s2.json")"
search "$tmp/again.json"

$PY - "$tmp" <<'EOF' || fail "scores"
import csv, json, sys
import numpy as np
d = sys.argv[1]
res = lambda n: json.load(open(f"{d}/{n}.json"))["results"]
centred, plain, again = res("centred"), res("plain"), res("again")
vec = np.load(f"{d}/vec.npy").astype(np.float64)
ids = [int(r["id"]) for r in csv.DictReader(open(f"{d}/vec.csv"))]
top = plain[0]["id"]
assert top == centred[0]["id"], (top, centred[0]["id"])
assert abs(plain[0]["score"] - 1) < 1e-5 and abs(centred[0]["score"] - 1) < 1e-5, (plain[0], centred[0])
q = vec[ids.index(top)]
want = np.sort(vec @ q)[::-1][:10]
got = np.array([r["score"] for r in plain])
assert np.abs(got - want).max() < 1e-5, (got, want)
for r in plain:  # each id's own plain cosine
    assert abs(float(vec[ids.index(r["id"])] @ q) - r["score"]) < 1e-5, r
c = np.array([r["score"] for r in centred])
assert np.abs(c[1:] - got[1:]).min() > 1e-3, ("centred and plain scores agree", c, got)
assert [r["id"] for r in again] == [r["id"] for r in centred], "center auto changed the ranking"
assert max(abs(a["score"] - b["score"]) for a, b in zip(again, centred)) < 1e-6, "center auto changed the scores"
print(f"plain cosine scores 2..4: {got[1:4].round(4)}; centred: {c[1:4].round(4)}")
EOF

# ingest --center off on a new collection.
db2=$tmp/ft.db
head -n 5 "$tmp/files" | xargs -d '\n' "$BIN" ingest --db "$db2" --model "$MODEL" --center off \
  >"$tmp/ingest2.log" 2>&1 || { cat "$tmp/ingest2.log"; fail "ingest --center off"; }
grep -q "centering policy off" "$tmp/ingest2.log" || fail "ingest --center off said nothing: $(cat "$tmp/ingest2.log")"
"$BIN" center --db "$db2" --json >"$tmp/s3.json" 2>/dev/null || fail "center on the new collection"
[ "$(field "$tmp/s3.json" policy)" = off ] && [ "$(field "$tmp/s3.json" images)" = 5 ] ||
  fail "ingest --center off: $(cat "$tmp/s3.json")"

# Bad arguments: exit 2, nothing changed.
"$BIN" center sideways --db "$db" >/dev/null 2>"$tmp/bad.err"; [ $? -eq 2 ] || fail "center sideways must exit 2"
grep -q "auto or off" "$tmp/bad.err" || fail "a bad policy is not explained: $(cat "$tmp/bad.err")"
"$BIN" center auto off --db "$db" >/dev/null 2>&1; [ $? -eq 2 ] || fail "two policies must exit 2"
"$BIN" center --frobnicate --db "$db" >/dev/null 2>&1; [ $? -eq 2 ] || fail "an unknown option must exit 2"
"$BIN" ingest --db "$db2" --model "$MODEL" --center maybe "$query" >/dev/null 2>"$tmp/bad2.err"
[ $? -eq 2 ] || fail "ingest --center maybe must exit 2"
grep -q "auto or off" "$tmp/bad2.err" || fail "ingest --center maybe is not explained: $(cat "$tmp/bad2.err")"
state "$tmp/s4.json"
[ "$(field "$tmp/s4.json" policy)" = auto ] || fail "a refused command changed the policy"
"$BIN" center --help | grep -q "auto" || fail "center --help"
echo "center_policy: ok"
