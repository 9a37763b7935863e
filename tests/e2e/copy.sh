#!/usr/bin/env bash
# medsearch copy between SQLite and a real, throwaway PostgreSQL server
# (tests/tools/pg_start.sh):
#  - SQLite -> PostgreSQL -> SQLite keeps every image's id, bytes, creation
#    time, thumbnail and metadata, the vectors bit for bit, the query-
#    expansion default and the center: the same queries give the same ids
#    with the same scores in all three;
#  - an interrupted copy is finished by running it again (images already
#    there are skipped, the rest keep their ids);
#  - into a collection of the same model holding other images, the copies
#    get new ids and the center is left to the engine;
#  - another model, the same collection twice, a missing source: refused.
command -v psql >/dev/null || { echo "skip: psql not installed"; exit 77; }
PG_NAME=copy
. "$(dirname "$0")/pg/common.sh"
ok() { echo "ok: $*"; }

# Every image of a collection as "id sha256 created mime w h md5(bytes) md5(thumbnail)", by id.
images() {
  case $1 in
  postgresql:*)
    psql "$1" -Atq -F ' ' -c "SELECT i.id, i.sha256, i.created, i.mime, i.width, i.height, md5(o.data),
        coalesce(md5(t.data), '-') FROM images i JOIN originals o ON o.image_id = i.id
        LEFT JOIN thumbnails t ON t.image_id = i.id ORDER BY i.id" ;;
  *)
    $PY - "$1" <<'EOF'
import hashlib, sqlite3, sys
md5 = lambda b: hashlib.md5(b).hexdigest() if b is not None else "-"
for r in sqlite3.connect(sys.argv[1]).execute(
        "SELECT i.id, i.sha256, i.created, i.mime, i.width, i.height, o.data, t.data FROM images i "
        "JOIN originals o ON o.image_id = i.id LEFT JOIN thumbnails t ON t.image_id = i.id ORDER BY i.id"):
    print(*r[:6], md5(r[6]), md5(r[7]))
EOF
    ;;
  esac
}

# The same queries must find the same ids with the same scores.
same_searches() {
  local a=$1 b=$2 q
  for q in $(ls "$NIH/images" | sed -n '5p;40p;90p'); do
    "$BIN" search "$NIH/images/$q" --db "$a" -k 10 --json >"$T/sa.json" 2>/dev/null || { fail "search $a"; return; }
    "$BIN" search "$NIH/images/$q" --db "$b" -k 10 --json >"$T/sb.json" 2>/dev/null || { fail "search $b"; return; }
    $PY - "$T/sa.json" "$T/sb.json" <<'EOF' || fail "searches differ between $a and $b"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
ra = [(r["id"], r["original_name"], r["labels"], r["patient_id"], r["age"], r["sex"], r["view"]) for r in a["results"]]
rb = [(r["id"], r["original_name"], r["labels"], r["patient_id"], r["age"], r["sex"], r["view"]) for r in b["results"]]
assert ra == rb and a["qe"] == b["qe"], (ra, rb)
assert max(abs(x["score"] - y["score"]) for x, y in zip(a["results"], b["results"])) < 1e-6
EOF
  done
}

same_exports() {
  "$BIN" export --vectors --db "$1" --out "$T/ea" >/dev/null 2>&1 && "$BIN" export --vectors --db "$2" --out "$T/eb" >/dev/null 2>&1 ||
    { fail "export"; return; }
  cmp -s "$T/ea.csv" "$T/eb.csv" && cmp -s "$T/ea.npy" "$T/eb.npy" || fail "exports of $1 and $2 differ"
}

echo "== a SQLite collection with gaps in its ids, qe 2"
mkdir -p "$T/set"
ls "$NIH/images" | head -n 120 | while read -r f; do ln -s "$NIH/images/$f" "$T/set/"; done
"$BIN" ingest "$T/set" --labels "$NIH/labels.csv" --db "$T/a.db" -q >/dev/null 2>&1 || fail "ingest"
"$BIN" delete 7 31 --db "$T/a.db" >/dev/null 2>&1 || fail "delete"
"$BIN" qe 2 --db "$T/a.db" >/dev/null 2>&1 || fail "qe 2"
images "$T/a.db" >"$T/a.images"
[ "$(wc -l <"$T/a.images")" = 118 ] || fail "118 images expected in a.db"

echo "== SQLite -> PostgreSQL"
"$BIN" copy --db "$T/a.db" --to "$URI" --json >"$T/c1.json" 2>"$T/c1.err" || fail "copy to PostgreSQL: $(cat "$T/c1.err")"
[ "$(json "$T/c1.json" "(d['images'], d['copied'], d['already_there'], d['new_ids'], d['settings_copied'], d['center_copied'], d['to_backend'])")" = \
  "(118, 118, 0, 0, True, True, 'postgresql')" ] || fail "copy report: $(cat "$T/c1.json")"
images "$URI" >"$T/pg.images"
cmp -s "$T/a.images" "$T/pg.images" && ok "ids, bytes, times, thumbnails equal in PostgreSQL" ||
  fail "images differ: $(diff "$T/a.images" "$T/pg.images" | head -4)"
"$BIN" check --db "$URI" >/dev/null 2>&1 || fail "check on PostgreSQL"
"$BIN" info --db "$T/a.db" --json >"$T/ia.json" 2>/dev/null
"$BIN" info --db "$URI" --json >"$T/ip.json" 2>/dev/null
$PY - "$T/ia.json" "$T/ip.json" <<'EOF' && ok "model, center and qe equal" || fail "info differs"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
for k in ("images", "model", "dim", "center", "center_policy", "qe"):
    assert a.get(k) == b.get(k), (k, a.get(k), b.get(k))
EOF
same_searches "$T/a.db" "$URI" && ok "the same searches"
same_exports "$T/a.db" "$URI" && ok "the same exports (metadata and vectors)"
# the next image PostgreSQL stores gets an id above the ids copied
new=$NIH/images/$(ls "$NIH/images" | sed -n 300p)
"$BIN" ingest "$new" --db "$URI" -q >/dev/null 2>&1 || fail "ingest after the copy"
[ "$(psql "$URI" -Atqc "SELECT id > 120 FROM images WHERE original_name LIKE '%$(basename "$new")'")" = t ] &&
  ok "a new image after the copy gets an id above the copied ones" || fail "the id sequence was not moved"
"$BIN" delete "$(psql "$URI" -Atqc "SELECT id FROM images WHERE original_name LIKE '%$(basename "$new")'")" \
  --db "$URI" >/dev/null 2>&1 || fail "delete the new image"

echo "== PostgreSQL -> SQLite, and an interrupted copy run again"
"$BIN" copy --db "$URI" --to "$T/b.db" --batch 7 -q >"$T/c2.out" 2>&1 || fail "copy back: $(cat "$T/c2.out")"
images "$T/b.db" >"$T/b.images"
cmp -s "$T/a.images" "$T/b.images" && ok "round trip: the same images under the same ids" || fail "round trip differs"
same_searches "$T/a.db" "$T/b.db"
"$BIN" delete 2 50 51 52 120 --db "$T/b.db" >/dev/null 2>&1 || fail "delete in b.db"
"$BIN" copy --db "$URI" --to "$T/b.db" --json >"$T/c3.json" 2>/dev/null || fail "copy again"
[ "$(json "$T/c3.json" "(d['copied'], d['already_there'], d['new_ids'], d['center_copied'])")" = "(5, 113, 0, True)" ] ||
  fail "second copy: $(cat "$T/c3.json")"
images "$T/b.db" >"$T/b.images"
cmp -s "$T/a.images" "$T/b.images" && ok "finished: the five came back under their ids" || fail "after the second copy"

echo "== into a collection of the same model holding other images"
mkdir -p "$T/other"
ls "$NIH/images" | sed -n 200,204p | while read -r f; do ln -s "$NIH/images/$f" "$T/other/"; done
"$BIN" ingest "$T/other" --db "$T/e.db" -q >/dev/null 2>&1 || fail "ingest e.db"
"$BIN" copy --db "$T/a.db" --to "$T/e.db" --json >"$T/c4.json" 2>/dev/null || fail "copy into e.db"
[ "$(json "$T/c4.json" "(d['copied'], d['new_ids'], d['settings_copied'], d['center_copied'])")" = "(118, 118, False, False)" ] ||
  fail "copy into a non-empty collection: $(cat "$T/c4.json")"
[ "$("$BIN" info --db "$T/e.db" --json 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["images"])')" = 123 ] ||
  fail "e.db should hold 123 images"
"$BIN" check --db "$T/e.db" >/dev/null 2>&1 || fail "check e.db"

echo "== refused"
"$BIN" ingest "$T/other" --db "$T/f.db" --pool avg -q >/dev/null 2>&1 || fail "ingest f.db"
rc=0
"$BIN" copy --db "$T/a.db" --to "$T/f.db" >/dev/null 2>"$T/f.err" || rc=$?
[ $rc -eq 2 ] && grep -q "holds vectors of model" "$T/f.err" || fail "another model: exit $rc, $(cat "$T/f.err")"
[ "$("$BIN" info --db "$T/f.db" --json 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["images"])')" = 5 ] ||
  fail "f.db changed"
rc=0
"$BIN" copy --db "$T/a.db" --to "$T/../$(basename "$T")/a.db" >/dev/null 2>"$T/s.err" || rc=$?
[ $rc -eq 2 ] && grep -q "name the same collection" "$T/s.err" || fail "the same collection: exit $rc, $(cat "$T/s.err")"
rc=0
"$BIN" copy --db "$T/none.db" --to "$T/g.db" >/dev/null 2>"$T/n.err" || rc=$?
[ $rc -eq 1 ] && [ ! -e "$T/none.db" ] || fail "a missing source: exit $rc, $(cat "$T/n.err")"
rc=0
"$BIN" copy --db "$T/a.db" >/dev/null 2>"$T/u.err" || rc=$?
[ $rc -eq 2 ] && grep -q -- "--to DST is required" "$T/u.err" || fail "no --to: exit $rc"

[ $fails -eq 0 ] && echo "all copy checks passed"
[ $fails -eq 0 ]
