"""`spam-stream video` as a user runs it: a fresh process per run, pipelined (the default) against `--sequential`.

    python benchmarks/bench_cli_video.py [--sizes 640x360 1280x720] [--frames 40] [--runs 3]
                                         [--configs bundled fast none mask] [-k 400] [--clips DIR]

Clips: tests/video_helpers.real_motion_frames (camera pan with a small rotation and zoom, an object moving on its
own, a scene cut at 3/5; BSDS500 test images when ../shared has them, else samples/coffee.jpg), H.264 at each
size, written into ``--clips`` (default: a temporary folder); `mask` is a static 3-object label image of the
clip's size given as `--prior-mask`. Every configuration runs `--runs` pipelined and `--runs` sequential processes,
interleaved (the order alternates from run to run), each a whole fresh `python -m spam_stream.cli video` process
(interpreter start, imports, model, warm-up, decoding, every stage, writing). Prints, per configuration: the wall
times, the process CPU time over wall time (user + sys of the child, from the resource module), the speed-up
(median sequential wall / median pipelined wall), whether any pipelined run was slower than the slowest sequential
run, and the pipelined runs' steady CPU/wall and schedule line (what the run prints at its end: after the warm-up,
each stage's busy fraction). The load average before and after is printed: run it on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

CONFIGS = {"bundled": [], "fast": ["--encoder", "fast"], "none": ["--encoder", "none"], "mask": ["--prior-mask"]}


def make_clips(folder: Path, sizes, frames: int) -> dict:
    import numpy as np
    from PIL import Image

    from video_helpers import write_real_clip

    clips = {}
    for size in sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        clip, mask = folder / f"real_{w}x{h}.mp4", folder / f"mask_{w}x{h}.png"
        if not clip.is_file():
            write_real_clip(clip, frames, h, w)
        if not mask.is_file():
            m = np.zeros((h, w), np.uint8)
            m[:, w // 3:] = 1
            m[h // 2:, 2 * w // 3:] = 2
            Image.fromarray(m).save(mask)
        clips[size] = (clip, mask)
    return clips


def one_run(clip: Path, mask: Path, config: str, k: int, sequential: bool, out: Path) -> dict:
    extra = list(CONFIGS[config]) + ([str(mask)] if config == "mask" else [])
    cmd = [sys.executable, "-m", "spam_stream.cli", "video", str(clip), "-o", str(out), "-k", str(k), *extra]
    if sequential:
        cmd.append("--sequential")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next((x.split("schedule: ", 1)[1] for x in proc.stderr.splitlines() if "schedule: " in x), "")
    steady = next((float(p.split()[1]) for p in line.split(" | ") if p.startswith("CPU/wall")), float("nan"))
    return {"wall": wall, "cpu": cpu, "schedule": line, "steady": steady}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["640x360", "1280x720"])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("-k", type=int, default=400)
    ap.add_argument("--clips", type=Path, default=None, help="folder for the generated clips (kept; reused)")
    args = ap.parse_args()
    print(f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"(before); {args.frames} frames per clip, K={args.k}, {args.runs} runs each, fresh processes")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.clips or tmp / "clips"
        folder.mkdir(parents=True, exist_ok=True)
        clips = make_clips(folder, args.sizes, args.frames)
        rows, schedules = [], []
        for size, (clip, mask) in clips.items():
            for config in args.configs:
                runs = {False: [], True: []}
                for r in range(args.runs):
                    order = (False, True) if r % 2 == 0 else (True, False)
                    for sequential in order:
                        runs[sequential].append(one_run(clip, mask, config, args.k, sequential, tmp / "out"))
                pip, seq = runs[False], runs[True]
                med = statistics.median
                speed = med(r["wall"] for r in seq) / med(r["wall"] for r in pip)
                slower = any(p["wall"] > max(s["wall"] for s in seq) for p in pip)
                rows.append((size, config, pip, seq, speed, slower))
                schedules.append((size, config, pip[-1]["schedule"]))
                print(f"  {size} {config}: done (load {os.getloadavg()[0]:.2f})", flush=True)
    print("\n| size | config | pipelined wall (s) | sequential wall (s) | CPU/wall pipelined | CPU/wall sequential "
          "| steady CPU/wall pipelined | speed-up (seq/pip, medians) | a pipelined run slower than the slowest "
          "sequential |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, config, pip, seq, speed, slower in rows:
        walls = lambda rs: " ".join(f"{r['wall']:.1f}" for r in rs)  # noqa: E731
        ratio = lambda rs: statistics.median(r["cpu"] / r["wall"] for r in rs)  # noqa: E731
        steady = statistics.median(r["steady"] for r in pip)
        print(f"| {size} | {config} | {walls(pip)} | {walls(seq)} | {ratio(pip):.2f} | {ratio(seq):.2f} | "
              f"{steady:.2f} | **{speed:.2f}×** | {'YES' if slower else 'no'} |")
    print("\nschedule of the last pipelined run of each configuration:")
    for size, config, line in schedules:
        print(f"- {size} {config}: {line}")
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (after)")


if __name__ == "__main__":
    main()
