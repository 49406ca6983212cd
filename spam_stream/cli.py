"""The ``spam-stream`` command line: ``spam-stream image|eval|train ... --help``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .commands.common import (add_model_arguments, add_prior_arguments, build_attention, build_model,
                              resolve_prior_arguments)
from .io import InputError, read_image, write_labels, write_overlay


def run_image(args) -> int:
    resolve_prior_arguments(args)
    model = build_model(args)
    attention = build_attention(args)
    args.output.mkdir(parents=True, exist_ok=True)
    failures = []
    for path in tqdm(args.inputs, desc="images", unit="img", disable=len(args.inputs) < 2 and not args.progress):
        try:
            image = read_image(path)
            try:
                labels = model.segment(image, args.superpixels, key=path.stem, attention=attention,
                                       attention_ratio=args.attention_ratio, focus=args.focus)
            except (ValueError, InputError) as exc:
                raise InputError(f"{path}: {exc}") from None
            write_labels(args.output / f"{path.stem}_labels.png", labels)
            write_overlay(args.output / f"{path.stem}_overlay.png", image, labels)
        except InputError as exc:
            failures.append(str(exc))
            tqdm.write(f"error: {exc}", file=sys.stderr)
    done = len(args.inputs) - len(failures)
    print(f"wrote {done} of {len(args.inputs)} image(s) to {args.output}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spam-stream",
        description="SPAM superpixels (SuperPixel Anything Model): accurate, regular superpixels that stay inside "
                    "prior objects. Run 'spam-stream COMMAND --help' for each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("image", help="superpixels of one or more images",
                       description="Segment images into superpixels. Writes OUTDIR/<stem>_labels.png (uint16 labels) "
                                   "and OUTDIR/<stem>_overlay.png (boundaries drawn on the image).")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="image files")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder (created)")
    add_model_arguments(p)
    add_prior_arguments(p)
    p.add_argument("--progress", action="store_true", help="show the progress bar even for one input")
    p.set_defaults(run=run_image)

    from .evaluation import add_eval_arguments, run_eval

    p = sub.add_parser("eval", help="evaluate SPAM against SLIC on BSDS500 (metrics table and plots)",
                       description="Run SPAM (and baselines, in the same run) on a BSDS500 split and write "
                                   "OUT/per_image.csv, OUT/summary.md and four PNG plots (ASA, GR, EV vs K; "
                                   "boundary recall vs precision). Metric definitions: spam_stream/metrics.py.")
    add_eval_arguments(p)
    p.set_defaults(run=run_eval)

    from .training import add_train_arguments, run_train

    p = sub.add_parser("train", help="train the SPAM encoder on BSDS500 (resumable)",
                       description="SSN-style training of the encoder: cross-entropy of the ground truth reconstructed "
                                   "through the soft association + compactness; random crops and flips of the train "
                                   "split; the checkpoint with the best validation ASA is kept as OUT/best.pt. "
                                   "Re-running with the same --out resumes from OUT/last.pt.")
    add_train_arguments(p)
    p.set_defaults(run=run_train)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
