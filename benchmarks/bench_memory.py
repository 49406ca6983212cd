"""Peak resident memory and time of one ``segment()`` per frame size, each case in a fresh process
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), with the bundled encoder, no prior; optionally the same cases run
from another source tree (e.g. an older commit checked out with ``git worktree add``) in the same run.

    python benchmarks/bench_memory.py [--sizes 720p,1080p,4k] [--baseline /tmp/spam-baseline-mem]
                                      [--baseline-sizes 720p,1080p,4k] [--encoder default] [--budget BYTES]
                                      [--device cuda]

Each child: imports, builds ``SPAM``, segments a 64×64 warm-up image (numba/JIT and allocator warm-up), then one
timed ``segment()`` of the sample photo resized to the frame size. Reported: resident memory after the warm-up
(libraries, weights), the peak during the frame, wall and CPU time of the frame. With ``--stages`` (trees whose
``SPAM`` has ``run_stages``) the frame runs stage by stage and the peak after each stage is printed too, which says
where the peak comes from. With ``--device cuda`` the model runs on the GPU and the table adds the peak
``torch.cuda.max_memory_allocated`` of the frame (reset after the warm-up); memory sizes are MiB (2**20 bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = {"720p": (1280, 720, 1000), "1080p": (1920, 1080, 2000), "4k": (3840, 2160, 8000)}


def child(args):
    import resource
    import time

    import numpy as np
    from PIL import Image

    import spam_stream

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def current_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    w, h, k = SIZES[args.child]
    image = np.asarray(Image.open(os.path.join(ROOT, "samples", "coffee.jpg")).convert("RGB").resize((w, h)))
    kwargs = {} if args.budget is None else {"memory_budget": args.budget}
    model = spam_stream.SPAM(encoder=args.encoder, device=args.device, **kwargs)
    model.segment(image[:64, :64].copy(), 16)
    cuda = args.device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = peak_mb()
    stages = {}
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    if args.stages and hasattr(model, "run_stages"):
        frame = model.frame(image, k)
        for name in ("prior_stage", "seed_stage", "feature_stage", "cluster_stage", "connectivity_stage"):
            getattr(model, name)(frame)
            stages[name.replace("_stage", "")] = (round(peak_mb()), round(current_mb()))
        labels = frame.labels
    else:
        labels = model.segment(image, k)
    gpu_mb = None
    if cuda:
        torch.cuda.synchronize()
        gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20)
    t_wall, t_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    print(json.dumps({"gpu_peak_mb": gpu_mb, "module": spam_stream.__file__, "size": args.child, "base_mb": round(base),
                      "peak_mb": round(peak_mb()), "wall_s": round(t_wall, 2), "cpu_s": round(t_cpu, 2),
                      "superpixels": int(labels.max()) + 1, "stages": stages}))


def run_case(tree: str, size: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", size, "--encoder", args.encoder,
           "--device", args.device]
    if args.budget is not None and tree == ROOT:
        cmd += ["--budget", str(args.budget)]
    if args.stages:
        cmd.append("--stages")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        return {"size": size, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["module"].startswith(os.path.realpath(tree)) and not result["module"].startswith(tree):
        raise RuntimeError(f"child imported {result['module']}, not the tree {tree}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="720p,1080p,4k")
    ap.add_argument("--baseline", default=None, help="another source tree (its root folder) run the same way")
    ap.add_argument("--baseline-sizes", default=None, help="sizes for the baseline (default: --sizes)")
    ap.add_argument("--encoder", default="default")
    ap.add_argument("--budget", type=int, default=None, help="memory_budget for this tree's SPAM (bytes)")
    ap.add_argument("--stages", action="store_true", help="peak after each stage (trees with run_stages)")
    ap.add_argument("--device", default="cpu", help="the model's device (cuda: adds the GPU's peak allocation)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    sizes = args.sizes.split(",")
    trees = [("this tree", ROOT, sizes)]
    if args.baseline:
        bsizes = (args.baseline_sizes or args.sizes).split(",")
        trees.insert(0, ("baseline", os.path.abspath(args.baseline), [s for s in bsizes if s]))
    print(f"{os.cpu_count()} cores; encoder {args.encoder}; device {args.device}; one fresh process per case")
    print("| tree | frame | K | K' | RSS after warm-up (MiB) | peak RSS (MiB) | wall (s) | CPU (s) | GPU peak (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for size in sizes + [s for s in (trees[0][2] if args.baseline else []) if s not in sizes]:
        for name, tree, tree_sizes in trees:
            if size not in tree_sizes:
                continue
            r = run_case(tree, size, args)
            results.append((name, r))
            w, h, k = SIZES[size]
            if "error" in r:
                print(f"| {name} | {w}x{h} | {k} | failed: {r['error']} | | | | | |", flush=True)
                continue
            print(f"| {name} | {w}x{h} | {k} | {r['superpixels']} | {r['base_mb']} | {r['peak_mb']} | "
                  f"{r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r.get('gpu_peak_mb') or '—'} |", flush=True)
    staged = [(n, r) for n, r in results if r.get("stages")]
    if staged:
        print("\npeak / current RSS (MiB) after each stage:")
        for name, r in staged:
            print(f"- {name} {r['size']}: " + ", ".join(f"{s} {p}/{c}" for s, (p, c) in r["stages"].items()))


if __name__ == "__main__":
    main()
