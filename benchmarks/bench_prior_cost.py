"""What a prior costs (issue 22): ``segment()`` with vs without a prior, per stage, same run.

Rows: BSDS500 test images (481×321, K=400) with the ground-truth ("oracle") prior — the first annotator's
segmentation with a 1-px uncertain band, as ``spam-stream eval --prior oracle`` builds it — and a 1920×1080 frame
(samples/coffee.jpg resized, K=2000) with a 25-object and a 200-object Voronoi prior (1-px uncertain band between
the cells). Each configuration is timed as the median over --repeats calls after a warm-up, with and without the
prior, interleaved; the table shows ms per stage and the ratio with/without.

    python benchmarks/bench_prior_cost.py [--encoder none|default] [--device cpu|cuda] [--images 10] [--repeats 5]

Targets (issue 22, CPU): with a prior ≤ 1.25× without at BSDS and at 1080p (25 objects) with --encoder none; ≤ 1.1×
with the bundled encoder. GPU (H100): segment() 481×321 ≤ 10 ms, 1080p ≤ 20 ms, with or without a 25-object prior.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

STAGES = ("prior", "seeds", "features", "cluster", "connectivity")


def voronoi_prior(h: int, w: int, n_objects: int, seed: int = 0, band: bool = True) -> np.ndarray:
    """(H, W) int32: Voronoi cells of n random points, with a 1-px band of -1 on the cell boundaries."""
    from scipy.spatial import cKDTree
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(seed)
    pts = rng.uniform([0, 0], [h, w], size=(n_objects, 2))
    yy, xx = np.mgrid[:h, :w]
    part = cKDTree(pts).query(np.stack([yy.ravel(), xx.ravel()], 1))[1].reshape(h, w).astype(np.int32)
    if band:
        part[find_boundaries(part, mode="inner")] = -1
    return part


def time_config(model, images, priors, k, repeats, device):
    """Median ms per stage and in total, with (priors) and without a prior, interleaved call by call."""
    from spam_stream.frame import Frame

    def one(image, prior):
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        t = time.perf_counter()
        frame = Frame(index=0, key=None, image=image, n_superpixels=k, prior=prior)
        model.run_stages(frame)
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - t), {s: 1e3 * frame.timings.get(s, 0.0) for s in STAGES}, frame.labels

    results = {"with": [], "without": []}
    for image, prior in zip(images, priors):
        one(image, prior)  # warm-up (numba compile, caches)
        one(image, None)
        for _ in range(repeats):
            results["with"].append(one(image, prior))
            results["without"].append(one(image, None))
    out = {}
    for key, runs in results.items():
        out[key] = {"total": statistics.median(r[0] for r in runs)}
        for s in STAGES:
            out[key][s] = statistics.median(r[1][s] for r in runs)
        out[key]["k_out"] = statistics.mean(int(r[2].max()) + 1 for r in runs)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="none", help="none (D=5, the main target) or default (bundled encoder)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=10, help="BSDS500 test images (default 10)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", choices=["bsds", "1080p"], default=None)
    p.add_argument("--root", default=None, help="BSDS500 folder (default ../shared/datasets/bsds500)")
    args = p.parse_args(argv)

    import torch

    from spam_stream import SPAM
    from spam_stream.datasets import BSDS500, default_bsds_root, oracle_partition

    model = SPAM(encoder=None if args.encoder == "none" else args.encoder, device=args.device)
    device = model.device
    print(f"# bench_prior_cost: encoder={args.encoder} device={device} repeats={args.repeats} "
          f"torch threads={torch.get_num_threads()} load average {os.getloadavg()[0]:.2f}")
    rows = []
    if args.only in (None, "bsds"):
        root = args.root or default_bsds_root()
        if root is None:
            print("BSDS500 not found (pass --root or set SPAM_BSDS_ROOT): BSDS rows skipped")
        else:
            ds = BSDS500(root, "test")
            samples = [ds[i] for i in range(min(args.images, len(ds)))]
            images = [s.image for s in samples]
            priors = [oracle_partition(s.gts[0], band=1) for s in samples]
            rows.append((f"BSDS 481x321 K=400, GT prior ({len(images)} images)",
                         time_config(model, images, priors, 400, args.repeats, device)))
    if args.only in (None, "1080p"):
        image = np.asarray(Image.open(os.path.join(ROOT, "samples", "coffee.jpg")).convert("RGB")
                           .resize((1920, 1080), Image.BICUBIC))
        for n in (25, 200):
            rows.append((f"1920x1080 K=2000, {n}-object prior",
                         time_config(model, [image], [voronoi_prior(1080, 1920, n)], 2000, args.repeats, device)))
    head = "| frame | prior | total ms | " + " | ".join(STAGES) + " | K' |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, res in rows:
        for key in ("without", "with"):
            r = res[key]
            print(f"| {name} | {key} | {r['total']:.1f} | " + " | ".join(f"{r[s]:.1f}" for s in STAGES)
                  + f" | {r['k_out']:.0f} |")
        print(f"| {name} | **ratio** | **{res['with']['total'] / res['without']['total']:.2f}x** | "
              + " | ".join("" for _ in STAGES) + " | |")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
