#!/usr/bin/env python3
# What a region costs a search: POST /api/search of each FILE to a running
# `medsearch serve`, N times with the whole image and N times with REGION,
# interleaved, one keep-alive connection; prints the medians of the
# server's own timing (decode = read + prepare, embed, server = the whole
# request) and of the client's round trip (docs/performance.md, "Searching
# with a region").
# Usage: region_bench.py HOST PORT N REGION FILE...   (Python's standard library only)
import http.client, json, statistics, sys, time, urllib.parse
host, port, n, region, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
c = http.client.HTTPConnection(host, port)

def search(body, query):
    t0 = time.perf_counter()
    c.request("POST", "/api/search?k=10&qe=0" + query, body=body, headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    d = json.loads(r.read())
    assert r.status == 200, (r.status, d)
    d["timing_ms"]["client"] = (time.perf_counter() - t0) * 1000
    return d["timing_ms"]

for f in files:
    body = open(f, "rb").read()
    whole, part = [], []
    for _ in range(n):
        whole.append(search(body, ""))
        part.append(search(body, "&region=" + urllib.parse.quote(region)))
    for name, runs in (("whole image", whole), ("region " + region, part)):
        med = {k: statistics.median(t[k] for t in runs) for k in ("decode", "embed", "server", "client")}
        print(f"{f.split('/')[-1]}: {name}: n={n} median decode {med['decode']:.2f} ms, embed {med['embed']:.2f} ms, "
              f"server {med['server']:.2f} ms, round trip {med['client']:.2f} ms")
