"""Step 3 — candidates: the ≤9 superpixels each pixel may join, all inside the pixel's prior object.

Grid seeds use the grid layout (a pixel's cell and its 8 neighbours). Object seeds use a table: the 9 nearest seeds
of the pixel's own object within ``max_distance`` grid steps (the nearest one is always kept); uncertain pixels
(-1) take the 9 nearest seeds of any object. Layout rules: :mod:`spam_stream.kernels.candidates`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

from .kernels.candidates import N_SLOTS, Candidates
from .seeding import Seeds


def grid_candidates(height: int, width: int, seeds: Seeds) -> Candidates:
    """Grid layout for grid seeds, without a prior (every pixel and superpixel in object 0)."""
    return Candidates(height, width, torch.zeros(height * width, dtype=torch.int32),
                      torch.zeros(len(seeds), dtype=torch.int32), grid=seeds.grid)


def _nearest(tree: cKDTree, n_seeds: int, coords: np.ndarray, limit: float):
    k = min(N_SLOTS, n_seeds)
    dist, idx = tree.query(coords, k=k)
    if k == 1:
        dist, idx = dist[:, None], idx[:, None]
    idx = np.where((dist <= limit) | (np.arange(k) == 0), idx, -1)
    return np.pad(idx, ((0, 0), (0, N_SLOTS - k)), constant_values=-1)


def object_candidates(partition: np.ndarray, seeds: Seeds, max_distance: float = 3.0) -> Candidates:
    """Table layout for seeds placed inside the objects of ``partition`` (H, W) int32.

    ``max_distance`` is in grid steps (√(H·W/K)); slots farther than that are left empty.
    """
    h, w = partition.shape
    flat = partition.ravel()
    limit = max_distance * math.sqrt(h * w / len(seeds))
    table = np.full((flat.size, N_SLOTS), -1, np.int64)
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(-1, int(flat.max()) + 2))
    for obj in range(-1, int(flat.max()) + 1):
        pix = order[bounds[obj + 1]:bounds[obj + 2]]
        if pix.size == 0:
            continue
        members = np.arange(len(seeds)) if obj < 0 else np.flatnonzero(seeds.obj == obj)
        coords = np.stack([pix // w, pix % w], 1).astype(np.float64)
        near = _nearest(cKDTree(seeds.yx[members]), len(members), coords, limit)
        table[pix] = np.where(near >= 0, members[near.clip(min=0)], -1)
    # slots in increasing superpixel order, empty slots last: neighbouring pixels then share identical rows, which
    # the CPU fast path processes as one vectorised run
    table = np.sort(np.where(table < 0, np.iinfo(np.int64).max, table), axis=1)
    table[table == np.iinfo(np.int64).max] = -1
    return Candidates(h, w, torch.from_numpy(flat.astype(np.int32)), torch.from_numpy(seeds.obj.astype(np.int32)),
                      table=torch.from_numpy(table.astype(np.int32)))
