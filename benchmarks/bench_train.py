"""Training throughput (steps/s) of ``spam-stream train``'s step — encoder forward, 5 soft iterations per sample,
loss, backward through the fused soft pass, Adam — for two source trees at the same batch and crop, interleaved in
one run so both see the same machine load. Synthetic inputs (random scaled features and ground truth, seeded), so
the data loading of the train split is not timed; each tree runs in its own subprocess (numba caches warm after one
warm-up step); also the time inside the soft kernels (association + sums, backward) per step.

    git worktree add /tmp/spam-baseline-train 92630cf       # the "before" tree
    python benchmarks/bench_train.py --before /tmp/spam-baseline-train [--rounds 3 --steps 4 --threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
import numpy as np, torch
cfg_args = json.loads(sys.argv[1])
threads = cfg_args.pop("threads")
device = torch.device(cfg_args.pop("device"))
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
torch.set_num_threads(threads)
import numba
numba.set_num_threads(threads)
from spam_stream.training import TrainConfig, batch_loss
from spam_stream.encoder import Encoder
from spam_stream.kernels import cpu
cfg = TrainConfig(root="", **cfg_args)
torch.manual_seed(0)
enc = Encoder(cfg.out_dim, cfg.width).to(device)
opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr)
g = torch.Generator().manual_seed(1)
c = cfg.crop
feats = torch.randn(cfg.batch, 5, c, c, generator=g) * 10
gts = torch.randint(0, 6, (cfg.batch, c // 40 + 1, c // 40 + 1), generator=g)
gts = gts.repeat_interleave(40, 1).repeat_interleave(40, 2)[:, :c, :c].contiguous()
feats, gts = feats.to(device), gts.to(device)
kernel_s = [0.0]
def timed(fn):
    def run(*a, **k):
        t = time.perf_counter(); out = fn(*a, **k); kernel_s[0] += time.perf_counter() - t; return out
    return run
for name in ("associate", "centroid_sums_soft", "soft_iteration_backward"):
    setattr(cpu, name, timed(getattr(cpu, name)))
def step():
    loss, _, _ = batch_loss(enc, feats, gts, cfg)
    opt.zero_grad(); loss.backward(); opt.step()
    return loss.item()
step()  # warm-up: numba compile / cache load
times, ks = [], []
for _ in range(int(sys.argv[2])):
    kernel_s[0] = 0.0
    sync(); t = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t); ks.append(kernel_s[0])
print(json.dumps({"step_s": times, "kernel_s": ks}))
"""


def run_tree(tree: Path, cfg: dict, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(cfg["threads"]))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(steps)], env=env, cwd=str(tree),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="source tree of the baseline (a git worktree)")
    ap.add_argument("--after", type=Path, default=HERE.parent, help="source tree to compare (default: this one)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (before, after)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round and tree")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=201)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--device", default="cpu",
                    help="cpu (default) or cuda; on cuda the soft-kernel column is not measured (0)")
    args = ap.parse_args()
    cfg = {"batch": args.batch, "crop": args.crop, "threads": args.threads, "width": args.width, "device": args.device}
    res = {"before": {"step_s": [], "kernel_s": []}, "after": {"step_s": [], "kernel_s": []}}
    for r in range(args.rounds):
        for name, tree in (("before", args.before), ("after", args.after)):
            out = run_tree(tree, cfg, args.steps)
            for key in out:
                res[name][key] += out[key]
            print(f"round {r}: {name}: step {statistics.median(out['step_s']):.3f} s, "
                  f"soft kernels {statistics.median(out['kernel_s']):.3f} s", flush=True)
    print(f"\n{args.device}: batch {args.batch}, crop {args.crop}, width {args.width}, {args.threads} threads, "
          f"median of {args.rounds}x{args.steps} steps")
    print("| tree | s / step | steps / s | soft kernels s / step |")
    print("|---|---|---|---|")
    med = {}
    for name, tree in (("before", args.before), ("after", args.after)):
        s = statistics.median(res[name]["step_s"])
        k = statistics.median(res[name]["kernel_s"])
        med[name] = (s, k)
        print(f"| {name} ({tree}) | {s:.3f} | {1 / s:.2f} | {k:.3f} |")
    print(f"\ntrain: speedup_steps_per_s={med['before'][0] / med['after'][0]:.2f} "
          f"soft_kernel_speedup={med['before'][1] / max(med['after'][1], 1e-12):.2f}")


if __name__ == "__main__":
    main()
