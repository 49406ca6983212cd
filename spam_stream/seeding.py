"""Step 2 — seeds: where the K superpixels start.

Without a prior, seeds are the cells of a regular grid of ≈K cells. With a prior partition, object O_i receives
k_i = max(1, round(K·|O_i|/|I|)) seeds (``|I|`` = pixels that belong to an object; uncertain pixels count toward
none), rebalanced so that the total is K whenever there are at most K objects; the seeds are placed inside the
object and refined by 5 k-means iterations on yx, so they spread over its shape. An optional per-object density
factor (attention and user-driven modes) scales an object's share before the same rebalancing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class Seeds:
    """Seeds of the superpixels.

    Attributes:
        yx: (K, 2) float64 seed positions (row, column).
        obj: (K,) int32 prior object of each seed (0 for every seed without a prior).
        init_labels: (H*W,) int32 the seed each pixel starts in (-1 for uncertain pixels), used for the initial
            centroids.
        grid: (nh, nw) when the seeds form a regular grid, else None.
    """

    yx: np.ndarray
    obj: np.ndarray
    init_labels: np.ndarray
    grid: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.obj)


def grid_shape(height: int, width: int, n_superpixels: int) -> tuple[int, int]:
    """(nh, nw): the grid of near-square cells whose count is closest to K (nh ≤ H, nw ≤ W)."""
    best = None
    ideal = math.sqrt(n_superpixels * height / width)
    for nh in {max(1, math.floor(ideal)), max(1, math.ceil(ideal))}:
        nh = min(nh, height)
        for nw in {max(1, math.floor(n_superpixels / nh)), max(1, math.ceil(n_superpixels / nh))}:
            nw = min(nw, width)
            aspect = abs(math.log((height / nh) / (width / nw)))
            key = (abs(nh * nw - n_superpixels), aspect)
            if best is None or key < best[0]:
                best = (key, (nh, nw))
    return best[1]


def grid_seeds(height: int, width: int, n_superpixels: int) -> Seeds:
    """Seeds at the centres of a regular grid of ≈K cells; each pixel starts in its own cell."""
    nh, nw = grid_shape(height, width, n_superpixels)
    cy = (np.arange(height) * nh // height).astype(np.int32)
    cx = (np.arange(width) * nw // width).astype(np.int32)
    init = (cy[:, None] * nw + cx[None, :]).ravel()
    gy, gx = np.meshgrid((np.arange(nh) + 0.5) * height / nh, (np.arange(nw) + 0.5) * width / nw, indexing="ij")
    yx = np.stack([gy.ravel(), gx.ravel()], 1)
    return Seeds(yx, np.zeros(nh * nw, np.int32), init.astype(np.int32), (nh, nw))


def allocate_seeds(sizes: np.ndarray, n_superpixels: int, density: np.ndarray | None = None) -> np.ndarray:
    """Seeds per object: (M,) int64 from object pixel counts (M,) and optional per-object density factors (M,).

    k_i = max(1, round(K·w_i/Σw)) with w_i = |O_i|·density_i, then adjusted one seed at a time (largest rounding
    error first) so that Σk_i = K whenever M ≤ K.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    weights = sizes * (1.0 if density is None else np.asarray(density, dtype=np.float64))
    raw = n_superpixels * weights / max(weights.sum(), 1e-12)
    counts = np.maximum(1, np.round(raw)).astype(np.int64)
    # cap by object size: an object cannot hold more seeds than pixels
    counts = np.minimum(counts, np.maximum(sizes.astype(np.int64), 1))
    while counts.sum() > n_superpixels and (counts > 1).any():
        excess = np.where(counts > 1, counts - raw, -np.inf)
        counts[np.argmax(excess)] -= 1
    while counts.sum() < n_superpixels and (counts < sizes).any():
        deficit = np.where(counts < sizes, raw - counts, -np.inf)
        counts[np.argmax(deficit)] += 1
    return counts


def _initial_positions(coords: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k starting positions among an object's pixel coordinates (n, 2): a regular grid clipped to the object."""
    if k == 1:
        return coords[[len(coords) // 2]].astype(np.float64)
    step = math.sqrt(len(coords) / k)
    cell = np.floor(coords / step).astype(np.int64)
    key = cell[:, 0] * (coords[:, 1].max() // step + 2).astype(np.int64) + cell[:, 1]
    _, first = np.unique(key, return_index=True)  # one pixel per occupied grid cell
    chosen = first[np.linspace(0, len(first) - 1, min(k, len(first))).round().astype(np.int64)]
    chosen = np.unique(chosen)
    if len(chosen) < k:
        rest = np.setdiff1d(np.arange(len(coords)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, k - len(chosen), replace=False)])
    return coords[chosen].astype(np.float64)


def kmeans_yx(coords: np.ndarray, seeds: np.ndarray, iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd iterations on pixel coordinates (n, 2). Returns (seeds (k, 2), assignment (n,) int64)."""
    assign = cKDTree(seeds).query(coords)[1]
    for _ in range(iterations):
        counts = np.bincount(assign, minlength=len(seeds))
        has = counts > 0
        for dim in range(2):
            sums = np.bincount(assign, weights=coords[:, dim], minlength=len(seeds))
            seeds[has, dim] = sums[has] / counts[has]
        assign = cKDTree(seeds).query(coords)[1]
    return seeds, assign


def object_seeds(partition: np.ndarray, n_superpixels: int, density: np.ndarray | None = None,
                 kmeans_iterations: int = 5, seed: int = 0) -> Seeds:
    """Seeds inside the objects of a prior partition (H, W) int32 (object ids ≥ 0, -1 = uncertain).

    ``density``: optional (n_objects,) factors indexed by object id (attention / user-driven modes).
    """
    rng = np.random.default_rng(seed)
    flat = partition.ravel()
    width = partition.shape[1]
    n_obj = int(flat.max()) + 1 if flat.size and flat.max() >= 0 else 0
    if n_obj == 0:
        raise ValueError("the prior partition has no object (every pixel is -1)")
    sizes = np.bincount(flat[flat >= 0], minlength=n_obj)
    present = np.flatnonzero(sizes)
    dens = None if density is None else np.asarray(density, dtype=np.float64)[present]
    counts = allocate_seeds(sizes[present], n_superpixels, dens)
    order = np.argsort(flat, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(flat[flat >= 0] , minlength=n_obj))]) + np.count_nonzero(flat < 0)
    init = np.full(flat.size, -1, np.int32)
    all_yx, all_obj, offset = [], [], 0
    for obj, k in zip(present, counts):
        pix = order[starts[obj]:starts[obj + 1]]
        coords = np.stack([pix // width, pix % width], 1).astype(np.float64)
        yx, assign = kmeans_yx(coords, _initial_positions(coords, int(k), rng), kmeans_iterations)
        init[pix] = assign + offset
        all_yx.append(yx)
        all_obj.append(np.full(len(yx), obj, np.int32))
        offset += len(yx)
    return Seeds(np.concatenate(all_yx), np.concatenate(all_obj), init)
