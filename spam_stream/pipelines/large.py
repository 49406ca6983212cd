"""One large image, end to end: read lazily → segment in tiles → write the label TIFF and the preview as rows finish.

The job of ``spam-stream image`` for a TIFF, BigTIFF or whole-slide file (or any input with ``--tile-size N``), and
of one large unit of ``spam-stream batch``. The rows of :func:`spam_stream.tiling.iter_bands` go straight into the
tiled label TIFF (:func:`spam_stream.largeio.write_label_tiff`) and into the preview's subsample, so memory is a few
rows of tiles whatever the image's size.

A tile that cannot be read (a truncated file, a corrupt tile) ends the segmentation there: the rows finished
before it are kept, the rest of the label TIFF is 0, and the result says ``incomplete`` with the one-line error
naming the tile (the batch manifest records it, and ``--resume`` does it again).
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import InputError, atomic_path


@dataclass
class LargeResult:
    """What :func:`process_large` did: ``outputs`` (labels, overlay), ``superpixels`` (distinct ids written),
    ``tiles`` (clustered), ``rows`` (image rows finished), ``error`` (None, or one line: the result is then
    incomplete)."""

    outputs: dict = field(default_factory=dict)
    superpixels: int = 0
    tiles: int = 0
    rows: int = 0
    height: int = 0
    error: str | None = None

    @property
    def status(self) -> str:
        return "ok" if self.error is None else "incomplete"


def open_mask(path, shape, stack: ExitStack):
    """A mask file as a :class:`~spam_stream.masking.MaskSource`: a TIFF read lazily, tile by tile (a mask as large
    as the image stays on disk), any other file read whole (then small, or a lower pyramid level's size, scaled up
    window by window). InputError for a wrong size."""
    from ..largeio import LargeImage, is_large_format
    from ..masking import MaskSource, read_mask

    try:
        if is_large_format(path) and Path(path).is_file():
            return MaskSource(stack.enter_context(LargeImage(path)), shape)
        return MaskSource(read_mask(path), shape)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None


def tiles_for(model, image, n_superpixels: int, tile_size: int | None) -> int:
    """The tile side for an opened large image: ``tile_size`` when given, else from the memory limit
    (:func:`spam_stream.tiling.default_tile_size`); 0 when the whole frame fits."""
    from ..tiling import default_tile_size

    h, w = image.shape[:2]
    return int(tile_size) if tile_size else default_tile_size(model, h, w, n_superpixels)


def superpixel_count(height, width, area, superpixels: int, superpixel_size: int | None) -> int:
    """K inside the image (or the mask's ``area``): ``superpixels``, or one per ``superpixel_size`` pixels."""
    return superpixels if superpixel_size is None else max(1, round(area / superpixel_size))


def process_large(model, image, labels_path, overlay_path, n_superpixels: int, tile_size: int, *, mask=None,
                  start_label: int = 0, color="auto", progress=None, graph_path=None, submit=None) -> LargeResult:
    """Segment an opened large image (:func:`spam_stream.largeio.open_large`) in ``tile_size`` tiles and write
    ``labels_path`` (tiled uint32 BigTIFF, ids = the superpixels' global numbers + ``start_label``; with a mask 0
    outside and numbered from ``max(start_label, 1)``) and ``overlay_path`` (the preview PNG) as rows finish.
    ``mask``: None or a :class:`~spam_stream.masking.MaskSource`. ``progress(n)``: once per clustered tile.
    ``graph_path``: also write the region graph of every superpixel there (``.npz``, the arrays of
    :func:`spam_stream.graph.save_graph`), built row band by row band (:class:`spam_stream.graph.GraphRows`).
    ``submit``: where the tiles are clustered (:func:`spam_stream.tiling.iter_bands`; default this process).

    A :class:`~spam_stream.largeio.TileError` while reading ends it there (module docstring); other errors
    (a full disk: the partial TIFF is removed) raise."""
    from PIL import Image

    from ..largeio import LargeImage, TileError, write_label_tiff
    from ..seeding import grid_shape
    from ..tiling import iter_bands, label_dtype, preview, preview_factor

    h, w = image.shape[:2]
    area = h * w if mask is None else mask.area()
    k_grid = n_superpixels if mask is None else max(1, min(h * w, round(n_superpixels * h * w / area)))
    grid = grid_shape(h, w, k_grid)
    dtype = label_dtype(h, w, grid, start_label)
    start = start_label if mask is None else max(start_label, 1) - 1  # masked ids are 1.. already
    f = preview_factor((h, w))
    small = []  # every f-th row and column of the labels, for the preview
    n_cells = grid[0] * grid[1]
    seen = np.zeros(n_cells + 2, bool)  # ids below the cells' count (+1 with a mask), and the rare others:
    others = set()
    result = LargeResult(height=h)
    graph = None
    if graph_path is not None:
        from ..graph import GraphRows

        graph = GraphRows((h, w))

    def count(progress_n):
        result.tiles += progress_n
        if progress is not None:
            progress(progress_n)

    def rows():
        y = 0
        try:
            for y0, band, ids in iter_bands(model, image, n_superpixels, tile_size, mask=mask, progress=count,
                                            submit=submit):
                low = ids[ids < len(seen)]
                seen[low] = True
                others.update(ids[ids >= len(seen)].tolist())
                band = band.astype(dtype, copy=False)
                if start:
                    band = (np.where(band > 0, band + dtype(start), 0).astype(dtype) if mask is not None
                            else band + dtype(start))
                small.append(band[(-y0) % f::f, ::f].copy())  # a copy: a view would keep every band alive
                if graph is not None:
                    graph.add(y0, band, image.read(y0, y0 + len(band), 0, w))
                y = y0 + len(band)
                result.rows = y
                yield y0, band
                band = None  # the writer has it; nothing here keeps it past its tiles
        except TileError as exc:  # keep the rows before; the rest of the file is 0
            result.error = str(exc)
            while y < h:
                part = np.zeros((min(h, y + 1024) - y, w), dtype)
                small.append(part[(-y) % f::f, ::f].copy())
                yield y, part
                y += len(part)

    write_label_tiff(labels_path, rows(), image if isinstance(image, LargeImage) else None, shape=(h, w),
                     dtype=dtype)
    seen[0] = seen[0] and mask is None  # with a mask, 0 is the outside
    result.superpixels = int(seen.sum()) + len(others)
    with atomic_path(overlay_path) as tmp:
        Image.fromarray(preview(image.read, image.shape, np.concatenate(small), color=color,
                                rows=None if result.error is None else result.rows)).save(
            tmp, "PNG", compress_level=1)
    result.outputs = {"labels": Path(labels_path), "overlay": Path(overlay_path)}
    if graph is not None and result.error is None:
        from ..graph import save_graph

        save_graph(graph_path, graph.graph())
        result.outputs["graph"] = Path(graph_path)
    return result
