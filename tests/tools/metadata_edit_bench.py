#!/usr/bin/env python3
# Latency of GET and PATCH /api/images/{id}/metadata against a running
# `medsearch serve` with a write token, one keep-alive connection, N requests
# each over ids 1..4000 (docs/performance.md, "Metadata edits").
# It changes those images' age and extra "bench" key: run it on a copy of a collection.
# Usage: metadata_edit_bench.py HOST PORT TOKEN N   (Python's standard library only)
import http.client, json, sys, time, statistics
host, port, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = http.client.HTTPConnection(host, port)
H = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
def t(method, path, body=None):
    t0 = time.perf_counter(); c.request(method, path, body=body, headers=H); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    return (time.perf_counter() - t0) * 1000
for name, fn in (("GET metadata", lambda i: t("GET", f"/api/images/{1 + i % 4000}/metadata")),
                 ("PATCH metadata", lambda i: t("PATCH", f"/api/images/{1 + i % 4000}/metadata", json.dumps({"extra": {"bench": str(i)}, "age": i % 90})))):
    ms = sorted(fn(i) for i in range(n))
    print(f"{name}: n={n} p50 {statistics.median(ms):.2f} ms p99 {ms[int(0.99*n)-1]:.2f} ms")
