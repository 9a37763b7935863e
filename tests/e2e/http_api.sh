#!/usr/bin/env bash
# Every route of the HTTP API, its status codes and errors, authentication,
# caching headers, metrics, the access log and graceful shutdown, against the
# real server ($MEDSEARCH_BIN serve) on a free 127.0.0.1 port over a
# collection of real X-rays from $MEDSEARCH_SHARED.
. "$(dirname "$0")/http/common.sh"
require_all
make_collection 250
N_IMAGES=254
echo "secret-token-for-tests-1234" >"$WORK/token"
chmod 600 "$WORK/token"
AUTH=(-H "Authorization: Bearer secret-token-for-tests-1234")
QNAME=$(basename "$QUERY")

# ---- a public address without a token is refused before anything loads ----
rc=0
"$MEDSEARCH_BIN" serve --db "$WORK/c.db" --model "$MODEL" --listen 0.0.0.0:0 >/dev/null 2>"$WORK/refused.err" || rc=$?
if [ "$rc" -eq 2 ] && grep -q "refusing to listen on 0.0.0.0:0 without a token" "$WORK/refused.err"; then
    ok "non-loopback address without a token refused (exit 2, says why)"
else
    bad "non-loopback without token: exit $rc, $(cat "$WORK/refused.err")"
fi

# ---- a token that cannot be had is a usage error (exit 2) before anything loads ----
: >"$WORK/empty.token"
chmod 600 "$WORK/empty.token"
printf 'x%.0s' $(seq 1 5000) >"$WORK/long.env"
refused() {  # WHAT GREP [NAME=VALUE...] -- SERVE ARGS...
    local what=$1 want=$2 rc=0 vars=()
    shift 2
    while [ "$1" != -- ]; do vars+=("$1"); shift; done
    shift
    env "${vars[@]}" "$MEDSEARCH_BIN" serve --db "$WORK/c.db" --model "$MODEL" --listen 127.0.0.1:0 "$@" \
        >/dev/null 2>"$WORK/refused.err" || rc=$?
    if [ "$rc" -eq 2 ] && grep -q -- "$want" "$WORK/refused.err"; then
        ok "$what refused (exit 2, says why)"
    else
        bad "$what: exit $rc, $(cat "$WORK/refused.err")"
    fi
}
refused "a missing token file" "cannot read token file $WORK/none: No such file" \
    MEDSEARCH_TOKEN= -- --token-file "$WORK/none"
refused "an empty token file" "token file $WORK/empty.token is empty" -- --token-file "$WORK/empty.token"
refused "--read-token without a token" "--read-token needs a token" MEDSEARCH_TOKEN= -- --read-token
refused "a MEDSEARCH_TOKEN that is too long" "MEDSEARCH_TOKEN is too long" "MEDSEARCH_TOKEN=$(cat "$WORK/long.env")" --
# A token file others can read works, with a warning naming the fix.
cp "$WORK/token" "$WORK/open.token"
chmod 644 "$WORK/open.token"
start_server --token-file "$WORK/open.token"
expect 200 "a server with a world-readable token file starts" "$URL/api/health"
# A second server on the same port fails at start (exit 3) and says why, once.
rc=0
"$MEDSEARCH_BIN" serve --db "$WORK/c.db" --model "$MODEL" --listen "127.0.0.1:$PORT" >/dev/null 2>"$WORK/inuse.err" || rc=$?
if [ "$rc" -eq 3 ] && grep -q "cannot listen on 127.0.0.1:$PORT: the port is in use" "$WORK/inuse.err" &&
    ! grep -q "port 0" "$WORK/inuse.err"; then
    ok "a port in use is refused (exit 3, says why)"
else
    bad "a port in use: exit $rc, $(cat "$WORK/inuse.err")"
fi
if grep -q "token file $WORK/open.token is readable by other users (chmod 600" "$WORK/server.err"; then
    ok "a world-readable token file is warned about"
else
    bad "no warning for a world-readable token file: $(head -3 "$WORK/server.err")"
fi
stop_server
: >"$WORK/server.err" # the next server's log starts empty (--threads 1 checks it)

# ---- server without a token: reads work, writes are disabled ----
# (one polling thread: libmicrohttpd's own thread, no pool)
start_server --max-upload-mb 2 --threads 1
expect 200 "GET /api/health" "$URL/api/health"
check "health says ok and which routes need a token" 'd["status"]=="ok" and d["auth"]=={"reads":False,"writes":False}'
expect 403 "POST /api/images without a configured token" "${AUTH[@]}" -F "image=@$QUERY" "$URL/api/images"
expect 403 "DELETE without a configured token" -X DELETE "${AUTH[@]}" "$URL/api/images/1"
stop_server
grep -qi "warning" "$WORK/server.err" && bad "--threads 1 logged a warning: $(grep -i warning "$WORK/server.err")" \
    || ok "--threads 1 starts without a libmicrohttpd warning"

# ---- the main server: a token for writes ----
start_server --token-file "$WORK/token" --max-upload-mb 2

expect 200 "GET /api/stats" "$URL/api/stats"
check "stats: image count, 1280-d model, sqlite" "d['images']==$N_IMAGES and d['dim']==1280 and d['backend']=='sqlite' and d['index']['kind'] in ('flat','hnsw')"
# Centred by the first ingest (250 images); the second one's 4 do not make
# it due again (that waits for twice 250).
check "stats: centering (auto policy: centred on the mean of the first ingest's 250 images)" "d['center']['policy']=='auto' and d['center']['centered'] is True and d['center']['from']==250 and len(d['center']['tag'])==16"
check "stats: the collection's search defaults (a new collection's query expansion: 3)" "d['search']=={'qe':3}"

# The page and its files.
expect 200 "GET / (the page)" "$URL/"
[ "$(header Content-Type)" = "text/html; charset=utf-8" ] && ok "page is text/html" || bad "page Content-Type $(header Content-Type)"
header Content-Security-Policy | grep -q "default-src 'self'" && ok "page has a CSP" || bad "no CSP on the page"
grep -q '<script src="app.js"' "$B" && ok "page references app.js" || bad "page body unexpected"
ETAG=$(header ETag)
expect 304 "page revalidation with If-None-Match" -H "If-None-Match: $ETAG" "$URL/"
expect 200 "GET /app.js" "$URL/app.js"
header Content-Type | grep -q javascript && ok "app.js is JavaScript" || bad "app.js Content-Type $(header Content-Type)"
expect 200 "GET /style.css" "$URL/style.css"
expect 404 "an asset that is not embedded" "$URL/missing.js"

# Search: multipart and raw body.
expect 200 "POST /api/search multipart" -F "image=@$QUERY" "$URL/api/search"
check "default k is 10" 'd["k"]==10 and d["count"]==10 and len(d["results"])==10'
check "first result is the query image itself, scored against the expanded query (qe 3)" "d['qe']==3 and d['results'][0]['original_name']=='$QNAME' and 0.5<d['results'][0]['score']<0.999"
check "scores decrease" 'all(a["score"]>=b["score"] for a,b in zip(d["results"],d["results"][1:]))'
check "results carry metadata and URLs" 'all(set(["id","score","labels","patient_id","age","sex","view","thumbnail_url","image_url"])<=set(r) for r in d["results"])'
check "timing is reported" '"embed" in d["timing_ms"] and d["timing_ms"]["server"]>0'
QID=$(json 'd["results"][0]["id"]')
expect 200 "POST /api/search raw image/png body" -H "Content-Type: image/png" --data-binary "@$QUERY" "$URL/api/search?k=3"
check "raw body: k=3 and same first result" "d['count']==3 and d['results'][0]['id']==$QID"
expect 200 "POST /api/search application/octet-stream body" -H "Content-Type: application/octet-stream" --data-binary "@$QUERY" "$URL/api/search?k=1"
expect 200 "search with a 1024x1024 PNG, without query expansion" -F "image=@$BIG" "$URL/api/search?k=5&qe=0"
check "the full-size image finds itself, score 1" "d['results'][0]['original_name']=='00000001_000.png' and d['results'][0]['score']>0.999"

# Parameters: k and filters.
expect 400 "k=0" -F "image=@$QUERY" "$URL/api/search?k=0"
expect 400 "k=abc" -F "image=@$QUERY" "$URL/api/search?k=abc"
expect 400 "k=1001" -F "image=@$QUERY" "$URL/api/search?k=1001"
check "400 has the error shape" 'd["error"]["code"]=="invalid_argument" and "k must be" in d["error"]["message"]'
expect 200 "k as a multipart field" -F "image=@$QUERY" -F k=4 "$URL/api/search"
check "form field k=4 used" 'd["count"]==4'
expect 200 "labels filter" -F "image=@$QUERY" "$URL/api/search?k=50&labels=Effusion"
check "every result has Effusion" 'd["count"]>0 and all(any(l.lower()=="effusion" for l in r["labels"]) for r in d["results"])'
expect 200 "labels any-of filter" -F "image=@$QUERY" "$URL/api/search?k=50&labels=Effusion|Mass"
check "every result has Effusion or Mass" 'd["count"]>0 and all(any(l.lower() in ("effusion","mass") for l in r["labels"]) for r in d["results"])'
expect 200 "sex filter" -F "image=@$QUERY" "$URL/api/search?k=50&sex=F"
check "every result is F" 'd["count"]>0 and all(r["sex"]=="F" for r in d["results"])'
expect 200 "age range filter" -F "image=@$QUERY" "$URL/api/search?k=50&age_min=40&age_max=60"
check "every age in 40..60" 'd["count"]>0 and all(40<=r["age"]<=60 for r in d["results"])'
expect 200 "view filter" -F "image=@$QUERY" "$URL/api/search?k=50&view=AP"
check "every view is AP" 'd["count"]>0 and all(r["view"]=="AP" for r in d["results"])'
expect 200 "one_per_patient" -F "image=@$QUERY" "$URL/api/search?k=50&one_per_patient=1"
check "patients are distinct" 'd["count"]>0 and len(set(r["patient_id"] for r in d["results"]))==d["count"]'
expect 200 "exclude_patient" -F "image=@$QUERY" "$URL/api/search?k=50&exclude_patient=1"
check "patient 1 left out" 'd["count"]>0 and all(r["patient_id"]!="1" for r in d["results"])'
expect 200 "filter= expression" -F "image=@$QUERY" "$URL/api/search?k=50&filter=labels%3AEffusion%20sex%3AM%20age%3A30-70"
check "expression applied" 'd["count"]>0 and all(r["sex"]=="M" and 30<=r["age"]<=70 and any(l.lower()=="effusion" for l in r["labels"]) for r in d["results"])'
check "without qe=, the collection's default (3)" 'd["qe"]==3'
expect 200 "query expansion qe=5" -F "image=@$QUERY" "$URL/api/search?qe=5&k=5"
check "qe=5 is reported" 'd["qe"]==5'
expect 400 "qe=101" -F "image=@$QUERY" "$URL/api/search?qe=101"
expect 400 "qe=-1 (the collection's default is asked for by leaving qe out)" -F "image=@$QUERY" "$URL/api/search?qe=-1"
expect 422 "bad filter expression" -F "image=@$QUERY" "$URL/api/search?filter=bogus::x"
check "422 code is bad_filter" 'd["error"]["code"]=="bad_filter"'
expect 422 "sex=X" -F "image=@$QUERY" "$URL/api/search?sex=X"
expect 422 "age_min=abc" -F "image=@$QUERY" "$URL/api/search?age_min=abc"
expect 422 "age_min above age_max" -F "image=@$QUERY" "$URL/api/search?age_min=70&age_max=20"
expect 400 "one_per_patient=maybe" -F "image=@$QUERY" "$URL/api/search?one_per_patient=maybe"
# A field in filter= and as its own parameter: 422, but labels_all adds up.
expect 422 "sex in filter= and as a parameter" -F "image=@$QUERY" "$URL/api/search?filter=sex%3AM&sex=F"
check "the 422 names the field given twice" 'd["error"]["code"]=="bad_filter" and d["error"]["message"].startswith("sex is given twice")'
expect 422 "age_min in filter= and as a parameter" -F "image=@$QUERY" "$URL/api/search?filter=age%3A30-50&age_min=60"
check "the 422 names age_min" 'd["error"]["message"].startswith("age_min is given twice")'
# A parameter twice in the query string: which one counts would be a guess.
expect 400 "k given twice in the query" -F "image=@$QUERY" "$URL/api/search?k=1&k=7"
check "the 400 names k" "d['error']['message']==\"query parameter 'k' is given twice\""
expect 400 "a meta. field given twice in an ingest's query" "${AUTH[@]}" -H "Content-Type: image/png" \
    --data-binary "@$QUERY" "$URL/api/images?meta.site=a&meta.site=b"
# One name in the form and in the query string: the form's counts.
expect 200 "k in the form and in the query" -F "image=@$QUERY" -F k=2 "$URL/api/search?k=5"
check "the form's k counts" 'd["count"]==2'
expect 200 "sex=any next to filter= sex:M asks for nothing more" -F "image=@$QUERY" "$URL/api/search?k=50&filter=sex%3AM&sex=any"
check "every result is M" 'd["count"]>0 and all(r["sex"]=="M" for r in d["results"])'
expect 200 "labels_all adds to the filter's labels" -F "image=@$QUERY" "$URL/api/search?k=50&filter=labels%3AEffusion&labels_all=Mass"
check "every result has Effusion and Mass" 'd["count"]>0 and all({"effusion","mass"}<={l.lower() for l in r["labels"]} for r in d["results"])'

# Bad uploads.
# Random bytes behind a 0x01: random bytes alone start with '<' (read as
# XML text, 415) once in 256 runs, or with another format's signature.
{ printf '\001'; head -c 4999 /dev/urandom; } >"$WORK/noise.png"
expect 400 "random bytes as an image" -F "image=@$WORK/noise.png" "$URL/api/search"
check "400 says what is wrong" '"PNG" in d["error"]["message"] or "image" in d["error"]["message"]'
expect 400 "multipart without an image field" -F k=3 "$URL/api/search"
expect 400 "no body at all" -X POST "$URL/api/search"
if [ -f "$DATA/dicom/siim_cxr_pa_jpegbaseline.dcm" ]; then
    expect 200 "DICOM upload (application/dicom)" -H "Content-Type: application/dicom" --data-binary "@$DATA/dicom/siim_cxr_pa_jpegbaseline.dcm" "$URL/api/search"
    check "a DICOM query gets results" 'd["count"]>0'
    # The same file declaring a transfer syntax MedSearch does not decode (the
    # retired JPEG Extended of processes 3 and 5, a UID of the same length): a
    # well-formed DICOM whose pixels it does not read.
    LC_ALL=C sed 's/1\.2\.840\.10008\.1\.2\.4\.50/1.2.840.10008.1.2.4.52/' "$DATA/dicom/siim_cxr_pa_jpegbaseline.dcm" >"$WORK/unsupported.dcm"
    expect 415 "DICOM upload of a syntax MedSearch does not read (well-formed, unsupported)" -H "Content-Type: application/octet-stream" --data-binary "@$WORK/unsupported.dcm" "$URL/api/search"
    check "415 names the transfer syntax" '"1.2.840.10008.1.2.4.52" in d["error"]["message"]'
    # ... or a deflated data set while its data set is not deflated: corrupt.
    LC_ALL=C sed 's/1\.2\.840\.10008\.1\.2\.4\.50/1.2.840.10008.1.2.1.99/' "$DATA/dicom/siim_cxr_pa_jpegbaseline.dcm" >"$WORK/fake_deflated.dcm"
    expect 400 "DICOM upload declaring a deflated data set that is not" -H "Content-Type: application/dicom" --data-binary "@$WORK/fake_deflated.dcm" "$URL/api/search"
    check "400 says it does not inflate" '"deflated data set does not inflate" in d["error"]["message"]'
    # What the page shows for a query it cannot display itself.
    expect 200 "POST /api/preview of a DICOM" -H "Content-Type: application/dicom" \
        --data-binary "@$DATA/dicom/siim_cxr_pa_jpegbaseline.dcm" "$URL/api/preview?size=300"
    [ "$(header Content-Type)" = image/png ] && [ "$(png_size)" = 300x300 ] && [ "$(header Cache-Control)" = no-store ] &&
        ok "the preview is a 300x300 PNG, not cached" || bad "preview: $(header Content-Type) $(png_size) $(header Cache-Control)"
    expect 415 "preview of a DICOM of a syntax MedSearch does not read" -H "Content-Type: application/dicom" --data-binary "@$WORK/unsupported.dcm" "$URL/api/preview"
    # A DICOM file that holds no image: the file meta of a DICOMDIR (Media
    # Storage Directory) and one element of its data set.
    { head -c 128 /dev/zero
      printf 'DICM\x02\x00\x02\x00UI\x14\x001.2.840.10008.1.3.10\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00'
      printf '\x04\x00\x30\x11CS\x00\x00'; } >"$WORK/DICOMDIR"
    expect 415 "a DICOMDIR as the query" -H "Content-Type: application/dicom" --data-binary "@$WORK/DICOMDIR" "$URL/api/search"
    check "415 not_an_image names it" 'd["error"]["code"]=="not_an_image" and "DICOMDIR" in d["error"]["message"]'
fi
expect 200 "POST /api/preview of a PNG (multipart), default size" -F "image=@$BIG" "$URL/api/preview"
[ "$(png_size)" = 1024x1024 ] && ok "a 1024 px image previews at 1024 px" || bad "preview of $BIG is $(png_size)"
expect 400 "preview size out of range" -F "image=@$QUERY" "$URL/api/preview?size=5"
check "the 400 gives the range" "'16..4096' in d['error']['message']"
expect 400 "preview without an image" -X POST "$URL/api/preview"
expect 400 "preview of random bytes" -F "image=@$WORK/noise.png" "$URL/api/preview"
expect 200 "GET /api/images/1/preview, never enlarged" "$URL/api/images/1/preview?size=512"
[ "$(png_size)" = 64x64 ] && ok "a 64 px image previews at 64 px" || bad "preview of image 1 is $(png_size)"
expect 404 "preview of an image that does not exist" "$URL/api/images/99999999/preview"
expect 405 "POST to a stored image's preview" -X POST "$URL/api/images/1/preview"
expect 415 "text/plain body" -H "Content-Type: text/plain" --data "hello" "$URL/api/search"
expect 415 "JSON body" -H "Content-Type: application/json" --data '{"image":"x"}' "$URL/api/search"
expect 415 "urlencoded form" --data "image=abc" "$URL/api/search"
head -c 3000000 /dev/urandom >"$WORK/big.bin"
expect 413 "body over --max-upload-mb 2" -H "Content-Type: image/png" --data-binary "@$WORK/big.bin" "$URL/api/search"
check "413 names the limit" '"2097152" in d["error"]["message"]'

# Stored images.
SHA=$(sha256sum "$QUERY" | cut -c1-64)
expect 200 "GET /api/images/{id}" "$URL/api/images/$QID"
cmp -s "$B" "$QUERY" && ok "original bytes returned unchanged" || bad "original bytes differ"
[ "$(header Content-Type)" = "image/png" ] && ok "Content-Type image/png" || bad "Content-Type $(header Content-Type)"
[ "$(header ETag)" = "\"$SHA\"" ] && ok "ETag is the SHA-256" || bad "ETag $(header ETag), want \"$SHA\""
header Cache-Control | grep -q private && ok "Cache-Control private" || bad "Cache-Control $(header Cache-Control)"
expect 304 "If-None-Match on the image" -H "If-None-Match: \"$SHA\"" "$URL/api/images/$QID"
expect 200 "If-None-Match with another tag" -H "If-None-Match: \"abc\"" "$URL/api/images/$QID"
expect 200 "HEAD /api/images/{id}" -I "$URL/api/images/$QID"
expect 200 "GET thumbnail" "$URL/api/images/$QID/thumbnail"
header Content-Type | grep -q '^image/' && [ -s "$B" ] && ok "thumbnail is an image ($(header Content-Type), $(stat -c %s "$B") bytes)" || bad "thumbnail: $(header Content-Type)"
TETAG=$(header ETag)
expect 304 "thumbnail revalidation" -H "If-None-Match: $TETAG" "$URL/api/images/$QID/thumbnail"
expect 200 "GET metadata" "$URL/api/images/$QID/metadata"
check "metadata fields" "d['id']==$QID and d['sha256']=='$SHA' and d['width']==64 and d['height']==64 and d['original_name']=='$QNAME' and d['labels']==['Cardiomegaly'] and d['patient_id']=='1'"
expect 200 "GET similar" "$URL/api/images/$QID/similar?k=5"
check "similar: 5 results, itself excluded" "d['count']==5 and all(r['id']!=$QID for r in d['results']) and d['query_id']==$QID"
expect 200 "similar with include_self" "$URL/api/images/$QID/similar?k=3&include_self=1"
check "include_self puts it first" "d['results'][0]['id']==$QID"
expect 200 "similar with a filter" "$URL/api/images/$QID/similar?k=20&sex=F"
check "similar filter applied" 'd["count"]>0 and all(r["sex"]=="F" for r in d["results"])'
expect 422 "similar with a bad filter" "$URL/api/images/$QID/similar?age_max=-3"

# 404 and 405.
for p in /api/images/999999 /api/images/999999/thumbnail /api/images/999999/metadata /api/images/999999/similar; do
    expect 404 "GET $p" "$URL$p"
done
check "404 has the error shape" 'd["error"]["code"]=="not_found"'
for p in /api/nothing /api/images/abc /api/images/0 /api/images/1/other /api/images/01 /nothing.html; do
    expect 404 "GET $p" "$URL$p"
done
expect 405 "PUT /api/images/{id}" -X PUT "$URL/api/images/$QID"
expect 405 "GET /api/search" "$URL/api/search"
[ "$(header Allow)" = "POST" ] && ok "405 names Allow: POST" || bad "Allow header: $(header Allow)"
expect 405 "DELETE /api/stats" -X DELETE "$URL/api/stats"
expect 405 "POST /metrics" -X POST "$URL/metrics"

# Writes: ingest and delete need the token.
cp "$DATA/covid_chestxray_2020/images/$(ls "$DATA/covid_chestxray_2020/images" | sort | head -n 1)" "$WORK/new.jpg"
# A refused upload is answered from its headers and the connection closed
# without reading the body; a client racing to send the body may then see a
# reset instead of the 401. Expect: 100-continue is how a client avoids that:
# it waits for the verdict before sending, so the 401 is always read.
EXPECT=(-H "Expect: 100-continue")
expect 401 "ingest without a token" "${EXPECT[@]}" -F "image=@$WORK/new.jpg" "$URL/api/images"
header WWW-Authenticate | grep -q Bearer && ok "401 has WWW-Authenticate: Bearer" || bad "no WWW-Authenticate"
expect 401 "ingest with a wrong token" "${EXPECT[@]}" -H "Authorization: Bearer wrong-token-123" -F "image=@$WORK/new.jpg" "$URL/api/images"
expect 401 "ingest with a truncated token" "${EXPECT[@]}" -H "Authorization: Bearer secret-token-for-tests-123" -F "image=@$WORK/new.jpg" "$URL/api/images"
expect 201 "ingest with metadata" "${AUTH[@]}" -F "image=@$WORK/new.jpg;filename=../../etc/new case.jpg" \
    -F "patient_id=P-77" -F "age=44" -F "sex=F" -F "view=AP" -F "labels=COVID-19|Pneumonia" \
    -F "study_date=2020-03-01" -F "meta.site=ward 4" "$URL/api/images"
check "201 gives the new id" 'd["created"] is True and d["id"]>0'
NID=$(json 'd["id"]')
expect 200 "the same bytes again" "${AUTH[@]}" -F "image=@$WORK/new.jpg" "$URL/api/images"
check "existing id returned, created false" "d['id']==$NID and d['created'] is False"
expect 200 "metadata of the ingested image" "$URL/api/images/$NID/metadata"
check "ingested metadata stored (name without its path)" "d['patient_id']=='P-77' and d['age']==44 and d['sex']=='F' and d['view']=='AP' and sorted(d['labels'])==['COVID-19','Pneumonia'] and d['study_date']=='2020-03-01' and d['extra']['site']=='ward 4' and d['original_name']=='new case.jpg' and d['mime']=='image/jpeg'"
expect 200 "the ingested image is searchable" -F "image=@$WORK/new.jpg" "$URL/api/search?k=1"
check "it is found first" "d['results'][0]['id']==$NID"
expect 400 "ingest with a bad age" "${AUTH[@]}" -F "image=@$QUERY" -F age=old "$URL/api/images"
# A raw image body takes its metadata from the query string, meta.KEY included.
cp "$DATA/covid_chestxray_2020/images/$(ls "$DATA/covid_chestxray_2020/images" | sort | sed -n 2p)" "$WORK/raw.jpg"
expect 201 "ingest of a raw image/jpeg body with metadata in the query" "${AUTH[@]}" -H "Content-Type: image/jpeg" \
    --data-binary "@$WORK/raw.jpg" "$URL/api/images?patient_id=P-78&age=51&sex=M&labels=Mass%7CEffusion&meta.site=ward%205&original_name=raw%20one.jpg"
RID=$(json 'd["id"]')
expect 200 "metadata of the raw-body image" "$URL/api/images/$RID/metadata"
check "the query's metadata stored" "d['patient_id']=='P-78' and d['age']==51 and d['sex']=='M' and sorted(d['labels'])==['Effusion','Mass'] and d['extra']=={'site':'ward 5'} and d['original_name']=='raw one.jpg'"
# The same bytes again with other metadata: 200, the stored metadata kept;
# fields are still checked (the 400s below are for an image stored already).
expect 200 "the raw-body image again with other metadata" "${AUTH[@]}" -H "Content-Type: image/jpeg" \
    --data-binary "@$WORK/raw.jpg" "$URL/api/images?age=12&meta.site=elsewhere"
check "existing id, created false" "d['id']==$RID and d['created'] is False"
expect 200 "metadata after the second upload" "$URL/api/images/$RID/metadata"
check "the first upload's metadata is kept" "d['age']==51 and d['extra']=={'site':'ward 5'}"
# A client's file name in its file system's Latin-1, or one longer than the
# 255 bytes kept: stored as UTF-8 (U+FFFD for each byte that is not), cut
# between characters, never a 400 for the name.
for n in 4 5 6; do
    cp "$DATA/covid_chestxray_2020/images/$(ls "$DATA/covid_chestxray_2020/images" | sort | sed -n ${n}p)" "$WORK/name$n.jpg"
done
expect 201 "a multipart file name in Latin-1" "${AUTH[@]}" -F "image=@$WORK/name4.jpg;filename=$(printf 'R\xf6ntgen_\xe9t\xe9.jpg')" "$URL/api/images"
LID=$(json 'd["id"]')
expect 200 "its metadata" "$URL/api/images/$LID/metadata"
check "stored with U+FFFD for each byte that is not UTF-8" "d['original_name']=='R\ufffdntgen_\ufffdt\ufffd.jpg'"
expect 201 "original_name in Latin-1 in the query string" "${AUTH[@]}" -H "Content-Type: image/jpeg" \
    --data-binary "@$WORK/name5.jpg" "$URL/api/images?original_name=caf%E9.jpg"
LID2=$(json 'd["id"]')
expect 200 "its metadata" "$URL/api/images/$LID2/metadata"
check "stored as caf\ufffd.jpg" "d['original_name']=='caf\ufffd.jpg'"
LONGNAME=$(printf '%%C3%%A9%.0s' $(seq 1 200))
expect 201 "an original_name of 200 two-byte characters" "${AUTH[@]}" -H "Content-Type: image/jpeg" \
    --data-binary "@$WORK/name6.jpg" "$URL/api/images?original_name=$LONGNAME"
LID3=$(json 'd["id"]')
expect 200 "its metadata" "$URL/api/images/$LID3/metadata"
check "cut to 127 whole characters (254 bytes)" "d['original_name']=='\u00e9'*127"
for id in $LID $LID2 $LID3; do expect 200 "delete $id" -X DELETE "${AUTH[@]}" "$URL/api/images/$id"; done
LONGV=$(printf 'a%.0s' $(seq 1 1500))
expect 400 "a meta value over 1024 bytes" "${AUTH[@]}" -F "image=@$WORK/raw.jpg" -F "meta.note=$LONGV" "$URL/api/images"
check "the 400 names the field" "'meta.note' in d['error']['message'] and '1024' in d['error']['message']"
expect 400 "a meta name with a control character" "${AUTH[@]}" -H "Content-Type: image/jpeg" \
    --data-binary "@$WORK/raw.jpg" "$URL/api/images?meta.a%0Ab=x"
expect 400 "an empty meta name" "${AUTH[@]}" -F "image=@$WORK/raw.jpg" -F "meta.=x" "$URL/api/images"
MANY=(); for i in $(seq 1 33); do MANY+=(-F "meta.k$i=v"); done
expect 400 "33 meta fields" "${AUTH[@]}" -F "image=@$WORK/raw.jpg" "${MANY[@]}" "$URL/api/images"
check "the 400 gives the limit" "'more than 32 meta. fields' in d['error']['message']"
# Form fields that arrive in pieces (a slow or distant client): every field is
# kept whole, however the reads split it. The server used to keep an empty
# first piece as the value and drop the rest when a read ended with a part's
# headers: age, sex and the rest came back null.
NOTE=$(printf 'n%.0s' $(seq 1 1000))
cp "$DATA/covid_chestxray_2020/images/$(ls "$DATA/covid_chestxray_2020/images" | sort | sed -n 3p)" "$WORK/trickle.jpg"
FIELDS='[["patient_id","P-79"],["age","61"],["sex","F"],["labels","Effusion|Mass"],["meta.note","'$NOTE'"],["view",""],["meta.e",""],["meta.z","zz"]]'
for piece in 100000 7 1; do
    got=$(/usr/bin/python3 "$(dirname "$0")/http/trickle_post.py" "$PORT" /api/images secret-token-for-tests-1234 "$WORK/trickle.jpg" "$FIELDS" $piece)
    [ "${got%% *}" = 201 ] || bad "trickled ingest, $piece bytes a send: $got"
    tid=$(printf '%s' "${got#* }" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    expect 200 "metadata of the image ingested $piece bytes a send" "$URL/api/images/$tid/metadata"
    check "every field sent in pieces of $piece is stored whole" "d['patient_id']=='P-79' and d['age']==61 and d['sex']=='F' and sorted(d['labels'])==['Effusion','Mass'] and d['view'] is None and d['extra']=={'note':'$NOTE','e':'','z':'zz'}"
    expect 200 "delete it" -X DELETE "${AUTH[@]}" "$URL/api/images/$tid"
done
trickled() { # DESCRIPTION WANTED-MESSAGE FIELDS: a 400 naming the problem
    local got
    got=$(/usr/bin/python3 "$(dirname "$0")/http/trickle_post.py" "$PORT" /api/images secret-token-for-tests-1234 "$WORK/raw.jpg" "$3")
    case $got in "400 "*"$2"*) ok "$1 (400)";; *) bad "$1: $got";; esac
}
trickled "a field given twice" "form field 'age' is given twice" '[["age","61"],["age","62"]]'
trickled "a NUL byte in a field" "form field 'age' holds a NUL byte" '[["age","6\u00001"]]'
trickled "a field over 4 KiB in pieces, its name shown printable" "form field 'meta.x?[31m' is longer than 4096 bytes" \
    '[["meta.x\u001b[31m","'"$(printf 'n%.0s' $(seq 1 5000))"'"]]'
if [ -f "$DATA/dicom/siim_cxr_pa_uncompressed_evrle.dcm" ]; then
    DCMFILE=$DATA/dicom/siim_cxr_pa_uncompressed_evrle.dcm
    expect 201 "ingest a DICOM (raw application/dicom body, an age given)" "${AUTH[@]}" -H "Content-Type: application/dicom" \
        --data-binary "@$DCMFILE" "$URL/api/images?age=63"
    DID=$(json 'd["id"]')
    expect 200 "metadata of the DICOM" "$URL/api/images/$DID/metadata"
    check "its header fills what was not sent" "d['age']==63 and d['sex']=='M' and d['view']=='PA' and d['study_date']=='1901-01-01' and d['patient_id']=='16d7f894-55d7-4d95-8957-d18987f0e981' and d['extra']=={'modality':'CR','body_part':'CHEST'} and d['mime']=='application/dicom'"
    expect 200 "the stored DICOM" "$URL/api/images/$DID"
    cmp -s "$B" "$DCMFILE" && [ "$(header Content-Type)" = application/dicom ] &&
        ok "comes back byte for byte as application/dicom" || bad "stored DICOM differs or is $(header Content-Type)"
    expect 200 "its preview" "$URL/api/images/$DID/preview?size=256"
    [ "$(png_size)" = 256x256 ] && ok "a 256 px preview of the stored DICOM" || bad "stored DICOM preview is $(png_size)"
    expect 200 "delete the DICOM" -X DELETE "${AUTH[@]}" "$URL/api/images/$DID"
fi
expect 200 "delete the raw-body image" -X DELETE "${AUTH[@]}" "$URL/api/images/$RID"
expect 400 "ingest of random bytes" "${AUTH[@]}" -F "image=@$WORK/noise.png" "$URL/api/images"
expect 400 "ingest without an image" "${AUTH[@]}" -F "age=3" "$URL/api/images"
expect 401 "delete without a token" -X DELETE "$URL/api/images/$NID"
expect 200 "delete with the token" -X DELETE "${AUTH[@]}" "$URL/api/images/$NID"
check "delete confirms" "d['id']==$NID and d['deleted'] is True"
expect 404 "the deleted image is gone" "$URL/api/images/$NID"
expect 404 "deleting it again" -X DELETE "${AUTH[@]}" "$URL/api/images/$NID"
expect 200 "search after delete" -F "image=@$WORK/new.jpg" "$URL/api/search?k=5"
check "deleted image no longer found" "all(r['id']!=$NID for r in d['results'])"

# Metrics.
expect 200 "GET /metrics" "$URL/metrics"
header Content-Type | grep -q 'text/plain; version=0.0.4' && ok "Prometheus content type" || bad "metrics Content-Type $(header Content-Type)"
for m in 'medsearch_http_requests_total{route="search",status="200"}' 'medsearch_http_requests_total{route="search",status="422"}' \
    'medsearch_http_request_duration_seconds_bucket{route="search",le="+Inf"}' 'medsearch_search_stage_seconds_count{stage="embed"}' \
    "medsearch_collection_images $N_IMAGES" 'medsearch_queue_depth 0' 'medsearch_embed_seconds_total' 'medsearch_http_requests_in_flight'; do
    grep -qF "$m" "$B" && ok "metrics has $m" || bad "metrics lacks $m"
done

# Access log: one line per request with method, path, status, bytes, ms.
grep -qE 'access method=DELETE path="/api/images/[0-9]+" route=image status=200 bytes=[0-9]+ ms=[0-9.]+' "$WORK/server.err" &&
    ok "access log line for the delete" || bad "no access log line for the delete"
grep -q 'exclude_patient' "$WORK/server.err" && bad "query strings (patient ids) leak into the log" || ok "query strings are not logged"

# Graceful shutdown: searches in flight when SIGTERM arrives still finish.
pids=()
for i in 1 2 3 4 5 6; do
    curl -s -o /dev/null --max-time 60 -w '%{http_code}\n' -F "image=@$BIG" "$URL/api/search?k=5" >>"$WORK/inflight" &
    pids+=($!)
done
sleep 0.3
stop_server
wait "${pids[@]}"
[ "$(grep -c '^200$' "$WORK/inflight")" -eq 6 ] && ok "6 searches in flight at SIGTERM all answered 200" ||
    bad "in-flight searches at shutdown: $(tr '\n' ' ' <"$WORK/inflight")"
[ -s "$WORK/c.db.index" ] && ok "index persisted on shutdown" || bad "no index file after shutdown"

# ---- the collection's query-expansion default (medsearch qe) ----
"$MEDSEARCH_BIN" qe 5 --db "$WORK/c.db" >"$WORK/qe.out" 2>&1 && grep -q "was 3" "$WORK/qe.out" &&
    ok "medsearch qe 5 sets the default" || bad "medsearch qe 5: $(cat "$WORK/qe.out")"
start_server --token-file "$WORK/token"
expect 200 "GET /api/stats after medsearch qe 5" "$URL/api/stats"
check "stats: search.qe is the collection's default" "d['search']=={'qe':5}"
expect 200 "search without qe= uses the default" -F "image=@$QUERY" "$URL/api/search?k=5"
check "reported as qe 5" 'd["qe"]==5'
cp "$B" "$WORK/qe-default.json"
expect 200 "the same search with qe=5" -F "image=@$QUERY" "$URL/api/search?k=5&qe=5"
/usr/bin/python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2]));
sys.exit(0 if [(r["id"],r["score"]) for r in a["results"]]==[(r["id"],r["score"]) for r in b["results"]] else 1)' \
    "$B" "$WORK/qe-default.json" && ok "the same results as an explicit qe=5" || bad "default qe 5 differs from qe=5"
expect 200 "qe=0 still turns it off" -F "image=@$QUERY" "$URL/api/search?qe=0&k=5"
check "qe=0: the query image itself first, score 1" "d['qe']==0 and d['results'][0]['original_name']=='$QNAME' and d['results'][0]['score']>0.999"
stop_server
"$MEDSEARCH_BIN" qe 0 --db "$WORK/c.db" >/dev/null 2>&1 || bad "medsearch qe 0"

# ---- --read-token: reads need the token too ----
start_server --token-file "$WORK/token" --read-token
expect 401 "stats without the token" "$URL/api/stats"
expect 401 "search without the token" -F "image=@$QUERY" "$URL/api/search"
expect 401 "image bytes without the token" "$URL/api/images/$QID"
expect 401 "metrics without the token" "$URL/metrics"
expect 200 "stats with the token" "${AUTH[@]}" "$URL/api/stats"
expect 200 "search with the token" "${AUTH[@]}" -F "image=@$QUERY" "$URL/api/search"
expect 200 "health stays open" "$URL/api/health"
check "health says reads need the token" 'd["auth"]["reads"] is True'
expect 200 "the page stays open (it asks for the token)" "$URL/"
stop_server

# ---- the budget of bodies in flight: 429 over it, back when they close ----
start_server --max-upload-mb 64 --quiet
if /usr/bin/python3 "$(dirname "$0")/http/upload_budget.py" "$PORT" "$QUERY" 64 >"$WORK/budget.out" 2>&1; then
    ok "upload budget: $(grep -c '^ok' "$WORK/budget.out") checks"
else
    bad "upload budget: $(grep -v '^ok' "$WORK/budget.out")"
fi
expect 200 "the server works after the budget checks" -F "image=@$QUERY" "$URL/api/search"
stop_server

# ---- a full queue answers 503 with Retry-After ----
start_server --queue-depth 1 --max-batch 1 --quiet
for round in 1 2 3; do
    : >"$WORK/burst"
    pids=()
    for i in $(seq 24); do
        curl -s -o /dev/null -D "$WORK/burst-h$i" --max-time 60 -w '%{http_code}\n' -F "image=@$BIG" "$URL/api/search?k=3" >>"$WORK/burst" &
        pids+=($!)
    done
    wait "${pids[@]}"   # not a bare wait: the server is a child too
    grep -q '^503$' "$WORK/burst" && break
done
others=$(grep -vcE '^(200|503)$' "$WORK/burst")
n503=$(grep -c '^503$' "$WORK/burst")
[ "$others" -eq 0 ] && ok "a burst of 24 gets only 200 or 503" || bad "burst statuses: $(sort "$WORK/burst" | uniq -c | tr '\n' ' ')"
if [ "$n503" -gt 0 ]; then
    ok "$n503 of 24 answered 503 (queue depth 1)"
    grep -l '^HTTP/1.1 503' "$WORK"/burst-h* | head -n 1 | xargs grep -qi '^Retry-After: [0-9]' && ok "503 carries Retry-After" || bad "503 without Retry-After"
else
    bad "queue depth 1 never answered 503 in 3 bursts of 24"
fi
expect 200 "the server works after the burst" -F "image=@$QUERY" "$URL/api/search"
stop_server
finish
