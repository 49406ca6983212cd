"""Calibrate the int8 encoder: activation ranges over BSDS500 train images, written next to the weights.

    python benchmarks/calibrate_int8.py [--weights spam_stream/weights/spam_encoder.pt] [--images 32]

Writes ``<weights>.int8.pt`` (the observers' state, :func:`spam_stream.encoder.calibrate_int8`), which
``SPAM()`` reads to run the int8 twin on the CPU (:func:`spam_stream.encoder.attach_int8`).
"""
from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from spam_stream.datasets import BSDS500
from spam_stream.encoder import INT8_CALIBRATION_SUFFIX, calibrate_int8, load_encoder
from spam_stream.features import scaled_lab_yx
from spam_stream.model import DEFAULT_WEIGHTS
from spam_stream.scales import COLOR_SCALE


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--images", type=int, default=32, help="first N BSDS500 train images")
    args = ap.parse_args()
    enc, meta = load_encoder(args.weights)
    scale = float(meta.get("color_scale", COLOR_SCALE))
    ds = BSDS500(None, "train")
    n = min(args.images, len(ds))
    # natural images only: a map of the whole sRGB gamut widens the shared colour/feature range of the output conv's
    # input and costs accuracy on every natural image (≈ 1.5× the error); frames beyond this range run in float32
    images = [ds[i].image for i in range(n)]
    colours = (scaled_lab_yx(im, 400, color_scale=scale)[:3] for im in tqdm(images, desc="calibrating"))
    state = calibrate_int8(enc, colours)
    out = args.weights + INT8_CALIBRATION_SUFFIX
    torch.save(state, out)
    print(f"wrote {out} ({len(state)} tensors) from {n} BSDS500 train images")


if __name__ == "__main__":
    main()
