#!/usr/bin/env bash
# Metadata edits on a collection that two search servers share, in a real,
# throwaway PostgreSQL server (tests/tools/pg_start.sh):
#  - an edit through one server is what the other answers at once, with the
#    same ETag, in its metadata, its filtered searches and its similar lists;
#  - a client holding the ETag it read from one server is refused (412) on
#    the other after a change it has not seen;
#  - edits sent to both servers at once, each a read-modify-write, lose
#    nothing (the image's row is locked from the read on);
#  - `medsearch meta` and `ingest --update-metadata` edit the same rows.
command -v curl >/dev/null || { echo "skip: curl not installed"; exit 77; }
PG_NAME=metaedit
. "$(dirname "$0")/pg/common.sh"
ok() { echo "ok: $*"; }
TOKEN=metadata-edit-token-2468
AUTH=(-H "Authorization: Bearer $TOKEN")
JSONCT=(-H "Content-Type: application/json")
PIDS=()
stop_servers() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; PIDS=(); }
trap 'stop_servers; tests/tools/pg_stop.sh "$T/pg" >/dev/null 2>&1; rm -rf "$T"' EXIT

mkdir -p "$T/imgs"
ls "$NIH/images" | sort | head -n 30 | while read -r f; do cp "$NIH/images/$f" "$T/imgs/"; done
cp "$NIH/labels.csv" "$T/labels.csv"
sed -i 's#^images/#imgs/#' "$T/labels.csv"
"$BIN" ingest "$T/imgs" --labels "$T/labels.csv" --db "$URI" -q >"$T/ingest.log" 2>&1 || { cat "$T/ingest.log"; exit 1; }

# start NAME: a server on a free port; its URL in URL_NAME
start() {
  MEDSEARCH_TOKEN=$TOKEN "$BIN" serve --db "$URI" --listen 127.0.0.1:0 --quiet >"$T/$1.out" 2>"$T/$1.err" &
  PIDS+=($!)
  local i url=
  for i in $(seq 300); do
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$T/$1.out" 2>/dev/null | head -n 1)
    [ -n "$url" ] && break
    sleep 0.2
  done
  [ -n "$url" ] || { cat "$T/$1.err"; echo "FAIL: server $1 did not start"; exit 1; }
  eval "URL_$1=$url"
}
start A
start B
ID=$(psql "$URI" -Atq -c "SELECT min(id) FROM images")
PATH_MD=/api/images/$ID/metadata

# req URL ARGS...: body in $T/body, headers in $T/headers; prints the status
req() { curl -s -o "$T/body" -D "$T/headers" -w '%{http_code}' --max-time 30 "$@"; }
etag() { grep -i '^etag:' "$T/headers" | head -n 1 | cut -d' ' -f2- | tr -d '\r'; }
body() { json "$T/body" "$1"; }

[ "$(req "$URL_A$PATH_MD")" = 200 ] || fail "GET on A"
ETAG_A0=$(etag)
[ "$(req "$URL_B$PATH_MD")" = 200 ] && [ "$(etag)" = "$ETAG_A0" ] && ok "both servers give the same ETag" ||
  fail "ETags differ: A $ETAG_A0, B $(etag)"

# an edit through A is B's answer at once
s=$(req -X PATCH "${AUTH[@]}" "${JSONCT[@]}" -d '{"labels":["Hernia","Mass"],"age":71,"extra":{"ward":"7"}}' "$URL_A$PATH_MD")
[ "$s" = 200 ] && ok "PATCH on A" || fail "PATCH on A: $s $(cat "$T/body")"
ETAG_A1=$(etag)
[ "$(req "$URL_B$PATH_MD")" = 200 ] && [ "$(body "d['labels']==['Hernia','Mass'] and d['age']==71 and d['extra']['ward']=='7'")" = True ] &&
  ok "B answers the edit at once" || fail "B after A's edit: $(cat "$T/body")"
[ "$(etag)" = "$ETAG_A1" ] && ok "with A's new ETag" || fail "B's ETag $(etag), A's $ETAG_A1"
s=$(req -F "image=@$T/imgs/$(ls "$T/imgs" | head -n 1)" "$URL_B/api/search?k=5&labels=hernia&age_min=71&age_max=71&qe=0")
[ "$s" = 200 ] && [ "$(body "[r['id'] for r in d['results']]==[$ID]")" = True ] &&
  ok "B's filtered search finds it by its new label and age" || fail "B's search: $s $(cat "$T/body")"
s=$(req "$URL_B/api/images/$ID/similar?k=3&include_self=1&qe=0")
[ "$s" = 200 ] && [ "$(body "d['results'][0]['id']==$ID and d['results'][0]['labels']==['Hernia','Mass']")" = True ] &&
  ok "B's similar list shows the new labels" || fail "B's similar: $s $(cat "$T/body")"

# a client that read from B before A's next change is refused on B
s=$(req -X PATCH "${AUTH[@]}" "${JSONCT[@]}" -d '{"age":72}' "$URL_A$PATH_MD")
[ "$s" = 200 ] || fail "second PATCH on A: $s"
s=$(req -X PATCH "${AUTH[@]}" "${JSONCT[@]}" -H "If-Match: $ETAG_A1" -d '{"age":30}' "$URL_B$PATH_MD")
[ "$s" = 412 ] && ok "a stale If-Match is refused on the other server (412)" || fail "stale If-Match on B: $s $(cat "$T/body")"
[ "$(req "$URL_A$PATH_MD")" = 200 ] && [ "$(body "d['age']")" = 72 ] && ok "the refused edit changed nothing" ||
  fail "age after the 412: $(body "d['age']")"

# edits sent to both servers at once lose nothing
: >"$T/parallel"
pids=()
for i in $(seq 1 30); do
  if [ $((i % 2)) -eq 0 ]; then u=$URL_A; else u=$URL_B; fi
  curl -s -o /dev/null -w '%{http_code}\n' --max-time 60 -X PATCH "${AUTH[@]}" "${JSONCT[@]}" \
    -d "{\"extra\":{\"k$i\":\"v$i\"}}" "$u$PATH_MD" >>"$T/parallel" &
  pids+=($!)
done
wait "${pids[@]}"
[ "$(grep -c '^200$' "$T/parallel")" -eq 30 ] && ok "30 edits at once on two servers: all 200" ||
  fail "parallel edits: $(sort "$T/parallel" | uniq -c | tr '\n' ' ')"
[ "$(req "$URL_B$PATH_MD")" = 200 ] &&
  [ "$(body "all(d['extra'].get('k%d' % i)=='v%d' % i for i in range(1,31)) and d['extra']['ward']=='7'")" = True ] &&
  ok "every one of the 30 keys is there" || fail "keys after the parallel edits: $(cat "$T/body")"

# the CLI and ingest --update-metadata write the same rows
"$BIN" meta "$ID" --db "$URI" 'labels-=mass' 'extra-=ward' >"$T/meta.out" 2>&1 && grep -q '^changed$' "$T/meta.out" &&
  ok "medsearch meta on PostgreSQL" || fail "meta: $(cat "$T/meta.out")"
[ "$(req "$URL_A$PATH_MD")" = 200 ] && [ "$(body "d['labels']==['Hernia'] and 'ward' not in d['extra']")" = True ] &&
  ok "A sees the CLI's edit" || fail "A after meta: $(cat "$T/body")"
"$BIN" ingest "$T/imgs" --labels "$T/labels.csv" --db "$URI" --update-metadata --json -q >"$T/up.json" 2>"$T/up.err" &&
  [ "$(json "$T/up.json" "d['metadata_updated']==1 and d['ingested']==0")" = True ] &&
  ok "ingest --update-metadata puts the labels row back (1 image)" || fail "update: $(cat "$T/up.json" "$T/up.err")"
[ "$(req "$URL_B$PATH_MD")" = 200 ] &&
  [ "$(body "d['labels']==['Cardiomegaly'] and d['age']==57 and 'k1' not in d.get('extra', {})")" = True ] &&
  ok "B answers the labels row" || fail "B after update: $(cat "$T/body")"
stop_servers
"$BIN" check --db "$URI" >/dev/null 2>&1 && ok "the collection checks sound" || fail "check"
grep -hE 'AddressSanitizer|LeakSanitizer|runtime error:' "$T"/A.err "$T"/B.err && fail "sanitizer report in a server log"
[ $fails -eq 0 ] && echo "all checks passed"
exit $((fails > 0))
