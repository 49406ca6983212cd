"""Prior time per 481x321 image on this machine: FastSAM (YOLOv8s-seg = FastSAM-s architecture) at imgsz 640 and
1024, and SAM ViT-B's automatic mask generator with 8x8 and 16x16 point grids — all with random weights (no
checkpoint can be downloaded here), so the proposal counts differ from real models; the compute per image does not
depend on the weights, except for the per-mask work (FastSAM's mask assembly, SAM's NMS), reported through M.
Median of --repeats after one warm-up call; "aggregation" is the proposals → partition step alone.

Second table (issue 14), per stage at 481x321 and 1920x1080, on the CPU and on CUDA when present ("no CUDA" rows
otherwise), the old prior path against the new one in the same run, FastSAM-s architecture at imgsz 640:

* network: ``FastSamProvider.masks`` — network + NMS + masks at the network's resolution, left on the device;
* masks (old): the same with ``retina_masks=True`` (every mask at the frame's resolution) copied to the host;
* aggregation: old = ``aggregate_reference`` of the full-resolution stack on the CPU; new = ``aggregate_resized``
  of the network-resolution masks on their device (+ the copy of the (H, W) partition); and, for the issue's target,
  a synthetic stack of 100 ellipse masks (and of 0 masks) at the frame's size, old (reference) vs new ``aggregate``
  (numpy on the CPU, the tensor on CUDA);
* SPAM: ``SPAM(device, prior=...)`` per frame (K 400 / 2000), the old prior path vs the new provider.

    python benchmarks/bench_priors.py [--repeats 3] [--image PATH] [--threads N] [--part models|stages|aggregation|all]
        [--encoder default|none]
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

from spam_stream.aggregation import aggregate, aggregate_reference, aggregate_resized  # noqa: E402
from spam_stream.priors.base import Prior, Provider  # noqa: E402
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


def ellipse_masks(h: int, w: int, m: int = 100, seed: int = 0) -> np.ndarray:
    """(m, H, W) bool: m random ellipses (semi-axes 2-20% of the frame), overlapping, some crossing the border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:h, :w]
    masks = np.zeros((m, h, w), bool)
    for mask in masks:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.02, 0.2) * h, rng.uniform(0.02, 0.2) * w
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = True
    return masks


class OldFastSam(Provider):
    """The prior path before issue 14: retina masks (M, H, W) to the host, the reference aggregation there."""

    name = "fastsam-old"

    def __init__(self, provider: FastSamProvider):
        self.provider = provider

    def __call__(self, image, key=None):
        masks = self.provider.masks(image).cpu().numpy()
        return Prior(aggregate_reference(masks, **self.provider.aggregation), masks)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def synthetic_rows(h: int, w: int, device: str, repeats: int) -> list[tuple]:
    """Aggregation of synthetic stacks of 0 and 100 masks at H×W: reference (CPU) vs new (numpy on the CPU, the
    tensor on CUDA), and the floor of a full-resolution stack on the CPU: one read of it (np.count_nonzero)."""
    from timing import median_ms

    def ms(fn):
        def run():
            fn()
            sync(device)
        return median_ms(run, repeats)

    rows = []
    for m in (0, 100):
        stack = ellipse_masks(h, w, m)
        dev_stack = torch.from_numpy(stack).to(device) if device == "cuda" else stack
        old_ms = ms(lambda: aggregate_reference(stack)) if device == "cpu" else None
        new_ms = ms(lambda: np.asarray(torch.as_tensor(aggregate(dev_stack)).cpu()))
        equal = np.array_equal(np.asarray(torch.as_tensor(aggregate(dev_stack)).cpu()), aggregate_reference(stack))
        note = f"equal to reference: {equal}"
        if device == "cpu" and m:
            note += f"; one read of the stack: {ms(lambda: [np.count_nonzero(x) for x in stack]):.1f} ms"
        rows.append((f"{w}x{h}", device, f"aggregation, synthetic stack of {m} masks", old_ms, new_ms, note))
    return rows


def stage_rows(checkpoint: Path, image: np.ndarray, repeats: int, encoder: str) -> list[tuple]:
    """(size, device, stage, old ms, new ms, note) rows of the per-stage table."""
    from spam_stream import SPAM
    from timing import median_ms

    rows = []
    for size, k in (((481, 321), 400), ((1920, 1080), 2000)):
        frame = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        h, w = frame.shape[:2]
        label = f"{w}x{h}"
        for device in ("cpu", "cuda"):
            if device == "cuda" and not torch.cuda.is_available():
                rows.append((label, "cuda", "all stages", None, None, "no CUDA"))
                continue

            def ms(fn):
                def run():
                    fn()
                    sync(device)
                return median_ms(run, repeats)

            new = FastSamProvider(checkpoint, imgsz=640, device=device)
            retina = FastSamProvider(checkpoint, imgsz=640, device=device, retina_masks=True)
            small = new.masks(frame)
            full = retina.masks(frame)
            rows.append((label, device, "network + NMS + masks at network resolution (kept on the device)", None,
                         ms(lambda: new.masks(frame)), f"M={len(small)}, {tuple(small.shape[1:])}"))
            rows.append((label, device, "old: retina masks (M, H, W) to the host",
                         ms(lambda: retina.masks(frame).cpu()), None, f"M={len(full)}"))
            full_host = full.cpu().numpy()
            upsampled = FastSamProvider.full_resolution(small, (h, w))
            rows.append((label, device, "aggregation of the FastSAM masks (old: reference on the host stack)",
                         ms(lambda: aggregate_reference(full_host)),
                         ms(lambda: np.asarray(torch.as_tensor(aggregate_resized(
                             small if device == "cuda" else small.numpy(), (h, w))).cpu())),
                         "new: aggregate_resized, network-resolution masks"))
            same = np.array_equal(np.asarray(torch.as_tensor(aggregate_resized(small, (h, w))).cpu()),
                                  aggregate_reference(upsampled))
            rows.append((label, device, "  check: new == reference of the resized stack", None, None, str(same)))
            rows.extend(synthetic_rows(h, w, device, repeats))
            spam_new = SPAM(encoder=None if encoder == "none" else encoder, device=device, prior=new)
            spam_old = SPAM(encoder=None if encoder == "none" else encoder, device=device, prior=OldFastSam(retina))
            rows.append((label, device, f"SPAM(prior=FastSAM-s arch), K={k}, encoder {encoder}",
                         ms(lambda: spam_old.segment(frame, k)), ms(lambda: spam_new.segment(frame, k)),
                         "one frame, network included"))
            del new, retina, spam_new, spam_old
    return rows


def model_rows(checkpoint: Path, image: np.ndarray, repeats: int) -> list[tuple]:
    rows = []
    for imgsz in (640, 1024):
        provider = FastSamProvider(checkpoint, imgsz=imgsz, retina_masks=True)
        seconds, masks = timed(lambda: provider.proposals(image), repeats)
        agg, _ = timed(lambda: aggregate(masks), repeats)
        rows.append((f"FastSAM-s arch (YOLOv8s-seg), imgsz {imgsz}", len(masks), seconds, agg))
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None)  # random initialisation, nothing downloaded
    for side in (8, 16):
        provider = SamProvider.from_model(sam, points_per_side=side)
        seconds, masks = timed(lambda: provider.proposals(image), repeats)
        agg, _ = timed(lambda: aggregate(masks), repeats)
        rows.append((f"SAM ViT-B, {side}x{side} points", len(masks), seconds, agg))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--part", choices=("models", "stages", "aggregation", "all"), default="all",
                    help="models: the prior-model table (SAM is minutes on a CPU); stages: the per-stage table; "
                         "aggregation: only its synthetic-stack rows")
    ap.add_argument("--encoder", default="default", help="SPAM encoder of the SPAM rows: default | none | PATH")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image, source = load_image(args.image)
    print(f"image {source} resized to 481x321, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} after a warm-up"
          + (f", CUDA: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = random_fastsam(Path(tmp))
        if args.part in ("stages", "aggregation", "all"):
            if args.part == "aggregation":
                rows = [row for h, w in ((321, 481), (1080, 1920)) for device in ("cpu", "cuda")
                        if device == "cpu" or torch.cuda.is_available()
                        for row in synthetic_rows(h, w, device, args.repeats)]
            else:
                rows = stage_rows(checkpoint, image, args.repeats, args.encoder)
            print("| frame | device | stage | old (ms) | new (ms) | old/new | note |")
            print("|---|---|---|---|---|---|---|")
            for size, device, stage, old, new, note in rows:
                ratio = f"{old / new:.1f}x" if old and new else ""
                fmt = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
                print(f"| {size} | {device} | {stage} | {fmt(old)} | {fmt(new)} | {ratio} | {note} |", flush=True)
        if args.part in ("models", "all"):
            rows = model_rows(checkpoint, image, args.repeats)
            print("| prior model (random weights) | proposals M | proposals (s) | aggregation (ms) | prior total (s) |")
            print("|---|---|---|---|---|")
            for name, m, seconds, agg in rows:
                print(f"| {name} | {m} | {seconds:.2f} | {1e3 * agg:.0f} | {seconds + agg:.2f} |")
            fastest, slowest = min(rows, key=lambda r: r[2]), max(rows, key=lambda r: r[2])
            print(f"summary: prior per 481x321 image from {fastest[2] + fastest[3]:.2f} s ({fastest[0]}) "
                  f"to {slowest[2] + slowest[3]:.2f} s ({slowest[0]})")


if __name__ == "__main__":
    main()
