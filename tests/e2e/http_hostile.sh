#!/usr/bin/env bash
# Hostile clients against the real server: oversized and truncated bodies,
# wrong content types, decompression bombs, a 50,000 x 50,000 PNG header,
# 1,000 requests of random bytes, slow-loris connections, path traversal and
# SQL-looking filter values. Each gets the right 4xx, the server stays up,
# and its memory stays bounded (VmRSS before and after).
. "$(dirname "$0")/http/common.sh"
require_all
make_collection 200
N_IMAGES=204
# A small ASan quarantine so that RSS reflects what the server holds, not
# what the sanitizer keeps around to catch use-after-free.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=16"
start_server --max-upload-mb 4 --timeout 3 --per-ip 48 --quiet

# Warm up every path once, then take the baseline.
for i in 1 2 3; do req -F "image=@$QUERY" "$URL/api/search" >/dev/null; req -F "image=@$BIG" "$URL/api/search" >/dev/null; done
req "$URL/api/images/1/thumbnail" >/dev/null
RSS0=$(rss_kb "$SERVER_PID")
echo "baseline VmRSS ${RSS0} kB"

# ---- sizes and shapes of bodies ----
head -c $((6 << 20)) /dev/urandom >"$WORK/6mb.bin"
expect 413 "6 MB body with Content-Length over the 4 MB cap" -H "Content-Type: image/png" --data-binary "@$WORK/6mb.bin" "$URL/api/search"
expect 413 "6 MB multipart over the cap" -F "image=@$WORK/6mb.bin" "$URL/api/search"
code=$(curl -s -o "$B" -w '%{http_code}' --max-time 60 -H "Transfer-Encoding: chunked" -H "Content-Type: image/png" --data-binary "@$WORK/6mb.bin" "$URL/api/search")
case $code in
    413) ok "6 MB chunked body answered 413";;
    000) ok "6 MB chunked body (over twice the cap) cut off";;
    *) bad "6 MB chunked body: $code";;
esac
head -c $((5 << 20)) /dev/urandom >"$WORK/5mb.bin"
expect 413 "5 MB chunked body (read, dropped, then 413)" -H "Transfer-Encoding: chunked" -H "Content-Type: image/png" --data-binary "@$WORK/5mb.bin" "$URL/api/search"
expect 413 "Content-Length claims 1 TB" -H "Content-Type: image/png" -H "Content-Length: 1099511627776" --data-binary "@$QUERY" "$URL/api/search"
BND=hostileboundary
{ printf -- "--$BND\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"; head -c 2000 "$QUERY"; } >"$WORK/trunc.bin"
expect 400 "truncated multipart (no closing boundary)" -H "Content-Type: multipart/form-data; boundary=$BND" --data-binary "@$WORK/trunc.bin" "$URL/api/search"
check "truncated multipart named as such" '"multipart" in d["error"]["message"]'
{ printf -- "--$BND\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"; cat "$QUERY"; printf -- "\r\n--$BND--\r\n"; } >"$WORK/whole.bin"
expect 200 "the same multipart, complete, works" -H "Content-Type: multipart/form-data; boundary=$BND" --data-binary "@$WORK/whole.bin" "$URL/api/search"
expect 400 "multipart whose boundary is not in the body" -H "Content-Type: multipart/form-data; boundary=other" --data-binary "@$WORK/whole.bin" "$URL/api/search"
expect 400 "multipart without a boundary parameter" -H "Content-Type: multipart/form-data" --data-binary "@$WORK/whole.bin" "$URL/api/search"
expect 400 "two image parts" -F "image=@$QUERY" -F "image=@$QUERY" "$URL/api/search"
head -c 6000 /dev/zero | tr '\0' 'x' >"$WORK/longfield"
expect 400 "a form field over 4 KiB" -F "image=@$QUERY" -F "filter=<$WORK/longfield" "$URL/api/search"
args=$(for i in $(seq 100); do printf 'a%d=1&' "$i"; done)
expect 400 "100 query parameters" -F "image=@$QUERY" "$URL/api/search?$args"

# ---- content types ----
for ct in text/plain application/json application/xml application/x-www-form-urlencoded text/html; do
    expect 415 "Content-Type $ct" -H "Content-Type: $ct" --data-binary "@$QUERY" "$URL/api/search"
done
expect 415 "a body without Content-Type" -H "Content-Type:" --data-binary "@$QUERY" "$URL/api/search"
expect 400 "a text file sent as image/png" -H "Content-Type: image/png" --data-binary "@/etc/hostname" "$URL/api/search"
expect 415 "gzip-encoded body (Content-Encoding is not decoded; gzip is not an image)" -H "Content-Type: image/png" -H "Content-Encoding: gzip" --data-binary "@$(gzip -c "$QUERY" >"$WORK/q.gz"; echo "$WORK/q.gz")" "$URL/api/search"

# ---- decompression bombs and huge headers ----
/usr/bin/python3 - "$WORK" <<'PY'
import struct, sys, zlib
out = sys.argv[1]
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
def png(w, h, raw, color=0):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
# 50,000 x 50,000 header with a tiny body: must be refused from the header.
open(f"{out}/huge-header.png", "wb").write(png(50000, 50000, b"\0" * 1000))
# 7,000 x 7,000 grey (49 Mpx, just under the 50 Mpx limit): 49 MB of pixels from ~50 KB.
row = b"\0" + b"\0" * 7000
open(f"{out}/bomb-49mpx.png", "wb").write(png(7000, 7000, row * 7000))
# 20,000 x 20,000 in ~400 KB of zeros: 400 Mpx, over the limit.
open(f"{out}/bomb-400mpx.png", "wb").write(png(20000, 20000, (b"\0" * 20001) * 20))
# A 64x64 header whose IDAT inflates to 100 MB: more data than the header says.
open(f"{out}/overflow.png", "wb").write(png(64, 64, b"\0" * (100 << 20)))
PY
ls -l "$WORK"/*.png | awk '{print "  " $5 " bytes " $9}'
expect 413 "50,000 x 50,000 PNG header" -F "image=@$WORK/huge-header.png" "$URL/api/search"
check "413 names the pixel limit" '"50000" in d["error"]["message"] or "Mpx" in d["error"]["message"] or "pixel" in d["error"]["message"]'
expect 413 "20,000 x 20,000 zero bomb" -F "image=@$WORK/bomb-400mpx.png" "$URL/api/search"
code=$(req -F "image=@$WORK/bomb-49mpx.png" "$URL/api/search?k=1")
case $code in 200|400|413) ok "49 Mpx bomb under the limit answered $code";; *) bad "49 Mpx bomb: $code $(head -c 200 "$B")";; esac
code=$(req -F "image=@$WORK/overflow.png" "$URL/api/search?k=1")
case $code in 200|400) ok "PNG with 100 MB of extra IDAT answered $code";; *) bad "overflowing IDAT: $code $(head -c 200 "$B")";; esac
expect 200 "server alive after the bombs" "$URL/api/health"

# ---- headers ----
expect 431 "100 KB header" -H "X-Big: $(head -c 100000 /dev/zero | tr '\0' a)" "$URL/api/health"
code=$(req "$URL/api/health?$(head -c 100000 /dev/zero | tr '\0' a)")
case $code in 414|431|400) ok "100 KB request line answered $code";; *) bad "100 KB URL: $code";; esac

# ---- 1,000 requests of random bytes ----
raw_junk() {   # random bytes straight on the socket, not HTTP at all
    head -c $((RANDOM % 3000 + 1)) /dev/urandom |
        timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && cat >&3 && timeout 1 cat <&3 >/dev/null" 2>/dev/null
}
junk_status=$WORK/junk-status
: >"$junk_status"
for i in $(seq 400); do raw_junk; done
for i in $(seq 300); do
    head -c $((RANDOM % 20000 + 1)) /dev/urandom >"$WORK/junk"
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 20 -H "Content-Type: image/png" --data-binary "@$WORK/junk" "$URL/api/search" >>"$junk_status"
done
for i in $(seq 300); do
    head -c $((RANDOM % 20000 + 1)) /dev/urandom >"$WORK/junk"
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 20 -F "image=@$WORK/junk;type=image/jpeg" "$URL/api/search" >>"$junk_status"
done
if [ "$(grep -cE '^(400|415)$' "$junk_status")" -eq 600 ]; then
    ok "600 random-byte images all answered 400 (or 415 when the bytes look like a known unsupported format); 400 raw junk connections survived"
else
    bad "random bytes: $(sort "$junk_status" | uniq -c | tr '\n' ' ')"
fi
expect 200 "server alive after 1,000 junk requests" -F "image=@$QUERY" "$URL/api/search"

# ---- slow loris: connections that send a partial request and stall ----
SLOW=40
slow_pids=()
for i in $(seq $SLOW); do
    ( exec 3<>/dev/tcp/127.0.0.1/"$PORT" || exit 0
      printf 'POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n' >&3
      sleep 8
      printf 'X-Late: 1\r\n' >&3 2>/dev/null
      exit 0 ) 2>/dev/null &
    slow_pids+=($!)
done
sleep 1
expect 200 "a normal client is served while $SLOW slow connections hang" -F "image=@$QUERY" "$URL/api/search"
sleep 5
if command -v ss >/dev/null; then
    left=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
    [ "$left" -eq 0 ] && ok "slow connections closed by the server after the 3 s timeout" || bad "$left connections still open after the timeout"
fi
wait "${slow_pids[@]}" 2>/dev/null
expect 200 "server alive after slow loris" "$URL/api/health"

# ---- path traversal: no request path reaches the file system ----
for p in '/api/images/../../etc/passwd' '/api/images/..%2f..%2fetc%2fpasswd' '/%2e%2e/%2e%2e/etc/passwd' \
         '/..%252f..%252fetc/passwd' '/api/images/1/../../../etc/passwd' '/etc/passwd' '/index.html/../../etc/passwd' \
         '/web/app.js' '/../web/app.js' '/api/images/1%00' '/api/images/1%00.png' '/api/images/+1' '/api/images/1.0' \
         '/api/images/9223372036854775808' '//etc/passwd' '/.%2e/.%2e/etc/passwd' '/static/../../../../etc/shadow'; do
    code=$(curl -s --path-as-is -o "$B" -w '%{http_code}' "$URL$p")
    if grep -q 'root:' "$B"; then bad "$p leaked a file"; elif [ "$code" = 404 ] || [ "$code" = 400 ]; then ok "traversal $p -> $code"; else bad "traversal $p -> $code"; fi
done

# ---- SQL-looking values are data, never SQL ----
expect 200 "labels=x' OR '1'='1" -F "image=@$QUERY" --form-string "labels=x' OR '1'='1" "$URL/api/search"
check "no image has that label" 'd["count"]==0'
expect 200 "patient='; DROP TABLE images;--" -F "image=@$QUERY" --form-string "patient=1'; DROP TABLE images;--" "$URL/api/search"
check "no such patient" 'd["count"]==0'
expect 200 "view=PA\" OR \"\"=\"" -F "image=@$QUERY" --form-string 'view=PA" OR ""="' "$URL/api/search"
check "no such view" 'd["count"]==0'
expect 200 "filter expression with a quoted SQL payload" -F "image=@$QUERY" --form-string "filter=labels:\"a') UNION SELECT * FROM images --\"" "$URL/api/search"
check "no such label" 'd["count"]==0'
expect 422 "sex=F' OR '1'='1" -F "image=@$QUERY" --form-string "sex=F' OR '1'='1" "$URL/api/search"
expect 422 "age_min=1 OR 1=1" -F "image=@$QUERY" --form-string "age_min=1 OR 1=1" "$URL/api/search"
expect 200 "the collection is intact" "$URL/api/stats"
check "still $N_IMAGES images" "d['images']==$N_IMAGES"
expect 200 "search still works" -F "image=@$QUERY" "$URL/api/search?qe=0"
check "and finds the query first, score 1" 'd["results"][0]["score"]>0.999'

# ---- memory stayed bounded ----
for i in 1 2 3; do req -F "image=@$QUERY" "$URL/api/search" >/dev/null; done
RSS1=$(rss_kb "$SERVER_PID")
growth=$(( (RSS1 - RSS0) / 1024 ))
echo "VmRSS ${RSS0} kB -> ${RSS1} kB (+${growth} MB)"
[ "$growth" -lt 200 ] && ok "RSS grew by ${growth} MB (< 200 MB) through all of it" || bad "RSS grew by ${growth} MB"
stop_server
finish
