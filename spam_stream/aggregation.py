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
* :func:`aggregate` on numpy masks — linear time on the CPU: one numba pass over each mask counts its area and paints
  it (while the mask is still in cache) by keeping, per pixel, the covering mask of smallest (area, -index) key;
  run-based labelling (:mod:`spam_stream.kernels.labeling`) that also returns each component's size and value; the
  disk opening as the AND (erosion) / OR (dilation) of the 2r+1 horizontal segment tests of the disk's rows on row
  distance transforms (exact for any disk; O(H·W·r) byte compares, vectorised, instead of O(H·W·r²));
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

from .kernels.labeling import label_components, label_with_sizes

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

@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
def _row_distances(hits, rows, cap, out):
    """For the rows y with ``rows[y]``: the distance from each pixel to the nearest hit pixel (``hits`` (H, W) uint8)
    in its row, capped at ``cap`` (no hit in the row: cap), into ``out`` (H, W) int16."""
    h, w = hits.shape
    for y in range(h):
        if not rows[y]:
            continue
        d = cap
        for x in range(w):
            d = 0 if hits[y, x] else min(d + 1, cap)
            out[y, x] = d
        d = cap
        for x in range(w - 1, -1, -1):
            d = 0 if hits[y, x] else min(d + 1, cap)
            if d < out[y, x]:
                out[y, x] = d


@njit(cache=True)
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
    misses = np.empty((h, w), np.uint8)
    partial = np.zeros(h, np.uint8)
    for y in range(h):
        if present[y] and not full[y]:
            partial[y] = 1
            for i in range(w):
                misses[y, i] = 1 - x[y, i]
    hd = np.empty((h, w), np.int16)
    _row_distances(misses, partial, cap, hd)  # distance to the nearest pixel outside x
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
    _row_distances(eroded, eroded_rows, cap, he)  # distance to the nearest eroded pixel
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


@njit(cache=True)
def _compose(components, lookup, background, background_lookup):
    h, w = components.shape
    out = np.empty((h, w), np.int32)
    for y in range(h):
        for x in range(w):
            b = background[y, x]
            out[y, x] = background_lookup[b] if b > 0 else lookup[components[y, x]]
    return out


def partition_from_painted(painted: np.ndarray, min_area: int, background_min_area: int,
                           opening_radius: int) -> np.ndarray:
    """Steps 3-5 of the module docstring on a painted (H, W) int32 rank map (-1 = no mask): the (H, W) int32
    partition."""
    components, sizes, ranks = label_with_sizes(np.ascontiguousarray(painted, np.int32), background=-1)
    # objects: ordered by rank, then by their first pixel (raster order); components below min_area drop out
    ranks = ranks.astype(np.int64)
    ranks[0] = -1
    candidates = np.flatnonzero(sizes >= min_area)
    candidates = candidates[candidates > 0]
    objects = candidates[np.argsort(ranks[candidates], kind="stable")]
    lookup = np.full(len(sizes), -1, np.int32)
    lookup[objects] = np.arange(len(objects), dtype=np.int32)
    partition = lookup[components]
    unlabelled = partition < 0
    if opening_radius > 0:
        unlabelled = open_unlabelled(unlabelled, opening_radius)
    background, bg_sizes, _ = label_with_sizes(unlabelled, background=0)
    kept = np.flatnonzero(bg_sizes[1:] >= background_min_area) + 1
    bg_lookup = np.full(len(bg_sizes), -1, np.int32)
    bg_lookup[kept] = len(objects) + np.arange(len(kept), dtype=np.int32)
    return _compose(components, lookup, background, bg_lookup)


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
