#!/usr/bin/env bash
# ThreadSanitizer under load: the TSan build ($BUILD/medsearch-tsan, `make
# tsan`, built by `make test`) ingests ~100 real X-rays, then serves them
# while 8 clients search and read images, thumbnails, metadata and similar
# lists, and a writer ingests and deletes (with the token), for
# MEDSEARCH_TSAN_SECONDS (default 20). Then SIGTERM. Fails on any TSan report
# from the ingest or the server, a crash, or a search/read that is not 200.
# Reports wholly inside uninstrumented libraries (glib, libvips and the
# codecs and JIT it drives) are suppressed by tests/e2e/tsan.supp, which
# says why for each; races in src/ are not.
# ASan covers the same traffic in http_load.sh; TSan and ASan cannot share a
# binary, hence this second run.
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD_DIR=${BUILD:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$REPO/$BUILD_DIR ;; esac
TSAN_BIN=$BUILD_DIR/medsearch-tsan
. "$(dirname "$0")/http/common.sh"
[ -x "$TSAN_BIN" ] || skip "$TSAN_BIN is not built: run make tsan"
MEDSEARCH_BIN=$TSAN_BIN      # make_collection and start_server run this one
require_all
# The TSan runtime refuses some kernels' address-space layouts at start-up
# (e.g. "unexpected memory mapping" with a high vm.mmap_rnd_bits): say so.
if ! "$TSAN_BIN" --help >"$WORK/preflight" 2>&1; then
    grep -q 'ThreadSanitizer' "$WORK/preflight" &&
        skip "the TSan runtime cannot start here: $(grep -m1 ThreadSanitizer "$WORK/preflight")"
    cat "$WORK/preflight"; echo "FAIL: $TSAN_BIN --help"; exit 1
fi

# Every process of the TSan binary logs to $WORK/tsan.PID; it keeps running
# after a report (to collect them all) and exits 66 if there was one.
export TSAN_OPTIONS="halt_on_error=0:exitcode=66:second_deadlock_stack=1:log_path=$WORK/tsan:suppressions=$REPO/tests/e2e/tsan.supp"
N_IMAGES=100
make_collection "$N_IMAGES"
N_STORED=$((N_IMAGES + $(ls "$WORK/data/nih_cxr14_fullres/images" | wc -l)))

echo "secret-token-for-tsan-1234" >"$WORK/token"
chmod 600 "$WORK/token"
start_server --token-file "$WORK/token" --quiet

SECONDS_LOAD=${MEDSEARCH_TSAN_SECONDS:-20}
CLIENTS=8
images=("$WORK"/data/nih_cxr14_64px/images/*.png)
# The writer's images: NIH X-rays that are not in the collection yet.
mapfile -t fresh < <(ls "$DATA/nih_cxr14_64px/images" | sort | tail -n +$((N_IMAGES + 1)) | head -n 200)
end=$((SECONDS + SECONDS_LOAD))
code() { curl -s -o /dev/null -w '%{http_code}\n' --max-time 120 "$@"; }

# Even clients search, odd ones read: both kinds run 4 at a time. Every
# reader also reads the counters (stats, metrics) the others update and the
# id the writer is ingesting or deleting right now.
searcher() {
    local n=$1 i=0
    while [ "$SECONDS" -lt "$end" ]; do
        code -F "image=@${images[$(( (n * 13 + i) % ${#images[@]} ))]}" \
            "$URL/api/search?k=$(( i % 3 * 5 + 5 ))$([ $((i % 4)) -eq 0 ] && echo '&sex=M')$([ $((i % 5)) -eq 0 ] && echo '&one_per_patient=1')" \
            >>"$WORK/search-$n"
        i=$((i + 1))
    done
}
reader() {
    local n=$1 id=$(( $1 * 11 % N_STORED + 1 )) p live
    while [ "$SECONDS" -lt "$end" ]; do
        for p in "" /thumbnail /metadata "/similar?k=5"; do
            code "$URL/api/images/$id$p" >>"$WORK/read-$n"
        done
        code "$URL/api/stats" >>"$WORK/read-$n"
        code "$URL/metrics" >>"$WORK/read-$n"
        live=$(cat "$WORK/live-id" 2>/dev/null)
        [ -n "$live" ] && code "$URL/api/images/$live/similar?k=3" >>"$WORK/volatile-$n"
        [ -n "$live" ] && code "$URL/api/images/$live/thumbnail" >>"$WORK/volatile-$n"
        id=$(( id % N_STORED + 1 ))
    done
}
writer() {
    local i=0 st nid auth=(-H "Authorization: Bearer secret-token-for-tsan-1234")
    while [ "$SECONDS" -lt "$end" ]; do
        st=$(curl -s -o "$WORK/w-body" -w '%{http_code}' --max-time 120 "${auth[@]}" \
            -F "image=@$DATA/nih_cxr14_64px/images/${fresh[$(( i % ${#fresh[@]} ))]}" -F "sex=F" -F "age=$(( 20 + i % 60 ))" \
            "$URL/api/images")
        echo "ingest $st" >>"$WORK/write"
        nid=$(grep -o '"id": *[0-9]*' "$WORK/w-body" | grep -o '[0-9]*$')
        if [ -n "$nid" ]; then
            echo "$nid" >"$WORK/live-id.tmp" && mv "$WORK/live-id.tmp" "$WORK/live-id"
            echo "delete $(code -X DELETE "${auth[@]}" "$URL/api/images/$nid")" >>"$WORK/write"
        fi
        i=$((i + 1))
    done
}
pids=()
for n in $(seq "$CLIENTS"); do
    if [ $((n % 2)) -eq 0 ]; then searcher "$n" & else reader "$n" & fi
    pids+=($!)
done
writer & pids+=($!)
wait "${pids[@]}"

tally() { cat "$@" 2>/dev/null | sort | uniq -c | tr -s ' \n' ' '; }
all_200() {   # DESCRIPTION FILES...: at least one answer, every one 200
    local desc=$1 total good
    shift
    total=$(cat "$@" 2>/dev/null | wc -l)
    good=$(cat "$@" 2>/dev/null | grep -c '^200$')
    if [ "$total" -gt 0 ] && [ "$good" -eq "$total" ]; then ok "all $total $desc answered 200"; else bad "$desc: $(tally "$@")"; fi
}
echo "$CLIENTS clients + 1 writer, ${SECONDS_LOAD} s under TSan"
all_200 searches "$WORK"/search-*
all_200 "reads of stable images" "$WORK"/read-*
# An id the writer is deleting may be gone (404) by the time a reader asks.
bad_volatile=$(cat "$WORK"/volatile-* 2>/dev/null | grep -vcE '^(200|404)$')
[ "$bad_volatile" -eq 0 ] && ok "reads racing the writer: 200 or 404 ($(tally "$WORK"/volatile-*))" ||
    bad "reads racing the writer: $(tally "$WORK"/volatile-*)"
ingests=$(grep -cE '^ingest (200|201)$' "$WORK/write")
deletes=$(grep -c '^delete 200$' "$WORK/write")
[ "$ingests" -gt 0 ] && [ "$deletes" -eq "$ingests" ] && [ "$(wc -l <"$WORK/write")" -eq $((ingests * 2)) ] &&
    ok "writer: $ingests ingests, $deletes deletes, all succeeded" || bad "writer: $(tally "$WORK/write")"
expect 200 "stats after the load" "$URL/api/stats"
check "collection back to its size after ingest+delete pairs" "d['images']==$N_STORED"
stop_server

reports=$(cat "$WORK"/tsan.* 2>/dev/null | grep -c 'WARNING: ThreadSanitizer')
if [ "$reports" -eq 0 ]; then
    ok "ThreadSanitizer silent (ingest and server)"
else
    mkdir -p "$BUILD_DIR/test-logs"
    cat "$WORK"/tsan.* >"$BUILD_DIR/test-logs/http_tsan.tsan.log"
    bad "$reports ThreadSanitizer reports (all in $BUILD_DIR/test-logs/http_tsan.tsan.log):"
    grep -h '^SUMMARY' "$WORK"/tsan.* | sort | uniq -c
    cat "$WORK"/tsan.* | head -n 300
fi
finish
