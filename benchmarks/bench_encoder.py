"""Encoder inference on CPU.

``--part fold`` (default): as trained (BatchNorm, NCHW, no_grad) vs folded BatchNorm + channels-last + inference
mode, on a 481x321 input, for several widths. Random weights with non-trivial BN statistics; median of --repeats.

``--part fast``: the bundled encoder's forward at --size (1280x720) — the whole-frame forward (before tiling), the
tiled forward (default memory budget) and the fast encoder (``--encoder fast``: half resolution) — median wall and
CPU time of --repeats, all in one process.

``--part asa``: ASA / GR / ΔK at K=--k on the first --limit BSDS500 test images, default vs fast encoder (and any
--resolutions), same run.

    python benchmarks/bench_encoder.py [--part fold|fast|asa] [--repeats 7] [--size 1280x720] [--limit 50]
"""
from __future__ import annotations

import argparse

import os
import statistics
import time

import numpy as np
import torch
from PIL import Image

from spam_stream.encoder import Encoder, encode_learned, fast_encoder, fold_batchnorm
from timing import median_ms

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples", "coffee.jpg")




def cpu_and_wall(fn, repeats: int) -> tuple[float, float]:
    """Median (wall ms, CPU ms) of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return 1e3 * statistics.median(walls), 1e3 * statistics.median(cpus)


def part_fast(args):
    from spam_stream.features import scaled_lab_yx
    from spam_stream.model import SPAM

    w, h = map(int, args.size.split("x"))
    image = np.asarray(Image.open(SAMPLE).convert("RGB").resize((w, h)))
    default, fast = SPAM().encoder, SPAM(encoder="fast").encoder
    others = []
    for r in map(float, args.resolutions.split(",")):
        if r != fast.resolution:
            others.append((f"resolution {r:g}, tiled", fast_encoder(SPAM().encoder, r)))
    x = scaled_lab_yx(image, 1000)
    colour = x[:3].clone()

    def whole():
        with torch.inference_mode():
            return default(x[None].contiguous(memory_format=torch.channels_last))

    runs = [("whole-frame forward (before tiling)", whole),
            ("tiled forward, default budget", lambda: encode_learned(default, colour)),
            (f"--encoder fast: resolution {fast.resolution:g}, tiled", lambda: encode_learned(fast, colour))]
    runs += [(name, lambda enc=enc: encode_learned(enc, colour)) for name, enc in others]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {w}x{h}, bundled encoder (D=20, width "
          f"{default.width}); median of {args.repeats}")
    print("| encoder forward | wall (ms) | CPU (ms) | CPU vs whole-frame |")
    print("|---|---|---|---|")
    times = {}
    for name, fn in runs:  # interleaved repeats: the machine's load hits every row alike
        times[name] = []
    for _ in range(args.repeats):
        for name, fn in runs:
            times[name].append(cpu_and_wall(fn, 1))
    base = statistics.median(c for _, c in times[runs[0][0]])
    for name, _ in runs:
        wall, cpu = statistics.median(t for t, _ in times[name]), statistics.median(c for _, c in times[name])
        print(f"| {name} | {wall:.0f} | {cpu:.0f} | {base / cpu:.2f}x faster |")


def part_asa(args):
    from spam_stream.datasets import BSDS500
    from spam_stream.metrics import evaluate
    from spam_stream.model import SPAM

    ds = BSDS500(None, "test")
    n = min(args.limit, len(ds))
    models = [("default", SPAM())]
    for r in map(float, args.resolutions.split(",")):
        m = SPAM()
        fast_encoder(m.encoder, r)
        models.append((f"resolution {r:g}" + (" (--encoder fast)" if r == 0.5 else ""), m))
    rows = {name: [] for name, _ in models}
    for i in range(n):
        s = ds[i]
        for name, m in models:
            rows[name].append(evaluate(m.segment(s.image, args.k), s.gts, s.image, args.k))
    print(f"BSDS500 test, first {n} images, K={args.k}, no prior, same run")
    print("| encoder | ASA | ASA − default | GR | ΔK | min ASA diff per image |")
    print("|---|---|---|---|---|---|")
    ref = np.array([r["asa"] for r in rows["default"]])
    for name, _ in models:
        a = np.array([r["asa"] for r in rows[name]])
        gr = np.mean([r["gr"] for r in rows[name]])
        dk = np.mean([r["delta_k"] for r in rows[name]])
        print(f"| {name} | {a.mean():.4f} | {a.mean() - ref.mean():+.4f} | {gr:.3f} | {dk:.3f} | {(a - ref).min():+.4f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("fold", "fast", "asa"), default="fold")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--k", type=int, default=400)
    ap.add_argument("--resolutions", default="0.5", help="fast-encoder resolutions compared in --part fast/asa")
    args = ap.parse_args()
    if args.part == "fast":
        return part_fast(args)
    if args.part == "asa":
        return part_asa(args)
    torch.manual_seed(0)
    x = torch.randn(1, 5, 321, 481)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x5x321x481, D=20")
    print("| width | BN, NCHW, no_grad (ms) | folded, channels-last, inference_mode (ms) | speedup | max abs diff |")
    print("|---|---|---|---|---|")
    for width in (16, 32, 64):
        enc = Encoder(20, width)
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        enc.eval()

        def before():
            with torch.no_grad():
                return enc(x)

        fast = fold_batchnorm(enc)
        xc = x.contiguous(memory_format=torch.channels_last)

        def after():
            with torch.inference_mode():
                return fast(xc)

        diff = (before() - after()).abs().max().item()
        tb, ta = median_ms(before, args.repeats), median_ms(after, args.repeats)
        print(f"| {width} | {tb:.0f} | {ta:.0f} | {tb / ta:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
