#!/usr/bin/python3
"""What would a configuration gain on a held-out set of a given size and make-up?
The measurement behind "The issue's targets" in docs/evaluation.md.

A held-out evaluation set is smaller than the collection it was split from, and
its label mix may differ (Kermany's official test split, for one, has 234
NORMAL, 242 bacterial and 148 viral pneumonia images). Both change mAP@k and
the gain of one configuration over another. This tool draws patient-disjoint
sets of that size, or of that make-up, from a labelled collection and scores
each draw under two configurations with eval_check.py's implementation of the
evaluation protocol, paired per draw:

  BASE.npy, CAND.npy  the same images exported from two collections
                      (`medsearch export --vectors`; e.g. one ingested with
                      --pool avg, one with the defaults), or one file twice
  --base-center/--cand-center on|off   centred on the draw's own mean (what
                      the engine would compute for that collection) or plain
  --base-qe/--cand-qe N                query expansion

Draws are whole patients at a time (--size N), or, with --compose
"LABELS=N,...", whole patients within each exact label set ("normal=234,
pneumonia|bacteria=242,..."; a patient with images of two sets may be drawn
for either). Prints the mean chance mAP@k of the draws, both configurations'
mean mAP@k, and their paired difference over the draws with its standard error
and its standard deviation: the SE says how well the mean gain is known, the SD
how far one held-out set of that size may stray from it.

Usage:
  heldout_draws.py BASE.npy CAND.npy [--rule exact] [-k 10]
                   (--size N | --compose SPEC) [--draws 20] [--seed 1]
                   [--base-center off] [--base-qe 0] [--cand-center on] [--cand-qe 3]
Run with /usr/bin/python3 (Debian's numpy).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import eval_check  # noqa: E402
from center_sizes import draw, group_by_patient  # noqa: E402


def load_export(path):
    try:
        vec, ids, patients, labels = eval_check.read_export(path)
    except (OSError, ValueError) as e:
        sys.exit(f"heldout_draws: {e}")
    return vec.astype(np.float64), ids, patients, labels


def label_key(labels):
    return "|".join(sorted(labels))


def parse_compose(spec):
    """'NORMAL=234,PNEUMONIA|VIRUS=148' -> {label key: count}, keys as read_metadata spells them."""
    want = {}
    for item in spec.split(","):
        name, sep, count = item.rpartition("=")
        if not sep or not name or not count.isdigit() or int(count) < 1:
            sys.exit(f"heldout_draws: bad --compose item '{item}' (want LABELS=COUNT)")
        want[label_key(eval_check.ascii_lower(x) for x in name.split("|"))] = int(count)
    return want


def composed_draw(rng, groups_by_key, want):
    pick = []
    for key, count in want.items():
        pick += draw(rng, groups_by_key[key], count)
    return pick


def score(vec, sub, rule, k, qe, centred):
    per, _ = eval_check.evaluate(vec, *sub, rule, k, qe, vec.mean(axis=0) if centred else None)
    scored = [x for x in per if x["scored"]]
    if not scored:
        return None, None
    return float(np.mean([x["ap"] for x in scored])), float(np.mean([x["chance_ap"] for x in scored]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("cand")
    eval_check.add_protocol_args(ap)
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--size", type=int)
    how.add_argument("--compose")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--base-center", default="off", choices=("on", "off"))
    ap.add_argument("--base-qe", type=int, default=0)
    ap.add_argument("--cand-center", default="on", choices=("on", "off"))
    ap.add_argument("--cand-qe", type=int, default=3)
    a = ap.parse_args()

    base, ids, patients, labels = load_export(a.base)
    cand, ids2, patients2, labels2 = load_export(a.cand)
    if (ids, patients, labels) != (ids2, patients2, labels2):
        sys.exit("heldout_draws: the two exports do not list the same images in the same order")
    rng = np.random.default_rng(a.seed)
    if a.size is not None:
        if a.size <= a.k or a.size > len(ids):
            sys.exit(f"heldout_draws: --size must be above k={a.k} and at most {len(ids)}")
        groups = group_by_patient(patients)
        next_draw = lambda: draw(rng, groups, a.size)  # noqa: E731
    else:
        want = parse_compose(a.compose)
        keys = [label_key(x) for x in labels]
        groups_by_key = {}
        for key, count in want.items():
            members = [i for i, x in enumerate(keys) if x == key]
            if len(members) < count:
                sys.exit(f"heldout_draws: --compose asks {count} images of '{key}', "
                         f"the collection has {len(members)}")
            groups = group_by_patient([patients[i] for i in members])
            groups_by_key[key] = [[members[j] for j in g] for g in groups]
        next_draw = lambda: composed_draw(rng, groups_by_key, want)  # noqa: E731

    got = []
    for _ in range(a.draws):
        pick = next_draw()
        sub = ([ids[i] for i in pick], [patients[i] for i in pick], [labels[i] for i in pick])
        b, chance = score(base[pick], sub, a.rule, a.k, a.base_qe, a.base_center == "on")
        c, _ = score(cand[pick], sub, a.rule, a.k, a.cand_qe, a.cand_center == "on")
        if b is not None and c is not None:  # a draw with no scored query says nothing
            got.append((b, c, chance, len(pick)))
    if not got:
        sys.exit("heldout_draws: no draw had a scored query")
    g = np.array(got)
    d = g[:, 1] - g[:, 0]
    sd = d.std(ddof=1) if len(d) > 1 else float("nan")
    print(f"draws {len(d)}  images {int(g[:, 3].mean())}  chance {g[:, 2].mean():.4f}  "
          f"base {g[:, 0].mean():.4f}  cand {g[:, 1].mean():.4f}  "
          f"cand - base {d.mean():+.4f} (SE {sd / np.sqrt(len(d)):.4f}, SD {sd:.4f})")


if __name__ == "__main__":
    main()
