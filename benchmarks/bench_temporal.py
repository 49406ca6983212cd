"""Temporal coherence on pans with known motion: coherent frames vs --independent, in one run.

    python benchmarks/bench_temporal.py [--images 5] [--frames 12] [--speeds 2,8] [--directions x,y,-x,-y]
                                        [--encoder default|none] [-k 400] [--threads 1]

Clips are made here, losslessly, from BSDS500 test images (the first --images; samples/coffee.jpg without the
dataset, then with no ground truth): a window of (H − 96) x (W − 96) pixels that pans by S px/frame to the right
(``x``) or down (``y``), and back (``-x``, ``-y``), for each speed S in --speeds, plus a still clip (the window
does not move). The ground truths are cropped alike. The frames go to ``video_frames`` as arrays (no codec), one
frame at a time (``pipelined=False``), coherent and independent on the same frames.

Reported per clip kind (averaged over the images): label consistency under the known motion (the fraction of the
pixels present in both frames whose id in frame t+1 equals the id of the same content in frame t), mean per-frame
ASA (mean over annotators) and its difference coherent − independent, frames/s of each mode and their ratio,
clustering rounds run per frame (after the first), and the share of the encoder recomputed per frame. The
speed-up is also given in CPU time (one thread: robust to other jobs on a shared machine).
Targets (issue 23): pans at 2 and 8 px/frame: ASA within 0.002 of independent, consistency ≥ 0.9 (2 px) and ≥ 0.8
(8 px), frames/s ≥ 1.3× independent; still clip ≥ 2× independent with ids unchanged.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from spam_stream import SPAM  # noqa: E402
from spam_stream.metrics import asa  # noqa: E402
from spam_stream.pipelines.video import video_frames  # noqa: E402

MARGIN = 96


def sources(n: int):
    """[(name, image, gts)] of the first n BSDS500 test images (or the bundled sample without ground truth)."""
    from spam_stream.datasets import BSDS500, default_bsds_root

    root = default_bsds_root()
    if root is not None and (root / "data" / "images" / "test").is_dir():
        ds = BSDS500(root, "test")
        return [(ds.names[i], ds[i].image, ds[i].gts) for i in range(min(n, len(ds)))]
    from PIL import Image

    return [("coffee", np.asarray(Image.open(HERE.parent / "samples" / "coffee.jpg").convert("RGB")), [])]


def pan(image, gts, n: int, speed: int, axis: str):
    """n frames (and cropped ground truths) of a window moving ``speed`` px/frame along ``axis`` ('x', 'y', 'still';
    '-x', '-y': the other way)."""
    if axis.startswith("-"):
        frames, truths = pan(image, gts, n, speed, axis[1:])
        return frames[::-1], truths[::-1]
    h, w = image.shape[0] - MARGIN, image.shape[1] - MARGIN
    frames, truths = [], []
    for i in range(n):
        off = min(MARGIN, i * speed) if axis != "still" else MARGIN // 2
        y, x = (off, MARGIN // 2) if axis == "y" else (MARGIN // 2, off) if axis == "x" else (off, off)
        frames.append(np.ascontiguousarray(image[y:y + h, x:x + w]))
        truths.append([g[y:y + h, x:x + w] for g in gts])
    return frames, truths


def consistency(prev: np.ndarray, cur: np.ndarray, dy: int, dx: int) -> float:
    """Fraction of the pixels of ``cur`` whose content was in ``prev`` (moved by dy, dx) that keep its id."""
    h, w = cur.shape
    a = cur[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
    b = prev[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
    return float((a == b).mean())


def run(model, frames, truths, k, coherent, step):
    t, cpu = time.perf_counter(), time.process_time()
    out = list(video_frames(model, iter(frames), k, coherent=coherent, pipelined=False))
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    cons = [consistency(a.labels, b.labels, *step) for a, b in zip(out, out[1:])]
    scores = [np.mean([asa(f.labels, g) for g in gt]) for f, gt in zip(out, truths) if gt]
    return {"fps": len(out) / wall, "cpu_fps": len(out) / cpu, "cons": statistics.mean(cons),
            "asa": statistics.mean(scores) if scores else float("nan"),
            "rounds": statistics.mean(f.meta.get("iterations", 0) for f in out[1:]),
            "tiles": statistics.mean(f.meta.get("tiles_recomputed", 1.0) for f in out[1:])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--speeds", default="2,8")
    ap.add_argument("--directions", default="x,y,-x,-y", help="x: window moving right, y: down, -x / -y: back")
    ap.add_argument("-k", "--superpixels", type=int, default=400)
    ap.add_argument("--encoder", default="default")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and numba threads (default 1: same-run ratios stay meaningful on a loaded machine)")
    args = ap.parse_args()
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    model = SPAM(encoder=args.encoder)
    kinds = [("still", 0, "still")] + [(f"{s} px/frame {a}", s, a) for s in map(int, args.speeds.split(","))
                                      for a in args.directions.split(",")]
    imgs = sources(args.images)
    f0, _ = pan(imgs[0][1], imgs[0][2], 3, 2, "x")
    list(video_frames(model, iter(f0), args.superpixels, pipelined=False))  # warm-up (numba, torch)
    rows = {}
    for name, image, gts in imgs:
        for kind, speed, axis in kinds:
            frames, truths = pan(image, gts, args.frames, speed, axis)
            sign = 1 if axis.startswith("-") else -1  # the window moves one way, the content the other
            step = (sign * speed, 0) if axis.endswith("y") else (0, sign * speed) if axis.endswith("x") else (0, 0)
            ind = run(model, frames, truths, args.superpixels, False, step)
            coh = run(model, frames, truths, args.superpixels, True, step)
            rows.setdefault(kind, []).append((ind, coh))
    print(f"{len(imgs)} images ({', '.join(n for n, _, _ in imgs)}), {args.frames} frames each, window "
          f"(H-{MARGIN})x(W-{MARGIN}), K={args.superpixels}, encoder {args.encoder}, one frame at a time, "
          f"{args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| clip | consistency coherent / independent | ASA coherent | ASA independent | ΔASA | frames/s coherent "
          "| frames/s independent | speed-up (wall) | speed-up (CPU time) | rounds / frame coherent / independent "
          "| encoder recomputed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, pairs in rows.items():
        m = {side: {key: statistics.mean(p[i][key] for p in pairs) for key in pairs[0][0]}
             for i, side in enumerate(("ind", "coh"))}
        # frames/s over all the clips of a kind: total frames / total time
        fps = {side: 1.0 / statistics.mean(1.0 / p[i]["fps"] for p in pairs) for i, side in enumerate(("ind", "coh"))}
        cpu = {side: 1.0 / statistics.mean(1.0 / p[i]["cpu_fps"] for p in pairs)
               for i, side in enumerate(("ind", "coh"))}
        print(f"| {kind} | {m['coh']['cons']:.3f} / {m['ind']['cons']:.3f} | {m['coh']['asa']:.4f} | "
              f"{m['ind']['asa']:.4f} | {m['coh']['asa'] - m['ind']['asa']:+.4f} | {fps['coh']:.2f} | "
              f"{fps['ind']:.2f} | {fps['coh'] / fps['ind']:.2f}x | {cpu['coh'] / cpu['ind']:.2f}x | "
              f"{m['coh']['rounds']:.1f} / "
              f"{m['ind']['rounds']:.1f} | {m['coh']['tiles']:.2f} |")


if __name__ == "__main__":
    main()
