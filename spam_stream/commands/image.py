"""``spam-stream image``: superpixels of image files, one after the other."""
from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from ..graph import region_graph, save_graph
from ..io import InputError, read_image, write_labels, write_overlay
from ..largeio import is_large_format
from ..masking import mask_path, read_mask, shift_labels
from .common import (non_negative_int, positive_int, add_model_arguments, add_output_arguments, add_prior_arguments, build_attention, build_model,
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
    g = p.add_argument_group(
        "large images",
        "TIFF / BigTIFF / OME-TIFF / GeoTIFF inputs are read lazily (tile by tile, tifffile) and segmented in tiles "
        "when the whole frame would not fit the memory limit (or with --tile-size N): one superpixel density over "
        "the whole image, no seam at tile edges. Outputs: <stem>_labels.tif (tiled, compressed uint32 BigTIFF with "
        "the input's resolution and GeoTIFF tags, written row of tiles by row of tiles in bounded memory; ids are the "
        "superpixels' seed numbers + --start-label, not consecutive) and <stem>_overlay.png (a preview, long side "
        "<= 4096 px).")
    g.add_argument("--tile-size", type=non_negative_int, default=None, metavar="N",
                   help="segment in NxN tiles whose edges lie at multiples of N (0 = the whole frame, as for small "
                        "images; default: chosen from the memory limit for TIFF inputs, the whole frame otherwise)")
    g.add_argument("--superpixel-size", type=positive_int, default=None, metavar="PIXELS",
                   help="one superpixel per PIXELS pixels (K = H*W / PIXELS), instead of -k")
    g.add_argument("--level", type=non_negative_int, default=0, metavar="N",
                   help="pyramid level of a TIFF / slide to segment (default 0, full resolution)")
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
            if is_large_format(path) and args.tile_size != 0 or args.tile_size:
                try:
                    if run_large(model, args, path):
                        continue
                except ValueError as exc:
                    raise InputError(f"{path}: {exc}") from None
            image = read_image(path)
            mask = None if args.mask is None else read_mask(mask_path(args.mask, path))
            try:
                k = args.superpixels if args.superpixel_size is None else max(
                    1, round(image.shape[0] * image.shape[1] / args.superpixel_size))
                frame = model.run_stages(model.frame(image, k, key=path.stem, mask=mask),
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


def run_large(model, args, path) -> bool:
    """Segment one input in tiles (``--tile-size``, or the tile the memory limit gives a TIFF too large for one
    frame; :func:`spam_stream.pipelines.large.process_large`): writes <stem>_labels.tif and the <stem>_overlay.png
    preview. False when the whole frame fits (the caller then runs the ordinary path). A tile that cannot be read
    is an InputError naming it, after the rows before it are written."""
    from ..largeio import LargeImage, open_large
    from ..pipelines.large import open_mask, process_large, superpixel_count, tiles_for

    if args.prior != "none":
        if args.tile_size:
            raise InputError(f"{path}: --tile-size takes no --prior yet (use --tile-size 0)")
        return False
    if not path.is_file():
        return False
    with open_large(path, args.level) as image, ExitStack() as stack:
        h, w = image.shape[:2]
        mask = None if args.mask is None else open_mask(mask_path(args.mask, path), (h, w), stack)
        area = h * w if mask is None else mask.area()
        if area == 0:
            raise InputError(f"{path}: the mask is 0 everywhere: no pixel to segment")
        k = superpixel_count(h, w, area, args.superpixels, args.superpixel_size)
        if k > area:
            raise InputError(f"{path}: {k} superpixels requested but the image has only {area} pixels"
                             + (" inside the mask" if mask is not None else ""))
        tile = tiles_for(model, image, k, args.tile_size)
        if not tile:
            if isinstance(image, LargeImage) and args.level == 0:
                return False  # fits as one frame: the ordinary path (read whole)
            tile = max(h, w)
        n_tiles = -(-h // tile) * -(-w // tile)
        labels_out = args.output / f"{path.stem}_labels.tif"
        with tqdm(total=n_tiles, desc=path.name, unit="tile", disable=n_tiles < 2 and not args.progress) as bar:
            result = process_large(model, image, labels_out, args.output / f"{path.stem}_overlay.png", k, tile,
                                   mask=mask, start_label=args.start_label, color=args.boundary_color,
                                   progress=bar.update,
                                   graph_path=args.output / f"{path.stem}_graph.npz" if args.graph else None)
    if result.error:
        raise InputError(f"{result.error}; rows 0..{result.rows - 1} of {result.height} were segmented and kept in "
                         f"{labels_out} (the rest is 0)")
    return True
