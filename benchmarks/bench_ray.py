"""Batch throughput: ``--engine ray`` with 1 and 2 workers vs the local engine, same inputs, same run.

Inputs: the first N BSDS500 val images (481x321) when the dataset is there, else N synthetic 481x321 images; K=400,
the shipped encoder, no prior. The local engine is ``run_batch`` (pipelined, one process); the Ray engine is
``run_batch_ray`` on a local Ray started once with --cpus CPUs (so actor start-up, which loads torch, numba and the
model in each actor, is inside every Ray run: Ray keeps no warm pool between jobs). Reported per engine: the median
over --repeats of the job's wall time, as images/s end to end.

    python benchmarks/bench_ray.py [--images 40] [--repeats 3] [--cpus 2]
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

BSDS_VAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "bsds500" / "data" / "images" / "val"


def inputs(folder: Path, n: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(BSDS_VAL.glob("*.jpg"))[:n] if BSDS_VAL.is_dir() else []
    if len(found) == n:
        for p in found:
            (folder / p.name).symlink_to(p.resolve())
        return f"{n} BSDS500 val images"
    from helpers import synthetic_image

    for i in range(n):
        Image.fromarray(synthetic_image(321, 481, seed=i)).save(folder / f"img{i:03d}.png")
    return f"{n} synthetic 481x321 images"


def timed(run) -> float:
    """Wall seconds of one job (all of it: for Ray, actor start-up included). Not measured: a steady-state rate from
    arrival times at the driver (Ray Data hands results over in bursts) or from the manifest's per-stage ms (the
    executor adds each stage's time on top of what SPAM's stage methods record: about twice the wall time)."""
    t = time.perf_counter()
    entries = run()
    wall = time.perf_counter() - t
    assert all(e["status"] == "ok" for e in entries), [e["error"] for e in entries if e["status"] != "ok"][:3]
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    ap.add_argument("-k", type=int, default=400)
    args = ap.parse_args()

    import ray

    from spam_stream.model import SPAM
    from spam_stream.pipelines.batch import run_batch
    from spam_stream.pipelines.ray_engine import make_spec, run_batch_ray, size_pool

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    what = inputs(tmp / "src", args.images)
    print(f"{what}, K={args.k}, shipped encoder, no prior; {os.cpu_count()} cores; local Ray with {args.cpus} CPUs; "
          f"ray {ray.__version__}; median of {args.repeats}")
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    model = SPAM()
    spec = make_spec()
    runs = {"local engine (pipelined, 1 process)":
            lambda out: run_batch(model, [str(tmp / "src")], out, args.k)[0]}
    for workers in (1, 2):
        n, per = size_pool(args.cpus, workers)
        runs[f"ray, {n} worker(s) x {per:g} CPU"] = (
            lambda out, w=workers: run_batch_ray(spec, [str(tmp / "src")], out, args.k, workers=w)[0])
    run_batch(model, [str(p) for p in sorted((tmp / "src").iterdir())[:2]], tmp / "warm-up", args.k)  # this process'
    # numba / torch warm-up, once (each Ray job starts its actors afresh: their warm-up is part of every Ray run)
    results = {name: [] for name in runs}
    for r in range(args.repeats):  # interleaved, so that load from other jobs falls on every engine alike
        for name, run in runs.items():
            out = tmp / f"out-{r}-{len(results[name])}-{abs(hash(name))}"
            results[name].append(timed(lambda: run(out)))
            print(f"  repeat {r}: {name}: wall {results[name][-1]:.1f} s", flush=True)
    ray.shutdown()
    base_wall = statistics.median(results[next(iter(runs))])
    print("| engine | wall (s), median | images/s end to end | vs local |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        wall = statistics.median(rows)
        print(f"| {name} | {wall:.1f} | {args.images / wall:.2f} | {base_wall / wall:.2f}x |")

if __name__ == "__main__":
    main()
