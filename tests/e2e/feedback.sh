#!/usr/bin/env bash
# Relevance feedback: `medsearch search --like/--unlike` and the API's
# like=/unlike= (POST /api/search, GET /api/images/{id}/similar, and GET
# /api/similar for the marked images alone), against the real server and the
# CLI:
#  - every score is the result's similarity to l2(q + 2 mean(like) -
#    mean(unlike)), worked out here in numpy from `medsearch export --vectors`
#    (centred on the exported center), and the marked images are left out;
#  - the CLI and both API routes give the same results, with the lists echoed;
#  - query expansion and filters still apply, and still never return a
#    marked image;
#  - bad lists are refused (exit 2; 400), an unknown marked id is named (exit
#    2; 404).
. "$(dirname "$0")/http/common.sh"
require_all
/usr/bin/python3 -c 'import numpy' 2>/dev/null || skip "/usr/bin/python3 lacks numpy"

make_collection 60
export MEDSEARCH_MODEL=$MODEL
search() { "$MEDSEARCH_BIN" search --db "$WORK/c.db" "$@"; }
"$MEDSEARCH_BIN" export --vectors --db "$WORK/c.db" --out "$WORK/vec" >/dev/null 2>&1 || bad "export --vectors"

# scores_ok FILE QUERY_ID|-|0 LIKE UNLIKE [QUERY_VECTOR.f32] (0: no query, the marks alone): every result's score
# is its similarity to the moved query, none is marked (nor the query).
scores_ok() {
    /usr/bin/python3 - "$WORK/vec" "$@" <<'PY'
import csv, json, sys
import numpy as np
base, path, qid, like, unlike = sys.argv[1:6]
vec = np.load(base + ".npy").astype(np.float64)
center = np.load(base + ".center.npy").astype(np.float64)
ids = [int(r["id"]) for r in csv.DictReader(open(base + ".csv"))]
row = {i: n for n, i in enumerate(ids)}
u = vec - center
u /= np.linalg.norm(u, axis=1, keepdims=True)
like = sorted({int(x) for x in like.split(",") if x})
unlike = sorted({int(x) for x in unlike.split(",") if x})
if qid == "0":
    q = np.zeros(u.shape[1])  # the marked images alone
elif qid != "-":
    q = u[row[int(qid)]]
else:
    q = np.fromfile(sys.argv[6], dtype="<f4").astype(np.float64) - center
    q /= np.linalg.norm(q)
m = q.copy()
if like:
    m += 2 * u[[row[i] for i in like]].mean(axis=0)
if unlike:
    m -= u[[row[i] for i in unlike]].mean(axis=0)
m /= np.linalg.norm(m)
d = json.load(open(path))
res = d["results"]
marked = set(like) | set(unlike) | ({int(qid)} if qid not in ("-", "0") else set())
worst = max(abs(r["score"] - float(u[row[r["id"]]] @ m)) for r in res)
ok = (worst < 2e-5 and not marked & {r["id"] for r in res}
      and all(a["score"] >= b["score"] for a, b in zip(res, res[1:]))
      and d.get("feedback") == {"like": [int(x) for x in sys.argv[4].split(",") if x],
                                "unlike": [int(x) for x in sys.argv[5].split(",") if x]})
print("yes" if ok else f"no: largest difference {worst}, marked in results {marked & {r['id'] for r in res}}, "
      f"feedback {d.get('feedback')}")
PY
}

echo "== the CLI: scores against the moved query"
search --id 5 -k 10 --qe 0 --json >"$WORK/plain.json" || bad "plain search"
read -r l1 l2 u1 <<<"$(/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print(r[3]["id"], r[7]["id"], r[0]["id"])' "$WORK/plain.json")"
search --id 5 -k 60 --qe 0 --like "$l1,$l2,$l1" --unlike "$u1" --json >"$WORK/fb.json" || bad "search --like --unlike"
r=$(scores_ok "$WORK/fb.json" 5 "$l1,$l2,$l1" "$u1")
[ "$r" = yes ] && ok "scores = similarity to l2(q + 2 mean(like) - mean(unlike)); marked and query left out" || bad "CLI: $r"
B=$WORK/fb.json
check "all the others come back: 64 images less the query and 3 marked" 'len(d["results"]) == 60'
out=$(search --id 5 -k 3 --like "$l1" --unlike "$u1")
case $out in *"moved by the feedback, then expanded"*"feedback: the query moved towards the image marked like (1) and away from those marked unlike (1)"*) ok "the text report says what the scores are" ;;
    *) bad "the text report: $out" ;; esac

echo "== with expansion and a filter"
search --id 5 -k 20 --qe 3 --like "$l1,$l2" --unlike "$u1" --filter 'sex:M' --json >"$WORK/fq.json" || bad "search with --qe 3 and a filter"
B=$WORK/fq.json
check "only men, none marked, the query not either" 'len(d["results"]) > 0 and all(r["sex"] == "M" and r["id"] not in ('"$l1,$l2,$u1"', 5) for r in d["results"])'
"$MEDSEARCH_BIN" embed "$QUERY" --pool auto --out "$WORK/q.f32" >/dev/null 2>&1 || bad "embed the query file"
search "$QUERY" -k 30 --qe 0 --like "$l1" --unlike "$u1,$l2" --json >"$WORK/ff.json" || bad "search FILE --like"
r=$(scores_ok "$WORK/ff.json" - "$l1" "$u1,$l2" "$WORK/q.f32")
[ "$r" = yes ] && ok "a file query moves the same way" || bad "file query: $r"

echo "== the marked images alone, without a query"
search -k 30 --qe 0 --like "$l1,$l2" --unlike "$u1" --json >"$WORK/marks.json" || bad "search --like without a query"
r=$(scores_ok "$WORK/marks.json" 0 "$l1,$l2" "$u1")
[ "$r" = yes ] && ok "scores = similarity to l2(2 mean(like) - mean(unlike)), the marks left out" || bad "marks alone: $r"
out=$(search -k 3 --like "$l1" --unlike "$u1")
case $out in *"l2(2 mean(like) - mean(unlike)) of the marked images"*"query: the image marked like (1), away from those marked unlike (1)"*) ok "the text report says the marks are the query" ;;
    *) bad "the text report of the marks alone: $out" ;; esac

echo "== the CLI refuses"
for args in "--like x" "--like 1," "--like 0" "--unlike 1,,2" "--like $l1 --unlike $l1" "--like 987654321" \
            "--like $(seq -s, 1 101)"; do
    # shellcheck disable=SC2086
    search --id 5 $args >/dev/null 2>"$WORK/err"; rc=$?
    if [ "$rc" = 2 ] && [ -s "$WORK/err" ]; then ok "search ${args:0:30}: exit 2, $(head -c 90 "$WORK/err")"
    else bad "search ${args:0:30}: exit $rc: $(cat "$WORK/err")"; fi
done

for args in "--unlike $u1" "--like $l1 --region 0,0,5,5" ""; do
    # shellcheck disable=SC2086
    search $args >/dev/null 2>"$WORK/err"; rc=$?
    if [ "$rc" = 2 ] && grep -q "give an IMAGE file, --id ID, or --like IDS" "$WORK/err"; then ok "search ${args:-(nothing)}: exit 2, a query is needed"
    else bad "search ${args:-(nothing)}: exit $rc: $(cat "$WORK/err")"; fi
done

echo "== the API"
start_server
expect 200 "GET /api/images/5/similar with like= and unlike=" "$URL/api/images/5/similar?k=60&qe=0&like=$l1,$l2,$l1&unlike=$u1"
r=$(scores_ok "$B" 5 "$l1,$l2,$l1" "$u1")
[ "$r" = yes ] && ok "the same moved query as the CLI's" || bad "API similar: $r"
same() { /usr/bin/python3 -c 'import json,sys; a=json.load(open(sys.argv[1]))["results"]; b=json.load(open(sys.argv[2]))["results"]; print([r["id"] for r in a] == [r["id"] for r in b] and all(abs(x["score"]-y["score"]) < 1e-6 for x, y in zip(a, b)))' "$1" "$2"; }
[ "$(same "$B" "$WORK/fb.json")" = True ] && ok "results equal the CLI's" || bad "API and CLI differ"
expect 200 "POST /api/search with like= and unlike= as form fields" -F "image=@$QUERY" -F "like=$l1" -F "unlike=$u1,$l2" -F k=30 -F qe=0 "$URL/api/search"
[ "$(same "$B" "$WORK/ff.json")" = True ] && ok "a file query's results equal the CLI's" || bad "POST: API and CLI differ"
check "the lists come back" 'd["feedback"] == {"like": ['"$l1"'], "unlike": ['"$u1,$l2"']}'
expect 200 "with a filter and expansion" "$URL/api/images/5/similar?k=20&qe=3&like=$l1,$l2&unlike=$u1&sex=M"
[ "$(same "$B" "$WORK/fq.json")" = True ] && ok "filtered and expanded: the CLI's results" || bad "filtered: API and CLI differ"
expect 200 "empty lists are no feedback" "$URL/api/images/5/similar?k=10&qe=0&like=&unlike="
[ "$(same "$B" "$WORK/plain.json")" = True ] && ok "the plain results" || bad "empty lists changed the search"
check "and no feedback in the reply" '"feedback" not in d'
expect 400 "like=x" "$URL/api/images/5/similar?like=x"
check "the message names the list" 'd["error"]["code"] == "invalid_argument" and d["error"]["message"].startswith("like: ")'
expect 400 "unlike=1,,2" "$URL/api/images/5/similar?unlike=1,,2"
expect 400 "like=0" "$URL/api/images/5/similar?like=0"
expect 400 "an id on both lists" "$URL/api/images/5/similar?like=$l1&unlike=$l1"
expect 400 "101 ids" "$URL/api/images/5/similar?like=$(seq -s, 1 101)"
expect 404 "an unknown marked id" "$URL/api/images/5/similar?like=987654321"
check "it is named" 'd["error"]["message"] == "no image with id 987654321 (marked like) in the collection"'
expect 400 "POST with a bad list" -F "image=@$QUERY" -F "unlike=-4" "$URL/api/search"
expect 200 "GET /api/similar: the marked images alone" "$URL/api/similar?k=30&qe=0&like=$l1,$l2&unlike=$u1"
[ "$(same "$B" "$WORK/marks.json")" = True ] && ok "the CLI's results for the marks alone" || bad "marks alone: API and CLI differ"
check "the lists come back, no query id" 'd["feedback"] == {"like": ['"$l1,$l2"'], "unlike": ['"$u1"']} and "query_id" not in d'
expect 200 "HEAD /api/similar" -I "$URL/api/similar?like=$l1"
expect 400 "GET /api/similar without like" "$URL/api/similar?unlike=$u1"
check "it says what is missing" 'd["error"]["message"].startswith("like must name")'
expect 400 "GET /api/similar with an empty like" "$URL/api/similar?like=%20"
expect 400 "GET /api/similar with a region" "$URL/api/similar?like=$l1&region=0,0,5,5"
expect 404 "GET /api/similar with an unknown id" "$URL/api/similar?like=987654321"
expect 405 "POST /api/similar" -X POST "$URL/api/similar?like=$l1"
stop_server
finish
