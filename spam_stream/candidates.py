"""Step 3 — candidates: the ≤9 superpixels each pixel may join, all inside the pixel's prior object.

Grid seeds use the grid layout (a pixel's cell and its 8 neighbours). Object seeds use a table: the 9 nearest seeds
of the pixel's own object within ``max_distance`` grid steps (the nearest one is always kept); uncertain pixels
(-1) take the 9 nearest seeds of any object; one exact bucket-grid search for all pixels
(:func:`spam_stream.seeding.nearest_seeds`). Layout rules: :mod:`spam_stream.kernels.candidates`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .kernels.candidates import N_SLOTS, Candidates
from .seeding import Seeds, build_seed_grid, nearest_seeds


def grid_candidates(height: int, width: int, seeds: Seeds) -> Candidates:
    """Grid layout for grid seeds, without a prior (every pixel and superpixel in object 0)."""
    return Candidates(height, width, torch.zeros(height * width, dtype=torch.int32),
                      torch.zeros(len(seeds), dtype=torch.int32), grid=seeds.grid)


def object_candidates(partition: np.ndarray, seeds: Seeds, max_distance: float = 3.0) -> Candidates:
    """Table layout for seeds placed inside the objects of ``partition`` (H, W) int32.

    ``max_distance`` is in grid steps (√(H·W/K)); slots farther than that are left empty.
    """
    h, w = partition.shape
    flat = partition.ravel().astype(np.int64)
    n_seeds = len(seeds)
    step = math.sqrt(h * w / n_seeds)
    limit = max_distance * step
    # search groups: 0 = every seed (for uncertain pixels), 1 + o = the seeds of object o
    seed_obj = np.asarray(seeds.obj, np.int64)
    n_groups = max(int(flat.max()), int(seed_obj.max(initial=-1))) + 2
    item_seed = np.arange(n_seeds)
    if (flat < 0).any():
        item_seed = np.concatenate([item_seed, item_seed])
        item_group = np.concatenate([np.zeros(n_seeds, np.int64), seed_obj + 1])
    else:
        item_group = seed_obj + 1
    grid = build_seed_grid(seeds.yx, item_seed, item_group, n_groups, step)
    y, x = np.divmod(np.arange(flat.size), w)
    # rows in increasing superpixel order, empty slots last: neighbouring pixels then share identical rows, which
    # the CPU fast path processes as one vectorised run
    table = nearest_seeds(np.stack([y, x], 1), flat + 1, grid, seeds.yx, k=min(N_SLOTS, n_seeds), limit=limit,
                          width=N_SLOTS, dtype=np.int32)
    return Candidates(h, w, torch.from_numpy(flat.astype(np.int32)), torch.from_numpy(seed_obj.astype(np.int32)),
                      table=torch.from_numpy(table))
