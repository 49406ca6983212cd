"""Object proposals (overlapping masks from SAM / FastSAM) → a prior partition (DESIGN.md "Priors", paper §3.2).

1. Masks smaller than ``min_area`` pixels are dropped.
2. Overlaps are removed by subtracting smaller masks from larger ones: masks are painted from the largest to the
   smallest, so a pixel covered by several masks belongs to the *smallest* of them (the larger mask loses the
   overlap).
3. Each painted object is split into its 4-connected components: an object of the partition is always connected
   (every part then gets its own seeds). Components smaller than ``min_area`` return to the unlabelled pixels.
4. The still-unlabelled pixels go through a morphological opening with a disk of radius ``opening_radius``, which
   separates large areas from thin strips (typically the boundaries between neighbouring masks; the image edge is
   replicated outwards first, so that image corners do not count as thin); the connected components of the opened
   area that hold at least ``background_min_area`` pixels become extra "background" objects.
5. Everything else stays unlabelled: -1 (uncertain pixels, which SPAM associates locally without a prior constraint).

Implementations (same partition, exactly; tests compare them on random stacks and on FastSAM masks):

* :func:`aggregate_reference` — the plain definition (one full-frame paint per mask, scikit-image labelling, scipy's
  ``binary_opening`` with ``disk(r)``): the reference twin;
* :func:`aggregate` on numpy masks — linear time on the CPU (numba): one read of the stack gives every mask's area
  and bounding box; masks are painted in area order inside their boxes only; components come from a run-based
  labelling (:mod:`spam_stream.kernels.labeling`) whose runs write the partition directly; the disk opening is the
  AND (erosion) / OR (dilation) of the 2r+1 row-segment tests of the disk's rows on capped row distance transforms —
  exact for the disk, O(H·W·r) vectorised byte compares instead of O(H·W·r²) (scipy's exact EDT, the other exact
  route, costs 76-225 ms per 1080p frame here: more than the whole budget);
* :func:`aggregate` on torch tensors (:func:`aggregate_torch`) — the same steps in torch on the masks' device (CUDA:
  nothing goes to the host until the (H, W) partition);
* :func:`aggregate_resized` — masks at a network's resolution (FastSAM's letterboxed input) scaled to the frame by
  nearest-neighbour index maps: painting commutes with a nearest resize, so the masks are painted at network
  resolution (with their frame-resolution areas) and only the painted id map is resized — equal to
  :func:`aggregate` of the full-resolution stack, without making it;
* :func:`aggregate_crops` — masks given as crops inside their boxes (SAM's automatic masks with their ``bbox``).

Defaults scale with the image (H×W pixels): ``min_area = 0.0005·H·W`` (≈77 px at 481×321),
``background_min_area = 0.002·H·W`` (≈309 px) and ``opening_radius = max(1, round(0.004·max(H, W)))`` (2 px).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import disk

from .kernels.labeling import fill_runs, label_components, label_runs

MIN_AREA_FRACTION = 0.0005
BACKGROUND_MIN_AREA_FRACTION = 0.002
OPENING_RADIUS_FRACTION = 0.004


def default_parameters(height: int, width: int) -> dict:
    """The size-relative defaults of :func:`aggregate` for an H×W image."""
    return {"min_area": max(1, round(MIN_AREA_FRACTION * height * width)),
            "background_min_area": max(1, round(BACKGROUND_MIN_AREA_FRACTION * height * width)),
            "opening_radius": max(1, round(OPENING_RADIUS_FRACTION * max(height, width)))}


def _resolve(h: int, w: int, min_area, background_min_area, opening_radius) -> tuple[int, int, int]:
    params = default_parameters(h, w)
    return (params["min_area"] if min_area is None else int(min_area),
            params["background_min_area"] if background_min_area is None else int(background_min_area),
            params["opening_radius"] if opening_radius is None else int(opening_radius))


def disk_half_widths(radius: int) -> np.ndarray:
    """(2r+1,) int: row dy of ``skimage.morphology.disk(r)`` spans columns -w[dy]..w[dy] (the disk as row segments)."""
    d = disk(radius).astype(bool)
    return (d.sum(1) - 1) // 2


# --- the reference twin ----------------------------------------------------------------------------------------------

def aggregate_reference(masks, min_area: int | None = None, background_min_area: int | None = None,
                        opening_radius: int | None = None) -> np.ndarray:
    """:func:`aggregate` by its plain definition (the reference twin; slow: one full-frame paint per mask and an
    opening whose cost grows with r²)."""
    masks = np.asarray(masks).astype(bool, copy=False)
    if masks.ndim != 3:
        raise ValueError(f"expected a stack of masks (M, H, W), got shape {masks.shape}")
    _, h, w = masks.shape
    min_area, background_min_area, opening_radius = _resolve(h, w, min_area, background_min_area, opening_radius)

    areas = masks.sum((1, 2))
    kept = [i for i in np.argsort(-areas, kind="stable") if areas[i] >= max(min_area, 1)]
    painted = np.full((h, w), -1, np.int64)
    for rank, i in enumerate(kept):  # largest first: smaller masks are painted over it and keep the overlap
        painted[masks[i]] = rank

    # connected regions of equal value = the 4-connected components of each painted object, numbered in raster order
    components = label(painted, background=-1, connectivity=1)
    sizes = np.bincount(components.ravel())
    rank_of = np.full(len(sizes), -1, np.int64)
    rank_of[components.ravel()] = painted.ravel()  # every pixel of a component has the same painted rank
    objects = [c for c in np.argsort(rank_of, kind="stable") if c > 0 and sizes[c] >= min_area]
    lookup = np.full(len(sizes), -1, np.int32)
    lookup[objects] = np.arange(len(objects))
    partition = lookup[components]

    unlabelled = partition < 0
    if opening_radius > 0:  # the image is extended by replicating its edge, so image corners are not "thin"
        r = opening_radius
        opened = ndimage.binary_opening(np.pad(unlabelled, r, mode="edge"), structure=disk(r))
        unlabelled = opened[r:-r, r:-r] & unlabelled
    background, count = ndimage.label(unlabelled)
    sizes = np.bincount(background.ravel(), minlength=count + 1)
    kept = np.flatnonzero(sizes[1:] >= background_min_area) + 1
    lookup = np.full(count + 1, -1, np.int32)
    lookup[kept] = len(objects) + np.arange(len(kept))
    return np.where(background > 0, lookup[background], partition).astype(np.int32)


# --- CPU (numpy + numba) ---------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _areas_and_boxes(masks):
    """(M, H, W) uint8 → areas (M,) int64 and boxes (M, 4) int64 (y0, y1, x0, x1 inclusive; y1 = -1: empty), in one
    read of the stack: per row a vectorised byte sum, and the non-empty rows ORed into a column profile."""
    m_count, h, w = masks.shape
    areas = np.zeros(m_count, np.int64)
    boxes = np.full((m_count, 4), -1, np.int64)
    cols = np.zeros(w, np.uint8)
    for m in range(m_count):
        mask = masks[m]
        a = 0
        y0, y1 = -1, -1
        cols[:] = 0
        for y in range(h):
            row = mask[y]
            s = 0
            for x in range(w):
                s += row[x]
            if s:
                a += s
                if y0 < 0:
                    y0 = y
                y1 = y
                for x in range(w):
                    cols[x] |= row[x]
        areas[m] = a
        if a:
            x0 = 0
            while cols[x0] == 0:
                x0 += 1
            x1 = w - 1
            while cols[x1] == 0:
                x1 -= 1
            boxes[m, 0], boxes[m, 1], boxes[m, 2], boxes[m, 3] = y0, y1, x0, x1
    return areas, boxes


@njit(cache=True, nogil=True)
def _paint_boxes(masks, order, boxes, out):
    """Paint ``masks[order[i]]`` with value i into ``out`` (H, W) int32, in order, only inside each mask's box:
    a pixel covered by several masks keeps the last one painted."""
    for i in range(order.shape[0]):
        mask = masks[order[i]]
        y0, y1, x0, x1 = boxes[order[i], 0], boxes[order[i], 1], boxes[order[i], 2], boxes[order[i], 3]
        value = np.int32(i)
        for y in range(y0, y1 + 1):
            row = mask[y, x0:x1 + 1]
            o = out[y, x0:x1 + 1]
            for x in range(row.shape[0]):  # a select over row slices: vectorised
                o[x] = value if row[x] else o[x]


def painting_order(areas: np.ndarray, min_area: int) -> np.ndarray:
    """Indices of the masks to paint, largest area first (stable), those below ``max(min_area, 1)`` left out: the
    i-th painted mask gets rank i."""
    areas = np.asarray(areas)
    order = np.argsort(-areas, kind="stable")
    return order[areas[order] >= max(min_area, 1)]


def paint(masks: np.ndarray, min_area: int) -> np.ndarray:
    """(M, H, W) bool masks → (H, W) int32 rank of the mask owning each pixel (largest mask rank 0; a pixel covered
    by several masks goes to the last painted = the smallest), -1 where no kept mask covers.

    One pass reads the whole stack (areas and boxes); the paint then reads each kept mask inside its box only."""
    m, h, w = masks.shape
    u8 = np.ascontiguousarray(masks).view(np.uint8)
    areas, boxes = _areas_and_boxes(u8)
    out = np.full((h, w), -1, np.int32)
    _paint_boxes(u8, painting_order(areas, min_area), boxes, out)
    return out


@njit(cache=True, nogil=True)
def _row_distances(pixels, miss, rows, cap, out):
    """For the rows y with ``rows[y]``: the distance from each pixel to the nearest hit in its row, capped at ``cap``
    (no hit in the row: cap), into ``out`` (H, W) int16; hits are the pixels of ``pixels`` (H, W) uint8 that equal
    ``1 - miss`` (``miss=1``: the pixels outside the set)."""
    h, w = pixels.shape
    for y in range(h):
        if not rows[y]:
            continue
        d = cap
        for x in range(w):
            d = 0 if pixels[y, x] != miss else min(d + 1, cap)
            out[y, x] = d
        d = cap
        for x in range(w - 1, -1, -1):
            d = 0 if pixels[y, x] != miss else min(d + 1, cap)
            if d < out[y, x]:
                out[y, x] = d


@njit(cache=True, nogil=True)
def _open_rows(x, half):
    """Opening of the (H, W) uint8 set ``x`` by the disk whose row dy spans ±half[dy], the image edge replicated
    outwards (as ``binary_opening(np.pad(x, r, "edge"), disk(r))`` cropped back), intersected with ``x``.

    With the edge replicated, a pixel's horizontal segment test only sees its own row's pixels (beyond the edge the
    padding repeats the edge pixel, which the segment already holds) and row y+dy is row clamp(y+dy); the eroded set
    is empty in the padding (its disk reaches out of the padded frame), so the dilation only reads rows 0..H-1.
    Rows without a pixel of ``x`` are skipped: they stop the erosion of every row within r of them."""
    h, w = x.shape
    r = (half.shape[0] - 1) // 2
    cap = r + 1
    present = np.zeros(h, np.uint8)  # row holds a pixel of x
    full = np.zeros(h, np.uint8)  # row is all x: its distance to a non-x pixel is the cap everywhere
    for y in range(h):
        s = 0
        for i in range(w):
            s += x[y, i]
        present[y] = s > 0
        full[y] = s == w
    partial = present & (1 - full)
    hd = np.empty((h, w), np.int16)
    _row_distances(x, 1, partial, cap, hd)  # distance to the nearest pixel outside x
    for y in range(h):
        if full[y]:
            hd[y, :] = cap
    eroded = np.zeros((h, w), np.uint8)
    eroded_rows = np.zeros(h, np.uint8)
    for y in range(h):
        ok = True
        for k in range(2 * r + 1):
            if not present[min(max(y + k - r, 0), h - 1)]:
                ok = False
                break
        if not ok:
            continue
        e = eroded[y]
        for i in range(w):
            e[i] = hd[y, i] > half[r]
        for k in range(2 * r + 1):
            if k == r:
                continue
            src = min(max(y + k - r, 0), h - 1)
            if full[src]:
                continue
            hw = half[k]
            row = hd[src]
            for i in range(w):
                e[i] = e[i] & (row[i] > hw)
        s = 0
        for i in range(w):
            s += e[i]
        eroded_rows[y] = s > 0
    he = np.empty((h, w), np.int16)
    _row_distances(eroded, 0, eroded_rows, cap, he)  # distance to the nearest eroded pixel
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        if not present[y]:
            continue
        o = out[y]
        for k in range(2 * r + 1):
            src = y + k - r
            if src < 0 or src >= h or not eroded_rows[src]:
                continue
            hw = half[k]
            row = he[src]
            for i in range(w):
                o[i] = o[i] | (row[i] <= hw)
        for i in range(w):
            o[i] = o[i] & x[y, i]
    return out


def open_unlabelled(unlabelled: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool → (H, W) bool: ``binary_opening(np.pad(u, r, mode="edge"), disk(r))[r:-r, r:-r] & u`` exactly,
    in O(H·W·r)."""
    if radius >= np.iinfo(np.int16).max:
        raise ValueError(f"opening radius {radius} too large")
    half = disk_half_widths(radius).astype(np.int16)
    return _open_rows(np.ascontiguousarray(unlabelled, dtype=bool).view(np.uint8), half).view(bool)


def partition_from_painted(painted: np.ndarray, min_area: int, background_min_area: int,
                           opening_radius: int) -> np.ndarray:
    """Steps 3-5 of the module docstring on a painted (H, W) int32 rank map (-1 = no mask): the (H, W) int32
    partition. The components are written straight from their runs (no intermediate label image)."""
    h, w = painted.shape
    starts, row_ptr, final, sizes, ranks = label_runs(np.ascontiguousarray(painted, np.int32), background=-1)
    # objects: ordered by rank, then by their first pixel (raster order); components below min_area drop out
    ranks = ranks.astype(np.int64)
    candidates = np.flatnonzero(sizes >= min_area)
    candidates = candidates[candidates > 0]
    objects = candidates[np.argsort(ranks[candidates], kind="stable")]
    lookup = np.full(len(sizes), -1, np.int32)
    lookup[objects] = np.arange(len(objects), dtype=np.int32)
    partition = np.full((h, w), -1, np.int32)
    fill_runs(starts, row_ptr, final, lookup, np.int32(-1), partition)
    unlabelled = np.zeros((h, w), np.uint8)
    fill_runs(starts, row_ptr, final, (lookup < 0).astype(np.uint8), np.uint8(0), unlabelled)
    if opening_radius > 0:
        unlabelled = _open_rows(unlabelled, disk_half_widths(opening_radius).astype(np.int16))
    starts, row_ptr, final, sizes, _ = label_runs(unlabelled, background=0)
    kept = np.flatnonzero(sizes[1:] >= background_min_area) + 1
    bg_lookup = np.full(len(sizes), -1, np.int32)
    bg_lookup[kept] = len(objects) + np.arange(len(kept), dtype=np.int32)
    fill_runs(starts, row_ptr, final, bg_lookup, np.int32(-1), partition)
    return partition


def aggregate(masks, min_area: int | None = None, background_min_area: int | None = None,
              opening_radius: int | None = None):
    """Overlapping object masks (M, H, W) bool → (H, W) int32 partition (ids 0..n-1, -1 = uncertain).

    Ids: the mask objects first (largest mask first, its components in raster order), then the background
    components in raster order. ``opening_radius=0`` skips the opening. See the module docstring for the steps.
    A numpy stack runs on the CPU (returns a numpy array); a torch tensor runs on its device
    (:func:`aggregate_torch`, returns a tensor there).
    """
    if isinstance(masks, torch.Tensor):
        return aggregate_torch(masks, min_area, background_min_area, opening_radius)
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected a stack of masks (M, H, W), got shape {masks.shape}")
    masks = masks.astype(bool, copy=False)
    _, h, w = masks.shape
    min_area, background_min_area, opening_radius = _resolve(h, w, min_area, background_min_area, opening_radius)
    return partition_from_painted(paint(masks, min_area), min_area, background_min_area, opening_radius)


# --- torch (any device; CUDA: nothing leaves the GPU) ----------------------------------------------------------------

def _ranks_torch(areas: torch.Tensor, min_area: int) -> torch.Tensor:
    """(M,) int64 areas → (M,) int32 painting rank of each mask (largest first, stable), -1 below min_area."""
    order = torch.argsort(-areas, stable=True)
    order = order[areas[order] >= max(min_area, 1)]
    rank = torch.full(areas.shape, -1, dtype=torch.int32, device=areas.device)
    rank[order] = torch.arange(len(order), dtype=torch.int32, device=areas.device)
    return rank


def paint_torch(masks: torch.Tensor, rank: torch.Tensor, chunk_elements: int = 1 << 26) -> torch.Tensor:
    """(M, h, w) bool masks and their (M,) int32 ranks (-1: not painted) → (h, w) int32 highest rank covering each
    pixel, -1 where none: the paint in rank order, as a max over the stack (chunks of masks bound the memory)."""
    m, h, w = masks.shape
    painted = torch.full((h, w), -1, dtype=torch.int32, device=masks.device)
    step = max(1, chunk_elements // max(1, h * w))
    minus_one = torch.tensor(-1, dtype=torch.int32, device=masks.device)
    for start in range(0, m, step):
        layer = torch.where(masks[start:start + step], rank[start:start + step, None, None], minus_one)
        painted = torch.maximum(painted, layer.amax(0))
    return painted


def _row_distances_torch(hits: torch.Tensor, cap: int) -> torch.Tensor:
    """(H, W) bool → (H, W) int32 distance from each pixel to the nearest hit in its row, capped at ``cap``."""
    h, w = hits.shape
    idx = torch.arange(w, device=hits.device).expand(h, w)
    far = 2 * w + 2 * cap
    left = torch.where(hits, idx, -far).cummax(1).values
    right = torch.where(hits, idx, far).flip(1).cummin(1).values.flip(1)
    return torch.minimum(idx - left, right - idx).clamp_(max=cap).to(torch.int32)


def open_unlabelled_torch(unlabelled: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`open_unlabelled` in torch: (H, W) bool → (H, W) bool, on the tensor's device, the same pixels."""
    h, w = unlabelled.shape
    r, cap = int(radius), int(radius) + 1
    half = [int(v) for v in disk_half_widths(r)]
    rows = torch.arange(h, device=unlabelled.device)
    hd = _row_distances_torch(~unlabelled, cap)  # distance to the nearest pixel outside the set
    eroded = hd > half[r]
    for k in range(2 * r + 1):  # row y + k - r of the disk, the edge rows replicated outwards
        if k != r:
            eroded &= hd[(rows + k - r).clamp(0, h - 1)] > half[k]
    he = _row_distances_torch(eroded, cap)  # distance to the nearest eroded pixel
    he = torch.cat([he.new_full((r, w), cap), he, he.new_full((r, w), cap)])  # nothing eroded outside the frame
    opened = torch.zeros_like(unlabelled)
    for k in range(2 * r + 1):
        opened |= he[k:k + h] <= half[k]
    return opened & unlabelled


def partition_from_painted_torch(painted: torch.Tensor, min_area: int, background_min_area: int,
                                 opening_radius: int) -> torch.Tensor:
    """:func:`partition_from_painted` in torch: (H, W) int32 rank map → (H, W) int32 partition on its device."""
    device = painted.device
    components = label_components(painted, background=-1)
    flat = components.reshape(-1)
    n = int(flat.max()) if flat.numel() else 0
    sizes = torch.bincount(flat, minlength=n + 1)
    ranks = torch.full((n + 1,), -1, dtype=torch.int64, device=device)
    ranks.scatter_(0, flat, painted.reshape(-1).long())  # every pixel of a component holds the same rank
    valid = sizes >= min_area
    valid[0] = False
    ids = torch.arange(n + 1, device=device)
    key = torch.where(valid, ranks * (n + 1) + ids, torch.iinfo(torch.int64).max)  # by rank, then raster order
    count = int(valid.sum())
    objects = torch.argsort(key)[:count]
    lookup = torch.full((n + 1,), -1, dtype=torch.int32, device=device)
    lookup[objects] = torch.arange(count, dtype=torch.int32, device=device)
    partition = lookup[components]
    unlabelled = partition < 0
    if opening_radius > 0:
        unlabelled = open_unlabelled_torch(unlabelled, opening_radius)
    background = label_components(unlabelled.to(torch.uint8), background=0)
    bg_flat = background.reshape(-1)
    bg_sizes = torch.bincount(bg_flat, minlength=1)
    kept = bg_sizes >= background_min_area
    kept[0] = False
    bg_lookup = torch.where(kept, count + torch.cumsum(kept, 0) - 1, -1).to(torch.int32)
    return torch.where(background > 0, bg_lookup[background], partition)


def aggregate_torch(masks: torch.Tensor, min_area: int | None = None, background_min_area: int | None = None,
                    opening_radius: int | None = None) -> torch.Tensor:
    """:func:`aggregate` on a torch (M, H, W) bool stack: (H, W) int32 tensor on the masks' device (CUDA: the masks
    never leave the GPU), the same partition as the CPU function."""
    if masks.ndim != 3:
        raise ValueError(f"expected a stack of masks (M, H, W), got shape {tuple(masks.shape)}")
    masks = masks.bool()
    _, h, w = masks.shape
    min_area, background_min_area, opening_radius = _resolve(h, w, min_area, background_min_area, opening_radius)
    rank = _ranks_torch(masks.sum((1, 2)), min_area)
    return partition_from_painted_torch(paint_torch(masks, rank), min_area, background_min_area, opening_radius)


# --- masks at another resolution (FastSAM) and masks as crops (SAM) --------------------------------------------------

def letterbox_crop(mask_shape: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of an (H, W) frame's content inside masks of ``mask_shape`` made on the frame
    letterboxed to the network's input (ultralytics' ``scale_masks`` crop, same arithmetic)."""
    h1, w1 = mask_shape
    h0, w0 = shape
    gain = min(h1 / h0, w1 / w0)
    pad_w, pad_h = (w1 - max(round(w0 * gain), 1)) / 2, (h1 - max(round(h0 * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    return top, left, top + max(round(h0 * gain), 1), left + max(round(w0 * gain), 1)


def nearest_indices(start: int, stop: int, size: int) -> np.ndarray:
    """(size,) int64 source index of each output pixel when [start, stop) is resized to ``size`` pixels by nearest
    neighbour at pixel centres (``mode="nearest-exact"``): start + floor((i + ½)·(stop - start)/size)."""
    i = np.arange(size, dtype=np.int64)
    return start + ((2 * i + 1) * (stop - start)) // (2 * size)


def resize_indices(mask_shape, shape, crop=None) -> tuple[np.ndarray, np.ndarray]:
    """Row (H,) and column (W,) source indices of the nearest resize of masks of ``mask_shape`` (their ``crop`` =
    (top, left, bottom, right), default the letterbox crop) to the frame ``shape`` (H, W)."""
    top, left, bottom, right = letterbox_crop(mask_shape, shape) if crop is None else crop
    return nearest_indices(top, bottom, shape[0]), nearest_indices(left, right, shape[1])


def upsample_nearest(masks, shape, crop=None):
    """The full-resolution stack that :func:`aggregate_resized` stands for: (M, h, w) → (M, H, W), numpy or torch."""
    iy, ix = resize_indices(masks.shape[1:], shape, crop)
    if isinstance(masks, torch.Tensor):
        iy, ix = torch.from_numpy(iy).to(masks.device), torch.from_numpy(ix).to(masks.device)
    return masks[:, iy][:, :, ix]


@njit(cache=True, nogil=True)
def _weighted_areas(masks, row_weight, col_weight):
    """(M, h, w) uint8 → (M,) int64 Σ mask·row_weight[y]·col_weight[x] (the pixel counts after a nearest resize)."""
    m_count, h, w = masks.shape
    areas = np.zeros(m_count, np.int64)
    for m in range(m_count):
        a = 0
        for y in range(h):
            if row_weight[y] == 0:
                continue
            row = masks[m, y]
            s = 0
            for x in range(w):
                s += row[x] * col_weight[x]
            a += s * row_weight[y]
        areas[m] = a
    return areas


@njit(cache=True, nogil=True)
def _gather(painted, iy, ix):
    out = np.empty((iy.shape[0], ix.shape[0]), np.int32)
    for y in range(iy.shape[0]):
        src = painted[iy[y]]
        o = out[y]
        for x in range(ix.shape[0]):
            o[x] = src[ix[x]]
    return out


def aggregate_resized(masks, shape: tuple[int, int], crop=None, min_area: int | None = None,
                      background_min_area: int | None = None, opening_radius: int | None = None):
    """:func:`aggregate` of masks given at another resolution, resized to the frame by nearest neighbour — equal to
    ``aggregate(upsample_nearest(masks, shape, crop))`` without making that (M, H, W) stack.

    Args:
        masks: (M, h, w) bool, numpy (CPU) or torch (its device; returns a tensor there), e.g. FastSAM's masks at the
            network's letterboxed input size.
        shape: the frame (H, W).
        crop: (top, left, bottom, right) of the frame's content in the masks; default: the letterbox crop.
    Returns:
        (H, W) int32 partition.

    The paint commutes with a nearest resize (each frame pixel copies one mask pixel of every mask), so masks are
    ranked by their frame-resolution areas (mask pixels weighted by how many frame rows × columns copy them),
    painted at their own resolution, and only the painted id map is resized.
    """
    h, w = shape
    min_area, background_min_area, opening_radius = _resolve(h, w, min_area, background_min_area, opening_radius)
    m, mh, mw = masks.shape
    iy, ix = resize_indices((mh, mw), shape, crop)
    row_weight, col_weight = np.bincount(iy, minlength=mh), np.bincount(ix, minlength=mw)
    if isinstance(masks, torch.Tensor):
        device = masks.device
        masks = masks.bool()
        cw = torch.from_numpy(col_weight).to(device, torch.int32)
        rw = torch.from_numpy(row_weight).to(device)
        step = max(1, (1 << 24) // max(1, mh * mw))
        areas = torch.zeros(m, dtype=torch.int64, device=device)
        for s in range(0, m, step):  # integer sums (a float matmul could run in TF32 on a GPU)
            rows = (masks[s:s + step].to(torch.int32) * cw).sum(2)
            areas[s:s + step] = (rows * rw).sum(1)
        painted = paint_torch(masks, _ranks_torch(areas, min_area))
        painted = painted[torch.from_numpy(iy).to(device)][:, torch.from_numpy(ix).to(device)]
        return partition_from_painted_torch(painted, min_area, background_min_area, opening_radius)
    u8 = np.ascontiguousarray(np.asarray(masks, dtype=bool)).view(np.uint8)
    areas = _weighted_areas(u8, row_weight.astype(np.int64), col_weight.astype(np.int64))
    _, boxes = _areas_and_boxes(u8)
    painted = np.full((mh, mw), -1, np.int32)
    _paint_boxes(u8, painting_order(areas, min_area), boxes, painted)
    return partition_from_painted(_gather(painted, iy, ix), min_area, background_min_area, opening_radius)


def aggregate_crops(crops, offsets, shape: tuple[int, int], min_area: int | None = None,
                    background_min_area: int | None = None, opening_radius: int | None = None) -> np.ndarray:
    """:func:`aggregate` of masks given as crops: ``crops[i]`` (h_i, w_i) bool placed at ``offsets[i]`` = (y, x) in an
    (H, W) frame, zero elsewhere (e.g. SAM's masks cut to their boxes). Equal to aggregate() of the full stack; the
    paint touches each mask's box only. Returns (H, W) int32."""
    h, w = shape
    min_area, background_min_area, opening_radius = _resolve(h, w, min_area, background_min_area, opening_radius)
    areas = np.array([np.count_nonzero(c) for c in crops], np.int64)
    painted = np.full((h, w), -1, np.int32)
    for rank, i in enumerate(painting_order(areas, min_area)):
        (y, x), crop = offsets[i], np.asarray(crops[i], bool)
        painted[y:y + crop.shape[0], x:x + crop.shape[1]][crop] = rank
    return partition_from_painted(painted, min_area, background_min_area, opening_radius)
