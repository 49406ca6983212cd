"""Step 5 — connectivity: every superpixel becomes one 4-connected region that stays inside one prior object.

Each superpixel keeps its largest 4-connected component. Other components become superpixels of their own when they
hold at least ``min_size`` pixels; smaller ones merge into an adjacent region of the same prior object (the one they
share the longest border with), and a fragment made only of uncertain pixels (-1) may merge into any neighbour. A
fragment with no compatible neighbour stays a superpixel of its own, so the prior is never crossed.
"""
from __future__ import annotations

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


def enforce_connectivity(labels: np.ndarray, partition: np.ndarray | None = None, min_size: int = 1) -> np.ndarray:
    """Make every superpixel 4-connected without crossing the prior.

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
