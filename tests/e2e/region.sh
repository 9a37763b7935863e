#!/usr/bin/env bash
# Searching with a region of the query image (`search --region`, the API's
# `region` parameter), against the real server and the CLI:
#  - a region of a PNG finds exactly what the same rectangle cut out with PIL
#    and searched whole finds (same ids, same scores), in pixels and in
#    percentages, from the CLI, a multipart field and a query parameter;
#  - a region of a stored image (`search --id`, `similar`) is that image's
#    bytes searched with the region, the image itself left out;
#  - a region of a DICOM file is taken from what MedSearch sees of it (its
#    display pipeline), equal to the same cut of the server's full-size
#    preview;
#  - malformed regions and regions outside the image are refused (exit 2,
#    400) with messages that say why, and the answer echoes the region used.
. "$(dirname "$0")/http/common.sh"
require_all
/usr/bin/python3 -c 'import PIL' 2>/dev/null || skip "/usr/bin/python3 lacks PIL (Debian python3-pil)"
DCM=$DATA/dicom/siim_cxr_pa_jpegbaseline.dcm
[ -f "$DCM" ] || skip "$DCM not found"

make_collection 60
mkdir -p "$WORK/dcm"
cp "$DCM" "$WORK/dcm/"
"$MEDSEARCH_BIN" ingest "$WORK/dcm" --db "$WORK/c.db" --model "$MODEL" >"$WORK/ingest-dcm.log" 2>&1 ||
    { cat "$WORK/ingest-dcm.log"; echo "FAIL: ingest of the DICOM"; exit 1; }
export MEDSEARCH_MODEL=$MODEL

# ids_scores FILE: "id:score id:score ..." of a search answer.
ids_scores() {
    /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join("%d:%.7f" % (r["id"], r["score"]) for r in d["results"]))' "$1"
}
crop() { # crop SRC DST X Y W H: the rectangle as a PNG, by PIL
    /usr/bin/python3 -c 'import sys; from PIL import Image; x,y,w,h=map(int,sys.argv[3:7]); Image.open(sys.argv[1]).crop((x,y,x+w,y+h)).save(sys.argv[2])' "$@"
}
search() { "$MEDSEARCH_BIN" search --db "$WORK/c.db" -k 12 --qe 0 --json "$@"; }

echo "== the CLI: a region is the cut image searched whole"
crop "$BIG" "$WORK/cut.png" 100 200 600 500
search "$BIG" --region 100,200,600,500 >"$WORK/region.json" 2>"$WORK/err" || bad "search --region: $(cat "$WORK/err")"
search "$WORK/cut.png" >"$WORK/cut.json" || bad "search of the cut"
r=$(ids_scores "$WORK/region.json"); c=$(ids_scores "$WORK/cut.json")
if [ -n "$r" ] && [ "$r" = "$c" ]; then ok "--region 100,200,600,500 gives the cut's ids and scores exactly"
else bad "--region differs from the cut: $r / $c"; fi
B=$WORK/region.json
check "the JSON gives the region used" 'd["region"] == {"x": 100, "y": 200, "width": 600, "height": 500}'
# 25% of 1024 is 256, 20% is 204.8 -> 205, the far edge 75% is 768 and 70% is 716.8 -> 717
crop "$BIG" "$WORK/cut2.png" 256 205 512 512
search "$BIG" --region 25%,20%,50%,50% >"$WORK/pct.json" || bad "search --region in percent"
search "$WORK/cut2.png" >"$WORK/cut2.json"
if [ "$(ids_scores "$WORK/pct.json")" = "$(ids_scores "$WORK/cut2.json")" ]; then ok "a region in percentages is its rectangle in pixels"
else bad "25%,20%,50%,50% differs from the cut 256,205,512,512"; fi
B=$WORK/pct.json
check "and says so" 'd["region"] == {"x": 256, "y": 205, "width": 512, "height": 512}'
if [ "$(ids_scores "$WORK/region.json")" != "$(ids_scores "$WORK/pct.json")" ]; then ok "two regions give two answers"
else bad "two regions gave the same answer"; fi
out=$("$MEDSEARCH_BIN" search "$BIG" --db "$WORK/c.db" -k 3 --region 100,200,600,500 2>&1)
case $out in *"region: x 100, y 200, 600x500 pixels of the image as shown"*) ok "the table says the region" ;;
    *) bad "the table: $out" ;; esac

echo "== the CLI refuses bad regions"
for spec in "0,0,1025,5|does not lie inside the 1024x1024 image" "50%,0,60%,10|x + width is over 100%" \
    "1.5,0,1,1|a number of pixels is whole" "1,2,3|four values" "0,0,0,5|width must be above zero" \
    "-1,0,1,1|x must be"; do
    arg=${spec%%|*} says=${spec#*|}
    "$MEDSEARCH_BIN" search "$BIG" --db "$WORK/c.db" --region "$arg" >"$WORK/out" 2>"$WORK/err"
    rc=$?
    if [ $rc -eq 2 ] && grep -qF "$says" "$WORK/err"; then ok "--region $arg: exit 2, \"$says\""
    else bad "--region $arg: exit $rc, $(cat "$WORK/err")"; fi
done

echo "== a region of a stored image"
big_id=$(search "$BIG" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["id"])')
search --id "$big_id" --region 100,200,600,500 >"$WORK/byid.json" 2>"$WORK/err" || bad "search --id --region: $(cat "$WORK/err")"
want=$(ids_scores "$WORK/region.json" | tr ' ' '\n' | grep -v "^$big_id:" | head -n 11 | tr '\n' ' ' | sed 's/ $//')
got=$(ids_scores "$WORK/byid.json" | tr ' ' '\n' | head -n 11 | tr '\n' ' ' | sed 's/ $//')
if [ -n "$got" ] && [ "$got" = "$want" ]; then ok "--id $big_id --region: the stored bytes' region, itself left out"
else bad "--id --region: $got / $want"; fi

echo "== the API"
start_server
expect 200 "POST /api/search with a region field" -F "image=@$BIG" -F "region=100,200,600,500" "$URL/api/search?k=12&qe=0"
if [ "$(ids_scores "$B")" = "$(ids_scores "$WORK/region.json")" ]; then ok "the same answer as the CLI"
else bad "the API's region answer differs from the CLI's"; fi
check "the answer echoes the region" 'd["region"] == {"x": 100, "y": 200, "width": 600, "height": 500}'
expect 200 "a raw body with ?region= in percent" -H "Content-Type: image/png" --data-binary "@$BIG" \
    "$URL/api/search?k=12&qe=0&region=25%25,20%25,50%25,50%25"
if [ "$(ids_scores "$B")" = "$(ids_scores "$WORK/pct.json")" ]; then ok "the same answer as the CLI's percentages"
else bad "the API's percent answer differs"; fi
expect 200 "a search without a region" -F "image=@$BIG" "$URL/api/search?k=12&qe=0"
check "has no region member" '"region" not in d'
expect 200 "GET similar with a region" "$URL/api/images/$big_id/similar?k=12&qe=0&region=100,200,600,500"
if [ "$(ids_scores "$B")" = "$(ids_scores "$WORK/byid.json")" ]; then ok "similar's region is search --id --region"
else bad "similar with a region differs from the CLI"; fi
check "similar names its query and region" 'd["query_id"] == '"$big_id"' and d["region"]["width"] == 600'
expect 400 "a region outside the image" -F "image=@$BIG" -F "region=0,0,5000,10" "$URL/api/search"
check "says the image's size" '"does not lie inside the 1024x1024 image" in d["error"]["message"]'
expect 400 "a malformed region" -F "image=@$BIG" "$URL/api/search?region=1,2,3"
check "says what is wrong" '"four values" in d["error"]["message"]'
expect 400 "a region given twice" -F "image=@$BIG" "$URL/api/search?region=1,2,3,4&region=1,2,3,4"
expect 400 "similar with a region outside the image" "$URL/api/images/$big_id/similar?region=1000,0,25,1"
expect 404 "similar of a missing image with a region" "$URL/api/images/999999/similar?region=0,0,1,1"

echo "== a region of a DICOM is a region of what MedSearch sees"
expect 200 "the DICOM's full-size preview" -H "Content-Type: application/dicom" --data-binary "@$DCM" \
    "$URL/api/preview?size=4096"
cp "$B" "$WORK/dcm-full.png"
size=$(png_size)
w=${size%x*} h=${size#*x}
cw=$((w / 2)) ch=$((h * 3 / 5))
crop "$WORK/dcm-full.png" "$WORK/dcm-cut.png" 0 $((h / 5)) $cw $ch
expect 200 "search with the DICOM and a region" -H "Content-Type: application/dicom" --data-binary "@$DCM" \
    "$URL/api/search?k=12&qe=0&region=0,$((h / 5)),$cw,$ch"
cp "$B" "$WORK/dcm-region.json"
expect 200 "search with the preview's cut" -F "image=@$WORK/dcm-cut.png" "$URL/api/search?k=12&qe=0"
if [ "$(ids_scores "$WORK/dcm-region.json")" = "$(ids_scores "$B")" ]; then ok "the DICOM's region equals the cut of its ${size} rendering"
else bad "the DICOM's region differs from the cut of its rendering"; fi
stop_server
finish
