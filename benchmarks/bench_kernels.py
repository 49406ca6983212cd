"""Clustering kernels: torch reference vs the CPU fast path, against the bytes-moved floor.

Setting (issue 3): a 481x321 image, D=20 features, K=400 superpixels, 10 hard iterations (+ the final assignment),
with a prior partition that has -1 regions (object-seed table layout). Both paths run in the same process on the
same inputs; median of --repeats runs. The floor is the bytes the fused pass must touch per pass (features,
candidate table, pixel objects read; labels written; centroids negligible) divided by this machine's copy bandwidth
(measured here with a large numpy copy, bytes read + written).

    python benchmarks/bench_kernels.py [--repeats 5]

Last line: ``kernels: speedup_vs_reference=<x> ratio_to_floor=<y>``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from spam_stream.candidates import object_candidates
from spam_stream.clustering import as_pixel_rows, initial_centroids
from spam_stream.encoder import Encoder, fold_batchnorm
from spam_stream.features import pixel_features
from spam_stream.kernels import cpu, reference
from spam_stream.seeding import object_seeds

H, W, D, K, ITERS = 321, 481, 20, 400, 10


def bench_image():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "bsds500", "data", "images",
                        "test", "100007.jpg")
    if os.path.isfile(path):
        from PIL import Image
        return np.asarray(Image.open(path).convert("RGB"))[:H, :W], "BSDS500 test/100007.jpg"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "random image"


def bench_prior(seed=0):
    """Voronoi objects with -1 bands between them and two -1 blobs (≈12% uncertain pixels)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([0, 0], [H, W], size=(25, 2))
    yy, xx = np.mgrid[:H, :W]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    part = d.argmin(-1).astype(np.int32)
    two = np.sort(d, -1)[..., :2]
    part[np.sqrt(two[..., 1]) - np.sqrt(two[..., 0]) < 2] = -1
    part[(yy - 80) ** 2 + (xx - 120) ** 2 < 40 ** 2] = -1
    part[(yy - 250) ** 2 + (xx - 380) ** 2 < 30 ** 2] = -1
    return part


def copy_bandwidth(n_bytes=256 << 20, repeats=5) -> float:
    """Bytes per second of a large memcpy (counting bytes read + written)."""
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 2 * n_bytes / min(times)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    image, source = bench_image()
    prior = bench_prior()
    enc = fold_batchnorm(Encoder(D, 16).eval())
    feats = as_pixel_rows(pixel_features(image, K, enc))
    seeds = object_seeds(prior, K)
    cands = object_candidates(prior, seeds)
    init = initial_centroids(feats, torch.from_numpy(seeds.init_labels), len(seeds))

    cpu.hard_iterations(feats, init, cands, 1)  # compile (cached on disk after the first run)
    runs = {}
    for name, impl in (("reference", reference), ("cpu", cpu)):
        runs[name] = median_time(lambda: impl.hard_iterations(feats, init, cands, ITERS), args.repeats)
    same = torch.equal(reference.hard_iterations(feats, init, cands, ITERS)[0], cpu.hard_iterations(feats, init, cands, ITERS)[0])

    n = H * W
    per_pass = n * D * 4 + n * 9 * 4 + n * 4 + n * 4  # features, table, pixel objects (read); labels (write)
    passes = ITERS + 1
    bw = copy_bandwidth()
    floor = passes * per_pass / bw
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(f"input: {source}, {H}x{W}, D={D}, K={len(seeds)} object seeds, {(prior < 0).mean():.1%} uncertain pixels, "
          f"{ITERS} hard iterations + final assignment")
    print(f"copy bandwidth: {bw / 1e9:.1f} GB/s (read+write); bytes per pass: {per_pass / 1e6:.1f} MB")
    print()
    print(f"| path | median time (ms) | per pass (ms) | vs floor |")
    print(f"|---|---|---|---|")
    print(f"| floor (bytes / bandwidth) | {floor * 1e3:.1f} | {floor / passes * 1e3:.2f} | 1.0 |")
    for name, t in runs.items():
        print(f"| {name} | {t * 1e3:.1f} | {t / passes * 1e3:.2f} | {t / floor:.1f} |")
    print()
    print(f"labels identical: {same}")
    print(f"kernels: speedup_vs_reference={runs['reference'] / runs['cpu']:.1f} ratio_to_floor={runs['cpu'] / floor:.1f}")


if __name__ == "__main__":
    main()
