"""Encoder inference on CPU.

``--part fold`` (default): as trained (BatchNorm, NCHW, no_grad) vs folded BatchNorm + channels-last + inference
mode, on a 481x321 input, for several widths. Random weights with non-trivial BN statistics; median of --repeats.

``--part fast``: the bundled encoder's forward at --size (1280x720) — the whole-frame forward (before tiling), the
tiled forward (default memory budget: what the default encoder runs) and the fast variants (--resolutions ×
--upsample bilinear/guided × --sigmas) — median wall and CPU time of --repeats interleaved repeats, one process.

``--part speed``: old vs new in one run, interleaved: the float32 path (the code of commit 8640962, kept as the
reference twin: ``float32_twin``, with every row in every clustering round, ``subsample=1``) vs the default CPU
encoder and row subsampling (int8 where the CPU runs it): the encoder forward at
481x321 and 1920x1080, and ``segment()`` with the bundled encoder at 481x321 K=400 and 1920x1080 K=2000; median wall
of --repeats, with the load average.

``--part quality``: the 50-image contract: ASA / GR at K=--k on the first --limit BSDS500 --split images, float32 with
every-row rounds (8640962) vs default (int8, row subsampling) for the bundled encoder and ``--encoder fast``.

``--part asa``: ASA / GR / ΔK at K=--k on the first --limit BSDS500 --split images (select σ on ``val``, report on
``test``), default vs the same fast variants, same run.

    python benchmarks/bench_encoder.py --part speed --repeats 5     # old vs new timings (idle machine)
    python benchmarks/bench_encoder.py --part quality --limit 50     # ASA/GR contract, float32 vs int8
    python benchmarks/bench_encoder.py [--part fold|fast|asa|speed|quality] [--repeats 7] [--size 1280x720] [--limit 50]
        [--split test] [--resolutions 0.5] [--upsample bilinear,guided] [--sigmas 4] [--supports 2]
"""
from __future__ import annotations

import argparse

import os
import statistics
import time

import numpy as np
import torch
from PIL import Image

from spam_stream.encoder import (DEFAULT_SIGMA, DEFAULT_SUPPORT, DEFAULT_UPSAMPLE, Encoder, encode_learned,
                                 fast_encoder, fold_batchnorm)
from spam_stream.features import FAST_SPATIAL_SCALE
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


def fast_variants(args, make):
    """[(name, encoder)] of the fast variants --resolutions × --upsample (guided: one per --sigmas), ``make()`` giving
    a fresh bundled encoder each time."""
    out = []
    for r in map(float, args.resolutions.split(",")):
        for mode in args.upsample.split(","):
            guided = [(float(s), float(t)) for s in args.sigmas.split(",") for t in args.supports.split(",")]
            for sigma, support in (guided if mode == "guided" else [(None, None)]):
                name = f"resolution {r:g}, {mode}" + ("" if sigma is None else f" σ={sigma:g} support {support:g}")
                kw = {} if sigma is None else {"sigma": sigma, "support": support}
                enc = fast_encoder(make(), r, upsample=mode, **kw)
                if (r, mode, sigma, support) == ((0.5, DEFAULT_UPSAMPLE, DEFAULT_SIGMA, DEFAULT_SUPPORT)
                                                 if DEFAULT_UPSAMPLE == "guided" else (0.5, "bilinear", None, None)):
                    name += " (--encoder fast)"
                out.append((name, enc))
    return out


def part_fast(args):
    from spam_stream.features import scaled_lab_yx
    from spam_stream.model import SPAM

    w, h = map(int, args.size.split("x"))
    image = np.asarray(Image.open(SAMPLE).convert("RGB").resize((w, h)))
    default = SPAM().encoder
    x = scaled_lab_yx(image, 1000)
    colour = x[:3].clone()

    def whole():
        with torch.inference_mode():
            return default(x[None].contiguous(memory_format=torch.channels_last))

    runs = [("whole-frame forward (before tiling)", whole),
            ("tiled forward, default budget (the default encoder)", lambda: encode_learned(default, colour))]
    variants = fast_variants(args, lambda: SPAM().encoder)
    runs += [(name, lambda enc=enc: encode_learned(enc, colour)) for name, enc in variants]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {w}x{h}, bundled encoder (D=20, width "
          f"{default.width}); median of {args.repeats} interleaved repeats")
    print("| encoder forward | wall (ms) | CPU (ms) | CPU: whole-frame ÷ this | CPU: tiled default ÷ this |")
    print("|---|---|---|---|---|")
    times = {}
    for name, fn in runs:  # interleaved repeats: the machine's load hits every row alike
        times[name] = []
        fn()  # warm-up (numba compilation, allocator)
    for _ in range(args.repeats):
        for name, fn in runs:
            times[name].append(cpu_and_wall(fn, 1))
    base = statistics.median(c for _, c in times[runs[0][0]])
    tiled = statistics.median(c for _, c in times[runs[1][0]])
    for name, _ in runs:
        wall, cpu = statistics.median(t for t, _ in times[name]), statistics.median(c for _, c in times[name])
        print(f"| {name} | {wall:.0f} | {cpu:.0f} | {base / cpu:.2f}× | {tiled / cpu:.2f}× |")


def part_asa(args):
    from spam_stream.datasets import BSDS500
    from spam_stream.metrics import evaluate
    from spam_stream.model import SPAM

    ds = BSDS500(None, args.split)
    n = min(args.limit, len(ds))
    models = [("default", SPAM())]
    for name, enc in fast_variants(args, lambda: SPAM().encoder):
        m = SPAM(compactness=args.fast_compactness)
        m.encoder = enc
        models.append((name, m))
    rows = {name: [] for name, _ in models}
    for i in range(n):
        s = ds[i]
        for name, m in models:
            rows[name].append(evaluate(m.segment(s.image, args.k), s.gts, s.image, args.k))
    print(f"BSDS500 {args.split}, first {n} images, K={args.k}, no prior, same run; λs {models[0][1].compactness} "
          f"(default encoder), {args.fast_compactness} (fast variants)")
    print("| encoder | ASA | ASA − default | GR | ΔK | worst image | images worse than bilinear |")
    print("|---|---|---|---|---|---|---|")
    ref = np.array([r["asa"] for r in rows["default"]])
    bil = {name.split(",")[0]: np.array([r["asa"] for r in rows[name]]) for name, _ in models if "bilinear" in name}
    for name, _ in models:
        a = np.array([r["asa"] for r in rows[name]])
        gr = np.mean([r["gr"] for r in rows[name]])
        dk = np.mean([r["delta_k"] for r in rows[name]])
        b = bil.get(name.split(",")[0])
        worse = "—" if b is None or "bilinear" in name else f"{int((a < b).sum())} of {n}"
        diff = "—" if name == "default" else f"{a.mean() - ref.mean():+.4f}"
        worst = "—" if name == "default" else f"{(a - ref).min():+.4f}"
        print(f"| {name} | {a.mean():.4f} | {diff} | {gr:.3f} | {dk:.3f} | {worst} | {worse} |")


def _models(encoder):
    """(float32 reference SPAM, default SPAM) for the "default" or "fast" bundled encoder. The reference is the
    float32 encoder with every row in every clustering round (``subsample=1``), as at commit 8640962; the default
    has the int8 encoder and the default row subsampling."""
    from spam_stream.encoder import float32_twin
    from spam_stream.model import SPAM

    ref, new = SPAM(encoder=encoder, subsample=1), SPAM(encoder=encoder)
    ref.encoder = float32_twin(ref.encoder)
    return ref, new


def part_speed(args):
    from spam_stream.features import pixel_features

    image0 = np.asarray(Image.open(SAMPLE).convert("RGB"))
    ref, new = _models("default")
    precision = "int8" if "int8" in new.encoder.__dict__ else "float32 (no int8 on this CPU / no calibration)"
    rows = []
    for (w, h), k in (((481, 321), 400), ((1920, 1080), 2000)):
        image = np.asarray(Image.fromarray(image0).resize((w, h)))
        colour = pixel_features(image, k)[:3].clone()
        rows.append((f"encoder forward {w}x{h}", lambda m, c=colour: encode_learned(m.encoder, c)))
        rows.append((f"segment() {w}x{h} K={k}", lambda m, im=image, k=k: m.segment(im, k)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; new = {precision}; old = the float32 path (commit 8640962's "
          f"code, kept as float32_twin); median wall of {args.repeats} interleaved repeats; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    print("| run | old float32 (ms) | new (ms) | old ÷ new |")
    print("|---|---|---|---|")
    for name, fn in rows:
        fn(ref), fn(new)  # warm-up
        t = {"old": [], "new": []}
        for _ in range(args.repeats):
            for key, m in (("old", ref), ("new", new)):
                a = time.perf_counter()
                fn(m)
                t[key].append(time.perf_counter() - a)
        o, n = 1e3 * statistics.median(t["old"]), 1e3 * statistics.median(t["new"])
        print(f"| {name} | {o:.0f} | {n:.0f} | {o / n:.2f}× |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def part_quality(args):
    from tqdm import tqdm

    from spam_stream.datasets import BSDS500
    from spam_stream.metrics import evaluate

    ds = BSDS500(None, args.split)
    n = min(args.limit, len(ds))
    runs = []
    for encoder in ("default", "fast"):
        ref, new = _models(encoder)
        runs += [(f"{encoder}, float32 (8640962)", ref), (f"{encoder}, new default", new)]
    res = {name: [] for name, _ in runs}
    for i in tqdm(range(n), desc="BSDS images"):
        s = ds[i]
        for name, m in runs:
            res[name].append(evaluate(m.segment(s.image, args.k), s.gts, s.image, args.k))
    print(f"BSDS500 {args.split}, first {n} images, K={args.k}, no prior, same run (contract: |ΔASA| ≤ 0.001, "
          f"|ΔGR| ≤ 0.01 vs float32)")
    print("| encoder | ASA | GR | ΔK | ASA − float32 | GR − float32 |")
    print("|---|---|---|---|---|---|")
    for i, (name, _) in enumerate(runs):
        asa, gr = np.mean([r["asa"] for r in res[name]]), np.mean([r["gr"] for r in res[name]])
        dk = np.mean([r["delta_k"] for r in res[name]])
        base = runs[i - i % 2][0]
        a0, g0 = np.mean([r["asa"] for r in res[base]]), np.mean([r["gr"] for r in res[base]])
        d = "—" if i % 2 == 0 else f"{asa - a0:+.4f} | {gr - g0:+.4f}"
        print(f"| {name} | {asa:.4f} | {gr:.3f} | {dk:.3f} | {d if i % 2 else '— | —'} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("fold", "fast", "asa", "speed", "quality"), default="fold")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--k", type=int, default=400)
    ap.add_argument("--resolutions", default="0.5", help="fast-encoder resolutions compared in --part fast/asa")
    ap.add_argument("--upsample", default="bilinear,guided", help="fast-encoder upsampling modes compared")
    ap.add_argument("--sigmas", default=str(DEFAULT_SIGMA), help="σ (CIELab units) of the guided upsampling compared")
    ap.add_argument("--supports", default=str(DEFAULT_SUPPORT),
                    help="tent half-widths (low-resolution samples) of the guided upsampling compared")
    ap.add_argument("--fast-compactness", type=float, default=FAST_SPATIAL_SCALE,
                    help=f"λs of the fast variants in --part asa (default {FAST_SPATIAL_SCALE}, the --encoder fast "
                         "default, chosen on val like the default encoder's)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"), help="BSDS500 split of --part asa")
    args = ap.parse_args()
    if args.part == "fast":
        return part_fast(args)
    if args.part == "asa":
        return part_asa(args)
    if args.part == "speed":
        return part_speed(args)
    if args.part == "quality":
        return part_quality(args)
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
