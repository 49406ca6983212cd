"""``spam-stream batch``: many images, pipelined, resumable, shardable, with a manifest."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..io import InputError
from ..pipelines.batch import parse_shard, run_batch
from ..pipelines.executor import PipelineError
from .common import (add_model_arguments, add_output_arguments, add_prior_arguments, build_attention, build_model,
                     report_failures, resolve_prior_arguments)

DESCRIPTION = """\
Segment many images. INPUTS are image files, folders (searched recursively), glob patterns ('photos/**/*.jpg',
quoted) or text files (.txt/.lst) listing one path per line. For each image writes, mirrored under OUTDIR by its
path relative to the folder / pattern / list it came from: <stem>_labels.png (uint16 labels) and
<stem>_overlay.png; and OUTDIR/manifest.jsonl, one JSON line per image (input, outputs, K', ms per stage, status,
error).

Decoding, the prior, the encoder, clustering and writing run as a pipeline. Every output is written under a
temporary name and renamed, so after a crash or Ctrl-C, --resume skips exactly the images whose outputs are
complete. --shard I/N processes a deterministic 1/N of the inputs (N machines, no overlap, no gap; manifest
manifest-I-of-N.jsonl). A bad image is reported and the rest go on; the exit code is 1 when any image failed."""


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="superpixels of many images (folders, globs, lists; resumable, shardable)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files, folders, glob patterns or list files")
    add_output_arguments(p)
    add_model_arguments(p)
    add_prior_arguments(p)
    g = p.add_argument_group("batch")
    g.add_argument("--resume", action="store_true", help="skip images whose outputs already exist (complete)")
    g.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="process only shard I of N (0 <= I < N), by a hash of each image's relative path")
    g.add_argument("--sequential", action="store_true",
                   help="run the stages one image at a time instead of pipelined (same results)")
    p.set_defaults(run=run)


def _shard(text: str):
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> int:
    resolve_prior_arguments(args)
    model = build_model(args)
    attention = build_attention(args)
    bar = tqdm(desc="images", unit="img", dynamic_ncols=True)

    def progress(frame):
        bar.update(1)
        if frame.error:
            tqdm.write(f"error: {frame.error}", file=sys.stderr)

    try:
        entries, carried, total = run_batch(model, args.inputs, args.output, args.superpixels, resume=args.resume,
                                            shard_spec=args.shard, color=args.boundary_color,
                                            pipelined=not args.sequential, progress=progress, attention=attention,
                                            attention_ratio=args.attention_ratio, focus=args.focus)
    except PipelineError as exc:
        raise InputError(str(exc)) from None
    finally:
        bar.close()
    failures = [e["error"] for e in entries if e["status"] != "ok"]
    if carried:
        print(f"resumed: {len(carried)} image(s) already complete, skipped", file=sys.stderr)
    done = len(carried) + sum(e["status"] == "ok" for e in entries)
    return report_failures(failures, done, total, "image(s)", Path(args.output))
