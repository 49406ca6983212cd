"""Test-time knobs of the bundled encoder vs accuracy at fixed regularity (issue 11: can inference close the gap?).

Each variant changes one knob of hard SPAM inference on the first --limit BSDS500 --split images at K=--k (no
prior) and reports ASA, GR and ΔK. Regularity and accuracy trade against each other, so every variant is also
reported as *ASA at the baseline's GR*: its ASA moved along the ASA-GR slope measured in the same run between the
two λs rows (``base`` and ``ls-``). A knob helps only if that column beats the baseline.

Variants: ``base`` (the defaults), ``ls-`` (λs − 0.5), ``itN`` (N clustering iterations), ``msf0.25``
(min_size_factor), ``cs0.33`` (λc of the Lab channels), ``alpha1.25`` (learned channels × 1.25), ``flip``
(encoder channels averaged with those of the mirrored image).

    python benchmarks/bench_knobs.py [--split val] [--limit 50] [--k 400] [--variants base,ls-,it20,...]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from spam_stream.datasets import BSDS500, default_bsds_root
from spam_stream.features import SPATIAL_SCALE, pixel_features
from spam_stream.metrics import asa, delta_k, global_regularity
from spam_stream.model import SPAM

VARIANTS = ["base", "ls-", "it20", "it50", "msf0.25", "cs0.33", "alpha1.25", "flip"]


def variant_settings(name: str) -> tuple[dict, dict]:
    """(SPAM keyword arguments, feature post-processing options) of a variant name."""
    if name == "base":
        return {}, {}
    if name == "ls-":
        return {"compactness": SPATIAL_SCALE - 0.5}, {}
    if name.startswith("it"):
        return {"iterations": int(name[2:])}, {}
    if name.startswith("msf"):
        return {"min_size_factor": float(name[3:])}, {}
    if name.startswith("cs"):
        return {"color_scale": float(name[2:])}, {}
    if name.startswith("alpha"):
        return {}, {"alpha": float(name[5:])}
    if name == "flip":
        return {}, {"flip": True}
    raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")


def run_variant(samples, k: int, spam_kwargs: dict, post: dict) -> tuple[float, float, float, float]:
    """Mean ASA (over annotators, then images), mean GR, mean ΔK and seconds for one variant."""
    model = SPAM(**spam_kwargs)
    scores, grs, dks = [], [], []
    t0 = time.perf_counter()
    for s in samples:
        frame = model.frame(s.image, k)
        model.prior_stage(frame)
        model.seed_stage(frame)
        model.feature_stage(frame)
        learned = frame.features[5:]
        if post.get("flip"):  # the encoder on the mirrored image, mirrored back and averaged
            mirrored = pixel_features(np.ascontiguousarray(s.image[:, ::-1]), k, model.encoder, model.color_scale,
                                      model.compactness)
            learned.add_(torch.flip(mirrored[5:], [2])).mul_(0.5)
        if post.get("alpha", 1.0) != 1.0:
            learned.mul_(post["alpha"])
        model.cluster_stage(frame)
        labels = model.connectivity_stage(frame).labels
        scores.append(np.mean([asa(labels, g) for g in s.gts]))
        grs.append(global_regularity(labels)["gr"])
        dks.append(delta_k(labels, k))
    return float(np.mean(scores)), float(np.mean(grs)), float(np.mean(dks)), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--k", type=int, default=400)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    for required in ("base", "ls-"):  # the slope needs both
        if required not in names:
            names.insert(0, required)
    try:
        ds = BSDS500(default_bsds_root(), args.split)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    samples = [ds[i] for i in range(min(args.limit, len(ds)))]
    rows = {}
    for name in names:
        rows[name] = run_variant(samples, args.k, *variant_settings(name))
        print(f"  {name}: ASA {rows[name][0]:.4f} GR {rows[name][1]:.3f} ({rows[name][3]:.0f} s)", flush=True)
    (a0, g0, *_), (a1, g1, *_) = rows["base"], rows["ls-"]
    slope = (a1 - a0) / (g1 - g0) if g1 != g0 else 0.0  # ASA per unit of GR along the λs curve (negative)
    print(f"\n{len(samples)} {args.split} images, K={args.k}, no prior; ASA-GR slope along λs: {slope:.4f}\n")
    print("| variant | ASA | GR | ΔK | ASA at the baseline's GR | − baseline | s |")
    print("|---|---|---|---|---|---|---|")
    for name, (a, g, dk, sec) in rows.items():
        matched = a + slope * (g0 - g)
        print(f"| {name} | {a:.4f} | {g:.3f} | {dk:.4f} | {matched:.4f} | {matched - a0:+.4f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
