"""The ``spam-stream`` command line: ``spam-stream image|video|batch|eval|train ... --help``.

Each command lives in its own module under :mod:`spam_stream.commands`; this file only assembles the parser.
"""
from __future__ import annotations

import argparse
import sys

from .commands import batch, image, video
from .io import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spam-stream",
        description="SPAM superpixels (SuperPixel Anything Model): accurate, regular superpixels that stay inside "
                    "prior objects. Run 'spam-stream COMMAND --help' for each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    image.add_parser(sub)
    video.add_parser(sub)
    batch.add_parser(sub)

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


def console_main() -> None:
    """The ``spam-stream`` executable: :func:`main`, then exit with its code.

    After Ctrl-C the pipeline has already stopped and only complete files remain; the process then leaves at once
    (``os._exit``), because an interpreter shutdown can still meet torch / numba / ffmpeg worker threads of the
    interrupted run and crash in native code on the way out. The same after a live source was stopped while its
    reading thread still waits for data."""
    import os

    from .pipelines.executor import interrupt_on_sigint

    interrupt_on_sigint()  # Ctrl-C reaches the pipelines even if Python swallows it where it landed
    code = main()
    import threading

    # a live source stopped by Ctrl-C / SIGTERM may leave its reading thread blocked in ffmpeg (waiting for data on
    # a socket or stdin): the outputs are closed already, and an interpreter shutdown would meet that thread
    reader_left = any(t.name == "source-reader" and t.is_alive() for t in threading.enumerate())
    if code == 130 or reader_left:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
