"""Sequential vs pipelined video throughput, per-stage times and the ratio to the bound; memory over a long stream.

    python benchmarks/bench_pipeline.py [--frames 40] [--prior-frames 12] [--no-fastsam] [--memory 10000]
                                        [--encoder default none fast] [--size 1280x720] [--repeats 3]
                                        [--clip pan|real]

Input: a 481x321 clip (``--clip real``, the default: tests/video_helpers.real_motion_frames — camera pan with a
small rotation and zoom, a moving object, a scene cut; ``--clip pan``: a plain pan) over a BSDS500 test image (or
samples/coffee.jpg), encoded to H.264 first; each run
decodes it, segments every frame (K=400, bundled encoder, coherent) and writes the overlay MP4 + label PNGs, so
decode, prior, features, seeds, clustering, connectivity, ids and write all count. Two priors: none, and a
FastSAM-s architecture with random weights (imgsz 640; nothing downloaded). Sequential and pipelined runs of the
same clip in the same process, after a warm-up.

Bound (frames/s) = cores / CPU time per frame of the sequential run (the process CPU time of the whole run: decoding,
every stage with all its threads, the writers and x264's threads; the per-stage CPU column leaves decoding out).
`--schedules` runs the pipelined run once per executor schedule (spam_stream/pipelines/executor.py: pool = the
default, stages = one thread per stage), each against the same sequential run; each pipelined run's schedule line
(the policy and each stage's busy fraction) is printed.
`--repeats R` runs the sequential run and every schedule in turn R times: ratios within a repeat, medians printed.
`--memory N` streams N tiny synthetic frames through the same stages and prints resident memory at
frame 1,000 and at frame N.
"""
from __future__ import annotations

import argparse
import os
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
from spam_stream.pipelines.video import VideoOutputs, video_frames  # noqa: E402
from spam_stream.pipelines.writers import STAGE_NAMES as STAGES  # noqa: E402
from spam_stream.videoio import VideoWriter  # noqa: E402


def source_image() -> tuple[np.ndarray, str]:
    root = Path(os.environ.get("SPAM_BSDS_ROOT", HERE.parent.parent / "shared" / "datasets" / "bsds500"))
    path = root / "data" / "images" / "test" / "100007.jpg"
    if not path.is_file():
        path = HERE.parent / "samples" / "coffee.jpg"
    return np.asarray(Image.open(path).convert("RGB")), path.name


def make_clip(path: Path, n: int, h: int = 321, w: int = 481) -> None:
    if CLIP == "real":
        sys.path.insert(0, str(HERE.parent / "tests"))
        from video_helpers import write_real_clip

        write_real_clip(path, n, h - h % 2, w - w % 2)
        return
    img, _ = source_image()
    scale = max(1.6, 1.25 * w / img.shape[1], 1.25 * h / img.shape[0],  # room to pan at any size, and for n
                (w + 3 * n + 8) / img.shape[1], (h + 2 * n + 8) / img.shape[0])  # frames (the pan never stops)
    big = np.asarray(Image.fromarray(img).resize((int(img.shape[1] * scale), int(img.shape[0] * scale))))
    writer = VideoWriter(path, 25, w, h, preset="veryfast")
    for i in range(n):
        y = min(big.shape[0] - h, i * 2)
        x = min(big.shape[1] - w, i * 3)
        writer.write(np.ascontiguousarray(big[y:y + h, x:x + w]))
    writer.close()


CLIP = "real"
PLANS = []  # the schedule line of each pipelined run
CPU = {}  # output folder of a run → its process CPU time (s)


def _record_plans():
    """Keep the schedule line (Pipeline.summary: policy, busy fractions) of every pipelined run."""
    from spam_stream.pipelines import executor

    original = executor.Pipeline.run

    def run(self, *args, **kwargs):
        yield from original(self, *args, **kwargs)
        PLANS.append(self.summary().removeprefix("schedule: "))

    executor.Pipeline.run = run


def run(model, clip: Path, out: Path, k: int, pipelined: bool, prior_every: int = 1, schedule: str = "pool"):
    from spam_stream.pipelines import executor
    from spam_stream.videoio import VideoReader

    executor.SCHEDULE_DEFAULT = schedule
    reader = VideoReader(clip)
    outputs = VideoOutputs(out, clip.stem, reader.rate, reader.width, reader.height)
    t, cpu = time.perf_counter(), time.process_time()
    frames = list(video_frames(model, clip, k, pipelined=pipelined, reader=reader, prior_every=prior_every,
                               extra_stages=outputs.stages()))
    wall = time.perf_counter() - t
    CPU[out] = time.process_time() - cpu  # the whole run's process CPU time: decoding, every stage, x264's threads
    outputs.close()
    errors = [f.error for f in frames if f.error]
    if errors:
        raise RuntimeError(errors[0])
    return frames, wall


def stage_means(frames, key="timings"):
    rows = {}
    for name in STAGES:
        vals = [(f.timings if key == "timings" else f.meta.get("cpu", {})).get(name) for f in frames]
        vals = [v for v in vals if v is not None]
        rows[name] = statistics.mean(vals) if vals else 0.0
    return rows


def compare(name, model, clip, n, k, tmp, schedules=("pool",), size="481x321", repeats=1):
    """Sequential then each schedule's pipelined run, ``repeats`` times in turn; ratios are taken within each
    repeat (the same minute of the machine) and their median printed, with every repeat's value."""
    cores = len(os.sched_getaffinity(0))
    run(model, clip, tmp / "warm", k, pipelined=False)  # warm-up: numba compile, caches
    rounds = []  # per repeat: (seq frames, seq wall, [(schedule, frames, wall, plan)])
    for r in range(repeats):
        seq, seq_wall = run(model, clip, tmp / f"seq{r}", k, pipelined=False)
        seq_cpu = CPU[tmp / f"seq{r}"]
        pipelined = []
        for schedule in schedules:
            PLANS.clear()
            frames, wall = run(model, clip, tmp / f"pip-{schedule}{r}", k, pipelined=True, schedule=schedule)
            pipelined.append((schedule, frames, wall, PLANS[-1] if PLANS else "n/a",
                              CPU[tmp / f"pip-{schedule}{r}"]))
        rounds.append((seq, seq_wall, pipelined, seq_cpu))
    seq, seq_wall, pipelined, seq_cpu = rounds[len(rounds) // 2]
    bounds = [cores * n / rd[3] for rd in rounds]  # cores / the sequential run's CPU time per frame
    seq_fps = [n / rd[1] for rd in rounds]
    wall_pip = stage_means(pipelined[0][1])
    cpu_seq = stage_means(seq, "cpu")
    total_cpu = seq_cpu / n
    bound = cores / total_cpu  # the bound: cores / CPU time per frame of the sequential run
    print(f"\n### {name}: {n} frames {size}, K={k}" + (f", {repeats} repeats" if repeats > 1 else "") + "\n")
    print(f"| stage | sequential wall (ms) | sequential CPU (ms) | pipelined ({pipelined[0][0]}) wall (ms) |")
    print("|---|---|---|---|")
    wall_seq = stage_means(seq)
    for s in STAGES:
        print(f"| {s} | {1e3 * wall_seq[s]:.1f} | {1e3 * cpu_seq[s]:.1f} | {1e3 * wall_pip[s]:.1f} |")
    print(f"\nsequential CPU time per frame: {1e3 * total_cpu:.0f} ms for the whole run (decoding and x264's threads "
          f"included), {1e3 * sum(cpu_seq.values()):.0f} ms in the stages above")
    print(f"\nbound: {cores} cores / sequential CPU time {1e3 * total_cpu:.0f} ms per frame = {bound:.2f} frames/s"
          + (f" (repeat {len(rounds) // 2 + 1} of {repeats}; each repeat's ratios use its own)" if repeats > 1 else "")
          + "\n")
    med = statistics.median
    every = " (each repeat)" if repeats > 1 else ""
    print(f"| run | frames/s | CPU ms/frame | vs sequential | vs bound | vs bound{every} | schedule (policy, each "
          "stage's busy fraction) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| sequential | {med(seq_fps):.2f} | {1e3 * med([rd[3] for rd in rounds]) / n:.0f} | 1.00 | "
          f"{med([f / b for f, b in zip(seq_fps, bounds)]):.2f} | "
          f"{' '.join(f'{f / b:.2f}' for f, b in zip(seq_fps, bounds))} | |")
    ratios = []
    for j, schedule in enumerate(schedules):
        fps = [n / rd[2][j][2] for rd in rounds]
        vs_seq = med([f / s_ for f, s_ in zip(fps, seq_fps)])
        vs_bound = [f / b for f, b in zip(fps, bounds)]
        ratios.append((vs_seq, med(vs_bound)))
        same = all(np.array_equal(a.labels, b.labels) for rd in rounds for a, b in zip(rd[0], rd[2][j][1]))
        plans = [rounds[len(rounds) // 2][2][j][3]]
        cpu = 1e3 * med([rd[2][j][4] for rd in rounds]) / n
        print(f"| pipelined, {schedule} | {med(fps):.2f} | {cpu:.0f} | {vs_seq:.2f} | {med(vs_bound):.2f} | "
              f"{' '.join(f'{v:.2f}' for v in vs_bound)} | {' / '.join(plans)}"
              f"{'' if same else ' (LABELS DIFFER from the sequential run)'} |")
    return ratios


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory(n: int):
    from spam_stream.frame import Frame
    from spam_stream.pipelines.executor import Pipeline
    from spam_stream.pipelines.stages import spam_stages

    model = SPAM(encoder=None)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (48 + 64, 64 + 64, 3), dtype=np.uint8)
    marks = {}

    def source():
        for i in range(n):
            y, x = (i * 3) % 64, (i * 5) % 64
            yield Frame(index=i, image=np.ascontiguousarray(base[y:y + 48, x:x + 64]), n_superpixels=24)

    t = time.perf_counter()
    for frame in Pipeline(spam_stages(model, video=True), queue_size=2).run(source()):
        if frame.error:
            raise RuntimeError(frame.error)
        if frame.index + 1 in (1000, n):
            marks[frame.index + 1] = rss_mb()
    print(f"\n### memory: {n} frames 64x48 through the executor (video stages, coherent ids), "
          f"{time.perf_counter() - t:.0f} s\n")
    print("| frame | RSS (MB) |\n|---|---|")
    for i, v in marks.items():
        print(f"| {i} | {v:.1f} |")
    print(f"\ngrowth from frame 1,000 to {n}: {marks[n] - marks[1000]:+.1f} MB (target < 50 MB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--prior-frames", type=int, default=12)
    ap.add_argument("--no-fastsam", action="store_true")
    ap.add_argument("--memory", type=int, default=0, metavar="N")
    ap.add_argument("--only-memory", action="store_true")
    ap.add_argument("--encoder", nargs="*", default=["default"], metavar="NAME",
                    help="encoders of the no-prior comparison: default, fast, none (default: default; none given: "
                         "only the FastSAM rows)")
    ap.add_argument("--schedules", nargs="+", default=["pool"], choices=["pool", "stages"],
                    help="executor schedules of the pipelined runs (pool, stages; default: pool), each compared "
                         "with the same sequential run")
    ap.add_argument("--clip", choices=["real", "pan"], default="real",
                    help="real: pan + rotation + zoom + a moving object + a cut (default); pan: a plain pan")
    ap.add_argument("--size", default="481x321", help="clip size WxH (default 481x321)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="sequential + pipelined runs in turn this many times; medians of the per-repeat ratios")
    args = ap.parse_args()
    import torch

    global CLIP
    CLIP = args.clip
    _record_plans()
    print(f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (before)")
    if not args.only_memory:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            clip = tmp / "clip.mp4"
            w, h = (int(v) for v in args.size.lower().split("x"))
            make_clip(clip, max(args.frames, args.prior_frames), h, w)
            for encoder in args.encoder:
                model = SPAM(encoder=None if encoder == "none" else encoder)
                compare(f"no prior, encoder {encoder}", model, clip, args.frames, 400, tmp, args.schedules,
                        args.size, args.repeats)
            if not args.no_fastsam:
                sys.path.insert(0, str(HERE))
                from bench_priors import random_fastsam
                from spam_stream.priors import make_provider

                clip2 = tmp / "clip12.mp4"
                make_clip(clip2, args.prior_frames, h, w)
                provider = make_provider("fastsam", random_fastsam(tmp), imgsz=640)
                compare("FastSAM-s prior (random weights, imgsz 640), bundled encoder", SPAM(prior=provider), clip2,
                        args.prior_frames, 400, tmp, args.schedules, args.size, args.repeats)
    if args.memory:
        memory(args.memory)
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (after)")


if __name__ == "__main__":
    main()
