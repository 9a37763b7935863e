#!/usr/bin/python3
"""Peer pipeline for `medsearch bench ingest`: the straightforward Python way to
ingest a folder of X-rays, run with /usr/bin/python3 (Debian's python3-torch,
torchvision, faiss, numpy and PIL are visible only to it).

  peer_ingest.py --images DIR --n N --db OUT.sqlite [--arch resnet50|mobilenet_v2]
                 [--threads 2] [--size 224]

For each image, one after the other (as the original prototype did): read the
file, SHA-256 it, PIL decode, grayscale, resize to size x size (Lanczos), normalise
(ImageNet mean/std, replicated to 3 channels), a torch.jit.freeze'd torchvision
model at batch 1 (random weights: weights do not change speed; classifier removed),
L2-normalise, faiss.IndexFlatIP.add, and one sqlite3 transaction inserting the
image bytes, its metadata and its vector. torch runs on --threads threads (it
starts with 1 here).

Prints one JSON line: images, seconds, images_per_s, and the time spent in each
stage (decode, model, index, store) so the split is visible.
"""
import argparse
import hashlib
import json
import os
import sqlite3
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--arch", default="resnet50", choices=["resnet50", "mobilenet_v2"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()

    try:
        import faiss
        import numpy as np
        import torch
        import torchvision
        from PIL import Image
    except ImportError as e:
        print(json.dumps({"skip": f"missing module: {e.name}"}))
        return 77

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.arch == "resnet50":
        m = torchvision.models.resnet50(weights=None)
        m.fc = torch.nn.Identity()
        dim = 2048
    else:
        m = torchvision.models.mobilenet_v2(weights=None)
        m.classifier = torch.nn.Identity()
        dim = 1280
    with torch.no_grad():
        net = torch.jit.freeze(torch.jit.trace(m.eval(), torch.zeros(1, 3, a.size, a.size)))
        for _ in range(5):  # warm-up: the profiling executor optimises over the first runs
            net(torch.randn(1, 3, a.size, a.size))

    files = sorted(f for f in os.listdir(a.images) if f.endswith(".png"))[: a.n]
    if len(files) < a.n:
        print(json.dumps({"error": f"only {len(files)} PNG files in {a.images}"}))
        return 1
    db = sqlite3.connect(a.db)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, sha256 TEXT UNIQUE, name TEXT, "
               "width INT, height INT, bytes BLOB)")
    db.execute("CREATE TABLE vectors (image_id INTEGER PRIMARY KEY, vector BLOB)")
    index = faiss.IndexFlatIP(dim)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None] * 255
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None] * 255
    t = {"decode": 0.0, "model": 0.0, "index": 0.0, "store": 0.0}

    start = time.perf_counter()
    for name in files:
        t0 = time.perf_counter()
        with open(os.path.join(a.images, name), "rb") as f:
            data = f.read()
        sha = hashlib.sha256(data).hexdigest()
        img = Image.open(os.path.join(a.images, name))
        w, h = img.size
        g = np.asarray(img.convert("L").resize((a.size, a.size), Image.LANCZOS), dtype=np.float32)
        x = torch.from_numpy(((np.broadcast_to(g, (3, a.size, a.size)) - mean) / std)[None].astype(np.float32))
        t1 = time.perf_counter()
        with torch.no_grad():
            v = net(x).numpy().astype(np.float32)
        v /= max(float(np.linalg.norm(v)), 1e-12)
        t2 = time.perf_counter()
        index.add(v)
        t3 = time.perf_counter()
        with db:
            cur = db.execute("INSERT INTO images (sha256, name, width, height, bytes) VALUES (?, ?, ?, ?, ?)",
                             (sha, name, w, h, data))
            db.execute("INSERT INTO vectors (image_id, vector) VALUES (?, ?)", (cur.lastrowid, v.tobytes()))
        t4 = time.perf_counter()
        t["decode"] += t1 - t0
        t["model"] += t2 - t1
        t["index"] += t3 - t2
        t["store"] += t4 - t3
    seconds = time.perf_counter() - start
    db.close()
    print(json.dumps({"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds,
                      "threads": a.threads, "arch": a.arch, "torch": torch.__version__,
                      "stage_seconds": t}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
