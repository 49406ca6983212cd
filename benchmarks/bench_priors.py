"""Prior time per 481x321 image on this machine: FastSAM (YOLOv8s-seg = FastSAM-s architecture) at imgsz 640 and
1024, and SAM ViT-B's automatic mask generator with 8x8 and 16x16 point grids — all with random weights (no
checkpoint can be downloaded here), so the proposal counts differ from real models; the compute per image does not
depend on the weights, except for the per-mask work (FastSAM's mask assembly, SAM's NMS), reported through M.
Median of --repeats after one warm-up call; "aggregation" is the proposals → partition step alone.

    python benchmarks/bench_priors.py [--repeats 3] [--image PATH] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from spam_stream.aggregation import aggregate  # noqa: E402
from spam_stream.priors.fastsam import FastSamProvider  # noqa: E402
from spam_stream.priors.sam import SamProvider  # noqa: E402

HERE = Path(__file__).resolve().parent
BSDS_IMAGE = HERE.parent.parent / "shared" / "datasets" / "bsds500" / "data" / "images" / "val" / "101085.jpg"


def load_image(path: str | None) -> tuple[np.ndarray, str]:
    """(321, 481, 3) uint8: the given image, a BSDS500 val image if ../shared has them, else the sample, resized."""
    path = Path(path) if path else (BSDS_IMAGE if BSDS_IMAGE.is_file() else HERE.parent / "samples" / "coffee.jpg")
    im = Image.open(path).convert("RGB")
    if im.size != (481, 321):
        im = im.resize((481, 321), Image.BILINEAR)
    return np.asarray(im), str(path)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def random_fastsam(folder: Path) -> Path:
    """A random-weight YOLOv8s-seg (FastSAM-s architecture) checkpoint; class biases raised so that it proposes
    masks (a network at its default initialisation proposes none)."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolov8s-seg.yaml")
    for branch in model.model.model[-1].cv3:
        branch[-1].bias.data[:] = 2.0
    path = folder / "fastsam-s-random.pt"
    model.save(str(path))
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image, source = load_image(args.image)
    print(f"image {source} resized to 481x321, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} after a warm-up")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = random_fastsam(Path(tmp))
        for imgsz in (640, 1024):
            provider = FastSamProvider(checkpoint, imgsz=imgsz)
            seconds, masks = timed(lambda: provider.proposals(image), args.repeats)
            agg, _ = timed(lambda: aggregate(masks), args.repeats)
            rows.append((f"FastSAM-s arch (YOLOv8s-seg), imgsz {imgsz}", len(masks), seconds, agg))
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None)  # random initialisation, nothing downloaded
    for side in (8, 16):
        provider = SamProvider.from_model(sam, points_per_side=side)
        seconds, masks = timed(lambda: provider.proposals(image), args.repeats)
        agg, _ = timed(lambda: aggregate(masks), args.repeats)
        rows.append((f"SAM ViT-B, {side}x{side} points", len(masks), seconds, agg))

    print("| prior model (random weights) | proposals M | proposals (s) | aggregation (ms) | prior total (s) |")
    print("|---|---|---|---|---|")
    for name, m, seconds, agg in rows:
        print(f"| {name} | {m} | {seconds:.2f} | {1e3 * agg:.0f} | {seconds + agg:.2f} |")
    fastest, slowest = min(rows, key=lambda r: r[2]), max(rows, key=lambda r: r[2])
    print(f"summary: prior per 481x321 image from {fastest[2] + fastest[3]:.2f} s ({fastest[0]}) "
          f"to {slowest[2] + slowest[3]:.2f} s ({slowest[0]})")


if __name__ == "__main__":
    main()
