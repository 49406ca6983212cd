"""Calibrate the int8 encoder: activation ranges over BSDS500 train images, written next to the weights.

    python benchmarks/calibrate_int8.py [--weights spam_stream/weights/spam_encoder.pt] [--images 32]

Writes ``<weights>.int8.pt``, the int8 companion (:func:`spam_stream.encoder.make_int8_companion`: the activation
ranges, the int8 weights FX converts from them, and the fingerprint of the float weights), which ``SPAM()`` loads
without FX to run the int8 twin on the CPU (:func:`spam_stream.encoder.attach_int8`). ``spam train`` writes one beside
every checkpoint it saves.
"""
from __future__ import annotations

import argparse

from tqdm import tqdm

from spam_stream.datasets import BSDS500
from spam_stream.encoder import INT8_CALIBRATION_SUFFIX, load_encoder, make_int8_companion
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
    out = args.weights + INT8_CALIBRATION_SUFFIX
    blob = make_int8_companion(enc, colours, out)
    print(f"wrote {out} ({len(blob['calibration'])} activation ranges, {len(blob['state'])} int8 tensors) from {n} "
          f"BSDS500 train images")


if __name__ == "__main__":
    main()
