"""Step 2 — seeds: where the K superpixels start.

Without a prior, seeds are the cells of a regular grid of ≈K cells. With a prior partition, object O_i receives
k_i = max(1, round(K·|O_i|/|I|)) seeds (``|I|`` = pixels that belong to an object; uncertain pixels count toward
none), rebalanced so that the total is K whenever there are at most K objects; the seeds are placed inside the
object and refined by 5 k-means iterations on yx, so they spread over its shape. An optional per-object density
factor (attention and user-driven modes) scales an object's share before the same rebalancing.

Seeds are allocated to the 4-connected *components* of the objects, not to whole objects: an object cut into pieces
(e.g. by the uncertain band of a ground-truth prior, or thin parts of a SAM mask) has pieces that no superpixel of
its other pieces can reach without crossing the prior, so a piece without a seed of its own becomes an extra
superpixel after connectivity (BSDS 100039 at K=200: 11 objects in 86 components gave 235 superpixels; 202 with
component seeds). With at most K components the per-component counts sum to K; with more, each object keeps its
object-level budget, spent on its largest components.

The k-means runs for all components at once on a **sample** of each component's pixels (:func:`sample_stride`:
the pixels of a regular lattice of stride s, chosen so that a seed has about :data:`SAMPLES_PER_SEED` of them, plus
the component's first pixel; every pixel of a component with fewer lattice pixels than seeds): each sample pixel
goes to the nearest seed of its own component, found by an exact search over a per-group bucket grid of the seeds
(:func:`nearest_seeds`, numba), which the candidate tables reuse. The sample is read off the runs of the component
labelling, so seeding costs O(runs + N/s²) — about K·SAMPLES_PER_SEED points whatever the frame size — instead of
the per-pixel k-means passes it replaced (issue 22: 1.4 s of a 1080p frame). A seed's starting pixels
(``init_labels``) are its sample pixels; the first clustering iteration assigns every pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numba import njit, prange

from .connectivity import MAX_BRIDGE_GAP, neighbour4

SAMPLES_PER_SEED = 32  # lattice pixels per seed the k-means on yx runs on (sample_stride)


@dataclass
class Seeds:
    """Seeds of the superpixels.

    Attributes:
        yx: (K, 2) float64 seed positions (row, column).
        obj: (K,) int32 prior object of each seed (0 for every seed without a prior).
        init_labels: (H*W,) int32 the seed each pixel starts in, -1 for pixels that start in none (uncertain
            pixels; with a prior, every pixel outside the k-means sample), used for the initial centroids.
        grid: (nh, nw) when the seeds form a regular grid, else None.
        component: (K,) int32 the object component each seed was placed in (object seeds), else None.
        component_map: (H, W) int32 component of each pixel (-1 uncertain), pixels of a component without a seed
            mapped to the largest seeded component of their object (object seeds), else None.
    """

    yx: np.ndarray
    obj: np.ndarray
    init_labels: np.ndarray
    grid: tuple[int, int] | None = None
    component: np.ndarray | None = None
    component_map: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.obj)

    def regions_at(self, y: np.ndarray, x: np.ndarray, width: int) -> np.ndarray:
        """(n,) int64: the seed whose region holds each pixel (y, x) (int arrays), -1 for none (uncertain pixels).

        A seed's region is the pixels nearer to it than to any other seed of their piece of the object (the pieces'
        k-means cells; for grid seeds, the grid cells): ``init_labels`` where every pixel starts in a seed, else
        (object seeds start on their k-means sample only) a nearest-seed query restricted to the pixel's piece."""
        y, x = np.asarray(y, np.int64), np.asarray(x, np.int64)
        init = self.init_labels.cpu().numpy() if hasattr(self.init_labels, "cpu") else np.asarray(self.init_labels)
        if self.component_map is None or self.component is None:
            return init[y * width + x].astype(np.int64)
        cmap = self.component_map
        cmap = cmap.cpu().numpy() if hasattr(cmap, "cpu") else np.asarray(cmap)
        group = cmap.reshape(-1)[y * width + x].astype(np.int64)
        comp = self.component.cpu().numpy() if hasattr(self.component, "cpu") else np.asarray(self.component)
        yx = self.yx.cpu().numpy() if hasattr(self.yx, "cpu") else np.asarray(self.yx)
        out = np.full(len(y), -1, np.int64)
        inside = group >= 0
        if inside.any() and len(comp):
            n_groups = int(max(comp.max(), group.max())) + 1
            grid = build_seed_grid(yx, np.arange(len(comp)), comp.astype(np.int64), n_groups,
                                   math.sqrt(cmap.size / len(comp)))
            points = np.stack([y[inside], x[inside]], 1).astype(np.float64)
            out[inside] = nearest_seeds(points, group[inside], grid, yx)[:, 0]
        return out

    def candidate_groups(self, partition: np.ndarray) -> tuple[np.ndarray, "Seeds"]:
        """(partition, seeds) for the candidate search: the component map and these seeds labelled by component
        when seeding made components, so that a pixel only joins seeds of its own piece of an object (a seed of
        another piece can only give it a fragment that connectivity cannot merge without crossing the prior);
        else ``(partition, self)``. Use: ``object_candidates(*seeds.candidate_groups(partition), max_distance)``."""
        if self.component_map is None or self.component is None:
            return partition, self
        comp = self.component  # numpy here; an int32 tensor for seeds made on a device (kernels.seeding)
        return self.component_map, replace(self, obj=comp.astype(np.int32) if isinstance(comp, np.ndarray) else comp)


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


def grid_seeds(height: int, width: int, n_superpixels: int, init_labels=None) -> Seeds:
    """Seeds at the centres of a regular grid of ≈K cells; each pixel starts in its own cell. ``init_labels``: those
    starting cells when already made (a tensor on a device, :func:`spam_stream.kernels.resident_grid_seeds`)."""
    nh, nw = grid_shape(height, width, n_superpixels)
    if init_labels is None:
        cy = (np.arange(height) * nh // height).astype(np.int32)
        cx = (np.arange(width) * nw // width).astype(np.int32)
        init_labels = (cy[:, None] * nw + cx[None, :]).ravel().astype(np.int32)
    gy, gx = np.meshgrid((np.arange(nh) + 0.5) * height / nh, (np.arange(nw) + 0.5) * width / nw, indexing="ij")
    yx = np.stack([gy.ravel(), gx.ravel()], 1)
    return Seeds(yx, np.zeros(nh * nw, np.int32), init_labels, (nh, nw))


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


@dataclass
class SeedGrid:
    """Seeds bucketed per group on a grid of square cells, for exact nearest-seed searches restricted to a group.

    Each group g has its own grid over the bounding box of its seeds (``origin[g]`` (y, x), cell side ``cell[g]``,
    ``shape[g]`` = (ny, nx) cells, its cells numbered from ``offset[g]``); the seed indices of global cell j are
    ``items[start[j]:start[j + 1]]``. A seed may belong to several groups.
    """

    origin: np.ndarray  # (G, 2) float64
    cell: np.ndarray  # (G,) float64
    shape: np.ndarray  # (G, 2) int64
    offset: np.ndarray  # (G,) int64
    start: np.ndarray  # (n_cells + 1,) int64
    items: np.ndarray  # (n_items,) int64


def build_seed_grid(yx: np.ndarray, item_seed: np.ndarray, item_group: np.ndarray, n_groups: int,
                    step: float) -> SeedGrid:
    """Grid of the seeds ``yx`` (K, 2) listed as items (seed index, group id). Cells are ``step`` wide, widened
    for a group whose bounding box would need more than ≈2 cells per seed (thin or sparse groups)."""
    item_seed = np.asarray(item_seed, np.int64)
    item_group = np.asarray(item_group, np.int64)
    pos = yx[item_seed]
    n_items = np.bincount(item_group, minlength=n_groups)
    lo = np.full((n_groups, 2), np.inf)
    hi = np.full((n_groups, 2), -np.inf)
    np.minimum.at(lo, item_group, pos)
    np.maximum.at(hi, item_group, pos)
    empty = n_items == 0
    lo[empty], hi[empty] = 0.0, 0.0
    extent = hi - lo
    cell = np.maximum(step, np.sqrt(extent[:, 0] * extent[:, 1] / np.maximum(2 * n_items, 1)))
    shape = (np.floor(extent / cell[:, None]) + 1).astype(np.int64)
    offset = np.concatenate([[0], np.cumsum(shape[:, 0] * shape[:, 1])])
    rel = np.floor((pos - lo[item_group]) / cell[item_group, None]).astype(np.int64)
    rel = np.clip(rel, 0, shape[item_group] - 1)
    key = offset[item_group] + rel[:, 0] * shape[item_group, 1] + rel[:, 1]
    order = np.argsort(key, kind="stable")
    start = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=int(offset[-1])))])
    return SeedGrid(lo, cell, shape, offset[:-1], start, item_seed[order])


@njit(inline="always")
def _insert(best_d, best_i, k, d, i):
    """Insert (d, i) into the sorted top-k lists (ties: lower index first) if it belongs there."""
    if d > best_d[k - 1] or (d == best_d[k - 1] and i >= best_i[k - 1] and best_i[k - 1] >= 0):
        return
    j = k - 1
    while j > 0 and (best_d[j - 1] > d or (best_d[j - 1] == d and best_i[j - 1] > i)):
        best_d[j] = best_d[j - 1]
        best_i[j] = best_i[j - 1]
        j -= 1
    best_d[j] = d
    best_i[j] = i


@njit(parallel=True, cache=True, nogil=True)
def _k_nearest(py, px, group, yx, origin, cell, shape, offset, start, items, k, limit2, out):
    """For each point i: the k nearest seeds of grid group ``group[i]`` (exact, ties to the lower index); those
    farther than √limit2 are dropped except the nearest; written to out[i, :k] in increasing seed index, -1 after."""
    n = py.shape[0]
    chunk = 2048
    for b in prange((n + chunk - 1) // chunk):
        best_d = np.empty(k)
        best_i = np.empty(k, np.int64)
        for i in range(b * chunk, min(n, (b + 1) * chunk)):
            _k_nearest_one(i, best_d, best_i, py, px, group, yx, origin, cell, shape, offset, start, items, k,
                           limit2, out)


@njit(cache=True, nogil=True)
def _k_nearest_serial(py, px, group, yx, origin, cell, shape, offset, start, items, k, limit2, out):
    """:func:`_k_nearest` in the calling thread: for the few thousand points of a k-means sample or of the block
    queries, waking a thread team costs more than the search (passive OpenMP waits)."""
    best_d = np.empty(k)
    best_i = np.empty(k, np.int64)
    for i in range(py.shape[0]):
        _k_nearest_one(i, best_d, best_i, py, px, group, yx, origin, cell, shape, offset, start, items, k, limit2,
                       out)


PARALLEL_POINTS = 2048  # nearest-seed searches over fewer points run in one thread (one chunk)


@njit(inline="always")
def _k_nearest_one(i, best_d, best_i, py, px, group, yx, origin, cell, shape, offset, start, items, k, limit2, out):
    g = group[i]
    best_d[:] = np.inf
    best_i[:] = -1
    y0, x0, c = origin[g, 0], origin[g, 1], cell[g]
    ny, nx, off = shape[g, 0], shape[g, 1], offset[g]
    fy = (py[i] - y0) / c
    fx = (px[i] - x0) / c
    iy = int(np.floor(fy))
    ix = int(np.floor(fx))
    rmax = max(abs(iy), abs(ny - 1 - iy), abs(ix), abs(nx - 1 - ix))
    if start[off + ny * nx] == start[off]:
        rmax = -1  # a group without seeds
    for r in range(rmax + 1):
        if r >= 1:
            # every seed in ring r lies outside the square of rings < r around the point
            lb = min(min(fy - (iy - r + 1), (iy + r) - fy), min(fx - (ix - r + 1), (ix + r) - fx)) * c
            lb2 = lb * lb
            if lb2 > best_d[k - 1] or (lb2 > limit2 and lb2 > best_d[0]):
                break
        for cy in range(iy - r, iy + r + 1):
            if cy < 0 or cy >= ny:
                continue
            edge = cy == iy - r or cy == iy + r
            cx = ix - r
            while cx <= ix + r:
                if 0 <= cx < nx:
                    # distance from the point to the cell, to skip cells that cannot improve the list
                    dy = max(0.0, max(cy - fy, fy - (cy + 1))) * c
                    dx = max(0.0, max(cx - fx, fx - (cx + 1))) * c
                    dc = dy * dy + dx * dx
                    if dc <= best_d[k - 1] and not (dc > limit2 and dc > best_d[0]):
                        j = off + cy * nx + cx
                        for t in range(start[j], start[j + 1]):
                            s = items[t]
                            ey = yx[s, 0] - py[i]
                            ex = yx[s, 1] - px[i]
                            _insert(best_d, best_i, k, ey * ey + ex * ex, s)
                cx += 1 if edge or r == 0 else 2 * r
    # keep the nearest and every other seed within the limit, in increasing seed index
    m = 0
    for j in range(k):
        if best_i[j] >= 0 and (j == 0 or best_d[j] <= limit2):
            v = best_i[j]
            q = m
            while q > 0 and out[i, q - 1] > v:
                out[i, q] = out[i, q - 1]
                q -= 1
            out[i, q] = v
            m += 1
    for j in range(m, out.shape[1]):
        out[i, j] = -1


def nearest_seeds(points: np.ndarray, group: np.ndarray, grid: SeedGrid, yx: np.ndarray, k: int = 1,
                  limit: float = np.inf, width: int | None = None, dtype=np.int64) -> np.ndarray:
    """(n, width) ``dtype``: per point (n, 2) yx, the ≤k nearest seeds of its grid group within ``limit`` (the nearest
    is always kept), in increasing seed index, -1 padded to ``width`` (default k) columns."""
    out = np.empty((len(points), k if width is None else width), dtype)
    (_k_nearest if len(points) > PARALLEL_POINTS else _k_nearest_serial)(np.ascontiguousarray(points[:, 0], np.float64), np.ascontiguousarray(points[:, 1], np.float64),
               np.asarray(group, np.int64), np.ascontiguousarray(yx, np.float64), grid.origin, grid.cell, grid.shape,
               grid.offset, grid.start, grid.items, k, float(limit) ** 2, out)
    return out


def kmeans_yx(coords: np.ndarray, seeds: np.ndarray, iterations: int = 5, seed_group: np.ndarray | None = None,
              point_group: np.ndarray | None = None, step: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd iterations on pixel coordinates (n, 2), every point assigned to the nearest seed of its own group
    (all groups at once; one group when none are given). Returns (seeds (k, 2), assignment (n,) int64)."""
    seeds = np.array(seeds, dtype=np.float64)
    if seed_group is None:
        seed_group = np.zeros(len(seeds), np.int64)
        point_group = np.zeros(len(coords), np.int64)
    seed_group = np.asarray(seed_group, np.int64)
    n_groups = int(max(seed_group.max(), np.max(point_group, initial=0))) + 1
    if step is None:
        step = math.sqrt(max(len(coords), 1) / max(len(seeds), 1))
    item_seed = np.arange(len(seeds))

    def assign_all():
        grid = build_seed_grid(seeds, item_seed, seed_group, n_groups, step)
        return nearest_seeds(coords, point_group, grid, seeds)[:, 0]

    assign = assign_all()
    for _ in range(iterations):
        counts = np.bincount(assign, minlength=len(seeds))
        has = counts > 0
        for dim in range(2):
            sums = np.bincount(assign, weights=coords[:, dim], minlength=len(seeds))
            seeds[has, dim] = sums[has] / counts[has]
        assign = assign_all()
    return seeds, assign


def object_components(partition: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-connected components of each prior object: (comp (H*W,) int64 component id, -1 for uncertain pixels;
    comp_obj (C,) int64 the object of each component; comp_size (C,) int64), numbered in raster order."""
    runs = object_component_runs(partition)
    return runs.comp_map(np.arange(-1, runs.n_components, dtype=np.int64)), runs.comp_obj, runs.comp_size


@dataclass
class ComponentRuns:
    """The 4-connected pieces of a partition's objects as runs of pixels (:func:`object_component_runs`): row y's
    runs are ``row_ptr[y]``…``row_ptr[y + 1] - 1``, run r starts at column ``starts[r]`` and belongs to piece
    ``final[r] - 1`` (-1: uncertain). ``comp_obj`` (C,) int64 each piece's object, ``comp_size`` (C,) int64 its
    pixels; pieces numbered in raster order of their first pixel (as ``skimage.measure.label``)."""

    shape: tuple[int, int]
    starts: np.ndarray
    row_ptr: np.ndarray
    final: np.ndarray
    comp_obj: np.ndarray
    comp_size: np.ndarray

    @property
    def n_components(self) -> int:
        return len(self.comp_size)

    def comp_map(self, table: np.ndarray, dtype=None) -> np.ndarray:
        """(H*W,) ``table[1 + piece]`` for every pixel (``table[0]`` for uncertain pixels): one fill per run."""
        from .kernels.labeling import fill_runs

        table = np.asarray(table)
        out = np.empty(self.shape, table.dtype if dtype is None else dtype)
        never = np.iinfo(out.dtype).min  # fill_runs skips runs whose value equals this: none here
        assert table.size == 0 or table.min() > never
        fill_runs(self.starts, self.row_ptr, self.final, table.astype(out.dtype), out.dtype.type(never), out)
        return out.reshape(-1)


def object_component_runs(partition: np.ndarray) -> ComponentRuns:
    """:class:`ComponentRuns` of an (H, W) integer partition (-1 = uncertain), from the numba run labelling."""
    from .kernels.labeling import label_runs

    starts, row_ptr, final, sizes, values = label_runs(np.asarray(partition), background=-1, connectivity=4)
    return ComponentRuns(tuple(partition.shape), starts, row_ptr, final, values[1:].astype(np.int64),
                         sizes[1:].astype(np.int64))


def sample_stride(n_pixels: int, n_seeds: int) -> int:
    """Stride s of the k-means sample lattice: about :data:`SAMPLES_PER_SEED` lattice pixels per seed."""
    return max(1, int(math.sqrt(n_pixels / max(n_seeds, 1) / SAMPLES_PER_SEED)))


@njit(cache=True, nogil=True)
def _sample_pixels(starts, row_ptr, final, w, stride, counts, comp_size):
    """The k-means sample of every piece, in raster order: (pixel (S,) int64, piece (S,) int64). A piece's sample is
    its pixels on the lattice (y, x ≡ stride // 2 mod stride) plus its first pixel, or all its pixels
    (``comp_size``) when it has fewer lattice pixels than seeds (``counts``). Two passes over the runs: count, emit."""
    h = row_ptr.shape[0] - 1
    n_comp = counts.shape[0]
    off = stride // 2
    first = np.full(n_comp, -1, np.int64)
    lattice = np.zeros(n_comp, np.int64)
    for y in range(h):
        on_row = y % stride == off
        for r in range(row_ptr[y], row_ptr[y + 1]):
            c = final[r] - 1
            if c < 0:
                continue
            x0 = starts[r]
            x1 = starts[r + 1] if r + 1 < row_ptr[y + 1] else w
            if first[c] < 0:
                first[c] = y * w + x0
            if on_row:
                a = x0 + (off - x0) % stride
                if a < x1:
                    lattice[c] += (x1 - 1 - a) // stride + 1
    full = counts > lattice
    total = 0
    for c in range(n_comp):
        total += comp_size[c] if full[c] else lattice[c] + 1
    out_pix = np.empty(total, np.int64)
    out_comp = np.empty(total, np.int64)
    n = 0
    for y in range(h):
        on_row = y % stride == off
        for r in range(row_ptr[y], row_ptr[y + 1]):
            c = final[r] - 1
            if c < 0:
                continue
            x0 = starts[r]
            x1 = starts[r + 1] if r + 1 < row_ptr[y + 1] else w
            if full[c]:
                for x in range(x0, x1):
                    out_pix[n] = y * w + x
                    out_comp[n] = c
                    n += 1
                continue
            p0 = y * w + x0
            if p0 == first[c] and not (on_row and x0 % stride == off):
                out_pix[n] = p0
                out_comp[n] = c
                n += 1
            if on_row:
                for x in range(x0 + (off - x0) % stride, x1, stride):
                    out_pix[n] = y * w + x
                    out_comp[n] = c
                    n += 1
    return out_pix[:n], out_comp[:n]


def sample_pixels(runs: ComponentRuns, stride: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k-means sample (:func:`_sample_pixels`) grouped by piece, raster order inside each: (pixel (S,) int64,
    piece (S,) int64)."""
    pix, comp = _sample_pixels(runs.starts, runs.row_ptr, runs.final, runs.shape[1], int(stride),
                               np.asarray(counts, np.int64), runs.comp_size)
    order = np.argsort(comp, kind="stable")
    return pix[order], comp[order]


@njit(cache=True, nogil=True)
def _bridge_groups(comp, comp_obj, h, w, max_gap):
    n = comp_obj.shape[0]
    parent = np.arange(n)
    owner = np.full(h * w, -1, np.int32)  # the piece whose breadth-first front reached an uncertain pixel first
    dist = np.zeros(h * w, np.int32)
    queue = np.empty(h * w, np.int32)
    qt = 0
    for p in range(h * w):
        if comp[p] >= 0:
            owner[p] = comp[p]
            i, j = p // w, p % w
            if ((j > 0 and comp[p - 1] < 0) or (j + 1 < w and comp[p + 1] < 0) or (i > 0 and comp[p - w] < 0)
                    or (i + 1 < h and comp[p + w] < 0)):
                queue[qt] = p
                qt += 1
    qh = 0
    while qh < qt:
        p = queue[qh]
        qh += 1
        a, d = owner[p], dist[p]
        for k in range(4):
            q = neighbour4(p, k, h, w)
            if q < 0:
                continue
            b = owner[q]
            if b < 0:
                if comp[q] < 0 and d + 1 <= max_gap:
                    owner[q], dist[q] = a, d + 1
                    queue[qt] = q
                    qt += 1
            elif b != a and comp_obj[b] == comp_obj[a] and d + dist[q] <= max_gap:
                ra, rb = a, b  # union (roots: the lower piece index)
                while parent[ra] != ra:
                    ra = parent[ra]
                while parent[rb] != rb:
                    rb = parent[rb]
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    for c in range(n):
        r = c
        while parent[r] != r:
            r = parent[r]
        parent[c] = r
    return parent


def bridge_groups(comp: np.ndarray, comp_obj: np.ndarray, shape: tuple[int, int], max_gap: int = MAX_BRIDGE_GAP) -> np.ndarray:
    """Which object pieces connectivity can bridge (:func:`spam_stream.connectivity.bridge_stranded`): (C,) int64,
    the lowest piece index of each piece's group — pieces of one object joined, directly or through other pieces, by
    at most ``max_gap`` uncertain pixels (a breadth-first search from every piece at once through uncertain pixels;
    where two fronts of the same object meet within the gap, their pieces join). ``comp`` (H*W,) piece ids (-1:
    uncertain), ``comp_obj`` (C,) each piece's object, as :func:`object_components` returns them."""
    h, w = shape
    return _bridge_groups(np.ascontiguousarray(comp, np.int64), np.ascontiguousarray(comp_obj, np.int64), h, w,
                          int(max_gap)).astype(np.int64)


def allocate_component_seeds(comp_obj: np.ndarray, comp_size: np.ndarray, n_superpixels: int,
                             density: np.ndarray | None = None, groups=None) -> np.ndarray:
    """Seeds per object component: (C,) int64.

    A component that gets no seed of its own cannot be reached by a superpixel of its object without crossing the
    prior (the components of an object are separated by other objects or uncertain pixels), so after connectivity
    its pixels become a superpixel anyway — beyond K. Seeds therefore go to components, not objects:
    k_c = max(1, round(K·w_c/Σw)), w_c = |C_c|·density[object], summed to K (:func:`allocate_seeds`) whenever
    there are at most K components. With more components than K, each object keeps the object-level budget and
    spends it on its largest components.

    ``groups``: optional callable returning (C,) group ids (:func:`bridge_groups`), asked only when there are more
    components than K. Pieces of a group that get no seed are bridged to a seeded one by connectivity, so with
    groups the rule above runs over the groups (a group's size: its pieces' pixels), and each group spends its seeds
    on its largest pieces — those with at least half a seed's share, the largest always.
    """
    comp_obj = np.asarray(comp_obj, np.int64)
    comp_size = np.asarray(comp_size, np.int64)
    n = len(comp_size)
    dens = None if density is None else np.asarray(density, dtype=np.float64)[comp_obj]
    if n <= n_superpixels:
        return allocate_seeds(comp_size, n_superpixels, dens)
    if groups is not None:
        roots, gid = np.unique(groups(), return_inverse=True)
        if len(roots) < n:
            g_size = np.bincount(gid, weights=comp_size, minlength=len(roots)).astype(np.int64)
            g_counts = allocate_component_seeds(comp_obj[roots], g_size, n_superpixels, density)
            counts = np.zeros(n, np.int64)
            by_size = np.lexsort((np.arange(n), -comp_size, gid))  # per group, largest first
            bounds = np.searchsorted(gid[by_size], np.arange(len(roots) + 1))
            for g in np.flatnonzero(g_counts):
                comps = by_size[bounds[g]:bounds[g + 1]]
                k = int(g_counts[g])
                share = k * comp_size[comps] / max(g_size[g], 1)
                comps = comps[(share >= 0.5) | (np.arange(len(comps)) == 0)][:k]
                counts[comps] = allocate_seeds(comp_size[comps], k)
            return counts
    # more components than K: the object budgets of the object-level rule (allocate_seeds over objects, Σ = K),
    # each placed in its object's largest components — one seed per component while the budget lasts, the rest
    # by allocate_seeds over those components; the smallest components get none
    n_obj = int(comp_obj.max()) + 1
    obj_size = np.bincount(comp_obj, weights=comp_size, minlength=n_obj)
    present = np.flatnonzero(obj_size)
    obj_counts = np.zeros(n_obj, np.int64)
    obj_dens = None if density is None else np.asarray(density, dtype=np.float64)[present]
    obj_counts[present] = allocate_seeds(obj_size[present], n_superpixels, obj_dens)
    counts = np.zeros(n, np.int64)
    by_size = np.lexsort((np.arange(n), -comp_size, comp_obj))  # per object, largest first
    bounds = np.searchsorted(comp_obj[by_size], np.arange(n_obj + 1))
    for o in present:
        comps = by_size[bounds[o]:bounds[o + 1]][:obj_counts[o]]
        counts[comps] = allocate_seeds(comp_size[comps], int(obj_counts[o]))
    return counts


def candidate_group_targets(counts: np.ndarray, comp_size: np.ndarray, comp_obj: np.ndarray, n_obj: int
                            ) -> np.ndarray:
    """Candidate group of each object piece (C,) int64: itself when it has seeds (``counts`` > 0), else the largest
    seeded piece of its object (ties: the lowest piece index; -1 when its object has no seeded piece). Inputs are
    per piece: ``counts`` seeds, ``comp_size`` pixels, ``comp_obj`` object id (< ``n_obj``). Shared by the CPU and
    device object seedings."""
    n_comp = len(counts)
    target = np.arange(n_comp)
    by_size = np.lexsort((np.arange(n_comp), -comp_size, comp_obj))
    seeded_sorted = by_size[counts[by_size] > 0]
    largest = np.full(n_obj, -1, np.int64)
    largest[comp_obj[seeded_sorted[::-1]]] = seeded_sorted[::-1]  # the first (largest) seeded one per object wins
    unseeded = counts == 0
    target[unseeded] = largest[comp_obj[unseeded]]
    return target


def object_seeds(partition: np.ndarray, n_superpixels: int, density: np.ndarray | None = None,
                 kmeans_iterations: int = 5, seed: int = 0) -> Seeds:
    """Seeds inside the objects of a prior partition (H, W) int32 (object ids ≥ 0, -1 = uncertain).

    ``density``: optional (n_objects,) factors indexed by object id (attention / user-driven modes).
    Seeds are allocated to the 4-connected components of the objects (:func:`allocate_component_seeds`), placed on
    each component's k-means sample (:func:`sample_pixels`) and refined by k-means on that sample inside their
    component; ``obj`` holds the object (not the component) of each seed; ``init_labels`` the sample pixels' seeds.
    """
    rng = np.random.default_rng(seed)
    h, w = partition.shape
    n_obj = int(partition.max()) + 1 if partition.size and partition.max() >= 0 else 0
    if n_obj == 0:
        raise ValueError("the prior partition has no object (every pixel is -1)")
    runs = object_component_runs(partition)
    comp_obj, comp_size = runs.comp_obj, runs.comp_size
    counts = allocate_component_seeds(
        comp_obj, comp_size, n_superpixels, density,
        groups=lambda: bridge_groups(runs.comp_map(np.arange(-1, runs.n_components, dtype=np.int64)), comp_obj,
                                     (h, w)))
    n_comp = len(comp_size)
    total = int(counts.sum())
    pix, point_comp = sample_pixels(runs, sample_stride(int(comp_size.sum()), total), counts)
    coords = np.stack([pix // w, pix % w], 1).astype(np.float64)
    sample_size = np.bincount(point_comp, minlength=n_comp)
    starts = np.concatenate([[0], np.cumsum(sample_size)])
    seeded = np.flatnonzero(counts)
    init_yx = [_initial_positions(coords[starts[c]:starts[c + 1]], int(counts[c]), rng) for c in seeded]
    seed_comp = np.repeat(seeded, counts[seeded])
    # k-means for all components at once on their samples: each sample pixel goes to the nearest seed of its own
    # component (pixels of a component without a seed start nowhere, like uncertain pixels)
    has_seed = counts[point_comp] > 0
    step = math.sqrt(int(comp_size.sum()) / max(total, 1))
    yx, assign = kmeans_yx(coords[has_seed], np.concatenate(init_yx), kmeans_iterations, seed_comp,
                           point_comp[has_seed], step)
    init = np.full(h * w, -1, np.int32)
    init[pix[has_seed]] = assign
    target = candidate_group_targets(counts, comp_size, comp_obj, n_obj)
    comp_map = runs.comp_map(np.concatenate([[-1], target]).astype(np.int32)).reshape(h, w)
    return Seeds(yx, comp_obj[seed_comp].astype(np.int32), init, component=seed_comp.astype(np.int32),
                 component_map=comp_map)
