"""Step 3 — candidates: the ≤9 superpixels each pixel may join, all inside the pixel's prior object.

Grid seeds use the grid layout (a pixel's cell and its 8 neighbours). Object seeds use a table, made per **block**
of b×b pixels (:func:`block_size`: a third of the grid step) and object: the pixels of one object in one block share
the 9 seeds of that object nearest to the block's centre within ``max_distance`` grid steps (the nearest one is
always kept); uncertain pixels (-1) take the 9 nearest seeds of any object. One exact bucket-grid search per
(block, object) pair (:func:`spam_stream.seeding.nearest_seeds`) — about 9K queries whatever the frame size —
then each pixel's row index (``pixel_row``): linear time, where a search per pixel cost 0.55 s at 1080p (issue 22).
The (N, 9) table is ``LAZY``: written out (``rows[pixel_row]``) only for a kernel that reads it, not for the CPU's
D = 5 cell layout, which reads the compact form. Layout rules: :mod:`spam_stream.kernels.candidates`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from .kernels.candidates import LAZY, N_SLOTS, Candidates, block_size
from .seeding import Seeds, build_seed_grid, nearest_seeds


def grid_candidates(height: int, width: int, seeds: Seeds) -> Candidates:
    """Grid layout for grid seeds, without a prior (every pixel and superpixel in object 0)."""
    return Candidates(height, width, torch.zeros(height * width, dtype=torch.int32),
                      torch.zeros(len(seeds), dtype=torch.int32), grid=seeds.grid)


@njit(cache=True, nogil=True)
def _block_queries(group, h, w, b, n_groups):
    """The (block, group) pairs of a partition (N,) (ids ≥ 0, -1 uncertain; group = id + 1): per block in raster
    order, its groups in order of first appearance (raster order inside the block). Returns (query centre y (Q,),
    x (Q,) float64, group (Q,) int64, each pixel's query (N,) int32)."""
    nby = (h + b - 1) // b
    nbx = (w + b - 1) // b
    seen = np.full(n_groups, -1, np.int64)  # the last query of each group: in this block when >= the block's first
    cap = h * w  # at most one query per pixel (left untouched beyond the queries made; no growing in the loop)
    qy = np.empty(cap, np.float64)
    qx = np.empty(cap, np.float64)
    qg = np.empty(cap, np.int64)
    qidx = np.empty(h * w, np.int32)
    n = 0
    for by in range(nby):
        y0, y1 = by * b, min(h, by * b + b)
        for bx in range(nbx):
            x0, x1 = bx * b, min(w, bx * b + b)
            block_first = n
            for y in range(y0, y1):
                for x in range(x0, x1):
                    p = y * w + x
                    g = group[p] + 1  # 0: uncertain pixels (any seed), 1 + o: object o
                    q = seen[g]
                    if q < block_first:
                        q = n
                        seen[g] = q
                        qy[q] = 0.5 * (y0 + y1 - 1)
                        qx[q] = 0.5 * (x0 + x1 - 1)
                        qg[q] = g
                        n += 1
                    qidx[p] = q
    return qy[:n].copy(), qx[:n].copy(), qg[:n].copy(), qidx


def object_candidates(partition: np.ndarray, seeds: Seeds, max_distance: float = 3.0) -> Candidates:
    """Table layout for seeds placed inside the objects of ``partition`` (H, W) int32: the pixels of one object in
    one block of :func:`block_size` pixels share the ≤ 9 seeds of that object nearest to the block's centre (every
    seed for uncertain pixels).

    ``max_distance`` is in grid steps (√(H·W/K)); slots farther than that from the block's centre are left empty
    (the nearest seed is always kept).
    """
    h, w = partition.shape
    flat = partition.reshape(-1)
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
    block = block_size(step)
    qy, qx, qg, qidx = _block_queries(flat, h, w, block, n_groups)
    # rows in increasing superpixel order, empty slots last: neighbouring pixels then share identical rows, which
    # the CPU fast path processes as one vectorised run
    rows = nearest_seeds(np.stack([qy, qx], 1), qg, grid, seeds.yx, k=min(N_SLOTS, n_seeds), limit=limit,
                         width=N_SLOTS, dtype=np.int32)
    # the (N, 9) table only when a kernel reads it (LAZY: the CPU's D = 5 cell layout reads the compact form alone;
    # writing 36 fresh bytes a pixel cost 20-75 ms at 1080p, mostly page faults, for a table nobody read)
    return Candidates(h, w, torch.from_numpy(np.ascontiguousarray(flat, np.int32)),
                      torch.from_numpy(seed_obj.astype(np.int32)), table=LAZY,
                      rows=torch.from_numpy(rows), pixel_row=torch.from_numpy(qidx),
                      block_y=torch.arange(h) // block, block_x=torch.arange(w) // block)
