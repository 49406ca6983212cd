"""A mask: superpixels only where the mask is non-zero (the tissue of a slide, the field of a satellite image).

Pixels where the mask is 0 get no superpixel: label 0 in the result, the superpixels numbered from 1
(scikit-image's convention for ``slic(mask=...)``). They are **skipped, not segmented and discarded**:

* **seeds** — the masked-out pixels are uncertain pixels of the seeding partition (the prior's objects, or one
  object for the whole mask without a prior), so they count toward no object and get no seed: the K seeds are
  spread over the mask alone (:func:`spam_stream.seeding.object_seeds`, linear time);
* **candidates** — they form an *excluded* group that no seed belongs to, so their candidate rows are empty and the
  clustering kernels compute no distance for them (a pixel without a valid slot gets label -1);
* **connectivity** — they form an excluded prior object, so no superpixel fragment merges across the mask's edge;
  the -1 region they form is then written as 0 and the superpixels inside renumbered 1..K' in raster order.

A mask combines with a prior: its objects are cut by the mask, and no superpixel crosses either.
:func:`check_mask` accepts a mask of the image's size, or of a lower pyramid level (an integer factor smaller),
scaled up by nearest neighbour.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _factor(big: int, small: int) -> int | None:
    """The integer factor f with ceil(big / f) == small or floor(big / f) == small (a pyramid level's size), or
    None."""
    if small < 1:
        return None
    f = max(1, round(big / small))
    for g in (f - 1, f, f + 1):
        if g >= 1 and (math.ceil(big / g) == small or big // g == small):
            return g
    return None


def check_mask(mask, shape) -> np.ndarray:
    """(H, W) bool: ``mask`` (any 2-D array, non-zero = inside; an (h, w, c) image: any channel non-zero) of the
    image's size ``shape``, or of a lower level (an integer factor f smaller per axis, h = ceil(H/f) or floor(H/f))
    scaled up by nearest neighbour. ValueError (one line) for any other size."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = (m != 0).any(-1)
    if m.ndim != 2:
        raise ValueError(f"a mask must be a 2-D array, got shape {m.shape}")
    h, w = int(shape[0]), int(shape[1])
    inside = m != 0
    if inside.shape == (h, w):
        return np.ascontiguousarray(inside)
    fy, fx = _factor(h, inside.shape[0]), _factor(w, inside.shape[1])
    if fy is None or fx is None or fy != fx:
        raise ValueError(f"the mask is {inside.shape[1]}x{inside.shape[0]} but the image is {w}x{h} (a mask must "
                         "have the image's size, or a pyramid level's: an integer factor smaller)")
    up = np.repeat(np.repeat(inside, fy, 0), fx, 1)
    if up.shape[0] < h or up.shape[1] < w:
        up = np.pad(up, ((0, max(0, h - up.shape[0])), (0, max(0, w - up.shape[1]))), mode="edge")
    return np.ascontiguousarray(up[:h, :w])


def read_mask(path) -> np.ndarray:
    """A mask file as a 2-D array (non-zero = inside): ``.npy``, a TIFF (its first page, or the smallest level of
    a pyramid that :func:`check_mask` scales up) or any image Pillow reads. :class:`~spam_stream.io.InputError` for
    a missing or unreadable file."""
    from .io import InputError, _pil_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask file not found")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        with _pil_open(path) as im:
            return np.asarray(im)
    except Exception as exc:  # whatever the file does, one line naming it
        raise InputError(f"{path}: unreadable mask ({' '.join(str(exc).split())[:200]})") from None


def mask_path(spec, image_path) -> Path:
    """The mask file for an input: ``spec`` itself, or in a folder ``spec`` the file whose stem is the input's
    (``<stem>.*``, or ``<stem>_mask.*``). InputError when the folder has none."""
    from .io import InputError

    spec, stem = Path(spec), Path(image_path).stem
    if not spec.is_dir():
        return spec
    found = sorted(p for p in spec.iterdir() if p.is_file() and p.stem in (stem, f"{stem}_mask"))
    if not found:
        raise InputError(f"{image_path}: no mask for it in {spec} (expected {stem}.* or {stem}_mask.*)")
    return found[0]


def masked_seeds(partition: np.ndarray | None, inside: np.ndarray, n_superpixels: int, density=None, seed: int = 0,
                 max_distance: float = 3.0):
    """(seeds, candidates, connectivity partition) of a masked frame (module docstring). ``partition``: the prior's
    (H, W) int32 (-1 uncertain) or None; ``inside`` (H, W) bool."""
    from .candidates import object_candidates
    from .seeding import object_seeds

    if not inside.any():
        raise ValueError("the mask is 0 everywhere: no pixel to segment")
    part = np.zeros(inside.shape, np.int32) if partition is None else np.array(partition, np.int32)
    part[~inside] = -1
    if part.max() < 0:
        raise ValueError("the mask and the prior share no pixel: nothing to segment")
    k = min(int(n_superpixels), int(inside.sum()))
    seeds = object_seeds(part, k, density=density, seed=seed)
    groups, group_seeds = seeds.candidate_groups(part)
    groups = np.array(groups, np.int32).reshape(inside.shape)
    excluded = max(int(groups.max()), int(np.max(group_seeds.obj, initial=-1))) + 1  # a group without seeds
    groups[~inside] = excluded
    cands = object_candidates(groups, group_seeds, max_distance)
    connect = part.copy()
    connect[~inside] = int(part.max()) + 1  # an object of its own: nothing merges across the mask's edge
    return seeds, cands, connect


def masked_labels(labels: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Connectivity's labels (0..K'-1, the masked-out region's own labels among them) → (H, W) int32 with 0 outside
    the mask and the superpixels inside numbered 1..K' in raster order."""
    n = int(labels.max()) + 1
    outside = np.zeros(n, bool)
    outside[labels[~inside]] = True
    table = np.where(outside, 0, np.cumsum(~outside)).astype(np.int32)
    return table[labels]


def shift_labels(labels: np.ndarray, start_label: int, masked: bool) -> np.ndarray:
    """Labels numbered from ``start_label``: 0..K'-1 shifted; with a mask (0 outside, 1..K' inside) the superpixels
    start at ``max(start_label, 1)`` and 0 stays 0."""
    if not masked:
        return labels + np.int32(start_label) if start_label else labels
    if start_label <= 1:
        return labels
    return np.where(labels > 0, labels + np.int32(start_label - 1), 0).astype(np.int32)


class MaskSource:
    """A mask read window by window, for images segmented in tiles (:mod:`spam_stream.tiling`): never scaled up
    or held whole at the image's size. ``mask``: a 2-D array (or (h, w, c): any channel non-zero) of the image's
    size or of a lower pyramid level (as :func:`check_mask`), or a lazily read TIFF
    (:class:`spam_stream.largeio.LargeImage`: a mask as large as the image stays on disk)."""

    def __init__(self, mask, shape):
        self.height, self.width = int(shape[0]), int(shape[1])
        self._lazy = hasattr(mask, "read")
        if self._lazy:
            self._src, (h, w) = mask, mask.shape[:2]
        else:
            m = np.asarray(mask)
            if m.ndim == 3:
                m = (m != 0).any(-1)
            if m.ndim != 2:
                raise ValueError(f"a mask must be a 2-D array, got shape {m.shape}")
            self._src, (h, w) = m, m.shape
        if (h, w) == (self.height, self.width):
            self.factor = 1
        else:
            fy, fx = _factor(self.height, h), _factor(self.width, w)
            if fy is None or fx is None or fy != fx:
                raise ValueError(f"the mask is {w}x{h} but the image is {self.width}x{self.height} (a mask must "
                                 "have the image's size, or a pyramid level's: an integer factor smaller)")
            self.factor = fy
        self._small = (h, w)
        self._area = None

    def _read_small(self, y0, y1, x0, x1):
        h, w = self._small
        y1, x1 = min(y1, h), min(x1, w)
        block = self._src.read(y0, y1, x0, x1) if self._lazy else self._src[y0:y1, x0:x1]
        if block.ndim == 3:
            block = (block != 0).any(-1)
        return block != 0

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(y1-y0, x1-x0) bool: inside the mask, at the image's resolution (nearest neighbour)."""
        f = self.factor
        if f == 1:
            return self._read_small(y0, y1, x0, x1)
        h, w = self._small
        ys = np.minimum(np.arange(y0, y1) // f, h - 1)
        xs = np.minimum(np.arange(x0, x1) // f, w - 1)
        block = self._read_small(int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)
        return block[(ys - ys[0])[:, None], (xs - xs[0])[None, :]]

    def area(self, rows: int = 1024) -> int:
        """Pixels inside the mask at the image's resolution (read in bands of ``rows``)."""
        if self._area is None:
            self._area = sum(int(self.read(y, min(self.height, y + rows), 0, self.width).sum())
                             for y in range(0, self.height, rows))
        return self._area
