"""Convergence-driven clustering iterations (``--iterations auto`` / ``--tol``) against a fixed number of rounds.

On the first --limit BSDS500 --split images at K=--k (no prior, bundled encoder), the features of each image are
computed once; then each setting clusters them (+ connectivity) and the table reports the mean ASA (over annotators,
then images), the rounds actually run (mean and max) and the clustering CPU time (cluster + connectivity, one
thread, summed over the images; best of --repeats passes over the images). ``fixed10`` is 10 rounds with no stop at all
(tol < 0); ``10`` is the default (10 rounds, stopping only at a fixed point: the same labels); ``auto`` is
``--iterations auto``; ``auto@T`` is auto with --tol T; ``N@T`` is at most N rounds with --tol T.

    python benchmarks/bench_iterations.py [--split test] [--limit 50] [--k 400] [--settings fixed10,10,auto,...]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from spam_stream.datasets import BSDS500, default_bsds_root
from spam_stream.metrics import asa
from spam_stream.model import SPAM, resolve_iterations

SETTINGS = ["fixed10", "10", "auto", "auto@0.01", "auto@0.02", "auto@0.005"]


def parse_setting(name: str) -> tuple[int, float]:
    """(cap, tol) of a setting name."""
    if name.startswith("fixed"):
        return int(name[5:]), -1.0
    its, _, tol = name.partition("@")
    return resolve_iterations(its if its == "auto" else int(its), float(tol) if tol else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--k", type=int, default=400)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and numba threads (default 1: timings stay comparable on a loaded machine)")
    args = ap.parse_args()
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    root = default_bsds_root()
    if root is None or not (root / "data" / "images" / args.split).is_dir():
        raise SystemExit(f"error: BSDS500 not found at {root or '../shared/datasets/bsds500'} (set SPAM_BSDS_ROOT)")
    samples = list(BSDS500(root, args.split))[: args.limit]
    model = SPAM()
    prepared = []
    for s in samples:  # features once per image: every setting clusters the same ones
        frame = model.frame(s.image, args.k)
        model.prior_stage(frame)
        model.seed_stage(frame)
        model.feature_stage(frame)
        prepared.append((s, frame))
    settings = [x for x in args.settings.split(",") if x]
    print(f"{len(samples)} BSDS500 {args.split} images, K={args.k}, bundled encoder; cluster+connectivity CPU time, "
          f"best of {args.repeats}, {args.threads} thread(s); load average {os.getloadavg()[0]:.2f}")
    print(f"{'setting':>12} | {'ASA':>7} | {'ΔASA vs fixed10':>15} | {'rounds mean':>11} | {'max':>3} | "
          f"{'ms / image':>10}")
    base = None
    for name in settings:
        cap, tol = parse_setting(name)
        best = float("inf")
        for _ in range(args.repeats):
            scores, rounds, spent = [], [], 0.0
            for s, frame in prepared:
                frame.iterations, frame.tol = cap, tol
                t = time.process_time()
                model.cluster_stage(frame)
                labels = model.connectivity_stage(frame).labels
                spent += time.process_time() - t
                rounds.append(frame.meta["iterations"])
                scores.append(np.mean([asa(labels, g) for g in s.gts]))
            best = min(best, spent)
        score = float(np.mean(scores))
        base = score if base is None else base
        print(f"{name:>12} | {score:.4f} | {score - base:+15.4f} | {np.mean(rounds):11.2f} | {max(rounds):3d} | "
              f"{1e3 * best / len(prepared):10.1f}")


if __name__ == "__main__":
    main()
