#!/usr/bin/env bash
# Changing an image's metadata after ingest, through every face: PATCH
# /api/images/{id}/metadata (merge patch, ETag and If-Match, its errors and
# limits, concurrent edits), `medsearch meta`, and `medsearch ingest
# --update-metadata` with a corrected labels file (DICOM headers included).
# The real server ($MEDSEARCH_BIN serve) on a free 127.0.0.1 port, over a
# collection of real X-rays from $MEDSEARCH_SHARED.
. "$(dirname "$0")/http/common.sh"
require_all
make_collection 40
TOKEN=secret-token-for-edit-tests-5678
echo "$TOKEN" >"$WORK/token"
chmod 600 "$WORK/token"
AUTH=(-H "Authorization: Bearer $TOKEN")
JSONCT=(-H "Content-Type: application/json")
NIHCSV=$WORK/data/nih_cxr14_64px/labels.csv
FIRST=$(ls "$WORK/data/nih_cxr14_64px/images" | sort | head -n 1)

# ---- writes disabled: a PATCH is refused like any write ----
start_server
expect 200 "find the first image" -F "image=@$QUERY" "$URL/api/search?k=1&qe=0"
ID=$(json 'd["results"][0]["id"]')
expect 403 "PATCH on a server without a token" -X PATCH "${AUTH[@]}" "${JSONCT[@]}" -d '{"age":1}' \
    "$URL/api/images/$ID/metadata"
stop_server

start_server --token-file "$WORK/token"
U=$URL/api/images/$ID/metadata
patch() { # STATUS DESCRIPTION BODY [CURL ARGS...]
    local want=$1 desc=$2 body=$3
    shift 3
    expect "$want" "$desc" -X PATCH "${AUTH[@]}" "${JSONCT[@]}" --data-binary "$body" "$@" "$U"
}

# ---- ETag and the merge patch ----
expect 200 "GET metadata" "$U"
ETAG0=$(header ETag)
case $ETAG0 in '"m-'*'"') ok "the metadata has an ETag ($ETAG0)" ;; *) bad "no metadata ETag: '$ETAG0'" ;; esac
check "the image's first labels" "d['original_name']=='$FIRST' and d['labels']==['Cardiomegaly'] and d['age']==57"
expect 304 "If-None-Match with that ETag" -H "If-None-Match: $ETAG0" "$U"
expect 401 "PATCH without the token" -X PATCH "${JSONCT[@]}" -d '{"age":1}' "$U"
patch 200 "PATCH labels, age, sex, view and extra" \
    '{"labels":["Effusion","Nodule"],"age":44,"sex":"female","view":"ap","extra":{"follow_up":null,"reviewer":"dr b","note":""}}'
ETAG1=$(header ETag)
check "the answer is the new metadata" "d['id']==$ID and d['labels']==['Effusion','Nodule'] and d['age']==44 and d['sex']=='F' and d['view']=='AP' and 'follow_up' not in d['extra'] and d['extra']['reviewer']=='dr b' and d['extra']['note']=='' and d['patient_id']=='1' and d['original_name']=='$FIRST'"
[ -n "$ETAG1" ] && [ "$ETAG1" != "$ETAG0" ] && ok "the ETag changed with the metadata" || bad "ETag $ETAG0 -> $ETAG1"
expect 200 "GET after the PATCH" "$U"
[ "$(header ETag)" = "$ETAG1" ] && ok "GET gives the PATCH's ETag" || bad "GET ETag $(header ETag), PATCH gave $ETAG1"
check "stored" "d['labels']==['Effusion','Nodule'] and d['age']==44"
expect 200 "search filtered by the new label" -F "image=@$QUERY" "$URL/api/search?k=5&labels=nodule&sex=F&view=AP&age_min=44&age_max=44"
check "finds the edited image, and only it" "[r['id'] for r in d['results']]==[$ID] and d['results'][0]['labels']==['Effusion','Nodule']"
expect 200 "search filtered by the old label" -F "image=@$QUERY" "$URL/api/search?k=50&labels=Cardiomegaly&qe=0"
check "the edited image is no longer a Cardiomegaly" "all(r['id']!=$ID for r in d['results']) and len(d['results'])>0"
expect 200 "similar to it still works (the vector is untouched)" "$URL/api/images/$ID/similar?k=3&include_self=1&qe=0"
check "itself first, score 1" "d['results'][0]['id']==$ID and d['results'][0]['score']>0.999"
patch 200 "the same PATCH again" \
    '{"labels":["Effusion","Nodule"],"age":44,"sex":"F","view":"AP","extra":{"follow_up":null,"reviewer":"dr b","note":""}}'
[ "$(header ETag)" = "$ETAG1" ] && ok "changes nothing: the same ETag" || bad "unchanged PATCH moved the ETag"
patch 200 "an empty patch" '{}'

# ---- If-Match: the edit of a client that read stale metadata is refused ----
patch 412 "If-Match with the ETag from before" '{"age":45}' -H "If-Match: $ETAG0"
check "412 says why" "d['error']['code']=='precondition_failed' and 'read it again' in d['error']['message']"
[ "$(header ETag)" = "$ETAG1" ] && ok "the 412 carries the current ETag" || bad "412 ETag '$(header ETag)'"
patch 412 "a weak tag never matches" '{"age":45}' -H "If-Match: W/$ETAG1"
expect 200 "after the 412s" "$U"
check "nothing changed" "d['age']==44"
patch 200 "If-Match with the current ETag" '{"age":45}' -H "If-Match: \"m-0\", $ETAG1"
patch 200 "If-Match: *" '{"age":46}' -H "If-Match: *"
patch 400 "an If-Match header over 255 bytes" '{"age":47}' -H "If-Match: \"$(printf 'x%.0s' $(seq 1 300))\""
patch 200 "null makes fields unknown; extra null removes every key" '{"patient_id":null,"view":"","sex":null,"age":null,"extra":null}'
check "unknown now" "d['patient_id'] is None and d['view'] is None and d['sex'] is None and d['age'] is None and 'extra' not in d"
patch 200 "labels null: none" '{"labels":null,"patient_id":"P-1"}'
check "no labels, the patient back" "d['labels']==[] and d['patient_id']=='P-1'"

# ---- what is refused, and that it changes nothing ----
expect 200 "metadata before the refusals" "$U"
BEFORE=$(header ETag)
patch 400 "an unknown field" '{"agee":3}'
check "names it" "'agee' in d['error']['message']"
patch 400 "a fixed field" '{"original_name":"x.png"}'
check "says it cannot change" "'original_name' in d['error']['message'] and 'fixed' in d['error']['message']"
patch 400 "sha256" '{"sha256":"00"}'
patch 400 "age 201" '{"age":201}'
patch 400 "age as a string" '{"age":"44"}'
patch 400 "age 44.5" '{"age":44.5}'
patch 400 "sex X" '{"sex":"X"}'
patch 400 "labels as a string" '{"labels":"A|B"}'
patch 400 "a label that is not a string" '{"labels":["A",3]}'
patch 400 "an empty label" '{"labels":[""]}'
patch 400 "a label with a control character" '{"labels":["A\u0001B"]}'
patch 400 "a label over 256 bytes" "{\"labels\":[\"$(printf 'l%.0s' $(seq 1 257))\"]}"
patch 400 "257 labels" "{\"labels\":[$(seq -f '"L%g"' -s, 1 257)]}"
patch 400 "a patient id over 256 bytes" "{\"patient_id\":\"$(printf 'p%.0s' $(seq 1 257))\"}"
patch 400 "an extra value that is a number" '{"extra":{"k":1}}'
patch 400 "an extra value over 1024 bytes" "{\"extra\":{\"k\":\"$(printf 'v%.0s' $(seq 1 1025))\"}}"
patch 400 "an extra key over 64 bytes" "{\"extra\":{\"$(printf 'k%.0s' $(seq 1 65))\":\"v\"}}"
patch 400 "extra as a list" '{"extra":["k"]}'
patch 400 "a NUL in a string" '{"view":"P\u0000A"}'
patch 400 "a key given twice" '{"age":3,"age":4}'
check "says so" "'duplicate' in d['error']['message']"
patch 400 "not JSON" '{"age":'
patch 400 "an array" '[{"age":3}]'
patch 400 "an empty body" ''
patch 400 "bytes that are not UTF-8" "$(printf '{"view":"\xff"}')"
expect 415 "a form instead of JSON" -X PATCH "${AUTH[@]}" -F age=3 "$U"
expect 415 "text/plain" -X PATCH "${AUTH[@]}" -H "Content-Type: text/plain" -d '{"age":3}' "$U"
expect 200 "application/merge-patch+json is JSON" -X PATCH "${AUTH[@]}" -H "Content-Type: application/merge-patch+json" -d '{}' "$U"
head -c 70000 /dev/zero | tr '\0' ' ' >"$WORK/big.json"
expect 413 "a 70 KB body" -X PATCH "${AUTH[@]}" "${JSONCT[@]}" --data-binary "@$WORK/big.json" "$U"
expect 413 "a 70 KB chunked body" -X PATCH "${AUTH[@]}" "${JSONCT[@]}" -H "Transfer-Encoding: chunked" --data-binary "@$WORK/big.json" "$U"
expect 404 "an image that does not exist" -X PATCH "${AUTH[@]}" "${JSONCT[@]}" -d '{"age":3}' "$URL/api/images/999999/metadata"
expect 405 "PUT" -X PUT "${AUTH[@]}" "${JSONCT[@]}" -d '{"age":3}' "$U"
[ "$(header Allow)" = "GET, HEAD, PATCH" ] && ok "405 names GET, HEAD, PATCH" || bad "Allow: $(header Allow)"
expect 405 "PATCH on the image itself" -X PATCH "${AUTH[@]}" "${JSONCT[@]}" -d '{}' "$URL/api/images/$ID"
expect 200 "metadata after the refusals" "$U"
[ "$(header ETag)" = "$BEFORE" ] && ok "no refused PATCH changed anything" || bad "metadata changed by a refused PATCH"

# ---- concurrent edits lose nothing (each is one transaction) ----
pids=()
for i in $(seq 1 24); do
    curl -s -o /dev/null -w '%{http_code}\n' -X PATCH "${AUTH[@]}" "${JSONCT[@]}" \
        -d "{\"extra\":{\"k$i\":\"v$i\"}}" "$U" >>"$WORK/parallel" &
    pids+=($!)
done
wait "${pids[@]}"
[ "$(grep -c '^200$' "$WORK/parallel")" -eq 24 ] && ok "24 PATCHes at once all answered 200" ||
    bad "parallel PATCHes: $(sort "$WORK/parallel" | uniq -c | tr '\n' ' ')"
expect 200 "metadata after them" "$U"
check "every one of the 24 keys is there" "all(d['extra'].get('k%d' % i)=='v%d' % i for i in range(1,25))"

# ---- medsearch meta on the same collection while the server runs ----
"$MEDSEARCH_BIN" meta "$ID" --db "$WORK/c.db" 'labels+=Mass|effusion' 'labels-=NODULE' age=61 extra.site=ward4 \
    'extra-=k1|k2' >"$WORK/meta.out" 2>&1 && grep -q '^changed$' "$WORK/meta.out" &&
    ok "medsearch meta changes it" || bad "medsearch meta: $(cat "$WORK/meta.out")"
expect 200 "the server sees the CLI's change at once" "$U"
check "labels, age and extra from the CLI" "d['labels']==['Mass','effusion'] and d['age']==61 and d['extra']['site']=='ward4' and 'k1' not in d['extra'] and 'k3' in d['extra']"
"$MEDSEARCH_BIN" meta "$ID" --db "$WORK/c.db" age=61 --json >"$WORK/meta.json" 2>&1 &&
    /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["changed"] is False and d["age"]==61 and d["labels"]==["Mass","effusion"] else 1)' "$WORK/meta.json" &&
    ok "meta --json: unchanged, as stored" || bad "meta --json: $(cat "$WORK/meta.json")"
"$MEDSEARCH_BIN" meta "$ID" --db "$WORK/c.db" >"$WORK/show.out" 2>&1 && grep -q '^labels  *Mass|effusion$' "$WORK/show.out" &&
    grep -q '^extra.site  *ward4$' "$WORK/show.out" && ok "meta ID shows the metadata" || bad "meta show: $(cat "$WORK/show.out")"
json_file() { /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null; }
meta_refused() { # EXIT GREP DESCRIPTION ARGS...
    local want=$1 grep_for=$2 desc=$3 rc=0
    shift 3
    "$MEDSEARCH_BIN" meta "$@" >"$WORK/refused.out" 2>&1 || rc=$?
    if [ "$rc" -eq "$want" ] && grep -q -- "$grep_for" "$WORK/refused.out"; then ok "meta: $desc (exit $rc)"; else bad "meta: $desc: exit $rc, $(cat "$WORK/refused.out")"; fi
}
meta_refused 2 "not a field" "an unknown field" "$ID" --db "$WORK/c.db" colour=red
meta_refused 2 "age is a whole number" "age 300" "$ID" --db "$WORK/c.db" age=300
meta_refused 2 "sex is M, F" "sex X" "$ID" --db "$WORK/c.db" sex=X
meta_refused 2 "+= and -= are for labels" "age+=1" "$ID" --db "$WORK/c.db" age+=1
meta_refused 2 "control characters" "a control character" "$ID" --db "$WORK/c.db" "$(printf 'view=P\tA')"
meta_refused 2 "ID is an image id" "a bad id" 0 --db "$WORK/c.db"
meta_refused 1 "no image 999999" "an image that does not exist" 999999 --db "$WORK/c.db" age=3
meta_refused 1 "no collection at" "a missing collection" 1 --db "$WORK/none.db"
[ ! -e "$WORK/none.db" ] && ok "meta does not create a collection" || bad "meta created $WORK/none.db"
meta_refused 2 "label 1" "a label over 1024 bytes (the store's limit)" "$ID" --db "$WORK/c.db" "labels=$(printf 'x%.0s' $(seq 1 1100))"
expect 200 "after the refused CLI edits" "$U"
check "unchanged" "d['labels']==['Mass','effusion'] and d['age']==61"

# --filter: every image a filter matches, listed or changed (a vocabulary
# merged across sets), on a copy of the collection
"$MEDSEARCH_BIN" copy --db "$WORK/c.db" --to "$WORK/bulk.db" -q >/dev/null 2>&1 || bad "copy for the --filter checks"
NEFF=$(/usr/bin/python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(DISTINCT image_id) FROM labels WHERE label_key = ?", ("effusion",)).fetchone()[0])' "$WORK/bulk.db")
[ "$NEFF" -gt 1 ] && ok "$NEFF images of the copy have Effusion" || bad "only $NEFF images with Effusion"
"$MEDSEARCH_BIN" meta --db "$WORK/bulk.db" --filter 'labels:effusion' >"$WORK/list.out" 2>&1 &&
    [ "$(wc -l <"$WORK/list.out")" -eq "$NEFF" ] && [ "$(cut -f7 "$WORK/list.out" | grep -vci effusion)" -eq 0 ] &&
    ok "meta --filter lists them, one line each" || bad "meta --filter list ($NEFF): $(cat "$WORK/list.out")"
"$MEDSEARCH_BIN" meta --db "$WORK/bulk.db" --filter 'labels:Effusion' 'labels-=Effusion' 'labels+=Pleural effusion' \
    --json >"$WORK/bulk.json" 2>&1 &&
    [ "$(json_file "$WORK/bulk.json" "d['matched']==$NEFF and d['changed']==$NEFF and d['done']==$NEFF")" = True ] &&
    ok "meta --filter renames a label on every image that has it" || bad "bulk rename: $(cat "$WORK/bulk.json")"
"$MEDSEARCH_BIN" meta --db "$WORK/bulk.db" --filter 'labels:"Pleural effusion"' --json >"$WORK/list.json" 2>&1 &&
    [ "$(json_file "$WORK/list.json" "len(d)==$NEFF and all('Pleural effusion' in r['labels'] and not any(l.lower()=='effusion' for l in r['labels']) for r in d)")" = True ] &&
    ok "--json lists them with the new label" || bad "list --json: $(head -c 300 "$WORK/list.json")"
meta_refused 1 "no image matches" "a filter that matches nothing" --db "$WORK/bulk.db" --filter 'labels:Effusion' 'labels+=X'
meta_refused 2 "not both" "an ID and --filter" 3 --db "$WORK/bulk.db" --filter 'labels:Mass'
meta_refused 2 "bad filter term" "a bad filter" --db "$WORK/bulk.db" --filter 'colour:red'
meta_refused 2 "give an image ID, or --filter" "neither an ID nor --filter" --db "$WORK/bulk.db"
"$MEDSEARCH_BIN" check --db "$WORK/bulk.db" >/dev/null 2>&1 && ok "the copy checks sound" || bad "check of the copy"
# Stored text that would act on a terminal (an ESC sequence, a C1 CSI) is
# shown as '?', in the table of one image and in a listing.
/usr/bin/python3 -c 'import sqlite3,sys
c = sqlite3.connect(sys.argv[1]); i = int(sys.argv[2])
c.execute("INSERT INTO kv (image_id, key, value) VALUES (?, ?, ?)", (i, "k\x1b[31m", "v\u009b2J"))
c.execute("UPDATE metadata SET patient_id = ? WHERE image_id = ?", ("P\x1b]0;x\x07", i)); c.commit()' "$WORK/bulk.db" "$ID"
"$MEDSEARCH_BIN" meta "$ID" --db "$WORK/bulk.db" >"$WORK/raw.out" 2>&1
"$MEDSEARCH_BIN" meta --filter 'labels:Mass' --db "$WORK/bulk.db" >>"$WORK/raw.out" 2>&1
! LC_ALL=C grep -q $'\x1b\|\xc2\x9b\|\x07' "$WORK/raw.out" && grep -q '^extra.k?\[31m  *v?2J$' "$WORK/raw.out" &&
    grep -q "^$ID	[^	]*	P?]0;x?	" "$WORK/raw.out" &&
    ok "control characters in stored text are shown as '?'" || bad "terminal text: $(cat -v "$WORK/raw.out")"

# ---- the access log and the metrics count edits ----
grep -qE "access method=PATCH path=\"/api/images/$ID/metadata\" route=metadata status=200 " "$WORK/server.err" &&
    ok "access log line for a PATCH" || bad "no access log line for a PATCH"
expect 200 "metrics" "$URL/metrics"
grep -qF 'medsearch_http_requests_total{route="metadata",status="412"}' "$B" && ok "metrics count the 412s" ||
    bad "no 412 in the metrics"
stop_server

# ---- ingest --update-metadata: a corrected labels file ----
/usr/bin/python3 - "$NIHCSV" "$WORK/corrected.csv" "$FIRST" <<'EOF'
import csv, sys
src, dst, first = sys.argv[1:4]
rows = list(csv.DictReader(open(src)))
for r in rows:
    if r["image"] == "images/" + first:
        r["labels"] = "Pneumothorax|Mass"; r["age"] = "58"; r["follow_up"] = "9"
with open(dst, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0].keys())); w.writeheader(); w.writerows(rows)
EOF
cp "$WORK/corrected.csv" "$WORK/data/nih_cxr14_64px/corrected.csv"
rc=0
"$MEDSEARCH_BIN" ingest "$WORK/data/nih_cxr14_64px/images" --labels "$WORK/data/nih_cxr14_64px/corrected.csv" \
    --update-metadata --db "$WORK/c.db" --model "$MODEL" --json -q >"$WORK/update.json" 2>"$WORK/update.err" || rc=$?
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["ingested"]==0 and d["skipped_existing"]==40 and d["metadata_updated"]==1 and d["failed"]==0 else 1)' "$WORK/update.json" &&
    [ "$rc" -eq 0 ] && ok "--update-metadata: 1 of 40 stored images updated, nothing re-embedded" ||
    bad "--update-metadata: exit $rc, $(cat "$WORK/update.json" "$WORK/update.err")"
"$MEDSEARCH_BIN" meta "$ID" --db "$WORK/c.db" --json >"$WORK/after.json" 2>&1
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["labels"]==["Pneumothorax","Mass"] and d["age"]==58 and d["patient_id"]=="1" and d["sex"]=="M" and d["view"]=="PA" and d["extra"].get("follow_up")=="9" and "site" not in d["extra"] else 1)' "$WORK/after.json" &&
    ok "the image has its corrected row, and only it (the CLI's extra.site is gone)" || bad "after update: $(cat "$WORK/after.json")"
"$MEDSEARCH_BIN" ingest "$WORK/data/nih_cxr14_64px/images" --labels "$WORK/data/nih_cxr14_64px/corrected.csv" \
    --update-metadata --db "$WORK/c.db" --model "$MODEL" >"$WORK/update2.out" 2>&1 &&
    grep -q "metadata updated for 0 of the 40 already stored" "$WORK/update2.out" &&
    ok "run again: nothing to update" || bad "second update: $(cat "$WORK/update2.out")"
"$MEDSEARCH_BIN" ingest "$WORK/data/nih_cxr14_64px/images" --update-metadata --db "$WORK/c.db" --model "$MODEL" \
    >"$WORK/nolabels.out" 2>&1 && bad "--update-metadata without --labels was accepted" ||
    { grep -q "needs --labels" "$WORK/nolabels.out" && ok "--update-metadata without --labels: a usage error"; }
"$MEDSEARCH_BIN" check --db "$WORK/c.db" >/dev/null 2>&1 && ok "the collection checks sound" || bad "check failed"

# A DICOM: the header fills what the row leaves unknown, before and after an update.
DCMFILE=$DATA/dicom/siim_cxr_pa_uncompressed_evrle.dcm
if [ -f "$DCMFILE" ]; then
    mkdir -p "$WORK/dcm"
    cp "$DCMFILE" "$WORK/dcm/a.dcm"
    printf 'image,labels,age\na.dcm,Nodule,60\n' >"$WORK/dcm/labels.csv"
    "$MEDSEARCH_BIN" ingest "$WORK/dcm" --labels "$WORK/dcm/labels.csv" --db "$WORK/c.db" --model "$MODEL" -q >/dev/null 2>&1
    printf 'image,labels,age\na.dcm,Nodule|Effusion,61\n' >"$WORK/dcm/labels.csv"
    "$MEDSEARCH_BIN" ingest "$WORK/dcm" --labels "$WORK/dcm/labels.csv" --update-metadata --db "$WORK/c.db" \
        --model "$MODEL" >"$WORK/dcm.out" 2>&1 && grep -q "metadata updated for 1 of the 1 already stored" "$WORK/dcm.out" &&
        ok "the DICOM's row updated" || bad "DICOM update: $(cat "$WORK/dcm.out")"
    start_server --token-file "$WORK/token"
    expect 200 "search for the DICOM by its new label" -H "Content-Type: application/dicom" --data-binary "@$DCMFILE" \
        "$URL/api/search?k=1&labels=Effusion&qe=0"
    check "row values and the header's together" "d['results'][0]['labels']==['Nodule','Effusion'] and d['results'][0]['age']==61 and d['results'][0]['sex']=='M' and d['results'][0]['view']=='PA' and d['results'][0]['extra']=={'modality':'CR','body_part':'CHEST'}"
    stop_server
fi
finish
