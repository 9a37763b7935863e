#!/usr/bin/env bash
# Load: 8 concurrent clients search the real server (the sanitizer build in
# `make test`) for MEDSEARCH_LOAD_SECONDS (default 60) while a ninth reads
# thumbnails, metadata and stats. Every answer must be 200, the server must
# stop cleanly and the sanitizers stay silent.
. "$(dirname "$0")/http/common.sh"
require_all
make_collection 250
SECONDS_LOAD=${MEDSEARCH_LOAD_SECONDS:-60}
CLIENTS=8
start_server --quiet

images=("$WORK"/data/nih_cxr14_64px/images/*.png "$WORK"/data/nih_cxr14_fullres/images/*.png)
end=$((SECONDS + SECONDS_LOAD))
searcher() {   # $1: client number; one keep-alive-less curl per request, as browsers differ
    local n=$1 i=0 img
    while [ "$SECONDS" -lt "$end" ]; do
        img=${images[$(( (n * 37 + i) % ${#images[@]} ))]}
        curl -s -o /dev/null -w '%{http_code}\n' --max-time 60 -F "image=@$img" \
            "$URL/api/search?k=$(( (i % 3) * 10 + 5 ))$([ $((i % 4)) -eq 0 ] && echo '&sex=F')" >>"$WORK/load-$n"
        i=$((i + 1))
    done
}
reader() {
    local i=1
    while [ "$SECONDS" -lt "$end" ]; do
        for p in "/api/images/$i/thumbnail" "/api/images/$i/metadata" "/api/images/$i/similar?k=5" /api/stats /metrics; do
            curl -s -o /dev/null -w '%{http_code}\n' --max-time 60 "$URL$p" >>"$WORK/load-reader"
        done
        i=$(( i % 250 + 1 ))
    done
}
pids=()
for n in $(seq $CLIENTS); do searcher "$n" & pids+=($!); done
reader & pids+=($!)
wait "${pids[@]}"

total=$(cat "$WORK"/load-[0-9]* | wc -l)
good=$(cat "$WORK"/load-[0-9]* | grep -c '^200$')
reads=$(wc -l <"$WORK/load-reader")
good_reads=$(grep -c '^200$' "$WORK/load-reader")
echo "$CLIENTS clients, ${SECONDS_LOAD} s: $total searches ($(( total / SECONDS_LOAD )) per s), $reads reads"
[ "$total" -gt 0 ] && [ "$good" -eq "$total" ] && ok "all $total searches answered 200" ||
    bad "searches: $(cat "$WORK"/load-[0-9]* | sort | uniq -c | tr '\n' ' ')"
[ "$reads" -gt 0 ] && [ "$good_reads" -eq "$reads" ] && ok "all $reads reads answered 200" ||
    bad "reads: $(sort "$WORK/load-reader" | uniq -c | tr '\n' ' ')"
expect 200 "metrics after the load" "$URL/metrics"
grep -q "medsearch_http_requests_in_flight 1" "$B" && ok "nothing left in flight but this request" || bad "in-flight gauge: $(grep in_flight "$B" | tail -1)"
grep -q "medsearch_http_upload_bytes 0" "$B" && ok "every upload reservation was released" || bad "upload gauge: $(grep upload_bytes "$B" | tail -1)"
stop_server
finish
