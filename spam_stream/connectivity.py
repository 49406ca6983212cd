"""Step 5 — connectivity: every superpixel becomes one 4-connected region that stays inside one prior object.

Each superpixel keeps its largest 4-connected component. Other components become superpixels of their own when they
hold at least ``min_size`` pixels; smaller ones merge into an adjacent region of the same prior object (the one they
share the longest border with), and a fragment made only of uncertain pixels (-1) may merge into any neighbour. A
fragment with no compatible neighbour stays a superpixel of its own, so the prior is never crossed. Fragments merge
from the smallest up (ties: first in raster order); each picks, among its compatible neighbours in increasing
component order, the first with the longest shared border; output labels are numbered in the raster order of the
component that names them.

:func:`enforce_connectivity` does this in numba: one union-find labelling pass over the pixels, the border lengths of
the small fragments only, and the merges as a union-find over fragment adjacency.
:func:`enforce_connectivity_reference` is the plain numpy/scikit-image twin it is tested against (equal labels).
"""
from __future__ import annotations

import numba
import numpy as np
from skimage.measure import label as connected_components


def _region_objects(comp: np.ndarray, partition: np.ndarray, n: int) -> np.ndarray:
    """Prior object of each component: its (unique) object id ≥ 0, or -1 if it holds only uncertain pixels."""
    obj = np.full(n, -1, np.int64)
    known = partition.ravel() >= 0
    obj[comp.ravel()[known]] = partition.ravel()[known]
    return obj


def _adjacency(comp: np.ndarray):
    """Pairs (a, b, shared border length) of 4-adjacent components, both directions."""
    pairs = [np.stack([comp[:, :-1].ravel(), comp[:, 1:].ravel()], 1),
             np.stack([comp[:-1, :].ravel(), comp[1:, :].ravel()], 1)]
    pairs = np.concatenate(pairs)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    return uniq, counts


def enforce_connectivity_reference(labels: np.ndarray, partition: np.ndarray | None = None,
                                   min_size: int = 1) -> np.ndarray:
    """Reference twin of :func:`enforce_connectivity` (scikit-image labelling, a Python loop over fragments).

    Args:
        labels: (H, W) integer superpixel labels (any ids; -1 is treated as a label of its own).
        partition: (H, W) int32 prior object ids (-1 = uncertain), or None for no prior.
        min_size: fragments smaller than this merge into a neighbour.
    Returns:
        (H, W) int32 labels 0..K'-1, each one 4-connected region.
    """
    comp = connected_components(labels.astype(np.int64) + 1, background=-1, connectivity=1) - 1  # 0..C-1
    n = int(comp.max()) + 1
    sizes = np.bincount(comp.ravel(), minlength=n)
    sp = np.zeros(n, np.int64)
    sp[comp.ravel()] = labels.ravel()
    # the largest component of each superpixel keeps it
    order = np.lexsort((-sizes, sp))
    first = np.ones(n, bool)
    first[1:] = sp[order[1:]] != sp[order[:-1]]
    kept = np.zeros(n, bool)
    kept[order[first]] = True
    small = ~kept & (sizes < min_size)
    part = np.zeros(labels.shape, np.int64) if partition is None else partition
    obj = _region_objects(comp, part, n)

    parent = np.arange(n)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if small.any():
        adj, border = _adjacency(comp)
        starts = np.searchsorted(adj[:, 0], np.arange(n + 1))
        group_obj = obj.copy()
        for c in np.flatnonzero(small)[np.argsort(sizes[small], kind="stable")]:
            nb, length = adj[starts[c]:starts[c + 1], 1], border[starts[c]:starts[c + 1]]
            root_c = find(c)
            best, best_len = -1, 0
            for b, l in zip(nb, length):
                rb = find(b)
                if rb == root_c:
                    continue
                oc, ob = group_obj[root_c], group_obj[rb]
                if oc >= 0 and ob >= 0 and oc != ob:
                    continue
                if l > best_len:
                    best, best_len = rb, l
            if best >= 0:
                parent[root_c] = best
                group_obj[best] = max(group_obj[best], group_obj[root_c])
    roots = np.array([find(a) for a in range(n)])
    # a group is named after its kept component when it has one, else after its root
    name = roots.copy()
    name[roots[kept]] = np.flatnonzero(kept)
    final = name[roots]
    _, out = np.unique(final[comp], return_inverse=True)
    return out.reshape(labels.shape).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------------
# numba implementation


@numba.njit(inline="always")
def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:  # path compression
        nxt = parent[a]
        parent[a] = root
        a = nxt
    return root


@numba.njit(cache=True)
def _components(labels, partition, has_partition):
    """4-connected components of equal labels, numbered 0..C-1 in the raster order of their first pixel (as
    ``skimage.measure.label`` numbers them).

    Returns comp (H*W,) int32, and per component: size (C,) int64, its label (C,) int64, its prior object (C,) int64
    (the last known object id in raster order, -1 when all its pixels are uncertain; 0 for all without a prior).
    """
    h, w = labels.shape
    parent = np.empty(h * w, np.int32)
    n = 0  # number of sets
    # union-find whose root is the smallest pixel index of the set, so parent[p] < p for every non-root p
    for i in range(h):
        for j in range(w):
            p = i * w + j
            v = labels[i, j]
            left = j > 0 and labels[i, j - 1] == v
            up = i > 0 and labels[i - 1, j] == v
            if left and up:
                if labels[i - 1, j - 1] == v:  # left and up are already joined through the corner
                    parent[p] = parent[p - 1]
                else:
                    ra = _find(parent, p - 1)
                    rb = _find(parent, p - w)
                    if ra != rb:
                        n -= 1
                    if ra < rb:
                        parent[rb] = ra
                        parent[p] = ra
                    else:
                        parent[ra] = rb
                        parent[p] = rb
            elif left:
                parent[p] = parent[p - 1]
            elif up:
                parent[p] = parent[p - w]
            else:
                parent[p] = p
                n += 1
    # in place: a root gets the next id; any other pixel copies the (already rewritten) id of its parent, whose
    # index is smaller and whose id is by induction that of the root
    size = np.zeros(n, np.int64)
    sp = np.empty(n, np.int64)
    obj = np.full(n, -1 if has_partition else 0, np.int64)
    nxt = 0
    for i in range(h):
        for j in range(w):
            p = i * w + j
            q = parent[p]
            if q == p:
                c = nxt
                nxt += 1
                sp[c] = labels[i, j]
            else:
                c = parent[q]
            parent[p] = c
            size[c] += 1
            if has_partition and partition[i, j] >= 0:
                obj[c] = partition[i, j]
    return parent, size, sp, obj


@numba.njit(inline="always")
def merge_into_best(parent, group_obj, c, neighbour, length, j0, j1):
    """The merge rule, shared by every implementation: fragment ``c``'s group joins the group of the first of its
    neighbours ``neighbour[j0:j1]`` (increasing component ids; ``length``: shared border in pixel pairs) with the
    longest border among those whose prior object is compatible (the same object, or either side only uncertain
    pixels); no compatible neighbour: it stays alone. ``parent`` (union-find) and ``group_obj`` (each root's object,
    -1 = only uncertain pixels) are updated in place."""
    root_c = _find(parent, c)
    best, best_len = -1, 0
    for j in range(j0, j1):
        rb = _find(parent, neighbour[j])
        if rb == root_c:
            continue
        oc, ob = group_obj[root_c], group_obj[rb]
        if oc >= 0 and ob >= 0 and oc != ob:
            continue
        if length[j] > best_len:
            best, best_len = rb, length[j]
    if best >= 0:
        parent[root_c] = best
        group_obj[best] = max(group_obj[best], group_obj[root_c])


@numba.njit(cache=True)
def _merge_small(comp, h, w, size, obj, small, order):
    """Union-find merges of the small fragments, in ``order``; returns each component's root (C,) int64.

    Only the pixels of small fragments are visited after one pass that lists them, grouped by fragment."""
    n = size.shape[0]
    start = np.zeros(n + 1, np.int64)
    for c in range(n):
        start[c + 1] = start[c] + (size[c] if small[c] else 0)
    pix = np.empty(start[n], np.int64)
    fill = start[:n].copy()
    for p in range(h * w):
        c = comp[p]
        if small[c]:
            pix[fill[c]] = p
            fill[c] += 1
    parent = np.arange(n)
    group_obj = obj.copy()
    nb = np.empty(4 * (start[n] + 1), np.int64)
    nb_id = np.empty_like(nb)
    nb_len = np.empty_like(nb)
    for c in order:
        # neighbouring components across each border pixel pair (one entry per pair), sorted: a run per neighbour
        m = 0
        for k in range(start[c], start[c + 1]):
            p = pix[k]
            i, j = p // w, p % w
            if j > 0 and comp[p - 1] != c:
                nb[m] = comp[p - 1]
                m += 1
            if j + 1 < w and comp[p + 1] != c:
                nb[m] = comp[p + 1]
                m += 1
            if i > 0 and comp[p - w] != c:
                nb[m] = comp[p - w]
                m += 1
            if i + 1 < h and comp[p + w] != c:
                nb[m] = comp[p + w]
                m += 1
        nbs = np.sort(nb[:m])
        u = 0  # runs of equal ids → (neighbour, shared border length), in increasing id order
        k = 0
        while k < m:
            run = 1
            while k + run < m and nbs[k + run] == nbs[k]:
                run += 1
            nb_id[u], nb_len[u] = nbs[k], run
            u += 1
            k += run
        merge_into_best(parent, group_obj, c, nb_id, nb_len, 0, u)
    for c in range(n):
        parent[c] = _find(parent, c)
    return parent


@numba.njit(cache=True)
def _relabel(comp, out_of_comp, out):
    # one gather, memory-bound: sequential (threads cost more than they save on a loaded 2-core machine)
    for p in range(comp.shape[0]):
        out[p] = out_of_comp[comp[p]]


def enforce_connectivity(labels: np.ndarray, partition: np.ndarray | None = None, min_size: int = 1,
                         return_source: bool = False):
    """Make every superpixel 4-connected without crossing the prior.

    Args:
        labels: (H, W) integer superpixel labels (any ids; -1 is treated as a label of its own).
        partition: (H, W) integer prior object ids (-1 = uncertain), or None for no prior.
        min_size: fragments smaller than this merge into a neighbour.
        return_source: also return, per output superpixel, the input label it keeps.
    Returns:
        (H, W) int32 labels 0..K'-1, each one 4-connected region — equal to
        :func:`enforce_connectivity_reference`. With ``return_source``: ``(labels, source)``, source (K',) int64 the
        input label whose largest component the superpixel holds, or -1 for a fragment that became a superpixel of
        its own (video keeps ids through it).
    """
    labels = np.asarray(labels)
    if labels.dtype not in (np.int32, np.int64):
        labels = labels.astype(np.int64)
    labels = np.ascontiguousarray(labels)
    h, w = labels.shape
    has_partition = partition is not None
    part = np.ascontiguousarray(partition) if has_partition else np.zeros((1, 1), np.int32)
    if part.dtype not in (np.int32, np.int64):
        part = part.astype(np.int64)
    comp, size, sp, obj = _components(labels, part, has_partition)
    n = size.shape[0]
    # the largest component of each label keeps it (ties: the first in raster order)
    order = np.lexsort((-size, sp))
    first = np.ones(n, bool)
    first[1:] = sp[order[1:]] != sp[order[:-1]]
    kept = np.zeros(n, bool)
    kept[order[first]] = True
    small = ~kept & (size < min_size)
    if small.any():
        small_ids = np.flatnonzero(small)
        merge_order = small_ids[np.argsort(size[small_ids], kind="stable")]
        root = _merge_small(comp, h, w, size, obj, small, merge_order)
    else:
        root = np.arange(n)
    is_root = root == np.arange(n)
    rank = np.cumsum(is_root) - 1  # output ids in the order of the naming (root) component
    out_of_comp = rank[root].astype(np.int32)
    out = np.empty(h * w, np.int32)
    _relabel(comp, out_of_comp, out)
    out = out.reshape(h, w)
    if not return_source:
        return out
    roots = np.flatnonzero(is_root)
    return out, np.where(kept[roots], sp[roots], -1).astype(np.int64)
