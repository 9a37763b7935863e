#!/usr/bin/python3
"""Independent check of `medsearch eval`, written with numpy only.

Reads the vectors and metadata written by `medsearch export --vectors`
(an NPY float32 [n, dim] file and the CSV of ids and metadata beside it),
recomputes every figure of the evaluation protocol from scratch and prints
them as JSON, or compares them with the JSON of `medsearch eval --json`.

Protocol (docs/evaluation.md): every labelled image is a query; its gallery
is every other image except those of the same patient; cosine similarity;
ties in score go to the smaller id. P@c = hits in the first c / c;
AP@k = (1/min(R,k)) sum_{j<=k} P@j rel_j, R = relevant images in the
gallery; queries with R = 0 are left out and counted. The chance level is
the mean over the random rankings of the gallery: for P@c, R/G; for AP it is
computed here by its own route, from the hypergeometric distribution of the
hits above each rank, not from the closed form the C code uses.
Rules: any = share a label, exact = same label set, single = same first
label; labels compare without regard to ASCII case.

Centering: search ranks by cos(l2(q - c), l2(v - c)), c the collection's
center, which the export writes beside the vectors (VECTORS.center.npy,
float32 [dim]; absent when the collection has none). When that file is
there, every vector is replaced by l2(v - c) here, in float64 (a vector
within 1e-6 of c is kept as it is, as the engine does), and query expansion
works in that space. The eval JSON must agree on whether it was centred.

Relevance feedback (--feedback N, `medsearch eval --feedback N`): the first
round shows k + N results, the first N are marked like (relevant) or unlike,
and the second round searches with l2(q + a mean(like) - b mean(unlike)),
expanded like any query, among the images not judged. Both rounds are
scored on that residual gallery; the paired difference is second - first.

Usage:
  eval_check.py VECTORS.npy [--csv IDS.csv] [--center C.npy | --no-center]
                [--rule exact] [-k 10] [--qe N]
                [--feedback N [--like-weight 2] [--unlike-weight 1]]
                [--compare EVAL.json [--per-query EVAL.csv]] [--tolerance 1e-9]
Exit: 0 agreement (or figures printed), 1 disagreement, 2 usage/input
error, 77 when numpy is missing (the caller skips).
"""
import argparse
import csv
import json
import math
import os
import sys

try:
    import numpy as np
except ImportError:
    print("skip: numpy is not available to", sys.executable)
    sys.exit(77)


def ascii_lower(s):
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def read_metadata(path):
    """Ids, patient keys (None when unknown) and ordered label lists."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return [], [], []
    for col in ("id", "labels"):
        if col not in rows[0]:
            raise ValueError(f"{path} has no '{col}' column (has {list(rows[0])})")
    pcol = "patient_id" if "patient_id" in rows[0] else ("patient" if "patient" in rows[0] else None)
    ids, patients, labels = [], [], []
    for r in rows:
        ids.append(int(r["id"]))
        p = r.get(pcol, "") if pcol else ""
        patients.append(p if p else None)
        seen, lab = set(), []
        for name in (r["labels"] or "").split("|"):
            key = ascii_lower(name)
            if name and key not in seen:
                seen.add(key)
                lab.append(key)
        labels.append(lab)
    return ids, patients, labels


class ExportError(ValueError):
    """An export whose files do not fit together (shape, row count)."""


def read_export(vectors_path, csv_path=None):
    """The vectors (float32 [n, dim]) and the ids, patients and labels that
    `medsearch export --vectors` wrote; csv_path defaults to VECTORS with
    .csv. Raises ExportError when the two do not fit together, OSError or
    ValueError when a file cannot be read."""
    csv_path = csv_path or os.path.splitext(vectors_path)[0] + ".csv"
    vec = np.load(vectors_path, allow_pickle=False)
    ids, patients, labels = read_metadata(csv_path)
    if vec.ndim != 2 or vec.dtype != np.float32:
        raise ExportError(f"{vectors_path} is {vec.dtype} {vec.shape}, want float32 [n, dim]")
    if len(ids) != vec.shape[0]:
        raise ExportError(f"{csv_path} has {len(ids)} rows for {vec.shape[0]} vectors")
    return vec, ids, patients, labels


def add_protocol_args(ap):
    """The options every tool over an export shares: relevance rule and k."""
    ap.add_argument("--rule", default="exact", choices=("any", "exact", "single"))
    ap.add_argument("-k", type=int, default=10)


def relevant(rule, a, b):
    if not a or not b:
        return False
    if rule == "single":
        return a[0] == b[0]
    if rule == "exact":
        return set(a) == set(b)
    return bool(set(a) & set(b))


def chance_ap(k, R, G):
    """E[AP@k] under a random ranking, by the law of total expectation over
    the number of hits among the ranks above each rank j: given rank j is
    relevant, the j-1 ranks above hold h ~ Hypergeometric(G-1, R-1, j-1)
    relevant images, and P@j = (h + 1) / j."""
    total = 0.0
    for j in range(1, min(k, G) + 1):
        n_above = j - 1
        e_h = n_above * (R - 1) / (G - 1) if G > 1 else 0.0
        total += (R / G) * (e_h + 1.0) / j
    return total / min(R, k)


def top(scores, ids, k):
    """The first k of a score row ranked by score descending, then smaller
    id. Only the candidates scoring at least the k-th best are sorted."""
    if k < len(scores):
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        cand = np.nonzero(scores >= kth)[0]
    else:
        cand = np.arange(len(scores))
    return cand[np.lexsort((ids[cand], -scores[cand]))][:k]


def centre(vec, center):
    """l2(v - c) per row, in float64; rows within 1e-6 of c stay as they are."""
    d = vec - center.astype(np.float64)[None, :]
    norms = np.linalg.norm(d, axis=1)
    keep = ~(norms >= 1e-6)
    out = d / np.where(keep, 1.0, norms)[:, None]
    out[keep] = vec[keep]
    return out


def prepare(vec, ids, patients, labels, rule, center=None):
    """Everything the protocol needs, in ascending id order: the vectors
    (centred when a center is given, float64), patient groups, relevance,
    similarities and gallery sizes."""
    n = len(ids)
    ids_arr = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids_arr, kind="stable")
    vec = vec[order].astype(np.float64)
    ids_arr = ids_arr[order]
    patients = [patients[i] for i in order]
    labels = [labels[i] for i in order]
    norms = np.linalg.norm(vec, axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-3):
        raise SystemExit("eval_check: exported vectors are not L2-normalised")
    if center is not None:
        vec = centre(vec, center)

    # Patient groups: unknown patients are their own group.
    group = np.empty(n, dtype=np.int64)
    keys = {}
    for i, p in enumerate(patients):
        group[i] = keys.setdefault(p, len(keys)) if p is not None else -(i + 1)

    # Relevance through the distinct label lists (few), then broadcast.
    distinct, set_of = {}, np.empty(n, dtype=np.int64)
    for i, lab in enumerate(labels):
        set_of[i] = distinct.setdefault(tuple(lab), len(distinct))
    lists = list(distinct)
    m = np.array([[relevant(rule, list(a), list(b)) for b in lists] for a in lists], dtype=bool)
    rel = m[set_of[:, None], set_of[None, :]] if n else np.zeros((0, 0), dtype=bool)
    np.fill_diagonal(rel, False)
    gallery_size = np.array([int((group != group[q]).sum()) for q in range(n)], dtype=np.int64)
    return argparse.Namespace(n=n, vec=vec, ids=ids_arr, labels=labels, group=group, rel=rel,
                              sims=vec @ vec.T, gallery_size=gallery_size)


def expand(d, q, qv, gallery, qe):
    """The query vector qv plus its top-qe results in gallery, re-normalised."""
    if qe <= 0:
        return qv
    best = top(np.where(gallery, d.vec @ qv, -np.inf), d.ids, min(qe, int(gallery.sum())))
    out = qv + d.vec[best].sum(axis=0)
    return out / np.linalg.norm(out)


def score(d, q, best, R, G, k, cuts):
    """One scored query: its ranked results best (indices), R and G."""
    r = d.rel[q, best].astype(float)
    hits = np.cumsum(r)
    ap = float((hits / np.arange(1, len(r) + 1) * r).sum() / min(R, k))
    p = {c: (float(hits[min(c, len(r)) - 1]) if len(r) else 0.0) / c for c in cuts}
    chance_p = {c: min(c, G) * R / (G * c) for c in cuts}
    return {"id": int(d.ids[q]), "scored": True, "R": R, "G": G, "ap": ap, "p": p,
            "chance_ap": chance_ap(k, R, G), "chance_p": chance_p, "labels": d.labels[q]}


def unscored(d, q):
    return {"id": int(d.ids[q]), "scored": False, "labelled": bool(d.labels[q])}


def evaluate(vec, ids, patients, labels, rule, k, qe, center=None):
    d = prepare(vec, ids, patients, labels, rule, center)
    cuts = [c for c in (1, 5, k) if c <= k]
    sims = d.sims
    if qe > 0:
        # Expanded queries: each query plus its top-qe results (in its own
        # gallery), summed and re-normalised, then searched again - all
        # queries in one matrix product.
        expanded = d.vec.copy()
        for q in range(d.n):
            s = np.where(d.group != d.group[q], sims[q], -np.inf)
            expanded[q] += d.vec[top(s, d.ids, min(qe, int(d.gallery_size[q])))].sum(axis=0)
        expanded /= np.linalg.norm(expanded, axis=1, keepdims=True)
        sims = expanded @ d.vec.T
    per = []
    for q in range(d.n):
        gallery = d.group != d.group[q]
        G = int(d.gallery_size[q])
        R = int((d.rel[q] & gallery).sum())
        if not d.labels[q] or R == 0:
            per.append(unscored(d, q))
            continue
        s = np.where(gallery, sims[q], -np.inf)
        per.append(score(d, q, top(s, d.ids, min(k, G)), R, G, k, cuts))
    return per, cuts


def evaluate_feedback(vec, ids, patients, labels, rule, k, qe, n_judged, like_w, unlike_w, center=None):
    """`eval --feedback N`: the first round's k + N results; the first N are
    marked like (relevant) or unlike; the second round searches with
    l2(q + like_w mean(like) - unlike_w mean(unlike)), expanded with its top
    qe among the images not judged. Both rounds are scored on the residual
    gallery: the first by its results after the N, the second by its k."""
    d = prepare(vec, ids, patients, labels, rule, center)
    cuts = [c for c in (1, 5, k) if c <= k]
    first, second = [], []
    for q in range(d.n):
        gallery = d.group != d.group[q]
        if not d.labels[q] or not (d.rel[q] & gallery).any():
            first.append(unscored(d, q))
            second.append(unscored(d, q))
            continue
        qv = d.vec[q]
        x = expand(d, q, qv, gallery, qe)
        shown = top(np.where(gallery, d.vec @ x, -np.inf), d.ids, min(k + n_judged, int(gallery.sum())))
        judged = shown[:n_judged]
        rest = gallery.copy()
        rest[judged] = False
        G, R = int(rest.sum()), int((d.rel[q] & rest).sum())
        if R == 0:
            first.append(unscored(d, q))
            second.append(unscored(d, q))
            continue
        first.append(score(d, q, shown[n_judged:], R, G, k, cuts))
        like, unlike = judged[d.rel[q, judged]], judged[~d.rel[q, judged]]
        moved = qv.copy()
        if len(like):
            moved = moved + like_w * d.vec[like].mean(axis=0)
        if len(unlike):
            moved = moved - unlike_w * d.vec[unlike].mean(axis=0)
        moved /= np.linalg.norm(moved)
        y = expand(d, q, moved, rest, qe)
        second.append(score(d, q, top(np.where(rest, d.vec @ y, -np.inf), d.ids, min(k, G)), R, G, k, cuts))
    return first, second, cuts


def summarise(per, cuts, k, n_images):
    scored = [x for x in per if x["scored"]]
    m = len(scored)
    out = {
        "images": n_images,
        "queries": {"total": len(per), "scored": m,
                    "unlabelled": sum(1 for x in per if not x["scored"] and not x["labelled"]),
                    "no_relevant": sum(1 for x in per if not x["scored"] and x["labelled"])},
        "metrics": {}, "chance": {}, "per_label": {},
    }
    for c in cuts:
        out["metrics"][f"P@{c}"] = sum(x["p"][c] for x in scored) / m if m else 0.0
        out["chance"][f"P@{c}"] = sum(x["chance_p"][c] for x in scored) / m if m else 0.0
    out["metrics"][f"mAP@{k}"] = sum(x["ap"] for x in scored) / m if m else 0.0
    out["chance"][f"mAP@{k}"] = sum(x["chance_ap"] for x in scored) / m if m else 0.0
    by_label = {}
    for x in scored:
        for lab in x["labels"]:
            by_label.setdefault(lab, []).append(x)
    for lab, xs in by_label.items():
        out["per_label"][lab] = {"queries": len(xs),
                                 f"P@{k}": sum(x["p"][k] for x in xs) / len(xs),
                                 f"chance_P@{k}": sum(x["chance_p"][k] for x in xs) / len(xs)}
    return out


def compare(mine, theirs, tol):
    """Lists every figure that differs by more than tol, and the largest
    difference seen."""
    bad, worst = [], 0.0
    t_center = theirs.get("center", {}).get("on")
    if t_center is not None and bool(t_center) != mine["centered"]:
        bad.append(f"centering: check {'on' if mine['centered'] else 'off'}, eval {'on' if t_center else 'off'}")
    t_q = theirs.get("queries", {})
    for key, v in mine["queries"].items():
        if t_q.get(key) != v:
            bad.append(f"queries.{key}: check {v}, eval {t_q.get(key)}")
    for part in ("metrics", "chance"):
        for key, v in mine[part].items():
            w = theirs.get(part, {}).get(key)
            if w is None or not math.isfinite(w) or abs(v - w) > tol:
                bad.append(f"{part}.{key}: check {v:.17g}, eval {w}")
            else:
                worst = max(worst, abs(v - w))
    t_lab = {ascii_lower(x["label"]): x for x in theirs.get("per_label", [])}
    for lab, v in mine["per_label"].items():
        w = t_lab.get(lab)
        if w is None:
            bad.append(f"per_label.{lab}: missing in eval")
            continue
        for key, val in v.items():
            if key not in w or abs(val - w[key]) > tol:
                bad.append(f"per_label.{lab}.{key}: check {val!r}, eval {w.get(key)!r}")
            else:
                worst = max(worst, abs(val - w[key]))
    if len(t_lab) != len(mine["per_label"]):
        bad.append(f"per_label: check has {len(mine['per_label'])} labels, eval {len(t_lab)}")
    return bad, worst


def compare_per_query(per, path, k, tol, suffix=""):
    """Compares every query's AP@k and P@k with `medsearch eval --per-query`
    (suffix "_A" or "_B": one side of a two-configuration report)."""
    bad = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = {int(r["id"]): r for r in csv.DictReader(f)}
    for x in per:
        r = rows.get(x["id"])
        if r is None:
            bad.append(f"query {x['id']}: missing in {path}")
            continue
        r = {key[:-len(suffix)] if suffix and key.endswith(suffix) else key: v for key, v in r.items()}
        if (r["scored"] == "1") != x["scored"]:
            bad.append(f"query {x['id']}: scored {x['scored']} here, {r['scored']} in eval")
            continue
        if not x["scored"]:
            continue
        if int(r["R"]) != x["R"] or int(r["G"]) != x["G"]:
            bad.append(f"query {x['id']}: R/G {x['R']}/{x['G']} here, {r['R']}/{r['G']} in eval")
        for key, v in ((f"AP@{k}", x["ap"]), (f"P@{k}", x["p"][k]), (f"chance_AP@{k}", x["chance_ap"])):
            if abs(float(r[key]) - v) > tol:
                bad.append(f"query {x['id']}: {key} {v!r} here, {r[key]} in eval")
    if len(rows) != len(per):
        bad.append(f"{path} has {len(rows)} queries, the export {len(per)}")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vectors")
    ap.add_argument("--csv", help="ids and metadata (default: VECTORS with .csv)")
    ap.add_argument("--center", help="the collection's center (default: VECTORS with .center.npy, if present)")
    ap.add_argument("--no-center", action="store_true", help="rank by plain cosine even if a center file exists")
    add_protocol_args(ap)
    ap.add_argument("--qe", type=int, default=0)
    ap.add_argument("--compare", help="JSON written by medsearch eval --json")
    ap.add_argument("--per-query", help="CSV written by medsearch eval --per-query")
    ap.add_argument("--feedback", type=int, default=0,
                    help="N: check `eval --feedback N` (both rounds, on the residual galleries)")
    ap.add_argument("--like-weight", type=float, default=2.0)
    ap.add_argument("--unlike-weight", type=float, default=1.0)
    ap.add_argument("--tolerance", type=float, default=1e-9)
    a = ap.parse_args()
    if a.k < 1 or a.qe < 0:
        print("eval_check: k must be >= 1 and qe >= 0", file=sys.stderr)
        return 2
    center_path = None
    if not a.no_center:
        center_path = a.center or os.path.splitext(a.vectors)[0] + ".center.npy"
        if not a.center and not os.path.exists(center_path):
            center_path = None
    center = None
    try:
        vec, ids, patients, labels = read_export(a.vectors, a.csv)
        if center_path:
            center = np.load(center_path, allow_pickle=False)
    except ExportError as e:
        print(f"eval_check: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as e:
        print(f"eval_check: cannot read the export: {e}", file=sys.stderr)
        return 2
    if center is not None and (center.dtype != np.float32 or center.shape != (vec.shape[1],)
                               or not np.all(np.isfinite(center))):
        print(f"eval_check: {center_path} is {center.dtype} {center.shape}, want finite float32 "
              f"[{vec.shape[1]}]", file=sys.stderr)
        return 2
    if a.feedback > 0:
        rounds = evaluate_feedback(vec, ids, patients, labels, a.rule, a.k, a.qe, a.feedback, a.like_weight,
                                   a.unlike_weight, center)
        pers, cuts = rounds[:2], rounds[2]
    else:
        per, cuts = evaluate(vec, ids, patients, labels, a.rule, a.k, a.qe, center)
        pers = [per]
    mines = []
    for per in pers:
        mine = summarise(per, cuts, a.k, len(ids))
        mine["protocol"] = {"rule": a.rule, "k": a.k, "qe": a.qe}
        mine["centered"] = center is not None
        mines.append(mine)
    if a.feedback > 0:
        both = [(x["ap"], y["ap"]) for x, y in zip(*pers) if x["scored"] and y["scored"]]
        diffs = np.array([y - x for x, y in both])
        paired = {"n": len(both), "diff": float(diffs.mean()) if len(both) else 0.0,
                  "se": float(diffs.std(ddof=1) / math.sqrt(len(both))) if len(both) > 1 else float("nan")}
        print(json.dumps({"configs": mines, "paired": {f"mAP@{a.k}": paired}}, indent=1, sort_keys=True))
    else:
        print(json.dumps(mines[0], indent=1, sort_keys=True))
    if not a.compare:
        return 0
    with open(a.compare, encoding="utf-8") as f:
        theirs = json.load(f)
    bad, worst = [], 0.0
    if a.feedback > 0:
        fb = theirs.get("feedback", {})
        if (fb.get("judged"), fb.get("like_weight"), fb.get("unlike_weight")) != (a.feedback, a.like_weight,
                                                                                   a.unlike_weight):
            bad.append(f"feedback: check {a.feedback} judged, weights {a.like_weight}/{a.unlike_weight}; eval {fb}")
        t_cfgs = theirs.get("configs", [])
        if len(t_cfgs) != 2:
            bad.append(f"configs: eval has {len(t_cfgs)}, want the two rounds")
            t_cfgs = [{}, {}]
        for mine, t in zip(mines, t_cfgs):
            b, w = compare(mine, t, a.tolerance)
            bad += b
            worst = max(worst, w)
        t_pair = theirs.get("paired", {}).get(f"mAP@{a.k}", {})
        for key in ("n", "diff", "se"):
            v, w = paired[key], t_pair.get(key)
            if w is None or abs(v - w) > a.tolerance:
                bad.append(f"paired.{key}: check {v!r}, eval {w!r}")
    else:
        bad, worst = compare(mines[0], theirs, a.tolerance)
    if a.per_query:
        for per, sfx in zip(pers, ("_A", "_B") if a.feedback > 0 else ("",)):
            bad += compare_per_query(per, a.per_query, a.k, a.tolerance, sfx)
    for b in bad[:50]:
        print("DIFFERS", b)
    print(f"eval_check: {'agree' if not bad else 'DISAGREE'} within {a.tolerance:g} "
          f"({len(bad)} differences, largest agreeing difference {worst:.3g}, "
          f"{mines[0]['queries']['scored']} queries scored, {'centred' if center is not None else 'plain cosine'}"
          f"{', both rounds of feedback on ' + str(a.feedback) if a.feedback > 0 else ''})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
