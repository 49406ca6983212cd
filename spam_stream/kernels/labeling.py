"""Connected components of equal value ("label images by region"), on any torch device, with a reference twin.

:func:`label_components` numbers the 4- (or 8-) connected regions of equal value of an (H, W) integer map exactly as
``skimage.measure.label`` does: ids 1..n in the raster order of each component's first pixel, 0 for background
pixels. Implementations (same output, tested against each other):

* ``reference`` — :func:`label_components_reference`, scikit-image (the ground truth);
* ``cpu``       — :func:`label_array`, a two-pass union-find in numba (one raster pass + one relabelling pass); the
  default for CPU tensors and the one :mod:`spam_stream.aggregation` uses on numpy arrays;
* ``torch``     — :func:`label_components_torch`, whole-image torch ops (hooking of roots along the edges between
  equal neighbours + pointer jumping, no per-pixel Python loop) — the default for CUDA tensors.

The torch algorithm: every pixel starts as its own root (its flat index). A round hooks, for every edge between two
equal neighbours, the larger of their parents under the smaller (``scatter_reduce`` amin), then shortens the forest by
a fixed number of pointer jumps (``parent = parent[parent]``). Parents only decrease, so the forest has no cycle and
every component ends rooted at its smallest flat index = its first pixel in raster order; a cumulative sum over the
roots then gives skimage's ids. The rounds grow with the logarithm of the component sizes (a spiral of 4·10⁴ pixels:
8 rounds), not with their length as plain min-label propagation does. Every shape is fixed by the image (edges
between differing neighbours are loops, not dropped), so on a GPU the host waits only for the convergence check, run
once every few rounds.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

CONNECTIVITIES = (4, 8)


def _check(shape, connectivity):
    if len(shape) != 2:
        raise ValueError(f"expected an (H, W) map, got shape {tuple(shape)}")
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def label_components(values: torch.Tensor, background=None, connectivity: int = 4) -> torch.Tensor:
    """Connected regions of equal value.

    Args:
        values: (H, W) integer (or bool) tensor, any device.
        background: value whose pixels belong to no component (label 0); None: every pixel is labelled.
        connectivity: 4 (edge neighbours) or 8 (edges and corners).
    Returns:
        (H, W) int64 tensor on ``values``' device: ids 1..n in the raster order of each component's first pixel,
        0 = background — equal to ``skimage.measure.label(values, background, connectivity=1 or 2)``.
    """
    _check(values.shape, connectivity)
    if values.device.type == "cpu":
        out = label_array(values.numpy(), background, connectivity)
        return torch.from_numpy(out).long()
    return label_components_torch(values, background, connectivity)


def label_components_reference(values, background=None, connectivity: int = 4) -> np.ndarray:
    """:func:`label_components` through scikit-image: (H, W) array or tensor → (H, W) int64 numpy array."""
    from skimage.measure import label

    values = values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    _check(values.shape, connectivity)
    values = values.astype(np.int64)
    if background is None:  # a value absent from the map: every pixel is labelled
        background = int(values.min()) - 1 if values.size else -1
    return label(values, background=background, connectivity=1 if connectivity == 4 else 2).astype(np.int64)


# --- numba two-pass union-find (CPU) ---------------------------------------------------------------------------------

@njit(inline="always")
def _find(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]  # path halving (keeps parent[l] <= l)
        a = parent[a]
    return a


@njit(inline="always")
def _union(parent, a, b):
    a = _find(parent, a)
    b = _find(parent, b)
    if a < b:
        parent[b] = a
        return a
    if b < a:
        parent[a] = b
    return b


@njit(cache=True, nogil=True)
def _label_runs(values, has_background, background, eight):
    """Run-based labelling: runs of equal value per row, unions between overlapping equal runs of consecutive rows.
    Returns the runs (starts (n+1,) int32 with starts[n] = W, row_ptr (H+1,): row y's runs are row_ptr[y]..
    row_ptr[y+1]-1), each run's component id (n,) int32 (0: background), and per id the size and value."""
    h, w = values.shape
    n = 0
    for y in range(h):  # count the runs first: exact allocations (large untouched buffers cost more than a pass)
        n += 1
        for x in range(1, w):
            n += values[y, x] != values[y, x - 1]
    starts = np.empty(n + 1, np.int32)
    vals = np.empty(n + 1, values.dtype)
    parent = np.empty(n + 1, np.int64)
    row_ptr = np.zeros(h + 1, np.int64)
    n = 0
    for y in range(h):
        row_ptr[y] = n
        for x in range(w):
            v = values[y, x]
            if x == 0 or v != values[y, x - 1]:
                starts[n] = x
                vals[n] = v
                parent[n] = n
                n += 1
    row_ptr[h] = n
    starts[n] = w
    for y in range(1, h):  # merge the runs of row y with the overlapping runs of row y - 1 (two pointers)
        i, i_end = row_ptr[y - 1], row_ptr[y]
        j, j_end = row_ptr[y], row_ptr[y + 1]
        while i < i_end and j < j_end:
            a0, a1 = starts[i], (starts[i + 1] if i + 1 < i_end else w)
            b0, b1 = starts[j], (starts[j + 1] if j + 1 < j_end else w)
            if a0 < b1 and b0 < a1 and vals[i] == vals[j] and not (has_background and vals[i] == background):
                _union(parent, i, j)
            if a1 < b1:
                i += 1
            elif b1 < a1:
                j += 1
            else:
                if eight:  # both end at the same column: each touches the other row's next run at a corner
                    if j + 1 < j_end and vals[i] == vals[j + 1] and not (has_background and vals[i] == background):
                        _union(parent, i, j + 1)
                    if i + 1 < i_end and vals[i + 1] == vals[j] and not (has_background and vals[j] == background):
                        _union(parent, i + 1, j)
                i += 1
                j += 1
    # unions keep the smaller root and runs are numbered in raster order: a component's root is its first run
    final = np.zeros(n, np.int32)
    count = 0
    for r in range(n):
        if has_background and vals[r] == background:
            continue
        root = _find(parent, r)
        if root == r:
            count += 1
            final[r] = count
        else:
            final[r] = final[root]
    sizes = np.zeros(count + 1, np.int64)
    comp_values = np.zeros(count + 1, values.dtype)
    for y in range(h):
        for r in range(row_ptr[y], row_ptr[y + 1]):
            e = starts[r + 1] if r + 1 < row_ptr[y + 1] else w
            sizes[final[r]] += e - starts[r]
            comp_values[final[r]] = vals[r]
    return starts, row_ptr, final, sizes, comp_values


@njit(cache=True, nogil=True)
def fill_runs(starts, row_ptr, final, table, skip, out):
    """Write ``table[id]`` over every run of component ``id`` into ``out`` (H, W), except where it equals ``skip``
    (runs from :func:`label_runs`): one memset per run."""
    w = out.shape[1]
    for y in range(row_ptr.shape[0] - 1):
        for r in range(row_ptr[y], row_ptr[y + 1]):
            v = table[final[r]]
            if v != skip:
                e = starts[r + 1] if r + 1 < row_ptr[y + 1] else w
                out[y, starts[r]:e] = v


def label_array(values: np.ndarray, background=None, connectivity: int = 4) -> np.ndarray:
    """:func:`label_components` on a numpy (H, W) integer or bool array (numba): (H, W) int32, ids 1..n,
    0 = background."""
    return label_with_sizes(values, background, connectivity)[0]


def label_with_sizes(values: np.ndarray, background=None, connectivity: int = 4):
    """:func:`label_array` plus, per id 0..n, the component's pixel count (n+1,) int64 and its value (n+1,)
    (entry 0: the background's count / an arbitrary value), all from the same two passes."""
    starts, row_ptr, final, sizes, comp_values = label_runs(values, background, connectivity)
    out = np.empty(np.shape(values), np.int32)
    fill_runs(starts, row_ptr, final, np.arange(len(sizes), dtype=np.int32), np.int32(-1), out)
    return out, sizes, comp_values


def label_runs(values: np.ndarray, background=None, connectivity: int = 4):
    """The runs behind :func:`label_array`, for callers that write something else than ids per component:
    (starts, row_ptr, final, sizes, comp_values) — see :func:`fill_runs`."""
    values = np.asarray(values)
    _check(values.shape, connectivity)
    if values.dtype == bool:
        values = values.view(np.uint8)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"expected integer values, got {values.dtype}")
    values = np.ascontiguousarray(values)
    bg = 0 if background is None else background
    if background is not None and not np.can_cast(np.min_scalar_type(bg), values.dtype, "safe"):
        background = None  # a background value the dtype cannot hold: no pixel has it
        bg = 0
    return _label_runs(values, background is not None, values.dtype.type(bg), connectivity == 8)


# --- torch: hooking + pointer jumping (any device) -------------------------------------------------------------------

HOOK_JUMPS = 3  # pointer jumps after each hooking round (each halves the depth of every tree)
ROUNDS_PER_CHECK = 4  # hooking rounds between two convergence checks (the only host round trips)


def _edges(values: torch.Tensor, valid: torch.Tensor, connectivity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices (a, b) of every neighbour pair, b = a where the two differ or a is background (a loop,
    which hooks nothing): shapes fixed by the image alone, so no host round trip to size them."""
    h, w = values.shape
    idx = torch.arange(h * w, device=values.device).view(h, w)
    ends_a, ends_b = [], []
    shifts = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    for dy, dx in shifts:
        ya, yb = slice(0, h - dy), slice(dy, h)
        xa, xb = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        same = (values[ya, xa] == values[yb, xb]) & valid[ya, xa]
        ia = idx[ya, xa]
        ends_a.append(ia.reshape(-1))
        ends_b.append(torch.where(same, idx[yb, xb], ia).reshape(-1))
    return torch.cat(ends_a), torch.cat(ends_b)


def label_components_torch(values: torch.Tensor, background=None, connectivity: int = 4,
                           return_rounds: bool = False):
    """:func:`label_components` with torch ops only (the CUDA path; runs on CPU tensors too, for tests).

    A round hooks, along every edge, the larger of the two ends' current parents under the smaller
    (``scatter_reduce`` amin), then jumps pointers :data:`HOOK_JUMPS` times. Parents only decrease and stay inside
    their component, so the forest has no cycle and the rounds reach the fixed point where every pixel points at its
    component's smallest flat index. Convergence — every pixel at its root and both ends of every edge under one
    root — is checked once every :data:`ROUNDS_PER_CHECK` rounds (rounds past the fixed point change nothing): the
    host waits for the device ⌈rounds / 4⌉ times, not at every round and jump.

    ``return_rounds=True`` also returns the number of hooking rounds run (to check that it stays logarithmic).
    """
    _check(values.shape, connectivity)
    h, w = values.shape
    n = h * w
    valid = torch.ones_like(values, dtype=torch.bool) if background is None else values != background
    a, b = _edges(values, valid, connectivity)
    parent = torch.arange(n, device=values.device)
    rounds = 0
    while rounds <= n + ROUNDS_PER_CHECK:  # a round that does not stop lowers a parent: finitely many rounds
        for _ in range(ROUNDS_PER_CHECK):
            pa, pb = parent[a], parent[b]
            parent = parent.scatter_reduce(0, torch.maximum(pa, pb), torch.minimum(pa, pb), reduce="amin")
            for _ in range(HOOK_JUMPS):
                parent = parent[parent]
            rounds += 1
        up = parent[parent]
        if not bool((up != parent).any() | (up[a] != up[b]).any()):  # the one host round trip of the check
            break
    flat_valid = valid.reshape(-1)
    is_root = (parent == torch.arange(n, device=values.device)) & flat_valid
    ids = torch.cumsum(is_root, 0)
    out = torch.where(flat_valid, ids[parent], 0).view(h, w)
    return (out, rounds) if return_rounds else out


@njit(cache=True, nogil=True)
def _present_ids(flat, hi):
    present = np.zeros(hi + 1, np.bool_)
    for i in range(flat.shape[0]):
        v = flat[i]
        if v >= 0:
            present[v] = True
    return present


@njit(parallel=True, cache=True, nogil=True)
def _apply_ids(flat, lut, out):
    for i in prange(flat.shape[0]):
        v = flat[i]
        out[i] = lut[v] if v >= 0 else -1


def present_ids(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) bool: which of the ids 0..n-1 occur in an integer map of ids in [-1, n) (one pass, no GIL held; the
    twin: ``np.bincount(labels[labels >= 0], minlength=n) > 0``)."""
    return _present_ids(np.ascontiguousarray(labels).reshape(-1), int(n) - 1)


def apply_ids(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """int32 map of the same shape: ``lut[labels]`` where labels ≥ 0, -1 elsewhere (a parallel pass, no GIL held;
    the twin: ``np.where(labels >= 0, lut[labels], -1)``)."""
    flat = np.ascontiguousarray(labels).reshape(-1)
    out = np.empty(flat.shape[0], np.int32)
    _apply_ids(flat, np.ascontiguousarray(lut, dtype=np.int32), out)
    return out.reshape(labels.shape)


def consecutive_ids(values: np.ndarray) -> np.ndarray | None:
    """(H, W) int32: the ids ≥ 0 of an integer map renumbered 0..M-1 in increasing order, every negative value -1
    (what ``np.unique(..., return_inverse=True)`` gives, in linear time: one pass marks the ids present, one parallel
    pass looks them up); None when no id is ≥ 0. Ids above a few times the pixel count fall back to np.unique."""
    hi = int(values.max()) if values.size else -1
    if hi < 0:
        return None
    if hi > 4 * values.size + 65536:
        ids, inv = np.unique(np.where(values < 0, -1, values), return_inverse=True)
        offset = 1 if ids[0] == -1 else 0
        return (inv.reshape(values.shape) - offset).astype(np.int32)
    flat = np.ascontiguousarray(values).reshape(-1)
    present = _present_ids(flat, hi)
    lut = (np.cumsum(present, dtype=np.int64) - 1).astype(np.int32)
    out = np.empty(flat.shape[0], np.int32)
    _apply_ids(flat, lut, out)
    return out.reshape(values.shape)
