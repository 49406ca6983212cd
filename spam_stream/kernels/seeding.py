"""Step 2-3 on the device: seeds, their starting labels and the candidate layouts as tensors on the frame's device.

Without a prior, the grid layout needs no table: the kernels compute a pixel's 9 candidate cells from its position,
so the only per-pixel inputs are the pixel objects (all 0) and the starting cell of each pixel. Both are built here
directly on the device (no host array, no upload).

With a prior, :func:`object_seeds_torch` and :func:`object_candidates_torch` are the device twins of
:func:`spam_stream.seeding.object_seeds` and :func:`spam_stream.candidates.object_candidates`: the partition goes in
on the device, and the pixel-sized work — the objects' 4-connected pieces, the starting positions, the k-means on yx
and the 9-nearest-seed table (:mod:`.nearest`) — runs there. Only per-piece numbers cross to the host: the pieces'
sizes and objects, for the seed budget of :func:`spam_stream.seeding.allocate_component_seeds` (the CPU rule itself,
a sequential greedy adjustment over C numbers) and the piece a seedless piece searches; and, for the rare piece whose
occupied cells are fewer than its seeds, its chosen pixels, so that the random extra starts come from the same
``numpy`` generator calls as on the CPU. Results are equal to the CPU functions' (same seeds, same starting labels,
same component map, same table): the k-means means are sums of integer coordinates, exact in float64 whatever the
summation order, and the nearest-seed search is exact with the same tie rule.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .candidates import N_SLOTS, Candidates, block_size
from .nearest import bin_counts, build_seed_grid_torch, nearest_seeds_torch


def grid_init_labels_torch(height: int, width: int, grid: tuple[int, int], device) -> torch.Tensor:
    """(H*W,) int32 on ``device``: the grid cell each pixel starts in — equal to ``grid_seeds(...).init_labels``."""
    nh, nw = grid
    cy = torch.arange(height, device=device, dtype=torch.int64) * nh // height
    cx = torch.arange(width, device=device, dtype=torch.int64) * nw // width
    return (cy[:, None] * nw + cx[None, :]).reshape(-1).to(torch.int32)


def grid_candidates_torch(height: int, width: int, grid: tuple[int, int], device) -> Candidates:
    """The grid layout without a prior (every pixel and superpixel in object 0), its tensors on ``device`` — equal
    to :func:`spam_stream.candidates.grid_candidates`."""
    nh, nw = grid
    return Candidates(height, width, torch.zeros(height * width, dtype=torch.int32, device=device),
                      torch.zeros(nh * nw, dtype=torch.int32, device=device), grid=(nh, nw))


def object_components_torch(partition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twin of :func:`spam_stream.seeding.object_components` on ``partition``'s device: from an (H, W) integer
    partition (-1 uncertain), (comp (H*W,) int64 component id, -1 uncertain; comp_obj (C,) int64; comp_size (C,)
    int64), components numbered in raster order of their first pixel."""
    from .labeling import label_components

    comp = label_components(partition, background=-1, connectivity=4).reshape(-1) - 1
    flat = partition.reshape(-1).to(torch.int64)
    n = int(comp.max()) + 1 if comp.numel() else 0
    # fixed-shape scatters (uncertain pixels into an extra bin n, dropped): the host reads only n
    bins = torch.where(comp >= 0, comp, n)
    comp_size = bin_counts(bins, n + 1)[:n]
    comp_obj = torch.zeros(n + 1, dtype=torch.int64, device=partition.device).scatter_(0, bins, flat)[:n]
    return comp, comp_obj, comp_size



def kmeans_yx_torch(coords: torch.Tensor, seeds: torch.Tensor, iterations: int, seed_group: torch.Tensor,
                    point_group: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of :func:`spam_stream.seeding.kmeans_yx`: Lloyd iterations on pixel coordinates (n, 2) float64 (integer
    values), each point assigned to the nearest seed (k, 2) float64 of its own group (seed_group (k,), point_group
    (n,) int64). Returns (seeds (k, 2) float64, assignment (n,) int64). The means' sums are float64 sums of integers:
    exact in any order, so they equal the CPU's sequential sums on every device."""
    seeds = seeds.to(torch.float64).clone()
    n_groups = int(torch.cat([seed_group.reshape(-1), point_group.reshape(-1)]).max()) + 1
    item_seed = torch.arange(len(seeds), device=seeds.device)

    def assign_all():
        grid = build_seed_grid_torch(seeds, item_seed, seed_group, n_groups, step)
        return nearest_seeds_torch(coords, point_group, grid, seeds)[:, 0]

    assign = assign_all()
    for _ in range(iterations):
        counts = bin_counts(assign, len(seeds))
        sums = torch.zeros_like(seeds).index_add_(0, assign, coords)
        seeds = torch.where((counts > 0)[:, None], sums / counts.clamp(min=1).to(torch.float64)[:, None], seeds)
        assign = assign_all()
    return seeds, assign


def _linspace_round(n_first: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group g with ``n_first[g]`` items and ``m[g]`` ≥ 1 picks: (group (Σm,), position (Σm,)) =
    ``np.linspace(0, n_first - 1, m).round()`` for every group — the same float64 products, the last one exact."""
    dev = m.device
    groups = torch.repeat_interleave(torch.arange(len(m), device=dev), m)
    j = torch.arange(len(groups), device=dev) - torch.repeat_interleave(torch.cumsum(m, 0) - m, m)
    div = (m - 1)[groups]
    step = (n_first - 1)[groups].to(torch.float64) / div.clamp(min=1).to(torch.float64)
    y = torch.where(div > 0, j.to(torch.float64) * step, 0.0)
    y = torch.where((j == div) & (div > 0), (n_first - 1)[groups].to(torch.float64), y)  # numpy's exact endpoint
    return groups, torch.round(y).to(torch.int64)


def _initial_locals(coords, point_comp, local, comp_size, counts, seed: int):
    """The starting pixel of every seed as (comp (K,), local index (K,)) in seed order — the twin of
    :func:`spam_stream.seeding._initial_positions` applied to every seeded component in increasing order (one
    pixel per occupied cell of a grid of step √(n/k), spread by a rounded linspace; the middle pixel for k = 1;
    numpy's random extra pixels, on the host, where the occupied cells are fewer than k)."""
    dev = coords.device
    n_comp = len(comp_size)
    multi = counts > 1
    # k = 1: the middle pixel of the component
    one = torch.nonzero(counts == 1).flatten()
    sel_comp, sel_local = [one], [comp_size[one] // 2]
    if bool(multi.any()):
        step = torch.sqrt(comp_size.to(torch.float64) / counts.clamp(min=1).to(torch.float64))
        pts = torch.nonzero(multi[point_comp]).flatten()
        pc = point_comp[pts]
        st = step[pc]
        cell = torch.floor(coords[pts] / st[:, None]).to(torch.int64)
        max_x = torch.full((n_comp,), -math.inf, dtype=torch.float64, device=dev).scatter_reduce(
            0, pc, coords[pts, 1], "amax")
        ncol = (torch.div(max_x, step, rounding_mode="floor") + 2)
        ncol = torch.where(multi, ncol, 0.0).to(torch.int64)
        key = cell[:, 0] * ncol[pc] + cell[:, 1]
        keyspace = (int(cell[:, 0].max()) + 1) * int(ncol.max()) + 1  # above every key: cell x < ncol
        combined, order = torch.sort(pc * keyspace + key, stable=True)  # stable: the first pixel of a key first
        first = torch.ones_like(combined, dtype=torch.bool)
        first[1:] = combined[1:] != combined[:-1]
        runs = order[first]
        run_comp = pc[runs]
        run_local = local[pts][runs]
        n_first = bin_counts(run_comp, n_comp)
        base = torch.cumsum(n_first, 0) - n_first
        mc = torch.nonzero(multi).flatten()
        g, pos = _linspace_round(n_first[mc], torch.minimum(counts[mc], n_first[mc]))
        sel_comp.append(mc[g])
        sel_local.append(run_local[base[mc[g]] + pos])
    comp = torch.cat(sel_comp)
    loc = torch.cat(sel_local)
    # np.unique per component: sorted, duplicates dropped
    width = int(comp_size.max()) + 1
    key, order = torch.sort(comp * width + loc)
    keep = torch.ones_like(key, dtype=torch.bool)
    keep[1:] = key[1:] != key[:-1]
    comp, loc = comp[order][keep], loc[order][keep]
    have = bin_counts(comp, n_comp)
    short = (counts - have).cpu().numpy()
    if (short > 0).any():  # fewer occupied cells than seeds: the CPU's random extra pixels, same generator calls
        rng = np.random.default_rng(seed)
        comp_h, loc_h = comp.cpu().numpy(), loc.cpu().numpy()
        sizes, have_h = comp_size.cpu().numpy(), have.cpu().numpy()
        extra_comp, extra_loc, extra_rank = [], [], []
        for c in np.flatnonzero(short > 0):  # increasing component order, as the CPU's calls
            rest = np.setdiff1d(np.arange(sizes[c]), loc_h[comp_h == c])
            extra_comp.append(np.full(short[c], c))
            extra_loc.append(rng.choice(rest, short[c], replace=False))
            extra_rank.append(have_h[c] + np.arange(short[c]))
        # seed order: a component's sorted chosen pixels, then its extra ones in the generator's order
        rank = torch.arange(len(comp), device=dev) - (torch.cumsum(have, 0) - have)[comp]
        xc, xl, xr = (torch.from_numpy(np.concatenate(a).astype(np.int64)).to(dev)
                      for a in (extra_comp, extra_loc, extra_rank))
        comp, loc = torch.cat([comp, xc]), torch.cat([loc, xl])
        order = torch.sort(comp * (int(counts.max()) + 1) + torch.cat([rank, xr])).indices
        comp, loc = comp[order], loc[order]
    return comp, loc


def sample_pixels_torch(comp: torch.Tensor, width: int, stride: int, counts: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of :func:`spam_stream.seeding.sample_pixels` from the component of every pixel (H*W,) (-1 uncertain):
    each component's lattice pixels (y, x ≡ stride // 2 mod stride) plus its first pixel, or all its pixels when it
    has fewer lattice pixels than seeds (``counts`` (C,)); (pixel (S,), component (S,)) int64, grouped by component
    in raster order."""
    dev = comp.device
    n_comp = len(counts)
    p = torch.arange(comp.numel(), device=dev)
    inside = comp >= 0
    off = stride // 2
    on_lattice = inside & ((p // width) % stride == off) & ((p % width) % stride == off)
    lattice = bin_counts(torch.where(on_lattice, comp, n_comp), n_comp + 1)[:n_comp]  # extra bin: off the lattice
    first = torch.full((n_comp + 1,), comp.numel(), dtype=torch.int64, device=dev).scatter_reduce(
        0, torch.where(inside, comp, n_comp), p, "amin")[:n_comp]
    full = counts > lattice
    c = comp.clamp(min=0)
    take = inside & (on_lattice | (p == first[c]) | full[c])
    pix = torch.nonzero(take).flatten()
    order = torch.sort(comp[pix], stable=True).indices
    pix = pix[order]
    return pix, comp[pix]


def object_seeds_torch(partition: torch.Tensor, n_superpixels: int, density: np.ndarray | None = None,
                       kmeans_iterations: int = 5, seed: int = 0):
    """Twin of :func:`spam_stream.seeding.object_seeds` on ``partition``'s device: seeds inside the objects of an
    (H, W) integer partition tensor (ids ≥ 0, -1 uncertain), allocated to the objects' 4-connected pieces and
    refined by k-means inside their piece. Returns a :class:`~spam_stream.seeding.Seeds` whose arrays are tensors on
    that device — yx (K, 2) float64, obj / component (K,) int32, init_labels (H*W,) int32, component_map (H, W)
    int32 — equal to the CPU function's. ``density``: optional (n_objects,) numpy factors (host)."""
    from ..seeding import Seeds, allocate_component_seeds, bridge_groups, candidate_group_targets, sample_stride

    if partition.ndim != 2:
        raise ValueError(f"the prior partition must be (H, W), got shape {tuple(partition.shape)}")
    dev = partition.device
    h, w = partition.shape
    n_obj = int(partition.max()) + 1 if partition.numel() else 0
    if n_obj <= 0:
        raise ValueError("the prior partition has no object (every pixel is -1)")
    comp, comp_obj, comp_size = object_components_torch(partition)
    # the seed budget per piece: C numbers, the CPU rule on the host
    comp_obj_h, comp_size_h = comp_obj.cpu().numpy(), comp_size.cpu().numpy()
    counts_h = allocate_component_seeds(  # groups: only with more pieces than K (rare), on the host
        comp_obj_h, comp_size_h, n_superpixels, density,
        groups=lambda: bridge_groups(comp.cpu().numpy(), comp_obj_h, (h, w)))
    counts = torch.from_numpy(counts_h).to(dev)
    n_comp = len(comp_size_h)
    total = int(counts_h.sum())
    # the k-means sample of every component (seeding.sample_pixels' rule), grouped by component, raster order inside
    pix, point_comp = sample_pixels_torch(comp, w, sample_stride(int(comp_size_h.sum()), total), counts)
    sample_size = bin_counts(point_comp, n_comp)
    coords = torch.stack([pix // w, pix % w], 1).to(torch.float64)
    comp_first = torch.cumsum(sample_size, 0) - sample_size
    local = torch.arange(len(pix), device=dev) - comp_first[point_comp]
    seed_comp, seed_local = _initial_locals(coords, point_comp, local, sample_size, counts, seed)
    init_yx = coords[comp_first[seed_comp] + seed_local]
    # k-means for all components at once on their samples, each to the nearest seed of its own component
    has_seed = torch.nonzero(counts[point_comp] > 0).flatten()  # the sample points of seeded pieces
    step = math.sqrt(int(comp_size_h.sum()) / max(total, 1))
    yx, assign = kmeans_yx_torch(coords[has_seed], init_yx, kmeans_iterations, seed_comp, point_comp[has_seed],
                                 step)
    init = torch.full((h * w,), -1, dtype=torch.int32, device=dev)
    init[pix[has_seed]] = assign.to(torch.int32)
    # candidate groups: a component without a seed searches the largest seeded component of its object (host, C)
    target = torch.from_numpy(candidate_group_targets(counts_h, comp_size_h, comp_obj_h, n_obj)).to(dev)
    comp_map = torch.where(comp >= 0, target[comp.clamp(min=0)], -1).to(torch.int32).reshape(h, w)
    return Seeds(yx, comp_obj[seed_comp].to(torch.int32), init, component=seed_comp.to(torch.int32),
                 component_map=comp_map)


def object_candidates_torch(partition: torch.Tensor, seeds, max_distance: float = 3.0) -> Candidates:
    """Twin of :func:`spam_stream.candidates.object_candidates` on ``partition``'s device: the table layout for
    seeds (a Seeds whose yx (K, 2) / obj (K,) are tensors or arrays) inside the objects of ``partition`` (H, W)
    integer tensor — usually ``seeds.candidate_groups(partition)`` (the pieces) — the 9 seeds of a pixel's group
    nearest to the centre of its block within ``max_distance`` grid steps (uncertain pixels: of any group); (N, 9)
    int32 table, equal to the CPU's."""
    dev = partition.device
    h, w = partition.shape
    flat = partition.reshape(-1).to(torch.int64)
    yx = torch.as_tensor(seeds.yx).to(device=dev, dtype=torch.float64)
    seed_obj = torch.as_tensor(seeds.obj).to(device=dev, dtype=torch.int64)
    n_seeds = len(seed_obj)
    if n_seeds == 0:
        raise ValueError("object candidates need at least one seed")
    step = math.sqrt(h * w / n_seeds)
    limit = max_distance * step
    # search groups: 0 = every seed (for uncertain pixels), 1 + o = the seeds of object o
    top, lowest = torch.stack([torch.maximum(flat.max(), seed_obj.max()), flat.min()]).tolist()  # one host read
    n_groups = top + 2
    item_seed = torch.arange(n_seeds, device=dev)
    if lowest < 0:
        item_seed = torch.cat([item_seed, item_seed])
        item_group = torch.cat([torch.zeros(n_seeds, dtype=torch.int64, device=dev), seed_obj + 1])
    else:
        item_group = seed_obj + 1
    grid = build_seed_grid_torch(yx, item_seed, item_group, n_groups, step)
    # one query per (block, group) pair (candidates.object_candidates' rule), each pixel takes its pair's row
    b = block_size(step)
    nbx = (w + b - 1) // b
    p = torch.arange(h * w, device=dev)
    y, x = p // w, p % w
    block = (y // b) * nbx + (x // b)
    pair, inverse = torch.unique(block * n_groups + flat + 1, return_inverse=True)
    q_block, q_group = pair // n_groups, pair % n_groups
    y0, x0 = (q_block // nbx) * b, (q_block % nbx) * b
    centre_y = 0.5 * (y0 + torch.clamp(y0 + b, max=h) - 1).to(torch.float64)
    centre_x = 0.5 * (x0 + torch.clamp(x0 + b, max=w) - 1).to(torch.float64)
    rows = nearest_seeds_torch(torch.stack([centre_y, centre_x], 1), q_group, grid, yx, k=min(N_SLOTS, n_seeds),
                               limit=limit, width=N_SLOTS, dtype=torch.int32)
    return Candidates(h, w, flat.to(torch.int32), seed_obj.to(torch.int32), table=rows[inverse])


__all__ = ["grid_init_labels_torch", "grid_candidates_torch", "object_components_torch", "kmeans_yx_torch",
           "sample_pixels_torch", "object_seeds_torch", "object_candidates_torch"]
