"""Start-up of a fresh process: import, ``SPAM()``, the first frame and a steady frame, per source tree.

Each run is a new ``python -c`` process (nothing warm but the OS file cache and numba's on-disk cache), with
``PYTHONPATH`` set to the tree under test; runs of the trees alternate, so the machine's load hits them alike. One
unrecorded run per tree first fills numba's on-disk cache of that tree. Prints every run and a median table.

    python benchmarks/bench_startup.py --runs 5 --baseline /tmp/main30     # this tree vs a checkout of main
    python benchmarks/bench_startup.py [--sizes 481x321:400,1920x1080:2000] [--encoder default|fast] [--steady 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
from PIL import Image
import spam_stream
from spam_stream import SPAM
t1 = time.perf_counter()
w, h, k, encoder, steady = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
sample = os.path.join(os.path.dirname(spam_stream.__file__), "..", "samples", "coffee.jpg")
image = np.asarray(Image.open(sample).convert("RGB").resize((w, h)))
t2 = time.perf_counter()
m = SPAM(encoder=encoder)
t3 = time.perf_counter()
m.segment(image, k)
t4 = time.perf_counter()
times = []
for _ in range(steady):
    a = time.perf_counter()
    m.segment(image, k)
    times.append(time.perf_counter() - a)
print(json.dumps({"import": t1 - t0, "SPAM()": t3 - t2, "first": t4 - t3, "steady": sorted(times)[len(times) // 2],
                  "int8": "int8" in getattr(m.encoder, "__dict__", {}), "file": spam_stream.__file__}))
"""


def run(tree: str, w: int, h: int, k: int, encoder: str, steady: int) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", CODE, str(w), str(h), str(k), encoder, str(steady)], env=env,
                         capture_output=True, text=True, check=True, cwd=tree)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["file"].startswith(os.path.abspath(tree)):
        raise SystemExit(f"{tree}: imported {res['file']} instead (PYTHONPATH did not win)")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per tree and size (default 5)")
    ap.add_argument("--baseline", default=None, help="another source tree (e.g. a git worktree of main) to compare")
    ap.add_argument("--sizes", default="481x321:400,1920x1080:2000", help="WxH:K list (default %(default)s)")
    ap.add_argument("--encoder", default="default", help="SPAM(encoder=...) (default %(default)s)")
    ap.add_argument("--steady", type=int, default=5, help="frames after the first; their median is 'steady'")
    args = ap.parse_args()
    trees = [("this tree", HERE)] + ([("baseline", os.path.abspath(args.baseline))] if args.baseline else [])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, encoder {args.encoder}; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    rows = []
    for size in args.sizes.split(","):
        wh, k = size.split(":")
        w, h = map(int, wh.split("x"))
        for _, tree in trees:  # fills numba's on-disk cache of each tree (a fresh install compiles once)
            run(tree, w, h, int(k), args.encoder, 1)
        res = {name: [] for name, _ in trees}
        for i in range(args.runs):
            for name, tree in trees:
                r = run(tree, w, h, int(k), args.encoder, args.steady)
                res[name].append(r)
                print(f"{w}x{h} K={k} {name} run {i + 1}: import {r['import'] * 1e3:.0f} ms, SPAM() "
                      f"{r['SPAM()'] * 1e3:.0f} ms, first frame {r['first'] * 1e3:.0f} ms, steady "
                      f"{r['steady'] * 1e3:.0f} ms, first ÷ steady {r['first'] / r['steady']:.2f}, (SPAM() + "
                      f"first) ÷ steady {(r['SPAM()'] + r['first']) / r['steady']:.2f}, int8 {r['int8']}",
                      flush=True)
        for name, _ in trees:
            rs = res[name]

            def med(f):
                return statistics.median(f(r) for r in rs)

            rows.append((f"{w}x{h} K={k}", name, med(lambda r: r["import"]), med(lambda r: r["SPAM()"]),
                         med(lambda r: r["first"]), med(lambda r: r["steady"]),
                         med(lambda r: r["first"] / r["steady"]),
                         med(lambda r: (r["SPAM()"] + r["first"]) / r["steady"])))
    print(f"\nmedians of {args.runs} fresh processes per row; load average after: {os.getloadavg()[0]:.2f}")
    print("| frame | tree | import (ms) | SPAM() (ms) | first frame (ms) | steady frame (ms) | first ÷ steady | "
          "(SPAM() + first) ÷ steady |")
    print("|---|---|---|---|---|---|---|---|")
    for frame, name, imp, spam, first, steady, ratio, ratio2 in rows:
        print(f"| {frame} | {name} | {imp * 1e3:.0f} | {spam * 1e3:.0f} | {first * 1e3:.0f} | {steady * 1e3:.0f} | "
              f"{ratio:.2f} | {ratio2:.2f} |")


if __name__ == "__main__":
    main()
