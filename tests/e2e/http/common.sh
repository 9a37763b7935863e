# Shared by tests/e2e/http_*.sh (sourced, never run alone): skips, a small
# collection of real X-rays, starting and stopping the real server on a free
# 127.0.0.1 port, and curl checks that count failures.
set -u

fail=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/medsearch-http.XXXXXX")
MODEL=${MEDSEARCH_SHARED:-}/models/mobilenet_v2_1.0_224_imagenet.onnx
DATA=${MEDSEARCH_SHARED:-}/data
SERVER_PID=
URL=
PORT=
B=$WORK/body        # the last response body
H=$WORK/headers     # the last response headers

skip() { echo "skip: $*"; exit 77; }
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }

cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

require_all() {
    [ -n "${MEDSEARCH_BIN:-}" ] && [ -x "$MEDSEARCH_BIN" ] || skip "MEDSEARCH_BIN (${MEDSEARCH_BIN:-unset}) is not built"
    [ -n "${MEDSEARCH_SHARED:-}" ] && [ -d "$DATA/nih_cxr14_64px" ] || skip "shared data not found (MEDSEARCH_SHARED=${MEDSEARCH_SHARED:-unset})"
    [ -f "$MODEL" ] || skip "model $MODEL not found"
    command -v curl >/dev/null || skip "curl not installed"
    [ -x /usr/bin/python3 ] || skip "/usr/bin/python3 not installed (used to read JSON)"
}

# make_collection [N]: the first N (default 250) small NIH images and the four
# full-resolution ones, with their labels, in $WORK/c.db.
make_collection() {
    local n=${1:-250} d
    for d in nih_cxr14_64px nih_cxr14_fullres; do
        mkdir -p "$WORK/data/$d/images"
        cp "$DATA/$d/labels.csv" "$WORK/data/$d/"
        ls "$DATA/$d/images" | sort | head -n "$n" | while read -r f; do
            cp "$DATA/$d/images/$f" "$WORK/data/$d/images/"
        done
        "$MEDSEARCH_BIN" ingest "$WORK/data/$d/images" --labels "$WORK/data/$d/labels.csv" \
            --db "$WORK/c.db" --model "$MODEL" >"$WORK/ingest-$d.log" 2>&1 ||
            { cat "$WORK/ingest-$d.log"; echo "FAIL: ingest of $d"; exit 1; }
    done
    QUERY=$WORK/data/nih_cxr14_64px/images/$(ls "$WORK/data/nih_cxr14_64px/images" | head -n 1)
    BIG=$WORK/data/nih_cxr14_fullres/images/00000001_000.png
}

# start_server [serve options...]: waits for the URL line (120 s at most).
start_server() {
    "$MEDSEARCH_BIN" serve --db "$WORK/c.db" --model "$MODEL" --listen 127.0.0.1:0 "$@" \
        >"$WORK/server.out" 2>>"$WORK/server.err" &
    SERVER_PID=$!
    local i
    for i in $(seq 600); do
        URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$WORK/server.out" 2>/dev/null | head -n 1)
        [ -n "$URL" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.err"; echo "FAIL: server died at start"; exit 1; }
        sleep 0.2
    done
    [ -n "$URL" ] || { cat "$WORK/server.err"; echo "FAIL: no URL printed in 120 s"; exit 1; }
    URL=${URL%/}
    PORT=${URL##*:}
}

# stop_server: SIGTERM, then the exit code must be 0 and the sanitizers silent.
stop_server() {
    kill -TERM "$SERVER_PID"
    local rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    if [ "$rc" -eq 0 ]; then ok "server stopped cleanly on SIGTERM"; else bad "server exit code $rc on SIGTERM"; fi
    if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$WORK/server.err"; then
        bad "sanitizer report in the server log:"
        grep -m 20 -E -A 12 'AddressSanitizer|LeakSanitizer|runtime error:' "$WORK/server.err"
    fi
}

# req ARGS...: curl with the body in $B and headers in $H; prints the status.
req() {
    curl -s -o "$B" -D "$H" -w '%{http_code}' --max-time 60 "$@"
}

# expect STATUS DESCRIPTION CURL-ARGS...
expect() {
    local want=$1 desc=$2 got
    shift 2
    got=$(req "$@")
    if [ "$got" = "$want" ]; then ok "$desc ($got)"; else bad "$desc: want $want, got $got: $(head -c 300 "$B")"; fi
}

# jq-like reading of the last body: json 'd["results"][0]["id"]'
json() {
    /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); r=eval(sys.argv[2]); print(json.dumps(r) if isinstance(r,(dict,list)) else r)' "$B" "$1" 2>/dev/null
}

# check DESCRIPTION PYTHON-EXPRESSION-ON-d: must be True.
check() {
    local v
    v=$(json "$2")
    if [ "$v" = "True" ]; then ok "$1"; else bad "$1 ($2 -> ${v:-error}; body: $(head -c 300 "$B"))"; fi
}

# png_size: WxH of the last body when it is a PNG, else "not-png".
png_size() {
    /usr/bin/python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(24); print("%dx%d" % struct.unpack(">II", b[16:24]) if b[:8]==b"\x89PNG\r\n\x1a\n" else "not-png")' "$B"
}

header() { grep -i "^$1:" "$H" | head -n 1 | cut -d' ' -f2- | tr -d '\r'; }

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

finish() {
    if [ "$fail" -eq 0 ]; then echo "all checks passed"; else echo "some checks failed"; fi
    exit "$fail"
}
