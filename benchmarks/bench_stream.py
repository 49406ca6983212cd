"""Frames per second of `spam-stream video` on a 1080p clip, and of its I/O stages alone.

    python benchmarks/bench_stream.py [--frames 8] [--io-frames 60] [--devices cpu cuda] [--no-fastsam]
                                      [--encoder default] [-k 2000] [--size 1920x1080] [--trace trace.json]

The clip is generated first: a pan over a BSDS500 test image (or samples/coffee.jpg) scaled to cover the frame,
H.264 at 30 frames/s. A first table times each write step alone on one thread (label PNG vs FFV1 label video,
drawing the overlay, x264 presets), with the label map SPAM (`--encoder none`) makes of the first frame. Rows (each one process_video run, the code path of `spam-stream video`, writing the overlay
MP4, the labels and the frames CSV into a temporary folder):

* `io`: the I/O stages alone — decode, overlay (x264 --overlay-preset) and labels (--labels-format) — with a fixed
  1080p label map standing in for SPAM's, for the defaults (ultrafast + ffv1) and the old write side
  (veryfast + PNG): the write side's own ceiling.
* `spam`: SPAM without a prior and with FastSAM-s (`--prior fastsam`, random weights: speed only, nothing
  downloaded; `--imgsz`), on each device of `--devices` that is available.

Per run: frames/s, the process CPU time per frame and the bound cores / CPU time, each stage's busy fraction (its
time summed over the frames / the run's wall time; a fraction near 1 is the stage that sets the pace; on CUDA the
stages' host times, kernels run asynchronously), and the executor's plan (stages of each thread : threads). The
first `--warmup` frames (numba compilation, CUDA start) are run once before, untimed. `--trace PATH` (CUDA) writes
a torch profiler Chrome trace of the FastSAM run (the prior of frame t+1 overlapping the clustering of frame t).
The machine's load average is printed before and after: numbers from a shared machine are not an idle machine's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from spam_stream import SPAM  # noqa: E402
from spam_stream.frame import Frame  # noqa: E402
from spam_stream.pipelines.executor import Pipeline, Stage  # noqa: E402
from spam_stream.pipelines.video import VideoOptions, decoded_frames, process_video  # noqa: E402
from spam_stream.pipelines.writers import STAGE_NAMES, VideoOutputs  # noqa: E402
from spam_stream.videoio import VideoReader, VideoWriter  # noqa: E402

from bench_pipeline import PLANS, _record_plans  # noqa: E402  (the plans the executor chose, as text)


def source_image() -> np.ndarray:
    root = Path(os.environ.get("SPAM_BSDS_ROOT", HERE.parent.parent / "shared" / "datasets" / "bsds500"))
    path = root / "data" / "images" / "test" / "100007.jpg"
    if not path.is_file():
        path = HERE.parent / "samples" / "coffee.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def make_clip(path: Path, n: int, w: int, h: int, rate: int = 30) -> None:
    """n frames of a slow pan over the source image scaled to cover w x h (1.25x wider), H.264 (x264 veryfast)."""
    img = source_image()
    scale = max(1.25 * w / img.shape[1], 1.1 * h / img.shape[0])
    big = np.asarray(Image.fromarray(img).resize((int(img.shape[1] * scale), int(img.shape[0] * scale)),
                                                 Image.BICUBIC))
    writer = VideoWriter(path, rate, w, h, preset="veryfast", crf=18)
    span_x, span_y = big.shape[1] - w, big.shape[0] - h
    for i in range(n):
        x, y = int(span_x * i / max(1, n - 1)), int(span_y * i / max(1, n - 1)) // 2
        writer.write(np.ascontiguousarray(big[y:y + h, x:x + w]))
    writer.close()


def write_costs(clip: Path, labels: np.ndarray, tmp: Path, n: int = 20) -> None:
    """One thread, per frame of the clip: each label format (ms, KB), the overlay drawing, each x264 preset (CPU ms
    of the process, x264's own threads included, and KB)."""
    from spam_stream.io import overlay, write_labels
    from spam_stream.labelio import LabelVideoWriter

    images = [rgb for _, rgb in VideoReader(clip, max_frames=n)]
    rows = []

    def timed(name, fn, size):
        fn(0)  # warm-up (first frame: encoder start)
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(1, len(images)):
            fn(i)
        k = len(images) - 1
        rows.append((name, 1e3 * (time.perf_counter() - t) / k, 1e3 * (time.process_time() - cpu) / k, size()))

    folder = tmp / "png"
    folder.mkdir()
    timed("labels: uint16 PNG (compress level 1)", lambda i: write_labels(folder / f"{i:06d}.png", labels),
          lambda: sum(p.stat().st_size for p in folder.glob("*.png")) / len(images) / 1e3)
    writer = LabelVideoWriter(tmp / "x_labels.mkv", 30, labels.shape[1], labels.shape[0])
    timed("labels: FFV1 gray16le in Matroska", lambda i: writer.write(i, labels), lambda: float("nan"))
    writer.close()
    rows[-1] = rows[-1][:3] + ((tmp / "x_labels.mkv").stat().st_size / len(images) / 1e3,)
    timed("overlay: boundaries drawn (auto colour)", lambda i: overlay(images[i], labels, "auto"), lambda: float("nan"))
    drawn = [overlay(img, labels, "auto") for img in images]
    for preset in ("ultrafast", "superfast", "veryfast"):
        path = tmp / f"o_{preset}.mp4"
        video = VideoWriter(path, 30, labels.shape[1], labels.shape[0], preset)
        timed(f"overlay: x264 {preset} (RGB in)", lambda i: video.write(drawn[i]), lambda: float("nan"))
        t, cpu = time.perf_counter(), time.process_time()
        video.close()  # the frames x264 still held: their cost belongs to the row
        name, wall, cpu_ms, _ = rows[-1]
        k = len(images) - 1
        rows[-1] = (name, wall + 1e3 * (time.perf_counter() - t) / k, cpu_ms + 1e3 * (time.process_time() - cpu) / k,
                    path.stat().st_size / len(images) / 1e3)
    print(f"\n| write step, {labels.shape[1]}x{labels.shape[0]}, one thread | wall ms/frame | CPU ms/frame | KB/frame |")
    print("|---|---|---|---|")
    for name, wall, cpu, kb in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {'' if kb != kb else f'{kb:.0f}'} |")
    print(flush=True)


def busy(timings: dict, wall: float) -> dict:
    return {name: timings.get(name, 0.0) / wall for name in STAGE_NAMES}


def io_run(clip: Path, out: Path, labels: np.ndarray, frames: int, preset: str, fmt: str):
    """decode -> (fixed labels) -> overlay -> labels write, through the executor, as process_video wires it."""
    reader = VideoReader(clip, max_frames=frames)
    outputs = VideoOutputs(out, clip.stem, reader.rate, reader.width, reader.height, preset=preset,
                           labels_format=fmt)

    def segmented(frame: Frame) -> Frame:  # stands in for SPAM: the labels of the first frame, every frame
        frame.labels = labels
        return frame

    timings, n = {}, 0
    t, cpu = time.perf_counter(), time.process_time()
    for frame in Pipeline([Stage("ids", segmented)] + outputs.stages()).run(decoded_frames(reader, 0)):
        if frame.error:
            raise RuntimeError(frame.error)
        n += 1
        for k, v in frame.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    outputs.close()
    return n, time.perf_counter() - t, time.process_time() - cpu, timings


def spam_run(model, clip: Path, out: Path, k: int, frames: int, trace: str | None = None):
    options = VideoOptions(max_frames=frames)
    t, cpu = time.perf_counter(), time.process_time()
    if trace:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            result = process_video(model, clip, out, k, options)
        prof.export_chrome_trace(trace)
    else:
        result = process_video(model, clip, out, k, options)
    if result.error:
        raise RuntimeError(result.error)
    return result.written, time.perf_counter() - t, time.process_time() - cpu, result.timings


def row(name, device, n, wall, cpu, timings, cores, plan):
    fractions = busy(timings, wall)
    cells = " | ".join(f"{fractions[s]:.2f}" for s in STAGE_NAMES)
    bound = cores / (cpu / n) if cpu > 0 else float("inf")
    print(f"| {name} | {device} | {n} | {n / wall:.2f} | {1e3 * cpu / n:.0f} | {bound:.1f} | {cells} | {plan} |",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8, help="frames of each SPAM run (default 8)")
    ap.add_argument("--io-frames", type=int, default=60, help="frames of each I/O run (default 60)")
    ap.add_argument("--warmup", type=int, default=3, help="frames run once, untimed, before each model's runs")
    ap.add_argument("--size", default="1920x1080", help="clip size WxH (default 1920x1080)")
    ap.add_argument("-k", "--superpixels", type=int, default=2000)
    ap.add_argument("--encoder", default="default", help="SPAM encoder: default, fast, none (default: default)")
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="devices to run SPAM on, when available")
    ap.add_argument("--no-fastsam", action="store_true", help="skip the FastSAM rows")
    ap.add_argument("--no-spam", action="store_true", help="only the I/O rows")
    ap.add_argument("--no-write-costs", action="store_true", help="skip the per-step write cost table")
    ap.add_argument("--imgsz", type=int, default=1024, help="FastSAM inference size (default 1024)")
    ap.add_argument("--trace", metavar="PATH", help="CUDA: torch profiler Chrome trace of the FastSAM run")
    args = ap.parse_args()
    import torch

    w, h = (int(v) for v in args.size.lower().split("x"))
    cores = len(os.sched_getaffinity(0))
    _record_plans()
    device_names = {"cpu": f"{cores} cores"}
    if torch.cuda.is_available():
        device_names["cuda"] = torch.cuda.get_device_name(0)
    print(f"{w}x{h}, K={args.superpixels}, encoder {args.encoder}; {cores} cores, torch {torch.__version__}"
          + (f", {device_names['cuda']}" if "cuda" in device_names else ", no CUDA")
          + f"; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (before)\n", flush=True)
    head = " | ".join(STAGE_NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip1080.mp4"
        make_clip(clip, max(args.frames + args.warmup, args.io_frames), w, h)
        first = next(iter(VideoReader(clip)))[1]
        labels = SPAM(encoder=None).segment(first, args.superpixels)
        if not args.no_write_costs:
            write_costs(clip, labels, tmp)
        print(f"| run | device | frames | frames/s | CPU ms/frame | cores/CPU bound | {head} (busy) | executor plan |")
        print("|---|---|---|---|---|---|" + "---|" * len(STAGE_NAMES) + "---|", flush=True)
        for preset, fmt in (("ultrafast", "ffv1"), ("veryfast", "png")):
            io_run(clip, tmp / "warm", labels, 3, preset, fmt)
            PLANS.clear()
            n, wall, cpu, timings = io_run(clip, tmp / f"io-{fmt}", labels, args.io_frames, preset, fmt)
            row(f"io: decode + overlay ({preset}) + labels ({fmt})", "cpu", n, wall, cpu, timings, cores,
                PLANS[-1] if PLANS else "")
        if args.no_spam:
            return
        provider = None
        if not args.no_fastsam:
            from bench_priors import random_fastsam

            checkpoint = random_fastsam(tmp)
        for device in args.devices:
            if device not in device_names:
                print(f"| (no {device} here) |")
                continue
            configs = [("spam, no prior", None)]
            if not args.no_fastsam:
                from spam_stream.priors import make_provider

                provider = make_provider("fastsam", checkpoint, imgsz=args.imgsz, device=device)
                configs.append((f"spam + FastSAM-s (random, imgsz {args.imgsz})", provider))
            for name, prior in configs:
                model = SPAM(encoder=None if args.encoder == "none" else args.encoder, device=device, prior=prior)
                spam_run(model, clip, tmp / "warm", args.superpixels, args.warmup)
                PLANS.clear()
                trace = args.trace if (args.trace and prior is not None and device == "cuda") else None
                n, wall, cpu, timings = spam_run(model, clip, tmp / f"{device}-{len(name)}", args.superpixels,
                                                 args.frames, trace)
                row(name, device_names[device], n, wall, cpu, timings, cores, PLANS[-1] if PLANS else "CUDA streams")
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (after)")


if __name__ == "__main__":
    main()
