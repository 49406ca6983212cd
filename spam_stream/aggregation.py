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

Defaults scale with the image (H×W pixels): ``min_area = 0.0005·H·W`` (≈77 px at 481×321),
``background_min_area = 0.002·H·W`` (≈309 px) and ``opening_radius = max(1, round(0.004·max(H, W)))`` (2 px).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import disk

MIN_AREA_FRACTION = 0.0005
BACKGROUND_MIN_AREA_FRACTION = 0.002
OPENING_RADIUS_FRACTION = 0.004


def default_parameters(height: int, width: int) -> dict:
    """The size-relative defaults of :func:`aggregate` for an H×W image."""
    return {"min_area": max(1, round(MIN_AREA_FRACTION * height * width)),
            "background_min_area": max(1, round(BACKGROUND_MIN_AREA_FRACTION * height * width)),
            "opening_radius": max(1, round(OPENING_RADIUS_FRACTION * max(height, width)))}


def aggregate(masks, min_area: int | None = None, background_min_area: int | None = None,
              opening_radius: int | None = None) -> np.ndarray:
    """Overlapping object masks (M, H, W) bool → (H, W) int32 partition (ids 0..n-1, -1 = uncertain).

    Ids: the mask objects first (largest mask first, its components in raster order), then the background
    components in raster order. ``opening_radius=0`` skips the opening. See the module docstring for the steps.
    """
    masks = np.asarray(masks).astype(bool, copy=False)
    if masks.ndim != 3:
        raise ValueError(f"expected a stack of masks (M, H, W), got shape {masks.shape}")
    _, h, w = masks.shape
    params = default_parameters(h, w)
    min_area = params["min_area"] if min_area is None else int(min_area)
    background_min_area = params["background_min_area"] if background_min_area is None else int(background_min_area)
    opening_radius = params["opening_radius"] if opening_radius is None else int(opening_radius)

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
