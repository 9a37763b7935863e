#!/usr/bin/env bash
# Every `medsearch bench` part runs end to end at a tiny size, so that
# `make bench` cannot rot unseen: decode, embed, index and serve each exit 0
# and print their figures (the JSON ones parse and hold sane values), and
# bad options are usage errors (exit 2) or a clear refusal, never a crash or
# a silent default. No peers run (they are the benchmarks' business, and
# slow); no figure is asserted against a time. bench ingest has its own
# test (bench_ingest.sh).
set -u
. "$(dirname "$0")/devset/common.sh"
DATA=$SHARED/data/nih_cxr14_64px
devset_require "$DATA"
FULL=$SHARED/data/nih_cxr14_fullres/images
[ -d "$FULL" ] || { echo "skip: $FULL not found"; exit 77; }
export MEDSEARCH_SHARED=$SHARED

# ---- decode: every file of the folder, a stage table ----
"$BIN" bench decode --runs 2 --rounds 1 --no-peer >"$tmp/decode.txt" 2>&1 || { cat "$tmp/decode.txt"; fail "bench decode"; }
for f in "$FULL"/*; do
  grep -q "^$(basename "$f") " "$tmp/decode.txt" || fail "bench decode has no row for $(basename "$f"): $(cat "$tmp/decode.txt")"
done

# ---- embed: two batch sizes, JSON ----
"$BIN" bench embed --model "$MODEL" --batch 1,2 --seconds 0.3 --rounds 1 --no-peer --json >"$tmp/embed.json" \
  2>"$tmp/embed.err" || { cat "$tmp/embed.err"; fail "bench embed"; }
$PY - "$tmp/embed.json" <<'PYEOF' || fail "bench embed's JSON: $(head -c 800 "$tmp/embed.json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert [b["batch"] for b in j["batches"]] == [1, 2], j["batches"]
for b in j["batches"]:
    assert b["median_ms"] > 0, b
assert j["gflop_per_image"] > 0.5 and j["fp32_peak_gflops"] > 0 and j["load_to_first_vector_ms"] > 0, j
assert j["peak_rss_mb_batch1"] > 0 and j["identity"].endswith(":1280:output"), j
PYEOF

# ---- index: flat, quantised and HNSW parts at 3,000 vectors; saved and loaded ----
"$BIN" bench index --n 3000 --dim 32 --queries 30 --centres 30 --ef 16,64 --tmpdir "$tmp" >"$tmp/index.txt" 2>&1 ||
  { tail -20 "$tmp/index.txt"; fail "bench index"; }
for want in "exact f32 scan:" "medsearch flat int8+rerank:" "first efSearch with recall@10" "persisted: save"; do
  grep -q "$want" "$tmp/index.txt" || fail "bench index printed no '$want': $(tail -20 "$tmp/index.txt")"
done
ls "$tmp" | grep -q msbench-index && fail "bench index left its saved index in --tmpdir"
# the recall after loading equals the exact answer's at ef 64 on this small set
grep -Eq "recall@10 after load (0\.9[0-9]*|1\.0000)" "$tmp/index.txt" || fail "low recall after load: $(grep persisted "$tmp/index.txt")"

# ---- serve: a collection of 100 images, one and two clients, JSON ----
head -100 <(ls "$DATA/images") | sed "s|^|$DATA/images/|" >"$tmp/files"
xargs -d '\n' "$BIN" ingest --db "$tmp/s.db" --model "$MODEL" <"$tmp/files" >"$tmp/ingest.log" 2>&1 ||
  { tail -5 "$tmp/ingest.log"; fail "ingest for bench serve"; }
"$BIN" bench serve --db "$tmp/s.db" --model "$MODEL" --seconds 0.5 --warmup 0.1 -c 2 --no-peer --json \
  >"$tmp/serve.json" 2>"$tmp/serve.err" || { cat "$tmp/serve.err"; fail "bench serve"; }
$PY - "$tmp/serve.json" <<'PYEOF' || fail "bench serve's JSON: $(head -c 800 "$tmp/serve.json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["images"] == 100 and j["dim"] == 1280, j
for run, clients in (("single", 1), ("concurrent", 2)):
    r = j[run]
    assert r["clients"] == clients and r["requests"] > 0 and r["errors"] == 0, (run, r)
    assert 0 < r["p50_ms"] <= r["p99_ms"], (run, r)
assert j["idle_rss_mb"] > 0, j
PYEOF

# ---- bad options: usage errors or clear refusals ----
bad() {  # EXIT GREP ARGS...
  local want=$1 grep=$2 rc=0
  shift 2
  "$BIN" bench "$@" >"$tmp/bad.out" 2>&1 || rc=$?
  [ "$rc" -eq "$want" ] || fail "bench $*: exit $rc, not $want: $(tail -3 "$tmp/bad.out")"
  grep -q -- "$grep" "$tmp/bad.out" || fail "bench $*: no '$grep' in: $(tail -3 "$tmp/bad.out")"
}
bad 2 "--M wants a whole number from 2 to 128, not '0'" index --n 100 --M 0
bad 2 "--n wants a whole number from 1 to 100000000, not '10x'" index --n 10x
bad 2 "--spread wants a number above 0 and at most 100, not '-1'" index --spread -1
bad 2 "--threads wants a whole number from 1 to 256" index --threads 100000
bad 2 "unexpected argument 'extra'" index --n 100 extra
bad 2 "--batch wants sizes 1..1024" embed --model "$MODEL" --batch 0 --no-peer
bad 2 "--seconds wants a number in (0, 3600]" embed --model "$MODEL" --seconds -1 --no-peer
bad 2 "--size needs a whole number from 1 to 8192" decode --size 0 --no-peer
bad 1 "not a PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM image" decode "$tmp/s.db" --no-peer
bad 3 "no collection at $tmp/none.db" serve --db "$tmp/none.db" --model "$MODEL" --no-peer
[ ! -e "$tmp/none.db" ] || fail "bench serve created the collection it was pointed at"
echo "ok: bench decode, embed, index and serve run and report; bad options are refused"
