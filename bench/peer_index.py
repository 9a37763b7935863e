#!/usr/bin/python3
"""Peers of `medsearch bench index`: FAISS (IndexFlatIP, IndexHNSWFlat) and
hnswlib on the data, queries and exact answers the C benchmark wrote.

Run by the benchmark as /usr/bin/python3 (Debian's python3-faiss and
python3-hnswlib live there). Prints one JSON object per line per measured
configuration; any other line is a note the benchmark passes through.
Single-query latency includes Python's call overhead (a few microseconds).
"""
import argparse
import json
import sys
import time


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1048576.0


def pct(values, p):
    v = sorted(values)
    i = max(0, min(len(v) - 1, int(-(-p * len(v) // 1)) - 1))
    return v[i]


def recall(found, truth, k):
    hit = 0
    for row_f, row_t in zip(found, truth):
        t = set(int(x) for x in row_t[:k])
        hit += sum(1 for x in row_f[:k] if int(x) in t)
    return hit / (len(truth) * k)


def measure(search_one, search_batch, queries, truth, k):
    lat = []
    found = []
    for q in queries:
        t0 = time.perf_counter()
        ids = search_one(q)
        lat.append((time.perf_counter() - t0) * 1e3)
        found.append(ids)
    t0 = time.perf_counter()
    for s in range(0, len(queries), 100):
        search_batch(queries[s:s + 100])
    qps = len(queries) / (time.perf_counter() - t0)
    return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "qps": qps,
            "recall": recall(found, truth, k)}


def emit(row):
    print(json.dumps(row), flush=True)


def run_faiss(a, data, queries, truth, efs):
    try:
        import faiss
    except ImportError:
        print("skip: faiss is not importable by /usr/bin/python3", flush=True)
        return
    faiss.omp_set_num_threads(a.threads)
    print("faiss %s, %d threads" % (faiss.__version__, a.threads), flush=True)
    if not a.no_flat:
        r0 = rss_mb()
        t0 = time.perf_counter()
        ix = faiss.IndexFlatIP(a.dim)
        ix.add(data)
        build = time.perf_counter() - t0
        mem = rss_mb() - r0
        m = measure(lambda q: ix.search(q.reshape(1, -1), a.k)[1][0],
                    lambda qs: ix.search(qs, a.k), queries, truth, a.k)
        emit(dict(engine="faiss IndexFlatIP", build_s=build, mem_mb=mem, **m))
        del ix
    if not a.no_hnsw:
        r0 = rss_mb()
        t0 = time.perf_counter()
        ix = faiss.IndexHNSWFlat(a.dim, a.M, faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efConstruction = a.efc
        ix.add(data)
        build = time.perf_counter() - t0
        mem = rss_mb() - r0
        print("faiss HNSWFlat built in %.2f s" % build, flush=True)
        for ef in efs:
            ix.hnsw.efSearch = ef
            m = measure(lambda q: ix.search(q.reshape(1, -1), a.k)[1][0],
                        lambda qs: ix.search(qs, a.k), queries, truth, a.k)
            emit(dict(engine="faiss IndexHNSWFlat", ef=ef, build_s=build, mem_mb=mem, **m))
        del ix


def run_hnswlib(a, data, queries, truth, efs, np):
    if a.no_hnsw:
        return
    try:
        import hnswlib
    except ImportError:
        print("skip: hnswlib is not importable by /usr/bin/python3", flush=True)
        return
    r0 = rss_mb()
    t0 = time.perf_counter()
    ix = hnswlib.Index(space="ip", dim=a.dim)
    ix.init_index(max_elements=a.n, M=a.M, ef_construction=a.efc, random_seed=100)
    ix.set_num_threads(a.threads)
    ix.add_items(data, np.arange(a.n), num_threads=a.threads)
    build = time.perf_counter() - t0
    mem = rss_mb() - r0
    print("hnswlib built in %.2f s" % build, flush=True)
    for ef in efs:
        ix.set_ef(max(ef, a.k))
        m = measure(lambda q: ix.knn_query(q.reshape(1, -1), k=a.k, num_threads=1)[0][0],
                    lambda qs: ix.knn_query(qs, k=a.k, num_threads=a.threads), queries, truth, a.k)
        emit(dict(engine="hnswlib", ef=ef, build_s=build, mem_mb=mem, **m))
    del ix


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--nq", type=int, required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--efc", type=int, default=200)
    ap.add_argument("--ef", default="16,32,64,128,256,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-flat", action="store_true")
    ap.add_argument("--no-hnsw", action="store_true")
    ap.add_argument("--engines", default="hnswlib,faiss",
                    help="comma-separated, run in this order")
    a = ap.parse_args()
    try:
        import numpy as np
    except ImportError:
        print("skip: numpy is not importable by /usr/bin/python3")
        return 0
    efs = [int(x) for x in a.ef.split(",")]
    data = np.fromfile(a.data, dtype=np.float32).reshape(a.n, a.dim)
    queries = np.fromfile(a.queries, dtype=np.float32).reshape(a.nq, a.dim)
    truth = np.fromfile(a.truth, dtype=np.int64).reshape(a.nq, a.k)
    engines = a.engines.split(",")
    print("peer data: %d x %d, %d queries, numpy %s" % (a.n, a.dim, a.nq, np.__version__), flush=True)

    for name in engines:
        if name == "faiss":
            run_faiss(a, data, queries, truth, efs)
        elif name == "hnswlib":
            run_hnswlib(a, data, queries, truth, efs, np)
        else:
            print("unknown peer engine %r (faiss, hnswlib)" % name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
