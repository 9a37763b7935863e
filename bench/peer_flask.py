#!/usr/bin/python3
"""Minimal Flask peer for `medsearch bench serve` (run with /usr/bin/python3:
Debian's python3-flask, torch, faiss and PIL are visible only to it).

  peer_flask.py --vectors V.f32 --ids I.i64 --dim D (--onnx M.onnx | --arch A)
                [--index flat|hnsw] [--port 0] [--threads 2]

Serves POST /api/search doing the same work as MedSearch's route: read the
multipart field "image" (or a raw body), decode it with PIL, convert to 8-bit
grayscale, resize the whole image to the model's input size with Lanczos,
replicate to 3 channels, normalise with the model's medsearch.mean/scale
metadata (ImageNet's otherwise), run the CNN (torch.jit.trace + freeze, no
grad), L2-normalise, search a FAISS inner-product index of the collection's
vectors (IndexFlatIP, or IndexHNSWFlat M=16 when ours is HNSW) and answer
JSON ids and scores. Requests that arrive together are not batched: this is
the plain way to put a PyTorch model behind Flask.

Prints "peer listening PORT rss_mb=N" on stdout once ready.
"""
import argparse
import io
import os
import sys
import threading


def load_model(args):
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peer_torch_embed import onnx_model, torchvision_model

    model = onnx_model(args.onnx) if args.onnx else torchvision_model(args.arch)
    x = torch.zeros(1, 3, args.size, args.size)
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(model, x).eval())


def preprocessing(args):
    mean, scale = [123.675, 116.28, 103.53], [1 / 58.395, 1 / 57.12, 1 / 57.375]
    if args.onnx:
        import onnx

        meta = {p.key: p.value for p in onnx.load(args.onnx, load_external_data=False).metadata_props}
        if "medsearch.mean" in meta:
            mean = [float(v) for v in meta["medsearch.mean"].split(",")]
        if "medsearch.scale" in meta:
            scale = [float(v) for v in meta["medsearch.scale"].split(",")]
        if "medsearch.input_size" in meta:
            args.size = int(meta["medsearch.input_size"])
    mean = (mean * 3)[:3]
    scale = (scale * 3)[:3]
    return mean, scale


def build_index(args):
    import faiss
    import numpy as np

    vecs = np.fromfile(args.vectors, dtype=np.float32).reshape(-1, args.dim)
    ids = np.fromfile(args.ids, dtype=np.int64)
    if args.index == "hnsw":
        index = faiss.IndexHNSWFlat(args.dim, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
    else:
        index = faiss.IndexFlatIP(args.dim)
    index.add(vecs)
    return index, ids


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", required=True)
    p.add_argument("--ids", required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--onnx")
    p.add_argument("--arch")
    p.add_argument("--index", default="flat", choices=["flat", "hnsw"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    if bool(args.onnx) == bool(args.arch):
        p.error("give exactly one of --onnx and --arch")

    import faiss
    import numpy as np
    import torch
    from flask import Flask, jsonify, request
    from PIL import Image
    from werkzeug.serving import make_server

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    mean, scale = preprocessing(args)
    model = load_model(args)
    index, ids = build_index(args)
    model_lock = threading.Lock()   # one forward at a time, as torch runs best
    app = Flask("medsearch-peer")

    @app.post("/api/search")
    def search():
        data = request.files["image"].read() if "image" in request.files else request.get_data()
        k = int(request.args.get("k", 10))
        try:
            img = Image.open(io.BytesIO(data))
            img = img.convert("L").resize((args.size, args.size), Image.LANCZOS)
        except Exception as e:  # noqa: BLE001 - any decode failure is the client's
            return jsonify(error={"code": "bad_format", "message": str(e)}), 400
        g = np.asarray(img, dtype=np.float32)
        x = np.stack([(g - mean[c]) * scale[c] for c in range(3)])[None]
        with model_lock, torch.no_grad():
            feat = model(torch.from_numpy(x)).numpy()
        feat /= max(float(np.linalg.norm(feat)), 1e-12)
        scores, rows = index.search(feat.astype(np.float32), k)
        results = [{"id": int(ids[r]), "score": float(s)} for r, s in zip(rows[0], scores[0]) if r >= 0]
        return jsonify(k=k, count=len(results), results=results)

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # no access log, like ours in the bench
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    print(f"peer listening {server.server_port} rss_mb={rss_mb():.0f} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} index={args.index} n={index.ntotal}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
