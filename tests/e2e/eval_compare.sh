#!/usr/bin/env bash
# `medsearch eval --compare` with configurations that change the vectors:
# a scratch collection re-embedded with GeM pooling (or another model, or
# with --flip) must
# give exactly the figures of a collection ingested that way directly, the
# unchanged side must equal a plain eval, and --workdir must keep and reuse
# the scratch collection. Also: collections keep their pooling and input
# size (later commands use them without the flags), and refuse vectors made
# otherwise. Uses a patient-complete subset of the NIH 64 px
# dev set (about 1 patient in EVAL_SUBSET_MOD, default 4).
set -u
. "$(dirname "$0")/devset/common.sh"
DATA=$SHARED/data/nih_cxr14_64px
TUNED=$SHARED/models/mobilenet_v2_cxr_finetuned.onnx
MOD=${EVAL_SUBSET_MOD:-4}
devset_require "$DATA" "$TUNED"

$PY tests/tools/patient_subset.py "$DATA" "$MOD" >"$tmp/files" || fail "cannot list the subset"
echo "subset: $(wc -l <"$tmp/files") images"

ingest() {  # DB MODEL POOL [OPTION...]
  xargs -d '\n' "$BIN" ingest --db "$1" --model "$2" --pool "$3" "${@:4}" --labels "$DATA/labels.csv" \
    <"$tmp/files" >"$tmp/ingest.log" 2>&1 || { tail -5 "$tmp/ingest.log"; fail "ingest $3"; }
}
ingest "$tmp/avg.db" "$MODEL" avg
ingest "$tmp/gem.db" "$MODEL" gem
ingest "$tmp/tuned.db" "$TUNED" avg
ingest "$tmp/gemflip.db" "$MODEL" gem --flip
# without --pool (auto): GeM for a model whose feature is its global average pool
xargs -d '\n' "$BIN" ingest --db "$tmp/default.db" --model "$MODEL" --labels "$DATA/labels.csv" <"$tmp/files" \
  >"$tmp/ingest.log" 2>&1 || { tail -5 "$tmp/ingest.log"; fail "ingest without --pool"; }

evaljson() {  # OUT DB ARGS...
  local out=$1 db=$2; shift 2
  "$BIN" eval --db "$db" --rule any --json --quiet "$@" >"$out" 2>"$tmp/eval.err" ||
    { cat "$tmp/eval.err"; fail "eval $*"; }
}
evaljson "$tmp/avg.json" "$tmp/avg.db"
evaljson "$tmp/gem_qe.json" "$tmp/gem.db" --qe 1
evaljson "$tmp/tuned.json" "$tmp/tuned.db"
evaljson "$tmp/gemflip.json" "$tmp/gemflip.db"
evaljson "$tmp/default.json" "$tmp/default.db" --qe 1

# A = the stored avg vectors (no re-embedding), B = GeM re-embedded + QE 1.
evaljson "$tmp/cmp.json" "$tmp/avg.db" --model "$MODEL" --compare "pool=avg" "pool=gem,qe=1" --workdir "$tmp/work"
# A = the ImageNet model as stored, B = the fine-tuned model re-embedded.
evaljson "$tmp/cmp2.json" "$tmp/avg.db" --model "$MODEL" --compare "" "model=$TUNED,pool=avg"
# A = GeM as stored, B = GeM with each image's mirror image added.
evaljson "$tmp/cmp3.json" "$tmp/gem.db" --model "$MODEL" --pool gem --compare "" "flip=on"
ls "$tmp"/work/eval-*.db >/dev/null 2>&1 || fail "--workdir kept no scratch collection"
# Reuse: the second run finds the kept collection and gives the same figures.
"$BIN" eval --db "$tmp/avg.db" --rule any --json --model "$MODEL" --compare "pool=avg" "pool=gem,qe=1" \
  --workdir "$tmp/work" >"$tmp/cmp_again.json" 2>"$tmp/again.err" || { cat "$tmp/again.err"; fail "second --workdir run"; }
grep -q "reusing" "$tmp/again.err" || fail "the kept scratch collection was not reused: $(cat "$tmp/again.err")"

$PY - "$tmp" <<'EOF' || fail "--compare figures differ from direct collections"
import json, sys
d = sys.argv[1]
j = lambda n: json.load(open(f"{d}/{n}.json"))
avg, gem_qe, tuned, cmp, cmp2, again = (j(n) for n in ("avg", "gem_qe", "tuned", "cmp", "cmp2", "cmp_again"))
gemflip, cmp3, default = j("gemflip"), j("cmp3"), j("default")
def same(a, b, what):
    assert a["queries"] == b["queries"], (what, a["queries"], b["queries"])
    for part in ("metrics", "chance"):
        for k, v in b[part].items():
            assert abs(a[part][k] - v) <= 1e-12, (what, part, k, a[part][k], v)
A, B = cmp["configs"]
same(A, avg, "A = stored avg")
same(B, gem_qe, "B = GeM re-embedded + QE 1")
assert A["model"].endswith(":avg") and B["model"].endswith(":gem3"), (A["model"], B["model"])
same(cmp2["configs"][0], avg, "A = stored")
same(cmp2["configs"][1], tuned, "B = fine-tuned re-embedded")
assert "cxr_finetuned" in cmp2["configs"][1]["model"], cmp2["configs"][1]["model"]
same(cmp3["configs"][1], gemflip, "B = GeM + flip re-embedded")
assert cmp3["configs"][1]["model"].endswith(":gem3-flip"), cmp3["configs"][1]["model"]
assert cmp3["configs"][0]["model"].endswith(":gem3"), cmp3["configs"][0]["model"]
assert cmp3["paired"]["mAP@10"]["diff"] != 0, "flip changed nothing"
same(default, gem_qe, "a collection ingested without --pool = GeM")
assert default["model"].endswith(":gem3") and default["model"] == gem_qe["model"], default["model"]
for k in ("mAP@10", "P@10"):
    assert again["paired"][k] == cmp["paired"][k], (k, again["paired"][k], cmp["paired"][k])
p = cmp["paired"]["mAP@10"]
assert abs(p["diff"] - (gem_qe["metrics"]["mAP@10"] - avg["metrics"]["mAP@10"])) <= 1e-12, p
print(f"GeM+QE1 - avg: {p['diff']:+.4f} (SE {p['se']:.4f}); fine-tuned - ImageNet: "
      f"{cmp2['paired']['mAP@10']['diff']:+.4f} (SE {cmp2['paired']['mAP@10']['se']:.4f}), n {p['n']}")
EOF
# A --flip collection: a stored image searched with --pool gem --flip, or
# with no pooling option at all (the collection's own is used), scores 1.0
# (without query expansion);
# searching it with a pooling that differs (--pool gem without --flip) is
# refused (its vectors are another model's).
q=$(head -1 "$tmp/files")
for opts in "--pool gem --flip" ""; do
  # shellcheck disable=SC2086
  "$BIN" search --db "$tmp/gemflip.db" --model "$MODEL" $opts -k 1 --qe 0 --json "$q" >"$tmp/s.json" 2>"$tmp/s.err" ||
    { cat "$tmp/s.err"; fail "search with '$opts'"; }
  $PY -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; assert r["score"] > 0.99999, r' "$tmp/s.json" ||
    fail "a stored image does not score 1.0 with '$opts'"
done
# ingest again without pooling options: the collection's own, every image skipped
xargs -d '\n' "$BIN" ingest --db "$tmp/gemflip.db" --model "$MODEL" --labels "$DATA/labels.csv" <"$tmp/files" \
  >"$tmp/again.log" 2>&1 || { tail -5 "$tmp/again.log"; fail "ingest again without pooling options"; }
grep -q "ingested 0," "$tmp/again.log" || fail "ingest again stored something: $(tail -2 "$tmp/again.log")"
if "$BIN" search --db "$tmp/gemflip.db" --model "$MODEL" --pool gem -k 1 "$q" >/dev/null 2>"$tmp/s2.err"; then
  fail "search without --flip was accepted on a --flip collection"
fi
grep -q "holds vectors of model .*gem3-flip, not of .*gem3:" "$tmp/s2.err" || fail "unclear message without --flip: $(cat "$tmp/s2.err")"
# The input size is part of the identity too, and adopted on its own: a
# collection ingested with --input-size 160 is searched at 160 without the
# flag, also when a pooling flag is given (a stored image scores 1.0); at
# --input-size 224 it is refused with both identities named, and so is an
# ingest with another --mean (which the identity records as a digest). Flags
# that restate the model's own preprocessing (its metadata) change nothing.
head -20 "$tmp/files" >"$tmp/few"
xargs -d '\n' "$BIN" ingest --db "$tmp/in160.db" --model "$MODEL" --pool gem --input-size 160 <"$tmp/few" \
  >"$tmp/in160.log" 2>&1 || { tail -5 "$tmp/in160.log"; fail "ingest --input-size 160"; }
"$BIN" info --db "$tmp/in160.db" --json >"$tmp/in160.json" || fail "info on the --input-size 160 collection"
$PY -c 'import json,sys; m=json.load(open(sys.argv[1]))["model"]; assert m.endswith(":gem3-in160"), m' \
  "$tmp/in160.json" || fail "the identity does not record --input-size 160"
for opts in "" "--pool gem" "--input-size 160"; do
  # shellcheck disable=SC2086
  "$BIN" search --db "$tmp/in160.db" --model "$MODEL" $opts -k 1 --qe 0 --json "$q" >"$tmp/s.json" 2>"$tmp/s.err" ||
    { cat "$tmp/s.err"; fail "search the --input-size 160 collection with '$opts'"; }
  $PY -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; assert r["score"] > 0.99999, r' "$tmp/s.json" ||
    fail "a stored image does not score 1.0 at input size 160 with '$opts'"
done
"$BIN" search --db "$tmp/in160.db" --model "$MODEL" --input-size 224 -k 1 "$q" >/dev/null 2>"$tmp/s3.err"
rc=$?
[ $rc -eq 3 ] || fail "search at --input-size 224 of a 160 collection: exit $rc, not 3"
grep -q "holds vectors of model .*:gem3-in160, not of .*:gem3:" "$tmp/s3.err" ||
  fail "unclear message at --input-size 224: $(cat "$tmp/s3.err")"
"$BIN" ingest --db "$tmp/in160.db" --model "$MODEL" --mean 100 "$q" >/dev/null 2>"$tmp/i3.err"
rc=$?
[ $rc -eq 3 ] || fail "ingest with another --mean: exit $rc, not 3"
grep -Eq "holds vectors of model .*:gem3-in160, not of .*:gem3-in160-norm[0-9a-f]{8}:" "$tmp/i3.err" ||
  fail "unclear message with another --mean: $(cat "$tmp/i3.err")"
xargs -d '\n' "$BIN" ingest --db "$tmp/gem.db" --model "$MODEL" --input-size 224 --mean 127.5 --std 127.5 \
  <"$tmp/few" >"$tmp/own.log" 2>&1 || { tail -5 "$tmp/own.log"; fail "ingest with the model's own preprocessing"; }
grep -q "ingested 0," "$tmp/own.log" || fail "ingest with the model's own preprocessing: $(tail -2 "$tmp/own.log")"
# Without --workdir nothing is left behind in TMPDIR.
mkdir "$tmp/t"
TMPDIR=$tmp/t "$BIN" eval --db "$tmp/avg.db" --rule any --quiet --model "$MODEL" --compare "" "pool=max" \
  >/dev/null 2>"$tmp/max.err" || { cat "$tmp/max.err"; fail "--compare pool=max"; }
[ -z "$(ls -A "$tmp/t")" ] || fail "scratch files left in TMPDIR: $(ls -A "$tmp/t")"
echo "ok: re-embedded configurations equal directly ingested collections"
