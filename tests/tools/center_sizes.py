#!/usr/bin/python3
"""Does centering help small collections? The measurement behind
ENGINE_CENTER_MIN (src/engine.h; docs/evaluation.md, "Defaults chosen").

Draws random collections of S images from an exported one (`medsearch export
--vectors`: the stored, L2-normalised vectors, before any centering), whole
patients at a time as a patient-disjoint set would be, and scores each draw
by eval_check.py's implementation of the evaluation protocol twice: by plain
cosine and centred on the draw's own mean (the center the engine would
compute for that collection), with the same query expansion. Prints, per
size, the mean mAP@k of both and their paired difference over the draws with
its standard error.

Usage:
  center_sizes.py VECTORS.npy [--csv IDS.csv] [--rule exact] [-k 10]
                  [--qe 0,3] [--sizes 12:100,16:100,32:60] [--seed 1]
--sizes: SIZE:DRAWS pairs. Run with /usr/bin/python3 (Debian's numpy).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import eval_check  # noqa: E402


def group_by_patient(patients):
    """Each patient's image indices; an image of unknown patient is its own."""
    by_patient = {}
    for i, p in enumerate(patients):
        by_patient.setdefault(p if p is not None else f"_{i}", []).append(i)
    return list(by_patient.values())


def draw(rng, groups, size):
    """Indices of whole patients, in random order, cut to `size` images."""
    picked = []
    for j in rng.permutation(len(groups)):
        picked += groups[j]
        if len(picked) >= size:
            break
    return picked[:size]


def map_at_k(vec, ids, patients, labels, rule, k, qe, center):
    per, cuts = eval_check.evaluate(vec, ids, patients, labels, rule, k, qe, center)
    scored = [x["ap"] for x in per if x["scored"]]
    return float(np.mean(scored)) if scored else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("vectors")
    ap.add_argument("--csv")
    eval_check.add_protocol_args(ap)
    ap.add_argument("--qe", default="0,3")
    ap.add_argument("--sizes", default="12:100,16:100,24:80,32:60,48:40,64:40,128:16,256:10")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    try:
        vec, ids, patients, labels = eval_check.read_export(a.vectors, a.csv)
    except (OSError, ValueError) as e:
        sys.exit(f"center_sizes: {e}")
    vec = vec.astype(np.float64)
    rng = np.random.default_rng(a.seed)
    groups = group_by_patient(patients)
    for qe in (int(x) for x in a.qe.split(",")):
        for item in a.sizes.split(","):
            size, draws = (int(x) for x in item.split(":"))
            if size <= a.k or size > len(ids):
                sys.exit(f"center_sizes: size {size} must be above k={a.k} and at most {len(ids)}")
            plain, centred = [], []
            for _ in range(draws):
                pick = draw(rng, groups, size)
                v = vec[pick]
                sub = ([ids[i] for i in pick], [patients[i] for i in pick], [labels[i] for i in pick])
                p = map_at_k(v, *sub, a.rule, a.k, qe, None)
                c = map_at_k(v, *sub, a.rule, a.k, qe, v.mean(axis=0))
                if p is not None and c is not None:  # a draw with no scored query says nothing
                    plain.append(p)
                    centred.append(c)
            d = np.array(centred) - np.array(plain)
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            print(f"qe {qe}  size {size:4d}  draws {len(d):3d}  plain {np.mean(plain):.4f}  "
                  f"centred {np.mean(centred):.4f}  centred - plain {d.mean():+.4f} (SE {se:.4f})",
                  flush=True)


if __name__ == "__main__":
    main()
