"""The ``spam-stream`` command line: ``spam-stream image|eval|train ... --help``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .io import InputError, read_image, read_partition, write_labels, write_overlay


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs SPAM."""
    p.add_argument("-k", "--superpixels", type=_positive_int, default=400, metavar="K",
                   help="number of superpixels requested (default: 400)")
    p.add_argument("--compactness", type=float, default=7.5, metavar="LAMBDA_S",
                   help="λs, the regularity knob: higher = more regular, lower = closer to colour edges (default 7.5)")
    p.add_argument("--color-scale", type=float, default=0.26, metavar="LAMBDA_C", help="λc, colour weight (default 0.26)")
    p.add_argument("--iterations", type=_positive_int, default=10, metavar="N", help="clustering iterations (default 10)")
    p.add_argument("--encoder", default="default", metavar="PATH|default|none",
                   help="encoder weights: 'default' = the bundled encoder, 'none' = no CNN (D=5), or a weights file")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")


def add_prior_arguments(p: argparse.ArgumentParser) -> None:
    """Prior flags shared by image, video and batch."""
    p.add_argument("--prior", choices=["none", "masks"], default=None,
                   help="prior object partition: none, or masks (a label image / .npy file given by --prior-masks)")
    p.add_argument("--prior-masks", type=Path, metavar="PATH",
                   help="label image (each value one object) or .npy partition (-1 = uncertain)")
    p.add_argument("--prior-mask", type=Path, metavar="PATH",
                   help="shorthand for --prior masks --prior-masks PATH")


def resolve_prior_arguments(args) -> None:
    """Fold the shorthand into the canonical flags (one code path); errors for contradictory flags."""
    if args.prior_mask is not None:
        if args.prior not in (None, "masks") or (args.prior_masks is not None and args.prior_masks != args.prior_mask):
            raise InputError("--prior-mask is shorthand for --prior masks --prior-masks PATH: do not combine it with another prior")
        args.prior, args.prior_masks = "masks", args.prior_mask
    if args.prior is None:
        args.prior = "masks" if args.prior_masks is not None else "none"
    if args.prior == "masks" and args.prior_masks is None:
        raise InputError("--prior masks needs --prior-masks PATH")


def build_model(args):
    from .model import SPAM

    return SPAM(encoder=args.encoder, compactness=args.compactness, color_scale=args.color_scale,
                iterations=args.iterations, device=args.device)


def run_image(args) -> int:
    resolve_prior_arguments(args)
    model = build_model(args)
    args.output.mkdir(parents=True, exist_ok=True)
    prior = read_partition(args.prior_masks) if args.prior == "masks" else None
    failures = []
    for path in tqdm(args.inputs, desc="images", unit="img", disable=len(args.inputs) < 2 and not args.progress):
        try:
            image = read_image(path)
            if prior is not None and prior.shape != image.shape[:2]:
                raise InputError(f"{path}: prior mask {args.prior_masks} is {prior.shape[1]}x{prior.shape[0]} "
                                 f"but the image is {image.shape[1]}x{image.shape[0]}")
            try:
                labels = model.segment(image, args.superpixels, prior)
            except ValueError as exc:
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
