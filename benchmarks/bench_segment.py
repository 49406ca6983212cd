"""End-to-end ``segment()`` time on a 481x321 image (2 cores): the shipped encoder vs no CNN (D=5), K=400, no prior,
plus the oracle-like prior path. Median of --repeats after one warm-up call.

    python benchmarks/bench_segment.py [--repeats 7] [--image PATH]
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

from spam_stream import SPAM
from spam_stream.model import DEFAULT_WEIGHTS
from timing import median_ms

HERE = os.path.dirname(os.path.abspath(__file__))




def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--image", default=os.path.join(HERE, "..", "samples", "coffee.jpg"))
    args = ap.parse_args()
    image = np.asarray(Image.open(args.image).convert("RGB"))
    h, w = image.shape[:2]
    prior = np.zeros((h, w), np.int32)
    prior[:, w // 2:] = 1
    prior[h // 3: h // 3 + 2] = -1
    print(f"image {args.image} ({w}x{h}), K=400, {os.cpu_count()} cores")
    print("| model | no prior (ms) | with a 2-object prior (ms) |")
    print("|---|---|---|")
    rows = [("D=5 (no CNN)", SPAM(encoder=None))]
    if DEFAULT_WEIGHTS.is_file():
        rows.append((f"shipped encoder ({DEFAULT_WEIGHTS.name})", SPAM()))
    for name, model in rows:
        t0 = median_ms(lambda: model.segment(image, 400), args.repeats)
        t1 = median_ms(lambda: model.segment(image, 400, prior), args.repeats)
        print(f"| {name}, D={model.n_features} | {t0:.0f} | {t1:.0f} |")


if __name__ == "__main__":
    main()
