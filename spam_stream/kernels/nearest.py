"""Exact k nearest seeds per group on any torch device — the twin of :func:`spam_stream.seeding.nearest_seeds`.

The CPU search (numba) walks rings of cells around each point, one point at a time. Here every pending point is
handled at once, in rounds of growing square blocks of cells:

1. the seeds are bucketed exactly as :func:`spam_stream.seeding.build_seed_grid` does (one grid per group over the
   bounding box of its seeds), and each cell's seeds are written into a dense (n_cells, occupancy) table;
2. a round gathers, for each pending point, every seed in the (2R+1)² cells around its cell (its cell clamped into
   its group's grid), and keeps the k best by (squared distance, seed index); the blocks are built per cell of the
   grid (not per point), for every radius at once, in shapes fixed by the grid — the host reads one number per
   round (how many points are still pending), so a GPU is not drained per chunk, cell or block;
3. a point is done when no unvisited seed can change its answer — the same tests as the CPU's early exit: the
   distance from the point to the unvisited part of its grid exceeds its k-th best distance, or exceeds both the
   limit and its nearest distance, or the block covers the whole grid;
4. after the last round the few points still pending compare with every seed of their group.

The answer is the same set as the CPU's — the k smallest (squared distance, seed index) pairs of the point's group,
the nearest always kept, others only within ``limit`` — from the same float64 distances ``dy·dy + dx·dx``, so tables
are equal element for element (tested against the CPU function in ``tests/test_seeding.py``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

# gathered (point, seed) pairs per chunk of a round: bounds the round's memory (float64 distances + int64 ids)
PAIRS_PER_CHUNK = 1 << 24


def bin_counts(index: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) int64: ``torch.bincount(index, minlength=n)`` for indices in [0, n), without the host read bincount makes
    on a GPU (it sizes its output by the largest index)."""
    return torch.zeros(n, dtype=torch.int64, device=index.device).index_add_(0, index, torch.ones_like(index))


@dataclass
class SeedGridTorch:
    """:class:`spam_stream.seeding.SeedGrid` as tensors, plus each cell's seeds as a dense table.

    Attributes:
        origin: (G, 2) float64 lower corner (y, x) of each group's grid; cell: (G,) float64 cell side;
        shape: (G, 2) int64 cells (ny, nx); offset: (G,) int64 first global cell of the group;
        start: (n_cells + 1,) int64 and items: (n_items,) int64 — seeds of global cell j are items[start[j]:start[j+1]];
        slots: (n_cells, occupancy) int64 the same seeds per cell, -1 padded.
    """

    origin: torch.Tensor
    cell: torch.Tensor
    shape: torch.Tensor
    offset: torch.Tensor
    start: torch.Tensor
    items: torch.Tensor
    slots: torch.Tensor


def build_seed_grid_torch(yx: torch.Tensor, item_seed: torch.Tensor, item_group: torch.Tensor, n_groups: int,
                          step: float) -> SeedGridTorch:
    """The grid of :func:`spam_stream.seeding.build_seed_grid` (same cells, same float64 arithmetic) on ``yx``'s
    device: seeds ``yx`` (K, 2) float64 listed as items (seed index (n,), group id (n,) int64)."""
    dev = yx.device
    item_seed = item_seed.to(device=dev, dtype=torch.int64)
    item_group = item_group.to(device=dev, dtype=torch.int64)
    pos = yx[item_seed]
    n_items = bin_counts(item_group, n_groups)
    idx = item_group[:, None].expand(-1, 2)
    lo = torch.full((n_groups, 2), math.inf, dtype=torch.float64, device=dev).scatter_reduce(0, idx, pos, "amin")
    hi = torch.full((n_groups, 2), -math.inf, dtype=torch.float64, device=dev).scatter_reduce(0, idx, pos, "amax")
    empty = (n_items == 0)[:, None]
    lo = torch.where(empty, 0.0, lo)
    hi = torch.where(empty, 0.0, hi)
    extent = hi - lo
    cell = torch.sqrt(extent[:, 0] * extent[:, 1] / (2 * n_items).clamp(min=1).to(torch.float64)).clamp(min=step)
    shape = (torch.floor(extent / cell[:, None]) + 1).to(torch.int64)
    sizes = shape[:, 0] * shape[:, 1]
    offset = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
    rel = torch.floor((pos - lo[item_group]) / cell[item_group, None]).to(torch.int64)
    rel = torch.minimum(rel.clamp(min=0), shape[item_group] - 1)
    key = offset[item_group] + rel[:, 0] * shape[item_group, 1] + rel[:, 1]
    key_sorted, order = torch.sort(key, stable=True)
    # the cell count and the fullest cell size the tables: the host's one read of the build
    first_of_run = torch.ones_like(key_sorted, dtype=torch.bool)
    first_of_run[1:] = key_sorted[1:] != key_sorted[:-1]
    run_start = torch.cummax(torch.where(first_of_run, torch.arange(len(key_sorted), device=dev), 0), 0).values
    rank = torch.arange(len(key_sorted), device=dev) - run_start  # the item's place in its cell
    n_cells, occupancy = torch.stack([offset[-1], rank.max() + 1 if len(rank) else rank.new_ones(())]).tolist()
    counts = bin_counts(key, n_cells)
    start = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    items = item_seed[order]
    slots = torch.full((n_cells, max(occupancy, 1)), -1, dtype=torch.int64, device=dev)
    slots[key_sorted, rank] = items
    return SeedGridTorch(lo, cell, shape, offset[:-1], start, items, slots)


def _top_k(best_d, best_i, d, s, k, fresh=False):
    """Merge candidate (distance, seed) columns ``d``, ``s`` (P, M) into the sorted best lists (P, k): the k
    smallest (distance, seed index) pairs, -1 / inf padded. Seeds are never repeated for one point. ``fresh``: the
    best lists are empty and the columns are in increasing seed index (pads last) — one stable sort suffices."""
    if fresh and d.shape[1] < k:
        pad = k - d.shape[1]
        d = torch.cat([d, d.new_full((len(d), pad), math.inf)], 1)
        s = torch.cat([s, s.new_full((len(s), pad), -1)], 1)
    if fresh and k > 1:
        o = torch.sort(d, dim=1, stable=True).indices[:, :k]
        return d.gather(1, o), s.gather(1, o)
    if not fresh:
        d = torch.cat([best_d, d], 1)
        s = torch.cat([best_i, s], 1)
    if k == 1:  # the minimum distance, then the lowest index among equal distances
        dmin = d.min(1, keepdim=True).values
        big = torch.iinfo(torch.int64).max
        i = torch.where((d == dmin) & (s >= 0), s, big).min(1, keepdim=True).values
        return dmin, torch.where(i == big, -1, i)
    key_i = torch.where(s >= 0, s, torch.iinfo(torch.int64).max)
    o = torch.sort(key_i, 1).indices
    d, s = d.gather(1, o), s.gather(1, o)
    o = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return d.gather(1, o), s.gather(1, o)


@functools.lru_cache(maxsize=64)
def _offsets(radius: int, inner: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell offsets (dy, dx) of the square of radius ``radius`` minus the square of radius ``inner`` (-1: none),
    the cells a round adds to the previous round's block (made on the host, uploaded once per device)."""
    r = torch.arange(-radius, radius + 1)
    dy, dx = r.repeat_interleave(2 * radius + 1), r.repeat(2 * radius + 1)
    new = torch.maximum(dy.abs(), dx.abs()) > inner
    return dy[new].to(device), dx[new].to(device)


def _grid_cells(grid: SeedGridTorch) -> tuple[torch.Tensor, ...]:
    """Per cell of the grid (n_cells,): its group's first cell, its row and column in its group's grid, and that
    grid's rows and columns — made from the grid's shapes alone (no host read)."""
    dev = grid.slots.device
    n_cells = grid.slots.shape[0]
    sizes = grid.shape[:, 0] * grid.shape[:, 1]
    g = torch.repeat_interleave(torch.arange(len(sizes), device=dev), sizes, output_size=n_cells)
    off, ny, nx = grid.offset[g], grid.shape[g, 0], grid.shape[g, 1]
    local = torch.arange(n_cells, device=dev) - off
    return off, local // nx, local % nx, ny, nx


def _ring_block(grid: SeedGridTorch, cells, radius: int, inner: int) -> torch.Tensor:
    """For every cell of the grid (``cells``: :func:`_grid_cells`): the seeds of the cells in the square of radius
    ``radius`` around it (clamped to its group's grid) but not in the square of radius ``inner`` (-1: none) — the
    (n_cells, ring cells × occupancy) int64 block of a round, in increasing seed index, -1 padded. Built for every
    cell at once from the grid alone, in shapes the host already knows: no read to size a block per round from the
    points, nor to trim it."""
    off, gy, gx, ny, nx = cells
    dy, dx = _offsets(radius, inner, grid.slots.device)
    cy, cx = gy[:, None] + dy, gx[:, None] + dx
    inside = (cy >= 0) & (cy < ny[:, None]) & (cx >= 0) & (cx < nx[:, None])
    j = torch.where(inside, off[:, None] + cy * nx[:, None] + cx, 0)
    block = torch.where(inside[:, :, None], grid.slots[j], -1).reshape(len(off), -1)
    big = torch.iinfo(torch.int64).max
    block = torch.sort(torch.where(block >= 0, block, big), dim=1).values  # increasing seed index, pads last
    return torch.where(block == big, -1, block)


def _block_round(pts, n_pts, cell_of, py, px, yx, block, best_d, best_i, k, fresh):
    """One round for the points ``pts`` (P,) — or the first ``n_pts`` points when ``pts`` is None — of cells
    ``cell_of`` (n,): each point's cell's ``block`` row (:func:`_ring_block`) merged into its best lists (in place).
    Fixed shapes: the host reads nothing."""
    width = block.shape[1]
    if width == 0:
        return
    chunk = max(1, PAIRS_PER_CHUNK // width)
    for a in range(0, n_pts, chunk):
        p = slice(a, min(a + chunk, n_pts)) if pts is None else pts[a:a + chunk]
        s = block[cell_of[p]]
        sc = s.clamp(min=0)
        ey = yx[sc, 0] - py[p, None]
        ex = yx[sc, 1] - px[p, None]
        d = torch.where(s >= 0, ey * ey + ex * ex, math.inf)
        best_d[p], best_i[p] = _top_k(best_d[p], best_i[p], d, s, k, fresh=fresh)


def _brute_force(pts, py, px, group, grid, yx, n_cells_of, best_d, best_i, k):
    """Every seed of each point's group for points ``pts`` (the rare ones the blocks did not settle); their best
    lists start afresh."""
    best_d[pts] = math.inf
    best_i[pts] = -1
    g = group[pts]
    first = grid.start[grid.offset[g]]
    count = grid.start[grid.offset[g] + n_cells_of[g]] - first
    width = int(count.max()) if len(pts) else 0
    if width == 0:
        return
    chunk = max(1, PAIRS_PER_CHUNK // width)
    col = torch.arange(width, device=py.device)
    for a in range(0, len(pts), chunk):
        p = pts[a:a + chunk]
        valid = col < count[a:a + chunk, None]
        s = torch.where(valid, grid.items[(first[a:a + chunk, None] + col).clamp(max=len(grid.items) - 1)], -1)
        sc = s.clamp(min=0)
        ey = yx[sc, 0] - py[p, None]
        ex = yx[sc, 1] - px[p, None]
        d = torch.where(valid, ey * ey + ex * ex, math.inf)
        best_d[p], best_i[p] = _top_k(best_d[p], best_i[p], d, s, k)


def nearest_seeds_torch(points: torch.Tensor, group: torch.Tensor, grid: SeedGridTorch, yx: torch.Tensor,
                        k: int = 1, limit: float = math.inf, width: int | None = None, dtype=torch.int64,
                        radii: tuple[int, ...] | None = None) -> torch.Tensor:
    """(n, width) ``dtype`` on ``points``' device: per point (n, 2) float64 yx, the ≤k nearest seeds of its grid
    group (n,) int64 within ``limit`` (the nearest is always kept), in increasing seed index, -1 padded to ``width``
    (default k) columns — equal to :func:`spam_stream.seeding.nearest_seeds` on the same grid.

    ``radii``: block radii (in cells) of the rounds before the exhaustive one (default (1, 3) for k = 1, (2, 5)
    otherwise: the 9th-nearest seed of a regular layout lies ≈1.7 cells away)."""
    dev = points.device
    n = points.shape[0]
    width = k if width is None else width
    if radii is None:
        radii = (1, 3) if k == 1 else (2, 5)
    py = points[:, 0].to(torch.float64).contiguous()
    px = points[:, 1].to(torch.float64).contiguous()
    group = group.to(device=dev, dtype=torch.int64)
    yx = yx.to(device=dev, dtype=torch.float64)
    limit2 = float(limit) ** 2
    c = grid.cell[group]
    ny, nx = grid.shape[group, 0], grid.shape[group, 1]
    off = grid.offset[group]
    n_cells_of = grid.shape[:, 0] * grid.shape[:, 1]
    fy = (py - grid.origin[group, 0]) / c
    fx = (px - grid.origin[group, 1]) / c
    gy = torch.minimum(torch.floor(fy).to(torch.int64).clamp(min=0), ny - 1)
    gx = torch.minimum(torch.floor(fx).to(torch.int64).clamp(min=0), nx - 1)
    best_d = torch.full((n, k), math.inf, dtype=torch.float64, device=dev)
    best_i = torch.full((n, k), -1, dtype=torch.int64, device=dev)
    has_seeds = grid.start[off + ny * nx] > grid.start[off]
    cell_of = off + gy * nx + gx
    # host reads: one per round, for the points still pending (none per chunk, cell or block)
    pending = None  # the first round takes every point; a point of a seedless group finds nothing and stops
    cells = _grid_cells(grid) if radii else None
    inner = -1
    for radius in radii:
        p = pending if pending is not None else slice(None)
        block = _ring_block(grid, cells, radius, inner)  # built only for a round that has points to take
        _block_round(pending, n if pending is None else len(pending), cell_of, py, px, yx, block, best_d, best_i,
                     k, fresh=inner < 0)
        inner = radius
        # distance to the unvisited part of the grid: the nearest side of the block that stops short of the grid's
        r0, r1 = gy[p] - radius, gy[p] + radius
        c0, c1 = gx[p] - radius, gx[p] + radius
        inf = torch.full_like(fy[p], math.inf)
        lb = torch.minimum(
            torch.minimum(torch.where(r0 > 0, fy[p] - r0, inf), torch.where(r1 < ny[p] - 1, (r1 + 1) - fy[p], inf)),
            torch.minimum(torch.where(c0 > 0, fx[p] - c0, inf), torch.where(c1 < nx[p] - 1, (c1 + 1) - fx[p], inf)),
        ) * c[p]
        lb2 = lb * lb
        done = torch.isinf(lb) | (lb2 > best_d[p, k - 1]) | ((lb2 > limit2) & (lb2 > best_d[p, 0]))
        pending = torch.nonzero(has_seeds & ~done).flatten() if pending is None else pending[~done]
        if len(pending) == 0:
            break
    if pending is None:  # no block round: every point with seeds compares with all of its group's
        pending = torch.nonzero(has_seeds).flatten()
    if len(pending):
        _brute_force(pending, py, px, group, grid, yx, n_cells_of, best_d, best_i, k)
    # keep the nearest and every other seed within the limit, in increasing seed index
    keep = best_i >= 0
    if k > 1:
        keep[:, 1:] &= best_d[:, 1:] <= limit2
    big = torch.iinfo(torch.int64).max
    ids = torch.sort(torch.where(keep, best_i, big), 1).values
    ids = torch.where(ids == big, -1, ids)
    out = torch.full((n, width), -1, dtype=dtype, device=dev)
    out[:, :min(k, width)] = ids[:, :min(k, width)].to(dtype)
    return out


__all__ = ["bin_counts", "SeedGridTorch", "build_seed_grid_torch", "nearest_seeds_torch", "PAIRS_PER_CHUNK"]
