"""Encoder inference on CPU: as trained (BatchNorm, NCHW, no_grad) vs folded BatchNorm + channels-last + inference
mode, on a 481x321 input, for several widths. Random weights with non-trivial BN statistics; median of --repeats.

    python benchmarks/bench_encoder.py [--repeats 7]
"""
from __future__ import annotations

import argparse

import torch

from spam_stream.encoder import Encoder, fold_batchnorm
from timing import median_ms




def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, 5, 321, 481)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x5x321x481, D=20")
    print("| width | BN, NCHW, no_grad (ms) | folded, channels-last, inference_mode (ms) | speedup | max abs diff |")
    print("|---|---|---|---|---|")
    for width in (16, 32, 64):
        enc = Encoder(20, width)
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        enc.eval()

        def before():
            with torch.no_grad():
                return enc(x)

        fast = fold_batchnorm(enc)
        xc = x.contiguous(memory_format=torch.channels_last)

        def after():
            with torch.inference_mode():
                return fast(xc)

        diff = (before() - after()).abs().max().item()
        tb, ta = median_ms(before, args.repeats), median_ms(after, args.repeats)
        print(f"| {width} | {tb:.0f} | {ta:.0f} | {tb / ta:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
