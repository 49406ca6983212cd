"""Images of any size: one superpixel density over the whole image, segmented tile by tile without seams.

(Not :mod:`spam_stream.tiles`, which stacks a batch of *small* images into one frame.)

* **One global grid of seeds** (:func:`~spam_stream.seeding.grid_shape` over the whole H×W image, ids
  ``cy·nw + cx``), so the density is the whole image's and every superpixel has one global id.
* **Each tile with a halo.** Tile cores are ``tile_size``×``tile_size`` with edges at multiples of it; a tile is
  segmented on its core plus a halo of :func:`halo_for` pixels (3 grid steps, plus the encoder's receptive field
  :data:`spam_stream.encoder.HALO`; the region's origin on the encoder's alignment), so the encoder's features of
  the core equal the whole image's and the clustering near the core's edges sees the same neighbours. The tile is
  an ordinary :class:`~spam_stream.frame.Frame` run through the model's own stages (features, cluster): its seeds
  are the global cells that meet the region, its candidates each pixel's cell and 8 neighbours (a table in global
  ids), its positions scaled by the whole image's factor (``meta["compactness"]``).
* **Keep the core.** Only the core's labels are kept, as global ids, so a superpixel that straddles a tile edge
  carries the same id on both sides and joins there.
* **Connectivity per tile, on a window of raw labels** (:func:`finalize_window`,
  :func:`~spam_stream.connectivity.enforce_connectivity`, the frame's rule): the core plus
  :func:`connectivity_margins` (5 grid steps) holds whole every superpixel that touches the core and the neighbours
  its fragments can merge into; a superpixel's final id is the seed whose largest component it holds, a property
  of the superpixel, so neighbouring windows agree.
* **Rows of tiles in order** (:func:`iter_bands`): a row is final once the row below is clustered; its labels are
  handed on (the label TIFF, the preview, the graph) and only the raw rows the next windows need are kept.

Tiles and windows run on a thread pool (one thread per core, each single-threaded), so every core is busy.
Memory: one region's features and activations per thread, about three rows of tiles of int32 labels, whatever the
image's height. A mask (:class:`~spam_stream.masking.MaskSource`) skips the pixels outside it.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .connectivity import enforce_connectivity
from .frame import Frame
from .kernels.candidates import LAZY, N_SLOTS, Candidates
from .scales import position_scale
from .seeding import Seeds, grid_shape

ROW_BUFFER_BYTES = 512 << 20  # default tiles keep iter_bands' rows of tiles within this (a 40000-wide image: 1024)
ALIGN = 4  # region origins on the encoder's pooling alignment (its tiles then equal the whole frame's)


def halo_for(height: int, width: int, n_superpixels: int, model=None) -> int:
    """Halo of a tile, in pixels: :data:`HALO_STEPS` grid steps, plus the encoder's receptive field when ``model``
    has an encoder (or is not given), on the alignment."""
    from .encoder import HALO

    field = 0 if model is not None and model.encoder is None else HALO
    step = math.sqrt(height * width / n_superpixels)
    return int(math.ceil((HALO_STEPS * step + field) / ALIGN) * ALIGN)


HALO_STEPS = 3
"""Grid steps of clustering context around a tile's core. Two were at the seam limit with every-row rounds (edge ÷
halfway boundary fraction 1.19 on the test picture, the limit 1.2) and over it with the default row subsampling
(1.43: centroids of the superpixels cut by the region's edge are means of fewer rows); three give 0.87 / 0.95."""


def tile_grid(height: int, width: int, tile_size: int) -> list[tuple[int, int, int, int]]:
    """Cores (y0, y1, x0, x1) in raster order, edges at multiples of ``tile_size``."""
    return [(y, min(height, y + tile_size), x, min(width, x + tile_size))
            for y in range(0, height, tile_size) for x in range(0, width, tile_size)]


def _cells(lo: int, hi: int, size: int, n: int) -> np.ndarray:
    return (np.arange(lo, hi, dtype=np.int64) * n // size).astype(np.int64)


def region_layout(height: int, width: int, grid: tuple[int, int], region: tuple[int, int, int, int],
                  inside: np.ndarray | None = None, cells_kept: np.ndarray | None = None):
    """Seeds, candidates and the local→global id table of one region (ry0, ry1, rx0, rx1) of the global grid.
    ``inside``: the region's (rh, rw) bool mask, or None: pixels outside get no candidate (label -1) and start in
    no seed; ``cells_kept``: the whole grid's (nh, nw) bool (:func:`mask_cells`), the cells that keep a seed."""
    nh, nw = grid
    ry0, ry1, rx0, rx1 = region
    cy, cx = _cells(ry0, ry1, height, nh), _cells(rx0, rx1, width, nw)
    cy0, cy1, cx0, cx1 = int(cy[0]), int(cy[-1]), int(cx[0]), int(cx[-1])
    lh, lw = cy1 - cy0 + 1, cx1 - cx0 + 1
    ly, lx = cy - cy0, cx - cx0
    rh, rw = ry1 - ry0, rx1 - rx0
    # one row per local cell (its 9 neighbours, -1 outside the region's cells), each pixel pointing at its cell's
    ny = np.arange(lh)[:, None, None] + (np.arange(N_SLOTS) // 3 - 1)[None, None, :]
    nx = np.arange(lw)[None, :, None] + (np.arange(N_SLOTS) % 3 - 1)[None, None, :]
    cell_rows = np.where((ny >= 0) & (ny < lh) & (nx >= 0) & (nx < lw), ny * lw + nx, -1).astype(np.int32)
    cell_rows = cell_rows.reshape(-1, N_SLOTS)
    init = (ly[:, None] * lw + lx[None, :]).astype(np.int32).reshape(-1)
    pixel_row = init
    if inside is not None:
        flat = inside.ravel()
        empty = ~cells_kept[cy0:cy1 + 1, cx0:cx1 + 1].ravel()
        cell_rows = np.where(empty[np.maximum(cell_rows, 0)], -1, cell_rows)
        cell_rows = np.concatenate([cell_rows, np.full((1, N_SLOTS), -1, np.int32)])  # the outside's empty row
        pixel_row = np.where(flat, init, lh * lw).astype(np.int32)
        init = np.where(flat & ~empty[init], init, -1).astype(np.int32)
    gy, gx = np.meshgrid((np.arange(cy0, cy1 + 1) + 0.5) * height / nh - ry0,
                         (np.arange(cx0, cx1 + 1) + 0.5) * width / nw - rx0, indexing="ij")
    k = lh * lw
    seeds = Seeds(np.stack([gy.ravel(), gx.ravel()], 1), np.zeros(k, np.int32), init)
    cands = Candidates(rh, rw, torch.zeros(rh * rw, dtype=torch.int32), torch.zeros(k, dtype=torch.int32),
                       table=LAZY,  # rows[pixel_row] when a kernel other than the cell layout needs it
                       rows=torch.from_numpy(np.ascontiguousarray(cell_rows)), pixel_row=torch.from_numpy(pixel_row),
                       block_y=torch.from_numpy(ly), block_x=torch.from_numpy(lx),
                       row_origin=ry0)  # row subsampling: the image's row phases, the same in overlapping halos
    to_global = ((np.arange(cy0, cy1 + 1)[:, None] * nw) + np.arange(cx0, cx1 + 1)[None, :]).ravel()
    return seeds, cands, to_global.astype(np.int32)  # the grid has fewer than 2^31 cells


def segment_tile(model, read, shape, n_superpixels: int, grid, core, halo: int, mask=None) -> np.ndarray:
    """Cluster labels of one core (global seed ids, (y1-y0, x1-x0) int32, -1 outside the mask): the model's
    feature and cluster stages on the core plus its halo. ``read(y0, y1, x0, x1)`` → (h, w, 3) uint8; ``mask``:
    None or a :class:`~spam_stream.masking.MaskSource`."""
    height, width = shape
    y0, y1, x0, x1 = core
    ry0, rx0 = max(0, y0 - halo) // ALIGN * ALIGN, max(0, x0 - halo) // ALIGN * ALIGN
    ry1, rx1 = min(height, y1 + halo), min(width, x1 + halo)
    inside = None
    if mask is not None:  # masked-out pixels are skipped: the region shrinks to the box of those inside
        inside = mask.read(ry0, ry1, rx0, rx1)
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        if not len(rows) or not inside[max(0, y0 - ry0):y1 - ry0, max(0, x0 - rx0):x1 - rx0].any():
            return np.full((y1 - y0, x1 - x0), -1, np.int32)  # nothing inside the core: no work at all
        ny0, nx0 = (ry0 + rows[0]) // ALIGN * ALIGN, (rx0 + cols[0]) // ALIGN * ALIGN
        ny1, nx1 = ry0 + rows[-1] + 1, rx0 + cols[-1] + 1
        inside = inside[ny0 - ry0:ny1 - ry0, nx0 - rx0:nx1 - rx0]
        ry0, ry1, rx0, rx1 = ny0, ny1, nx0, nx1
    seeds, cands, to_global = region_layout(height, width, grid, (ry0, ry1, rx0, rx1), inside,
                                            None if mask is None else mask.cells_kept)
    frame = Frame(key=core, image=np.ascontiguousarray(read(ry0, ry1, rx0, rx1)), n_superpixels=len(seeds))
    frame.seeds, frame.cands = seeds, cands
    rh, rw = ry1 - ry0, rx1 - rx0
    k = len(seeds)
    # positions scaled by the whole image's factor: λ' with position_scale(rh, rw, k, λ') == the global one
    frame.meta["compactness"] = (position_scale(height, width, n_superpixels, model.compactness)
                                 / max(math.sqrt(k) / rh, math.sqrt(k) / rw))
    model.feature_stage(frame)
    model.cluster_stage(frame)
    out = np.full((y1 - y0, x1 - x0), -1, np.int32)  # (a masked region may not cover the whole core)
    a, b, c, d = max(y0, ry0), min(y1, ry1), max(x0, rx0), min(x1, rx1)
    local = frame.cluster_labels[a - ry0:b - ry0, c - rx0:d - rx0]
    out[a - y0:b - y0, c - x0:d - x0] = np.where(local >= 0, to_global[np.clip(local, 0, None)], -1)
    return out


def _single_threaded(fn):
    def run(*args):
        import numba

        numba.set_num_threads(1)  # per calling thread: one tile per core
        return fn(*args)
    return run


def mask_cells(mask, shape, grid, rows: int = 1024) -> np.ndarray:
    """(nh, nw) bool: the grid cells that keep their seed under a mask — those at least half inside it, and those
    with a pixel inside and no such cell among their 8 neighbours (so every pixel inside has a candidate). A cell
    cut to a sliver by the mask's edge thus joins its neighbours instead of making a superpixel of its own, and the
    count inside is the mask's area over the density. One pass over the mask, in bands of ``rows``."""
    from scipy.ndimage import maximum_filter

    height, width = shape
    nh, nw = grid
    cy, cx = _cells(0, height, height, nh), _cells(0, width, width, nw)
    counts = np.zeros(nh * nw, np.int64)
    for y in range(0, height, rows):
        inside = mask.read(y, min(height, y + rows), 0, width)
        idx = cy[y:y + len(inside), None] * nw + cx[None, :]
        counts += np.bincount(idx[inside], minlength=nh * nw)
    counts = counts.reshape(nh, nw)
    cell_area = np.bincount(cy, minlength=nh)[:, None] * np.bincount(cx, minlength=nw)[None, :]
    half = 2 * counts >= cell_area
    return half | ((counts > 0) & ~maximum_filter(half, size=3, mode="constant"))


def connectivity_margins(height: int, width: int, grid) -> tuple[int, int]:
    """Rows and columns of context around a core for its connectivity window: a superpixel lies in its seed's cell
    and the 8 around it, so 5 cell steps (+2 pixels) hold whole every superpixel that touches the core, every
    neighbour a fragment of one can merge into, and the neighbours of those."""
    nh, nw = grid
    return 5 * -(-height // nh) + 2, 5 * -(-width // nw) + 2


def label_dtype(height: int, width: int, grid, start: int = 0) -> type:
    """uint32 while every id (+ ``start``) fits (:func:`iter_bands`' ids are < cells + pixels), else uint64."""
    return np.uint32 if grid[0] * grid[1] + height * width + start + 1 < 2 ** 32 else np.uint64


def finalize_window(raw: np.ndarray, origin: tuple[int, int], core: tuple[int, int, int, int], width: int,
                    n_cells: int, min_size: int, dtype, masked: bool = False, out_core: np.ndarray | None = None):
    """Connectivity (:func:`~spam_stream.connectivity.enforce_connectivity`) on one window of raw cluster labels
    (global seed ids) around a core; the core's final labels as global ids: a superpixel keeps the id of the seed
    whose largest component it holds, one split off on its own (rare) gets ``n_cells`` + the global raster index
    of its first pixel. Both are properties of the superpixel, not of the window, so neighbouring windows agree.
    Returns (the core's labels as ``dtype``, written into ``out_core`` when given, the distinct ids in it).
    ``masked``: the raw -1 pixels are outside a mask: an object of their own (nothing merges across the mask's
    edge), 0 in the result, and every id inside is one more (numbered from 1, scikit-image's mask convention)."""
    outside = raw < 0 if masked else None
    out, source = enforce_connectivity(raw, None if outside is None else outside.astype(np.int32), min_size,
                                       return_source=True)
    ids = source.astype(np.int64)
    alone = np.flatnonzero(ids < 0)
    if alone.size:
        flat = np.flatnonzero(np.isin(out.ravel(), alone))
        u, first = np.unique(out.ravel()[flat], return_index=True)
        wy, wx = np.divmod(flat[first], raw.shape[1])
        ids[u] = n_cells + (wy + origin[0]) * width + (wx + origin[1])
    y0, y1, x0, x1 = core
    core_slice = (slice(y0 - origin[0], y1 - origin[0]), slice(x0 - origin[1], x1 - origin[1]))
    local = out[core_slice]
    final = ids[local]
    here = np.bincount(local.ravel(), minlength=len(ids)) > 0  # the window's superpixels in the core
    if masked:
        is_out = np.zeros(len(ids), bool)
        is_out[out[outside]] = True  # a superpixel is wholly outside or wholly inside
        final = np.where(outside[core_slice], 0, final + 1)
        present = np.concatenate([[0] if (here & is_out).any() else [], ids[here & ~is_out] + 1]).astype(np.int64)
    else:
        present = ids[here]
    if out_core is None:
        return final.astype(dtype), present
    out_core[...] = final
    return out_core, present


def iter_bands(model, image, n_superpixels: int, tile_size: int, *, mask=None, workers: int | None = None,
               progress=None, submit=None):
    """Final labels of an image of any size, one row of tiles at a time, in bounded memory (module docstring).

    ``image``: an (H, W, 3) array, or an object with ``shape`` and ``read(y0, y1, x0, x1)`` (a lazily read file,
    :class:`spam_stream.largeio.LargeImage`). Yields ``(y0, labels, ids)``: rows y0.. as (rows, W)
    :func:`label_dtype` global ids (seed numbers, not consecutive; every superpixel 4-connected, none cut by a tile
    edge), and the distinct ids in those rows (int64).
    ``mask``: None, or a :class:`~spam_stream.masking.MaskSource` (or what it takes): then ``n_superpixels`` is
    the count inside the mask (the grid's density is that over the mask's area), pixels outside are skipped and 0,
    the ids inside numbered from 1. ``progress(n)``: called once per clustered tile.
    ``submit(shape, k, grid, core, halo)``: where the tiles are clustered (default: this process's pool), a callable
    returning an object whose ``result()`` is :func:`segment_tile`'s (``model``, ``image`` and ``mask`` as given
    here): :class:`spam_stream.pipelines.ray_engine.RayTiles` spreads them over a Ray cluster's workers; the
    windows stay in this process.

    Two kinds of task share one thread pool (one thread per core, each single-threaded): clustering a tile
    (:func:`segment_tile`, raw labels of its core), and its connectivity (:func:`finalize_window`, on the raw
    labels of the core plus :func:`connectivity_margins`). Only the raw rows the next windows need are held:
    memory is a few rows of tiles, whatever the image's height."""
    read, height, width = _reader(image)
    k = int(n_superpixels)
    if mask is not None:
        from .masking import MaskSource

        mask = mask if isinstance(mask, MaskSource) else MaskSource(mask, (height, width))
        area = mask.area()
        if area == 0:
            raise ValueError("the mask is 0 everywhere: no pixel to segment")
        if k < 1 or k > area:
            raise ValueError(f"{k} superpixels requested for a mask of {area} pixels")
        k = max(1, min(height * width, round(k * height * width / area)))  # the density over the mask
    if k < 1 or k > height * width:
        raise ValueError(f"{k} superpixels requested for a {width}x{height} image")
    grid = grid_shape(height, width, k)
    if mask is not None:
        mask.cells_kept = mask_cells(mask, (height, width), grid)
    halo = halo_for(height, width, k, model)
    tile_size = int(tile_size) if tile_size and tile_size > 0 else max(height, width)  # 0: one tile, the frame
    ys = [(y, min(height, y + tile_size)) for y in range(0, height, tile_size)]
    xs = [(x, min(width, x + tile_size)) for x in range(0, width, tile_size)]
    my, mx = connectivity_margins(height, width, grid)
    ahead = -(-my // tile_size)  # rows of tiles below a row that its windows reach
    min_size = max(1, int(model.min_size_factor * height * width / k))
    n_cells, dtype = grid[0] * grid[1], label_dtype(height, width, grid)
    workers = workers or min(len(ys) * len(xs), os.cpu_count() or 1)
    threads = torch.get_num_threads()
    cluster = _single_threaded(lambda core: segment_tile(model, read, (height, width), k, grid, core, halo, mask))
    # a window's raw labels are cut out when its task runs (not when queued: a row's windows would all be copies)
    finalize = _single_threaded(lambda win, core, out: finalize_window(
        rows(*win), (win[0], win[2]), core, width, n_cells, min_size, dtype, mask is not None, out))
    raw: list[tuple[int, np.ndarray]] = []  # (first row, raw labels (rows, W) int32), in order
    pending = {}

    def submit_row(pool, r):
        if submit is not None:
            pending[r] = [submit((height, width), k, grid, (*ys[r], x0, x1), halo) for x0, x1 in xs]
        else:
            pending[r] = [pool.submit(cluster, (*ys[r], x0, x1)) for x0, x1 in xs]

    def collect_row(r):
        y0, y1 = ys[r]
        band = np.empty((y1 - y0, width), np.int32)
        for (x0, x1), f in zip(xs, pending.pop(r)):
            band[:, x0:x1] = f.result()
            if progress is not None:
                progress(1)
        raw.append((y0, band))

    def rows(a, b, c, d):
        return np.concatenate([band[max(a, y) - y:min(b, y + len(band)) - y, c:d] for y, band in raw
                               if y < b and y + len(band) > a])

    try:
        if workers > 1:
            torch.set_num_threads(1)
        with ThreadPoolExecutor(workers) as pool:
            try:
                for r in range(min(len(ys), ahead + 1)):
                    submit_row(pool, r)
                for r, (y0, y1) in enumerate(ys):
                    for rr in range(r, min(len(ys), r + ahead + 1)):
                        if rr in pending:
                            collect_row(rr)
                    wy0, wy1 = max(0, y0 - my), min(height, y1 + my)
                    band = np.empty((y1 - y0, width), dtype)  # the windows write their cores into it
                    finals = []
                    for x0, x1 in xs:
                        wx0, wx1 = max(0, x0 - mx), min(width, x1 + mx)
                        finals.append(pool.submit(finalize, (wy0, wy1, wx0, wx1), (y0, y1, x0, x1), band[:, x0:x1]))
                    if r + ahead + 1 < len(ys):
                        submit_row(pool, r + ahead + 1)  # the workers cluster ahead while the windows run
                    present = [f.result()[1] for f in finals]
                    finals = None
                    keep = y1 - my  # the next row's windows start here
                    raw[:] = [(max(y, keep), np.array(b[max(0, keep - y):]) if y < keep else b) for y, b in raw
                              if y + len(b) > keep]  # (a copy of a kept tail: the band it was cut from is freed)
                    yield y0, band, np.unique(np.concatenate(present))
                    band = present = None  # the caller holds the rows now; only they keep them alive
            except BaseException:  # a failed tile (or a closed generator): drop the work queued ahead
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        torch.set_num_threads(threads)


def _reader(image):
    if hasattr(image, "read"):
        return image.read, image.shape[0], image.shape[1]
    from .io import as_rgb

    image = as_rgb(image)

    def read(y0, y1, x0, x1):
        return image[y0:y1, x0:x1]
    return read, image.shape[0], image.shape[1]


def compact(labels: np.ndarray, masked: bool = False) -> np.ndarray:
    """Ids 0..K'-1 in the order of the ids (an (H, W) array of :func:`iter_bands` ids), as int32; ``masked``: 0
    stays 0 (outside the mask) and the superpixels are 1..K'."""
    present = np.zeros(int(labels.max()) + 1, bool)
    present[labels.ravel()] = True
    if masked:
        present[0] = False
    rank = (np.cumsum(present) - (0 if masked else 1)).astype(np.int32)
    if masked:
        rank[0] = 0
    return rank[labels]


def segment_large(model, image, n_superpixels: int, tile_size: int, *, mask=None, workers: int | None = None,
                  progress=None) -> np.ndarray:
    """(H, W) int32 labels 0..K'-1 of an image of any size that fits in memory as labels: :func:`iter_bands`'
    rows gathered and numbered consecutively. (The ``image`` command writes the rows as they come instead.)"""
    read, height, width = _reader(image)
    labels = None
    for y0, band, _ in iter_bands(model, image, n_superpixels, tile_size, mask=mask, workers=workers,
                                  progress=progress):
        if labels is None:
            labels = np.empty((height, width), band.dtype)
        labels[y0:y0 + len(band)] = band
    return compact(labels, mask is not None)


def seam_fractions(labels: np.ndarray, tile_size: int, between: str = "halfway") -> tuple[float, float]:
    """(on tile edges, between them): the fraction of the pixels on the tile edge lines (columns and rows at
    multiples of ``tile_size``) whose label differs from the pixel across the line, and the same on the lines
    halfway between edges (``between="halfway"``, the issue's measure) or on every line that is not an edge
    (``"all"``: on very regular, grid-like superpixels one line's fraction depends on where it falls in the grid's
    cells, the mean over all lines does not). Seam-free: the first is no larger than the second (up to noise)."""
    labels = np.asarray(labels)
    h, w = labels.shape
    if between == "all":
        cols = (labels[:, 1:] != labels[:, :-1]).sum(0)  # crossings between column c-1 and c, c = 1..w-1
        rows = (labels[1:] != labels[:-1]).sum(1)
        c_edge, r_edge = np.arange(1, w) % tile_size == 0, np.arange(1, h) % tile_size == 0
        on = (cols[c_edge].sum() + rows[r_edge].sum()) / max(1, c_edge.sum() * h + r_edge.sum() * w)
        off = (cols[~c_edge].sum() + rows[~r_edge].sum()) / max(1, (~c_edge).sum() * h + (~r_edge).sum() * w)
        return float(on), float(off)

    def fraction(offset):
        hits = total = 0
        for c in range(offset, w, tile_size):
            if c > 0:
                hits += int((labels[:, c] != labels[:, c - 1]).sum())
                total += h
        for r in range(offset, h, tile_size):
            if r > 0:
                hits += int((labels[r] != labels[r - 1]).sum())
                total += w
        return hits / max(total, 1)

    return fraction(tile_size), fraction(tile_size // 2)


def default_tile_size(model, height: int, width: int, n_superpixels: int, workers: int | None = None) -> int:
    """The largest tile side (a multiple of 256, at most 2048) whose region (core + halo) fits, one per worker
    thread, in half the model's memory limit, and whose rows of tiles fit :data:`ROW_BUFFER_BYTES` (:meth:`SPAM.frame_bytes`, the memory model); 0 (the whole frame)
    when the whole frame fits that."""
    from .model import default_memory_limit

    limit = model.memory_limit if model.memory_limit else default_memory_limit()
    if not limit:
        return 0
    workers = workers or os.cpu_count() or 1
    if model.frame_bytes(height, width, n_superpixels) <= limit // 2:
        return 0
    halo = halo_for(height, width, n_superpixels, model)
    density = n_superpixels / (height * width)
    best = 256
    for t in range(256, 2049, 256):
        side = t + 2 * halo
        rows = 3 * t * width * 4  # iter_bands holds about three rows of tiles of int32 labels
        if (workers * model.frame_bytes(side, side, max(1, int(density * side * side))) <= limit // 2
                and rows <= ROW_BUFFER_BYTES):
            best = t
    return best


def preview_factor(shape, long_side: int = 4096) -> int:
    """The integer subsampling that brings an image's long side to at most ``long_side``."""
    return max(1, -(-max(shape[:2]) // long_side))


def preview(read, shape, small_labels, long_side: int = 4096, color="auto", rows: int | None = None) -> np.ndarray:
    """An overlay preview (long side ≤ ``long_side``): the image subsampled by :func:`preview_factor` f, read in
    strips with ``read(y0, y1, x0, x1)``, and ``small_labels`` (the labels' every f-th row and column) drawn on it
    (:func:`spam_stream.io.overlay`). ``rows``: only the image's first rows are read (those of an incomplete run),
    the rest is black."""
    from .io import overlay

    h, w = shape[:2]
    f = preview_factor(shape, long_side)
    step = max(f, (256 // f) * f)
    done = h if rows is None else rows
    strips = []
    for y in range(0, h, step):
        y1 = min(h, y + step)
        strip = np.zeros((y1 - y, w, 3), np.uint8)
        if y < done:
            strip[:min(y1, done) - y] = read(y, min(y1, done), 0, w)
        strips.append(strip[::f, ::f].copy())  # a copy: the strided view would keep the whole strip alive
    return overlay(np.concatenate(strips), small_labels, color)
