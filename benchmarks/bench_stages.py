"""CPU stages at 1080p (issue 10 item 3): RGB→Lab vs ``skimage.color.rgb2lab``, connectivity vs one
``skimage.measure.label`` of the same labels (and the reference twin), and ``segment()`` 1920×1080 K=2000 without
the CNN (D=5) vs a baseline checkout of the code measured in the same run. Median of --repeats after a warm-up.

    git worktree add /tmp/spam-baseline 92630cf      # the code before this work
    python benchmarks/bench_stages.py [--baseline /tmp/spam-baseline] [--repeats 5] [--image PATH] [--profile]
    python benchmarks/bench_stages.py --repeats 1 --rounds 1 --profile    # where segment() spends its time

The image (default samples/coffee.jpg) is resized to --size (1920x1080) with bicubic resampling. Each ``segment()``
timing runs in a fresh subprocess (``--segment-only``) with PYTHONPATH set to the checkout it measures; baseline and
current alternate for --rounds rounds and the per-call times are pooled.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8, resized to size = (W, H)."""
    return np.asarray(Image.open(path).convert("RGB").resize(size, Image.BICUBIC))


def times_ms(fn, repeats: int) -> list[float]:
    """Wall times of ``fn()`` in ms over ``repeats`` calls, after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t))
    return out


def segment_only(args):
    """Child process: time SPAM(encoder=None).segment at the given size with whatever spam_stream is on the path."""
    import spam_stream
    from spam_stream import SPAM

    image = load_image(args.image, args.size)
    model = SPAM(encoder=None)
    t = times_ms(lambda: model.segment(image, args.k), args.repeats)
    labels = model.segment(image, args.k)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        model.segment(image, args.k)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(12)
    print(json.dumps({"times_ms": t, "module": spam_stream.__file__, "k_out": int(labels.max()) + 1}))


def run_child(checkout: str, args, profile: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout)
    cmd = [sys.executable, os.path.abspath(__file__), "--segment-only", "--image", args.image, "--size",
           f"{args.size[0]}x{args.size[1]}", "--k", str(args.k), "--repeats", str(args.repeats)]
    res = subprocess.run(cmd + (["--profile"] if profile else []), env=env, capture_output=True, text=True, cwd="/")
    if res.returncode != 0:
        raise RuntimeError(f"segment child for {checkout} failed:\n{res.stderr[-3000:]}")
    if profile:
        print(f"\ncProfile of one segment() call, {checkout} (tottime):\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def connectivity_inputs(image, k):
    """The labels, partition and min_size that ``SPAM(encoder=None).segment`` hands to connectivity."""
    import spam_stream.model as model_module
    from spam_stream.connectivity import enforce_connectivity

    seen = []

    def capture(labels, partition, min_size, **kw):
        seen.append((labels.copy(), partition, min_size))
        return enforce_connectivity(labels, partition, min_size, **kw)

    original = model_module.enforce_connectivity
    model_module.enforce_connectivity = capture
    try:
        model_module.SPAM(encoder=None).segment(image, k)
    finally:
        model_module.enforce_connectivity = original
    return seen[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=os.path.join(ROOT, "samples", "coffee.jpg"))
    ap.add_argument("--size", default="1920x1080", type=lambda s: tuple(int(v) for v in s.split("x")))
    ap.add_argument("--k", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", default="/tmp/spam-baseline", help="checkout of the code to compare against")
    ap.add_argument("--profile", action="store_true", help="cProfile one segment() call of each side (tottime)")
    ap.add_argument("--segment-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.image = os.path.abspath(args.image)
    if args.segment_only:
        return segment_only(args)

    sys.path.insert(0, ROOT)
    from skimage.color import rgb2lab
    from skimage.measure import label as sk_label

    from spam_stream.color import rgb_to_lab
    from spam_stream.connectivity import enforce_connectivity, enforce_connectivity_reference

    image = load_image(args.image, args.size)
    h, w = image.shape[:2]
    print(f"image {args.image} resized to {w}x{h}, K={args.k}, {os.cpu_count()} cores, median of {args.repeats}")
    print("| stage | this code (ms) | baseline (ms) | ratio | note |")
    print("|---|---|---|---|---|")

    t_sk = statistics.median(times_ms(lambda: rgb2lab(image), args.repeats))
    t_lab = statistics.median(times_ms(lambda: rgb_to_lab(image), args.repeats))
    diff = float(np.abs(rgb_to_lab(image) - rgb2lab(image)).max())
    print(f"| RGB→Lab `rgb_to_lab` vs `skimage.color.rgb2lab` | {t_lab:.1f} | {t_sk:.1f} | {t_lab / t_sk:.3f}× "
          f"| max abs diff {diff:.1e} |")

    labels, partition, min_size = connectivity_inputs(image, args.k)
    t_label = statistics.median(times_ms(lambda: sk_label(labels, connectivity=1, background=-1), args.repeats))
    t_conn = statistics.median(times_ms(lambda: enforce_connectivity(labels, partition, min_size), args.repeats))
    t_ref = statistics.median(times_ms(lambda: enforce_connectivity_reference(labels, partition, min_size),
                                       max(1, args.repeats // 2)))
    same = np.array_equal(enforce_connectivity(labels, partition, min_size),
                          enforce_connectivity_reference(labels, partition, min_size))
    print(f"| connectivity `enforce_connectivity` vs one `skimage.measure.label` | {t_conn:.1f} | {t_label:.1f} "
          f"| {t_conn / t_label:.2f}× | min_size {min_size}; labels equal to the reference: {same} |")
    print(f"| connectivity `enforce_connectivity` vs `enforce_connectivity_reference` | {t_conn:.1f} | {t_ref:.1f} "
          f"| {t_conn / t_ref:.3f}× | |")

    if os.path.isdir(os.path.join(args.baseline, "spam_stream")):
        cur, base = [], []
        for _ in range(args.rounds):
            b = run_child(args.baseline, args)
            c = run_child(ROOT, args)
            base += b["times_ms"]
            cur += c["times_ms"]
        tc, tb = statistics.median(cur), statistics.median(base)
        mc, mb = min(cur), min(base)
        print(f"| `segment()` {w}x{h} K={args.k}, encoder=None | {tc:.0f} | {tb:.0f} | {tc / tb:.2f}× "
              f"({tb / tc:.2f}× faster) | baseline {args.baseline}; K' {c['k_out']} vs {b['k_out']}; "
              f"{len(cur)} calls each; fastest call {mc:.0f} vs {mb:.0f} ms ({mb / mc:.2f}× faster) |")
    else:
        print(f"(no baseline checkout at {args.baseline}: segment() comparison skipped)")

    if args.profile:  # after the table: one profiled call per side, each in its own process
        if os.path.isdir(os.path.join(args.baseline, "spam_stream")):
            run_child(args.baseline, args, profile=True)
        run_child(ROOT, args, profile=True)


if __name__ == "__main__":
    main()
