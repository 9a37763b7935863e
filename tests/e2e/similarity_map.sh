#!/usr/bin/env bash
# Where two images are alike: `medsearch explain` and the API's similarity
# maps (POST /api/similarity-map, GET /api/images/{id}/similarity-map),
# against the real server and the CLI:
#  - the similarity equals the search score without query expansion, and the
#    cells of either image sum to it, for a file, a stored image and a region;
#  - the CLI and both API routes give the same cells;
#  - a picture made of the left half of one X-ray and the right half of
#    another matches the first in its left columns, on both images;
#  - bad requests are refused (exit 2, 400, 404, 405), and a collection whose
#    model's feature is a classifier's scores (no map to split) says so (409).
. "$(dirname "$0")/http/common.sh"
require_all
/usr/bin/python3 -c 'import PIL, numpy' 2>/dev/null || skip "/usr/bin/python3 lacks PIL or numpy"

make_collection 60
export MEDSEARCH_MODEL=$MODEL
explain() { "$MEDSEARCH_BIN" explain --db "$WORK/c.db" "$@"; }

# score_of FILE ID: the score of id in a search answer.
score_of() {
    /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(next(r["score"] for r in d["results"] if r["id"]==int(sys.argv[2])))' "$1" "$2"
}
# map_ok FILE SCORE: the map's similarity is SCORE and both sides sum to it.
map_ok() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = float(sys.argv[2])
q = sum(map(sum, d["query_cells"])); r = sum(map(sum, d["result_cells"]))
g = d["grid"]
ok = (g == {"width": 7, "height": 7} and len(d["query_cells"]) == 7 and all(len(x) == 7 for x in d["query_cells"])
      and abs(d["similarity"] - s) < 1e-4 and abs(q - s) < 1e-4 and abs(r - s) < 1e-4)
print("yes" if ok else "no: similarity %s, sums %s %s, score %s, grid %s" % (d["similarity"], q, r, s, g))
PY
}

echo "== the CLI: the cells sum to the search score"
"$MEDSEARCH_BIN" search "$QUERY" --db "$WORK/c.db" -k 40 --qe 0 --json >"$WORK/s.json" || bad "search"
ids=$(/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(str(r["id"]) for r in d["results"][:40:13]))' "$WORK/s.json")
for id in $ids; do
    explain "$QUERY" --with "$id" --json >"$WORK/e$id.json" 2>"$WORK/err" || bad "explain --with $id: $(cat "$WORK/err")"
    r=$(map_ok "$WORK/e$id.json" "$(score_of "$WORK/s.json" "$id")")
    if [ "$r" = yes ]; then ok "explain --with $id: similarity = score, cells sum to it"; else bad "explain --with $id: $r"; fi
done
first=${ids%% *}
out=$(explain "$QUERY" --with "$first")
case $out in *"similarity "*"(centred cosine, without query expansion)"*"query:"*"strongest: row"*"image $first:"*) ok "the text report" ;;
    *) bad "the text report: $out" ;; esac
[ "$(printf '%s\n' "$out" | grep -cE '^    ( +-?[0-9]+\.[0-9]){7}$')" = 14 ] && ok "two grids of 7 x 7" || bad "grids: $out"

echo "== a stored query, and a region"
explain --id "$first" --with "$first" --json >"$WORK/self.json" || bad "explain --id"
r=$(map_ok "$WORK/self.json" 1)
[ "$r" = yes ] && ok "an image against itself: similarity 1" || bad "itself: $r"
"$MEDSEARCH_BIN" search "$BIG" --db "$WORK/c.db" -k 5 --qe 0 --region 0,0,50%,100% --json >"$WORK/rs.json" || bad "region search"
rid=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][2]["id"])' "$WORK/rs.json")
explain "$BIG" --with "$rid" --region 0,0,50%,100% --json >"$WORK/re.json" || bad "explain --region"
r=$(map_ok "$WORK/re.json" "$(score_of "$WORK/rs.json" "$rid")")
[ "$r" = yes ] && ok "a region's map sums to the region's search score" || bad "region: $r"
B=$WORK/re.json
check "the region used comes back in pixels" 'd["region"] == {"x": 0, "y": 0, "width": 512, "height": 1024}'

echo "== the map drawn over the images (--overlay)"
explain "$BIG" --with "$first" --region 0,0,50%,100% --overlay "$WORK/ov" --json >"$WORK/ov.json" || bad "explain --overlay"
B=$WORK/ov.json
check "the JSON names the two files" 'd["overlays"] == {"query": "'"$WORK/ov-query.png"'", "result": "'"$WORK/ov-result.png"'"}'
r=$(/usr/bin/python3 - "$WORK/ov-query.png" "$WORK/ov-result.png" <<'PY'
import sys
from PIL import Image
import numpy as np
q, r = Image.open(sys.argv[1]), Image.open(sys.argv[2])
def warm(im):
    a = np.asarray(im).astype(int)
    return int(((a[..., 0] - a[..., 2]) > 40).sum())
# the query's region (512 x 1024 of the 1024-px image) and a 64-px result enlarged 16 times
print(q.mode, q.size, r.mode, r.size, warm(q) > 1000, warm(r) > 1000)
PY
)
[ "$r" = "RGB (512, 1024) RGB (1024, 1024) True True" ] && ok "two RGB PNGs, the region's and the result's, with heat on each" || bad "overlays: $r"
explain "$BIG" --with "$first" --overlay "$WORK/ov2" --overlay-size 300 >/dev/null || bad "--overlay-size 300"
r=$(/usr/bin/python3 -c 'import sys; from PIL import Image; print(Image.open(sys.argv[1]).size, Image.open(sys.argv[2]).size)' "$WORK/ov2-query.png" "$WORK/ov2-result.png")
[ "$r" = "(300, 300) (256, 256)" ] && ok "--overlay-size 300: the query reduced to 300, the 64-px result enlarged 4 times" || bad "--overlay-size 300: $r"
explain "$BIG" --with "$rid" --overlay "$WORK/no/such/dir/ov" >/dev/null 2>"$WORK/err"; rc=$?
[ "$rc" = 3 ] && grep -q "cannot write" "$WORK/err" && ok "an overlay that cannot be written: exit 3" || bad "unwritable overlay: exit $rc: $(cat "$WORK/err")"

echo "== where they match: half of one X-ray beside half of another"
A=$WORK/data/nih_cxr14_fullres/images/00000001_000.png
aid=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["id"])' \
      <("$MEDSEARCH_BIN" search "$A" --db "$WORK/c.db" -k 1 --qe 0 --json) 2>/dev/null)
/usr/bin/python3 - "$A" "$WORK/data/nih_cxr14_64px/images" "$WORK/mixed.png" <<'PY'
import sys, os
from PIL import Image
import numpy as np
a = Image.open(sys.argv[1]).convert("L")
names = sorted(os.listdir(sys.argv[2]))
b = Image.open(os.path.join(sys.argv[2], names[30])).convert("L").resize(a.size)
m = np.array(a).copy(); w = a.size[0]
m[:, w // 2:] = np.array(b)[:, w // 2:]
Image.fromarray(m).save(sys.argv[3])
PY
explain "$WORK/mixed.png" --with "$aid" --json >"$WORK/mixed.json" || bad "explain of the mixed picture"
B=$WORK/mixed.json
check "the left columns carry the match on the query" 'sum(sum(r[:3]) for r in d["query_cells"]) > sum(sum(r[4:]) for r in d["query_cells"]) + 0.05'
check "and on the stored image" 'sum(sum(r[:3]) for r in d["result_cells"]) > sum(sum(r[4:]) for r in d["result_cells"]) + 0.05'

echo "== the CLI refuses"
for args in "--with $first" "$QUERY" "$QUERY --id 1 --with 1" "$QUERY --with 0" "$QUERY --with 1 --region 0,0,5000,5" \
            "$QUERY --with 1 --overlay $WORK/x --overlay-size 0" \
            "$QUERY --with 987654321" "$WORK/missing.png --with 1" "--id 987654321 --with 1"; do
    # shellcheck disable=SC2086
    explain $args >/dev/null 2>"$WORK/err"; rc=$?
    if [ "$rc" = 2 ] && [ -s "$WORK/err" ]; then ok "explain $args: exit 2, $(head -c 90 "$WORK/err")"
    else bad "explain $args: exit $rc: $(cat "$WORK/err")"; fi
done
MEDSEARCH_MODEL= "$MEDSEARCH_BIN" explain --db "$WORK/c.db" --id "$first" --with "$first" >/dev/null 2>"$WORK/err"; rc=$?
[ "$rc" = 3 ] && ok "without a model: exit 3" || bad "without a model: exit $rc: $(head -c 200 "$WORK/err")"
printf 'not an image' >"$WORK/junk.png"
explain "$WORK/junk.png" --with 1 >/dev/null 2>"$WORK/err"; rc=$?
[ "$rc" = 1 ] && ok "a file that is no image: exit 1, $(head -c 90 "$WORK/err")" || bad "junk: exit $rc"

echo "== the API"
start_server
expect 200 "POST /api/similarity-map" -F "image=@$QUERY" "$URL/api/similarity-map?with=$first"
cmp_cells() { /usr/bin/python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(all(abs(x-y)<1e-6 for k in ("query_cells","result_cells") for ra,rb in zip(a[k],b[k]) for x,y in zip(ra,rb)) and abs(a["similarity"]-b["similarity"])<1e-6)' "$1" "$2"; }
[ "$(cmp_cells "$B" "$WORK/e$first.json")" = True ] && ok "the same cells as the CLI" || bad "API and CLI differ"
check "it names the result, the grid and the kind" 'd["with"] == '"$first"' and d["similarity_kind"] == "centred cosine" and "query_id" not in d and "server" in d["timing_ms"]'
expect 200 "POST with a region as a multipart field" -F "image=@$BIG" -F "with=$rid" -F "region=0,0,50%,100%" "$URL/api/similarity-map"
[ "$(cmp_cells "$B" "$WORK/re.json")" = True ] && ok "the region's cells as the CLI's" || bad "region: API and CLI differ"
check "and the region" 'd["region"] == {"x": 0, "y": 0, "width": 512, "height": 1024}'
expect 200 "GET /api/images/{id}/similarity-map" "$URL/api/images/$first/similarity-map?with=$first"
[ "$(cmp_cells "$B" "$WORK/self.json")" = True ] && ok "the stored query's cells as the CLI's" || bad "stored: API and CLI differ"
check "it names the query" 'd["query_id"] == '"$first"
expect 200 "HEAD" -I "$URL/api/images/$first/similarity-map?with=$first"
expect 400 "no with" "$URL/api/images/$first/similarity-map"
expect 400 "with=0" "$URL/api/images/$first/similarity-map?with=0"
expect 400 "with=abc" "$URL/api/images/$first/similarity-map?with=abc"
expect 400 "with=-3" "$URL/api/images/$first/similarity-map?with=-3"
expect 400 "a region outside the image" "$URL/api/images/$first/similarity-map?with=$first&region=0,0,65,64"
expect 400 "a malformed region" "$URL/api/images/$first/similarity-map?with=$first&region=1,2,3"
expect 400 "POST without an image" -X POST "$URL/api/similarity-map?with=$first"
expect 400 "POST of a file that is no image" -H 'Content-Type: image/png' --data-binary 'not an image' "$URL/api/similarity-map?with=$first"
check "says what it is not" 'd["error"]["code"] == "bad_format" and "not a PNG" in d["error"]["message"]'
expect 404 "a missing result" "$URL/api/images/$first/similarity-map?with=987654321"
expect 404 "a missing query" "$URL/api/images/987654321/similarity-map?with=$first"
expect 405 "DELETE" -X DELETE "$URL/api/images/$first/similarity-map?with=1"
expect 405 "GET of the POST route" "$URL/api/similarity-map?with=1"
stop_server

echo "== a model whose feature has no map: 409"
mkdir -p "$WORK/few"
ls "$WORK/data/nih_cxr14_64px/images" | head -n 3 | while read -r f; do cp "$WORK/data/nih_cxr14_64px/images/$f" "$WORK/few/"; done
"$MEDSEARCH_BIN" ingest "$WORK/few" --db "$WORK/logits.db" --model "$MODEL" --output logits >"$WORK/ingest-logits.log" 2>&1 ||
    { cat "$WORK/ingest-logits.log"; bad "ingest with --output logits"; }
"$MEDSEARCH_BIN" serve --db "$WORK/logits.db" --model "$MODEL" --output logits --listen 127.0.0.1:0 \
    >"$WORK/server.out" 2>>"$WORK/server.err" &
SERVER_PID=$!
for i in $(seq 300); do
    URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$WORK/server.out" 2>/dev/null | head -n 1); [ -n "$URL" ] && break; sleep 0.2
done
URL=${URL%/}
expect 409 "similarity map of a collection of classifier scores" "$URL/api/images/1/similarity-map?with=2"
check "the message says why" '"not a global pooling of a feature map" in d["error"]["message"] and d["error"]["code"] == "unsupported_model"'
out=$("$MEDSEARCH_BIN" explain --db "$WORK/logits.db" --model "$MODEL" --output logits --id 1 --with 2 2>&1); rc=$?
case "$rc:$out" in "1:"*"not a global pooling of a feature map"*) ok "explain says why (exit 1)" ;; *) bad "explain on logits: $rc: $out" ;; esac
stop_server
finish
