#!/usr/bin/env bash
# `medsearch eval --out` (the Markdown report) and `--per-query` (the CSV),
# and text from outside on the terminal:
# - the report's tables carry the figures of `eval --json` (to its 4
#   decimals), one row per label, and with --compare the paired difference;
#   the per-query CSV's mean AP is the JSON's mAP@10 to 1e-9;
# - an output path that cannot be written fails before the evaluation (exit
#   3), a report of a failed run is never written (an earlier one is left as
#   it was, no temporary file is left), and both options naming one file is
#   a usage error;
# - labels, patient ids and file names holding control characters (an ESC
#   sequence, a line break) reach neither the terminal nor the report raw:
#   ingest, search, eval and info print them with '?' instead; the JSON
#   output keeps them, escaped.
# Uses a patient-complete subset of the NIH 64 px dev set.
set -u
. "$(dirname "$0")/devset/common.sh"
DATA=$SHARED/data/nih_cxr14_64px
devset_require "$DATA"

$PY tests/tools/patient_subset.py "$DATA" 6 >"$tmp/files" || fail "cannot list the subset"
echo "subset: $(wc -l <"$tmp/files") images"
db=$tmp/n.db
xargs -d '\n' "$BIN" ingest --db "$db" --model "$MODEL" --labels "$DATA/labels.csv" <"$tmp/files" \
  >"$tmp/ingest.log" 2>&1 || { tail -5 "$tmp/ingest.log"; fail "ingest"; }

# ---- the report and the per-query CSV carry the JSON's figures ----
"$BIN" eval --db "$db" --rule any --quiet --json --out "$tmp/r.md" --per-query "$tmp/q.csv" >"$tmp/r.json" ||
  fail "eval --out --per-query"
"$BIN" eval --db "$db" --rule any --quiet --json --compare "qe=0" "" --out "$tmp/c.md" >"$tmp/c.json" ||
  fail "eval --compare --out"
$PY - "$tmp" <<'PYEOF' || fail "the report's figures differ from the JSON's"
import csv, json, re, sys
d = sys.argv[1]
j = json.load(open(f"{d}/r.json"))
md = open(f"{d}/r.md").read()
def row(text, name):
    m = re.search(r"^\| " + re.escape(name) + r" \| (.*) \|$", text, re.M)
    assert m, (name, text[:400])
    return [c.strip() for c in m.group(1).split(" | ")]
for k in ("P@1", "P@5", "P@10", "mAP@10"):
    v, ch = row(md, k)
    assert v == f"{j['metrics'][k]:.4f}" and ch == f"{j['chance'][k]:.4f}", (k, v, ch, j["metrics"][k])
labels = j["per_label"]
assert labels, "no per-label figures in the JSON"
for l in labels:
    q, pk, ch = row(md, l["label"])
    assert int(q) == l["queries"] and pk == f"{l['P@10']:.4f}", (l, q, pk)
assert md.count("\n| ") == 2 + 4 + 2 + len(labels), "unexpected table rows"
assert f"{j['queries']['scored']} queries scored" in md, "scored count missing"
rows = list(csv.DictReader(open(f"{d}/q.csv")))
scored = [float(r["AP@10"]) for r in rows if r["scored"] == "1"]
assert len(rows) == j["images"] and len(scored) == j["queries"]["scored"], (len(rows), len(scored))
assert abs(sum(scored) / len(scored) - j["metrics"]["mAP@10"]) <= 1e-9
c = json.load(open(f"{d}/c.json"))
cmd = open(f"{d}/c.md").read()
assert "## A: `qe=0`" in cmd and "## B: `(as stored)`" in cmd, cmd[:600]
p = c["paired"]["mAP@10"]
m = re.search(r"^\| mAP@10 \| ([0-9.]+) \| ([0-9.]+) \| ([-+][0-9.]+) \| ([0-9.]+) \|$", cmd, re.M)
assert m, "no paired row"
assert m.group(3) == f"{p['diff']:+.4f}" and m.group(4) == f"{p['se']:.4f}", (m.groups(), p)
print(f"report: mAP@10 {j['metrics']['mAP@10']:.4f}, {len(labels)} labels, paired {p['diff']:+.4f} (SE {p['se']:.4f})")
PYEOF

# ---- output paths ----
cp "$tmp/r.md" "$tmp/keep.md"
start=$SECONDS
"$BIN" eval --db "$db" --rule any --quiet --out "$tmp/missing/r.md" >/dev/null 2>"$tmp/e1"
rc=$?
[ $rc -eq 3 ] || fail "--out in a missing folder: exit $rc, not 3"
grep -q "cannot write $tmp/missing/r.md: No such file or directory" "$tmp/e1" || fail "unclear: $(cat "$tmp/e1")"
"$BIN" eval --db "$db" --rule any --quiet --per-query "$tmp" >/dev/null 2>"$tmp/e2"
rc=$?
[ $rc -eq 3 ] || fail "--per-query naming a folder: exit $rc, not 3"
grep -q "Is a directory" "$tmp/e2" || fail "unclear: $(cat "$tmp/e2")"
"$BIN" eval --db "$db" --rule any --quiet --out "$tmp/x" --per-query "$tmp/x" >/dev/null 2>"$tmp/e3"
rc=$?
[ $rc -eq 2 ] || fail "--out and --per-query on one file: exit $rc, not 2"
[ ! -e "$tmp/x" ] || fail "a usage error wrote $tmp/x"
# "-" puts that report on standard output in place of the text tables, so the
# output is the Markdown (or CSV) alone; with --json the two would mix.
"$BIN" eval --db "$db" --rule any --quiet --out - >"$tmp/stdout.md" || fail "eval --out -"
cmp -s "$tmp/stdout.md" "$tmp/r.md" || fail "--out - is not the report --out FILE wrote"
"$BIN" eval --db "$db" --rule any --quiet --per-query - --out "$tmp/o.md" >"$tmp/stdout.csv" ||
  fail "eval --per-query -"
cmp -s "$tmp/stdout.csv" "$tmp/q.csv" || fail "--per-query - is not the CSV --per-query FILE wrote"
cmp -s "$tmp/o.md" "$tmp/r.md" || fail "--out FILE beside --per-query - differs"
"$BIN" eval --db "$db" --rule any --quiet --json --out - >"$tmp/j" 2>"$tmp/e5"
rc=$?
[ $rc -eq 2 ] || fail "--json with --out -: exit $rc, not 2"
[ -s "$tmp/j" ] && fail "--json with --out - wrote to standard output"
grep -q -- "--json and --out - both write to standard output" "$tmp/e5" || fail "unclear: $(cat "$tmp/e5")"
# A run that fails after the files are opened (the configuration's model is
# missing) leaves the earlier report as it was and no temporary file.
"$BIN" eval --db "$db" --rule any --quiet --compare "" "model=$tmp/none.onnx" --out "$tmp/r.md" \
  --per-query "$tmp/new.csv" >/dev/null 2>"$tmp/e4" && fail "a configuration with a missing model succeeded"
cmp -s "$tmp/r.md" "$tmp/keep.md" || fail "a failed run changed the earlier report"
[ ! -e "$tmp/new.csv" ] || fail "a failed run wrote the per-query file"
ls -A "$tmp" | grep -q '^\.' && fail "temporary files left: $(ls -A "$tmp" | grep '^\.')"
echo "output paths: refused or kept as they were ($((SECONDS - start)) s)"

# ---- control characters in labels, patient ids and file names ----
mkdir "$tmp/h"
ESC=$'\033'
CTRL=$'\033\a\r'
i=0
while read -r f; do
  i=$((i + 1))
  cp "$f" "$tmp/h/$i.png"
done < <(head -24 "$tmp/files")
cp "$(sed -n 25p "$tmp/files")" "$tmp/h/red${ESC}[31m.png"
{
  echo "image,labels,patient_id,view"
  for i in $(seq 1 24); do
    case $((i % 3)) in
      0) printf '%s.png,"Mass\nsplit",p%d,PA\n' "$i" "$i" ;;
      1) printf '%s.png,X%s]0;title\aY|Mass,p%s[2J%d,AP\n' "$i" "$ESC" "$ESC" "$i" ;;
      2) printf '%s.png,Mass,p%d,P\rA\n' "$i" "$i" ;;
    esac
  done
} >"$tmp/h/labels.csv"
hdb=$tmp/h.db
"$BIN" ingest "$tmp/h" --labels "$tmp/h/labels.csv" --db "$hdb" --model "$MODEL" >"$tmp/h.out" 2>"$tmp/h.err" ||
  { cat "$tmp/h.err"; fail "ingest of the hostile labels"; }
"$BIN" search --db "$hdb" --model "$MODEL" --id 1 -k 24 >"$tmp/s.txt" 2>&1 || fail "search"
"$BIN" eval --db "$hdb" --rule any --quiet --out "$tmp/h.md" >"$tmp/e.txt" 2>&1 || fail "eval"
"$BIN" info --db "$hdb" >"$tmp/i.txt" 2>&1 || fail "info"
for f in h.out h.err s.txt e.txt i.txt h.md; do
  LC_ALL=C grep -q "[$CTRL]" "$tmp/$f" && fail "a control character reached $f: $(cat -A "$tmp/$f" | grep -m3 '\^')"
done
grep -q "red?\[31m.png" "$tmp/s.txt" || fail "the file name is not shown with '?': $(cat "$tmp/s.txt")"
grep -q "X?\]0;title?Y" "$tmp/s.txt" || fail "the label is not shown with '?': $(cat "$tmp/s.txt")"
grep -q "^| Mass?split | 8 |" "$tmp/h.md" || fail "the label with a line break is not one table row: $(cat "$tmp/h.md")"
grep -q "^  Mass?split  " "$tmp/e.txt" || fail "the label with a line break is not one text row: $(cat "$tmp/e.txt")"
"$BIN" search --db "$hdb" --model "$MODEL" --id 2 -k 24 --json >"$tmp/s.json" || fail "search --json"
$PY - "$tmp/s.json" <<'PYEOF' || fail "the JSON does not keep the stored text"
import json, sys
def strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from strings(v)
labels = set(strings(json.load(open(sys.argv[1]))["results"]))
assert "X\x1b]0;title\x07Y" in labels and "Mass\nsplit" in labels, labels
PYEOF
echo "ok: reports match the JSON; bad output paths fail first; control characters are shown as '?'"
