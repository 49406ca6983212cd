"""Temporal coherence on a real clip: coherent frames vs --independent, in one run.

    python benchmarks/bench_temporal.py [--frames 60] [--encoder default|none] [-k 400]

The clip (made here with PyAV, H.264 at crf 20, so every frame carries real compression noise): a 481x321 window on
a BSDS500 test image (samples/coffee.jpg without the dataset) that stays still for the first half of the frames
(static content) and pans 3 px/frame right and 2 px/frame down for the second half (moving content). Both modes run
the same stages one frame at a time (time per frame = wall time / frames, decode included).

Reported per mode: the fraction of pixels whose superpixel id changes between consecutive frames
(``spam_stream.metrics.id_change_fraction``) on the static and the moving half, time per frame, and the mean
explained variation (``spam_stream.metrics.explained_variation``) of the frames. Targets (issue 9): ≥ 3× fewer id
changes on static content, ≥ 1.5× faster per frame, explained variation within 0.01 of independent frames.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from spam_stream import SPAM  # noqa: E402
from spam_stream.metrics import explained_variation, id_change_fraction  # noqa: E402
from spam_stream.pipelines.video import video_frames  # noqa: E402
from spam_stream.videoio import VideoWriter  # noqa: E402

from bench_pipeline import source_image  # noqa: E402


def make_clip(path: Path, n: int, h: int = 321, w: int = 481) -> int:
    """Write the clip; returns the index of the first moving frame."""
    img, _ = source_image()
    big = np.asarray(Image.fromarray(img).resize((int(img.shape[1] * 1.6), int(img.shape[0] * 1.6))))
    still = n // 2
    writer = VideoWriter(path, 25, w, h, preset="veryfast", crf=20)
    for i in range(n):
        step = max(0, i - still)
        y, x = min(big.shape[0] - h, 40 + 2 * step), min(big.shape[1] - w, 40 + 3 * step)
        writer.write(np.ascontiguousarray(big[y:y + h, x:x + w]))
    writer.close()
    return still


def measure(model, clip, k, coherent, still, warm_iterations):
    t = time.perf_counter()
    frames = list(video_frames(model, clip, k, coherent=coherent, pipelined=False, warm_iterations=warm_iterations))
    wall = time.perf_counter() - t
    labels = [f.labels for f in frames]
    static = [id_change_fraction(a, b) for a, b in zip(labels[:still], labels[1:still])]
    moving = [id_change_fraction(a, b) for a, b in zip(labels[still:], labels[still + 1:])]
    ev = [explained_variation(f.labels, f.image) for f in frames]
    stages = {s: 1e3 * statistics.mean(f.timings.get(s, 0.0) for f in frames[1:])
              for s in ("seeds", "features", "cluster", "connectivity", "ids")}
    tiles = [f.meta.get("tiles_recomputed", 1.0) for f in frames]
    return {"tiles": (statistics.mean(tiles[1:still]), statistics.mean(tiles[still:])),
            "static": statistics.mean(static), "moving": statistics.mean(moving), "ms": 1e3 * wall / len(frames),
            "ev": statistics.mean(ev), "k": statistics.mean(int(f.meta.get("n_superpixels", f.labels.max() + 1))
                                                              for f in frames), "stages": stages}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("-k", "--superpixels", type=int, default=400)
    ap.add_argument("--encoder", default="default")
    ap.add_argument("--warm-iterations", type=int, default=3)
    args = ap.parse_args()
    model = SPAM(encoder=args.encoder)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        still = make_clip(clip, args.frames)
        list(video_frames(model, clip, args.superpixels, max_frames=3, pipelined=False))  # warm-up
        ind = measure(model, clip, args.superpixels, False, still, args.warm_iterations)
        coh = measure(model, clip, args.superpixels, True, still, args.warm_iterations)
    name = source_image()[1]
    print(f"clip: {args.frames} frames 481x321 from {name} (static {still}, then panning), K={args.superpixels}, "
          f"encoder {args.encoder}, warm iterations {args.warm_iterations}\n")
    print("| mode | id changes, static | id changes, moving | ms / frame | mean EV | mean K' | "
          "encoder share recomputed, static / moving | seeds / features / cluster / connectivity / ids (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in (("independent", ind), ("coherent", coh)):
        st = " / ".join(f"{v:.1f}" for v in r["stages"].values())
        print(f"| {label} | {r['static']:.4f} | {r['moving']:.4f} | {r['ms']:.1f} | {r['ev']:.4f} | {r['k']:.0f} | "
              f"{r['tiles'][0]:.2f} / {r['tiles'][1]:.2f} | {st} |")
    print(f"\nstatic id changes: {ind['static'] / max(coh['static'], 1e-9):.1f}x fewer (target >= 3); "
          f"time per frame: {ind['ms'] / coh['ms']:.2f}x faster (target >= 1.5); "
          f"EV difference {coh['ev'] - ind['ev']:+.4f} (target within 0.01)")


if __name__ == "__main__":
    main()
