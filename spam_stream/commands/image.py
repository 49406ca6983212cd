"""``spam-stream image``: superpixels of image files, one after the other."""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from ..graph import region_graph, save_graph
from ..io import InputError, read_image, write_labels, write_overlay
from ..masking import mask_path, read_mask, shift_labels
from .common import (add_model_arguments, add_output_arguments, add_prior_arguments, build_attention, build_model,
                     prepare_outdir, report_failures, resolve_prior_arguments)


def add_parser(sub) -> None:
    p = sub.add_parser("image", help="superpixels of one or more images",
                       description="Segment images into superpixels. Writes OUTDIR/<stem>_labels.png (uint16 labels) "
                                   "and OUTDIR/<stem>_overlay.png (boundaries drawn on the image), and with --graph "
                                   "OUTDIR/<stem>_graph.npz (the superpixel graph). For folders, "
                                   "globs, resumable and sharded jobs use 'spam-stream batch'.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="image files (videos: 'spam-stream video')")
    add_output_arguments(p)
    add_model_arguments(p)
    add_prior_arguments(p)
    p.add_argument("--mask", type=Path, metavar="PATH",
                   help="superpixels only where this mask is non-zero (a label/binary image, a TIFF or a .npy of the "
                        "image's size, or of a lower pyramid level: scaled up by nearest neighbour; or a folder of "
                        "them matched by file stem): label 0 outside, superpixels numbered from 1 (or "
                        "--start-label); masked-out pixels are skipped, not segmented")
    p.add_argument("--progress", action="store_true", help="show the progress bar even for one input")
    p.set_defaults(run=run)


def run(args) -> int:
    resolve_prior_arguments(args)
    prepare_outdir(args.output)
    model = build_model(args)
    attention = build_attention(args)
    failures = []
    for path in tqdm(args.inputs, desc="images", unit="img", disable=len(args.inputs) < 2 and not args.progress):
        try:
            image = read_image(path)
            mask = None if args.mask is None else read_mask(mask_path(args.mask, path))
            try:
                frame = model.run_stages(model.frame(image, args.superpixels, key=path.stem, mask=mask),
                                         attention=attention, attention_ratio=args.attention_ratio, focus=args.focus)
                labels = shift_labels(frame.labels, args.start_label, mask is not None)
                write_labels(args.output / f"{path.stem}_labels.png", labels)
            except (ValueError, InputError) as exc:
                raise InputError(f"{path}: {exc}") from None
            write_overlay(args.output / f"{path.stem}_overlay.png", image, labels, args.boundary_color)
            if args.graph:
                save_graph(args.output / f"{path.stem}_graph.npz",
                           region_graph(labels, frame.image, prior=frame.partition))
        except InputError as exc:
            failures.append(str(exc))
            tqdm.write(f"error: {exc}", file=sys.stderr)
    return report_failures(failures, len(args.inputs) - len(failures), len(args.inputs), "image(s)", args.output)
