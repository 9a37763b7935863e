#!/usr/bin/env bash
# The collection commands on a real, throwaway PostgreSQL server
# (tests/tools/pg_start.sh): ingest with labels, search finds the image first
# with score 1.0 (--qe 0), filters, the query-expansion default (3 when new), eval --tune (also
# --vectors --apply, which re-embeds), check,
# delete, SIGKILL during ingest, resume.
PG_NAME=pg-cli
. "$(dirname "$0")/pg/common.sh"
count() { "$BIN" info --db "$URI" --json 2>/dev/null | sed -n 's/.*"images": \([0-9]*\).*/\1/p'; }

mkdir -p "$T/set/images"
ls "$NIH/images" | head -n 240 | while read -r f; do ln -s "$NIH/images/$f" "$T/set/images/"; done

echo "== SIGKILL during ingest, 5 times"
for delay in 1.1 1.7 2.3 2.9 3.6; do
  "$BIN" ingest "$T/set" --labels "$NIH/labels.csv" --db "$URI" -q >/dev/null 2>&1 &
  pid=$!
  sleep $delay
  kill -KILL $pid 2>/dev/null
  wait $pid 2>/dev/null
  "$BIN" check --db "$URI" >"$T/check.log" 2>&1 || { cat "$T/check.log"; fail "check after a kill at ${delay}s"; }
  echo "killed after ${delay}s: $(count) images"
done

echo "== resume, search, filter"
"$BIN" ingest "$T/set" --labels "$NIH/labels.csv" --db "$URI" -q --json >"$T/i.json" || fail "resume"
[ "$(count)" = 240 ] || fail "expected 240 images, $(count) stored"
"$BIN" check --db "$URI" >/dev/null 2>&1 || fail "check"
q=$T/set/images/$(ls "$T/set/images" | sed -n 100p)
"$BIN" search "$q" --db "$URI" -k 5 --qe 0 --json >"$T/s.json" || fail "search"
[ "$(json "$T/s.json" "d['results'][0]['original_name']")" = "images/$(basename "$q")" ] || fail "not first"
[ "$(json "$T/s.json" "d['results'][0]['score'] >= 0.9999")" = True ] || fail "score below 0.9999"
"$BIN" search "$q" --db "$URI" -k 10 --filter 'labels:Effusion' --json >"$T/f.json" || fail "filtered search"
[ "$(json "$T/f.json" "len(d['results']) > 0 and all('Effusion' in r['labels'] for r in d['results'])")" = True ] ||
  fail "labels:Effusion returned other images"

echo "== the query-expansion default and eval --tune on PostgreSQL"
"$BIN" qe --db "$URI" --json >"$T/qe0.json" 2>/dev/null && [ "$(json "$T/qe0.json" "d['qe']")" = 3 ] ||
  fail "a new PostgreSQL collection's query-expansion default is not 3: $(cat "$T/qe0.json")"
"$BIN" qe 2 --db "$URI" >/dev/null 2>&1 || fail "qe 2"
"$BIN" qe --db "$URI" --json >"$T/qe.json" 2>/dev/null && [ "$(json "$T/qe.json" "(d['qe'], d['backend'])")" = "(2, 'postgresql')" ] ||
  fail "qe --json on PostgreSQL: $(cat "$T/qe.json")"
"$BIN" search "$q" --db "$URI" -k 5 --json >"$T/s2.json" || fail "search with the default"
"$BIN" search "$q" --db "$URI" -k 5 --qe 2 --json >"$T/s3.json" || fail "search --qe 2"
[ "$(json "$T/s2.json" "(d['qe'], [(r['id'], r['score']) for r in d['results']])")" = \
  "$(json "$T/s3.json" "(d['qe'], [(r['id'], r['score']) for r in d['results']])")" ] || fail "the default 2 differs from --qe 2"
"$BIN" eval --db "$URI" --rule any --tune --json -q >"$T/tune.json" 2>"$T/tune.err" || { cat "$T/tune.err"; fail "eval --tune"; }
# 240 images: centred (ENGINE_CENTER_MIN is 16), so centering varies too.
[ "$(json "$T/tune.json" "(d['current']['qe'], d['current']['center'], len(d['candidates']))")" = "(2, 'on', 10)" ] ||
  fail "eval --tune on 240 images: $(head -c 300 "$T/tune.json")"
"$BIN" qe 0 --db "$URI" >/dev/null 2>&1 || fail "qe 0"
"$BIN" check --db "$URI" >/dev/null 2>&1 || fail "check after qe"

echo "== eval --tune --vectors --apply re-embeds a PostgreSQL collection"
# The fine-tuned model's top-left cell first (0.09 mAP@10 below its GAP on
# the whole NIH set), so that another pooling wins clearly.
FT=$SHARED/models/mobilenet_v2_cxr_finetuned.onnx
"$BIN" reembed --model "$FT" --pool topleft --db "$URI" -q >/dev/null 2>&1 || fail "reembed --pool topleft"
"$BIN" eval --db "$URI" --model "$FT" --rule any --tune --vectors --apply --json -q >"$T/tv.json" 2>"$T/tv.err" ||
  { cat "$T/tv.err"; fail "eval --tune --vectors --apply"; }
[ "$(json "$T/tv.json" "(len(d['vectors']), len(d['candidates']), d['current']['vectors'])")" = "(5, 50, 'topleft')" ] ||
  fail "eval --tune --vectors on 240 images: $(head -c 400 "$T/tv.json")"
[ "$(json "$T/tv.json" "d['recommended']['reembed'] and d['applied']")" = True ] ||
  fail "no re-embedding was picked: $(json "$T/tv.json" "d['best'], d['recommended']")"
pick=$(json "$T/tv.json" "d['recommended']['vectors']")
pick_map=$(json "$T/tv.json" "[c['mAP@10'] for c in d['candidates'] if (c['vectors'], c['qe']) == (d['recommended']['vectors'], d['recommended']['qe'])][0]")
"$BIN" info --db "$URI" 2>/dev/null | grep -q ":$pick\$" || fail "after --apply the identity is not $pick"
"$BIN" eval --db "$URI" --rule any --json -q >"$T/after.json" 2>/dev/null || fail "eval after --apply"
[ "$(json "$T/after.json" "d['metrics']['mAP@10']")" = "$pick_map" ] || fail "eval after --apply is not the pick's $pick_map"
"$BIN" check --db "$URI" >/dev/null 2>&1 || fail "check after --tune --vectors --apply"
echo "picked $pick (mAP@10 $pick_map)"
"$BIN" qe 0 --db "$URI" >/dev/null 2>&1 || fail "qe 0"

id=$(json "$T/s.json" "d['results'][0]['id']")
"$BIN" delete "$id" --db "$URI" >/dev/null || fail "delete"
[ "$(count)" = 239 ] || fail "delete did not remove the image"
"$BIN" check --db "$URI" >/dev/null 2>&1 || fail "check after delete"
[ $fails -eq 0 ] && echo "all passed"
[ $fails -eq 0 ]
