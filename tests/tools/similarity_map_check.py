#!/usr/bin/env python3
# Do similarity maps point at what matches? Against a running `medsearch
# serve` whose collection holds the images of DIR: for N random pairs of
# different patients (A, B), a picture made of half of A and the other half
# of B (left/right and top/bottom, each way round) is sent to POST
# /api/similarity-map with=A's id. Of the positive part of each side's map
# (the middle column or row, which straddles the seam, left out), the share
# in A's half is the map's answer to "where is A?": 0.5 would be a map that
# says nothing about place. Prints, per direction and side, the median share
# and how often A's half holds more than B's (docs/api.md, "similarity
# maps"). Also checks each reply's cells sum to its similarity.
# Usage: similarity_map_check.py HOST PORT DIR N [SEED]   (/usr/bin/python3: PIL, numpy)
import http.client, io, json, os, random, statistics, sys
import numpy as np
from PIL import Image

host, port, root, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
c = http.client.HTTPConnection(host, port, timeout=120)

def post(path, body):
    c.request("POST", path, body=body, headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    d = json.loads(r.read())
    assert r.status == 200, (r.status, d)
    return d

def stored_id(path):
    d = post("/api/search?k=1&qe=0", open(path, "rb").read())
    top = d["results"][0]
    assert top["score"] > 0.9999, (path, top)
    return top["id"], top.get("patient_id")

files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
               if f.lower().endswith((".png", ".jpg", ".jpeg")))
shares = {}
worst_sum = 0.0
pairs = 0
while pairs < n:
    a, b = rng.sample(files, 2)
    ida, pa = stored_id(a)
    _, pb = stored_id(b)
    if pa is not None and pa == pb:
        continue
    pairs += 1
    A = np.asarray(Image.open(a).convert("L"))
    B = np.asarray(Image.open(b).convert("L").resize((A.shape[1], A.shape[0])))
    h, w = A.shape
    for across in (True, False):
        for a_first in (True, False):
            M = B.copy()
            if across:
                cols = slice(0, w // 2) if a_first else slice(w // 2, w)
                M[:, cols] = A[:, cols]
            else:
                rows = slice(0, h // 2) if a_first else slice(h // 2, h)
                M[rows, :] = A[rows, :]
            buf = io.BytesIO()
            Image.fromarray(M).save(buf, "PNG")
            d = post(f"/api/similarity-map?with={ida}", buf.getvalue())
            for side in ("query_cells", "result_cells"):
                cells = np.array(d[side])
                worst_sum = max(worst_sum, abs(cells.sum() - d["similarity"]))
                g = cells if across else cells.T          # columns: the split's axis
                k = g.shape[1] // 2
                first, second = np.clip(g[:, :k], 0, None).sum(), np.clip(g[:, k + 1:], 0, None).sum()
                mine = first if a_first else second
                total = first + second
                key = ("left/right" if across else "top/bottom", side.split("_")[0])
                shares.setdefault(key, []).append(mine / total if total > 0 else 0.5)
print(f"{pairs} pairs of different patients from {root}, {4 * pairs} half-and-half pictures; "
      f"largest |sum of cells - similarity| {worst_sum:.2e}")
for (split, side), v in sorted(shares.items()):
    print(f"{split:10s} {side:6s}: A's half holds a median {statistics.median(v):.0%} of the positive map "
          f"(quartiles {np.percentile(v, 25):.0%}-{np.percentile(v, 75):.0%}); more than B's half in "
          f"{sum(x > 0.5 for x in v) / len(v):.0%} of {len(v)}")
