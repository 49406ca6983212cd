"""Step 5 — connectivity: every superpixel becomes one 4-connected region that stays inside one prior object.

Each superpixel keeps its largest 4-connected component — with a prior, its largest that holds pixels of an object
(a component of uncertain pixels only is kept only when the superpixel has no other): a seed placed in a small
object keeps that object's pixels even when its band pixels form a larger piece. Other components become superpixels
of their own when they
hold at least ``min_size`` pixels; smaller ones merge into an adjacent region of the same prior object (the one they
share the longest border with), and a fragment made only of uncertain pixels (-1) may merge into any neighbour. A
fragment with no compatible neighbour stays a superpixel of its own, so the prior is never crossed. Fragments merge
from the smallest up (ties: first in raster order); each picks, among its compatible neighbours in increasing
component order, the first with the longest shared border; output labels are numbered in the raster order of the
component that names them.

Bridging (with a prior): an uncertain band can cut specks off an object (a 1-px band around a thin part leaves
1–4 px islands). A small fragment left on its own — no compatible neighbour, so it would be one more superpixel —
then joins the nearest superpixel of its own object reachable through at most ``max_gap`` uncertain pixels, and
those uncertain pixels join with it (:func:`bridge_stranded`): the superpixel stays 4-connected and inside one
object, and K is held. An uncertain pixel is taken from its superpixel only when that superpixel stays connected
without it (its neighbours in that superpixel are joined around it).

:func:`enforce_connectivity` does this in numba: one union-find labelling pass over the pixels, the border lengths of
the small fragments only, and the merges as a union-find over fragment adjacency.
:func:`enforce_connectivity_reference` is the plain numpy/scikit-image twin it is tested against (equal labels).
"""
from __future__ import annotations

import numba
import numpy as np
from skimage.measure import label as connected_components

MAX_BRIDGE_GAP = 4  # uncertain pixels a bridge may cross (a 1-px band between two objects is 2 px wide)


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
                                   min_size: int = 1, max_gap: int = MAX_BRIDGE_GAP) -> np.ndarray:
    """Reference twin of :func:`enforce_connectivity` (scikit-image labelling, a Python loop over fragments).

    Args:
        labels: (H, W) integer superpixel labels (any ids; -1 is treated as a label of its own).
        partition: (H, W) int32 prior object ids (-1 = uncertain), or None for no prior.
        min_size: fragments smaller than this merge into a neighbour.
        max_gap: bridging (:func:`bridge_stranded`) through at most this many uncertain pixels; 0 turns it off.
    Returns:
        (H, W) int32 labels 0..K'-1, each one 4-connected region.
    """
    comp = connected_components(labels.astype(np.int64) + 1, background=-1, connectivity=1) - 1  # 0..C-1
    n = int(comp.max()) + 1
    sizes = np.bincount(comp.ravel(), minlength=n)
    sp = np.zeros(n, np.int64)
    sp[comp.ravel()] = labels.ravel()
    part = np.zeros(labels.shape, np.int64) if partition is None else partition
    obj = _region_objects(comp, part, n)
    # the largest component of each superpixel that holds object pixels keeps it (else its largest)
    order = np.lexsort((-sizes, obj < 0, sp))
    first = np.ones(n, bool)
    first[1:] = sp[order[1:]] != sp[order[:-1]]
    kept = np.zeros(n, bool)
    kept[order[first]] = True
    small = ~kept & (sizes < min_size)

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
    out = out.reshape(labels.shape).astype(np.int32)
    # stranded: superpixels that are fragments on their own (no kept component among the group's)
    stranded = np.ones(int(out.max()) + 1, bool)
    stranded[out.ravel()[np.isin(comp.ravel(), np.flatnonzero(kept))]] = False
    return bridge_after_merge(out, partition, stranded, stranded, min_size, max_gap)[0]


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


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True)
def _relabel(comp, out_of_comp, out):
    # one gather, memory-bound: sequential (threads cost more than they save on a loaded 2-core machine)
    for p in range(comp.shape[0]):
        out[p] = out_of_comp[comp[p]]


def enforce_connectivity(labels: np.ndarray, partition: np.ndarray | None = None, min_size: int = 1,
                         return_source: bool = False, max_gap: int = MAX_BRIDGE_GAP):
    """Make every superpixel 4-connected without crossing the prior.

    Args:
        labels: (H, W) integer superpixel labels (any ids; -1 is treated as a label of its own).
        partition: (H, W) integer prior object ids (-1 = uncertain), or None for no prior.
        min_size: fragments smaller than this merge into a neighbour.
        return_source: also return, per output superpixel, the input label it keeps.
        max_gap: bridging (:func:`bridge_stranded`) through at most this many uncertain pixels; 0 turns it off.
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
    # the largest component of each label that holds object pixels keeps it, else its largest (ties: the first in
    # raster order)
    order = np.lexsort((-size, obj < 0, sp))
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
    roots = np.flatnonzero(is_root)
    out, source = bridge_after_merge(out.reshape(h, w), part if has_partition else None, ~kept[roots],
                                     np.where(kept[roots], sp[roots], -1).astype(np.int64), min_size, max_gap)
    return (out, source) if return_source else out


def bridge_after_merge(labels: np.ndarray, partition: np.ndarray | None, stranded: np.ndarray, source: np.ndarray,
                       min_size: int, max_gap: int):
    """The last step of every connectivity implementation: :func:`bridge_stranded` on the merged labels;
    ``stranded`` (K',) bool marks the superpixels that keep no input label, ``source`` (K',) what they keep. Returns
    (labels, source)."""
    if partition is None or max_gap <= 0 or not stranded.any():
        return labels, source
    labels, kept = bridge_stranded(labels, partition, stranded, min_size, max_gap)
    return labels, source[kept]


# ---------------------------------------------------------------------------------------------------------------
# bridging stranded fragments through uncertain pixels

@numba.njit(inline="always")
def neighbour4(p, d, h, w):
    """The ``d``-th 4-neighbour (0 left, 1 right, 2 up, 3 down) of pixel ``p`` of an (h, w) image, -1 outside it."""
    i, j = p // w, p % w
    if d == 0:
        return p - 1 if j > 0 else -1
    if d == 1:
        return p + 1 if j + 1 < w else -1
    if d == 2:
        return p - w if i > 0 else -1
    return p + w if i + 1 < h else -1


@numba.njit(cache=True, nogil=True)
def _stays_connected(out, h, w, path, n_path, t, radius):
    """Whether superpixel ``t``'s pixels next to the (already relabelled) ``path`` pixels are still joined to one
    another through ``t``'s pixels inside a window of ``radius`` around the path — enough for ``t`` to stay 4-connected
    (a path of ``t`` that went through the removed pixels can go round them inside the window)."""
    i0, i1, j0, j1 = h, -1, w, -1
    for k in range(n_path):
        i, j = path[k] // w, path[k] % w
        i0, i1, j0, j1 = min(i0, i), max(i1, i), min(j0, j), max(j1, j)
    i0, i1, j0, j1 = max(i0 - radius, 0), min(i1 + radius, h - 1), max(j0 - radius, 0), min(j1 + radius, w - 1)
    ww = j1 - j0 + 1
    seen = np.zeros((i1 - i0 + 1) * ww, np.bool_)
    stack = np.empty((i1 - i0 + 1) * ww, np.int64)
    top = 0
    need = 0  # t's pixels next to the path; the fill starts from the first and must reach them all
    for k in range(n_path):
        i, j = path[k] // w, path[k] % w
        for d in range(4):
            y, x = i + (d == 3) - (d == 2), j + (d == 1) - (d == 0)
            if 0 <= y < h and 0 <= x < w and out[y * w + x] == t:
                loc = (y - i0) * ww + (x - j0)
                if not seen[loc]:
                    seen[loc] = True
                    need += 1
                    if top == 0:
                        stack[0] = loc
                        top = 1
    if need <= 1:
        return True
    reached = np.zeros((i1 - i0 + 1) * ww, np.bool_)
    found = 0
    reached[stack[0]] = True
    while top > 0:
        top -= 1
        loc = stack[top]
        if seen[loc]:
            found += 1
            if found == need:
                return True
        y, x = loc // ww + i0, loc % ww + j0
        for d in range(4):
            yy, xx = y + (d == 3) - (d == 2), x + (d == 1) - (d == 0)
            if i0 <= yy <= i1 and j0 <= xx <= j1:
                nl = (yy - i0) * ww + (xx - j0)
                if not reached[nl] and out[yy * w + xx] == t:
                    reached[nl] = True
                    stack[top] = nl
                    top += 1
    return False


@numba.njit(cache=True, nogil=True)
def _bridge(out, part, h, w, size, obj, order, pix_start, pix, max_gap):
    """Bridges the candidates in ``order`` (their pixels: ``pix[pix_start[i]:pix_start[i + 1]]``); ``out`` (H*W,)
    and ``size`` (K',) updated in place. Returns (K',) bool: superpixels left empty."""
    n = size.shape[0]
    m = order.shape[0]
    cand_index = np.full(n, -1, np.int64)
    for i in range(m):
        cand_index[order[i]] = i
    joined = np.arange(m)  # union-find over candidates: a candidate that absorbed others searches from their pixels
    stamp = np.full(h * w, -1, np.int32)
    cap = 1024
    q_pix = np.empty(cap, np.int64)
    q_prev = np.empty(cap, np.int64)  # queue entry it was reached from (-1: a pixel of the fragment)
    q_dist = np.empty(cap, np.int64)
    path = np.empty(max_gap, np.int64)
    saved = np.empty(max_gap, np.int64)
    ex_cap = 64  # uncertain pixels a candidate received as a bridge target, with that candidate's index
    ex_pix = np.empty(ex_cap, np.int64)
    ex_owner = np.empty(ex_cap, np.int64)
    n_ex = 0
    for i in range(m):
        c = order[i]
        if size[c] == 0 or joined[i] != i:
            continue
        a = obj[c]
        qt = 0
        # the fragment's pixels: its own, those of the candidates it absorbed, those it received as a target
        if cap < pix.shape[0] + n_ex:
            cap = 2 * (pix.shape[0] + n_ex)
            q_pix, q_prev, q_dist = _grow(q_pix, cap), _grow(q_prev, cap), _grow(q_dist, cap)
        for i2 in range(m):
            if _find(joined, i2) == i:
                for k in range(pix_start[i2], pix_start[i2 + 1]):
                    p = pix[k]
                    if out[p] == c and stamp[p] != c:
                        stamp[p] = c
                        q_pix[qt], q_prev[qt], q_dist[qt] = p, -1, 0
                        qt += 1
        for e in range(n_ex):
            p = ex_pix[e]
            if _find(joined, ex_owner[e]) == i and out[p] == c and stamp[p] != c:
                stamp[p] = c
                q_pix[qt], q_prev[qt], q_dist[qt] = p, -1, 0
                qt += 1
        qh = 0
        found, n_path = -1, 0
        while qh < qt and found < 0:
            p = q_pix[qh]
            for d in range(4):
                q = neighbour4(p, d, h, w)
                if q < 0 or stamp[q] == c:
                    continue
                t = out[q]
                if t == c:
                    continue
                if obj[t] == a:  # a superpixel of the same object: the bridge ends here, if it can be built
                    n_path = _build_bridge(out, h, w, q_pix, q_prev, qh, t, path, saved, max_gap)
                    if n_path >= 0:
                        found = q
                        break
                    continue
                if part[q] < 0 and q_dist[qh] < max_gap:
                    if qt == cap:
                        cap *= 2
                        q_pix, q_prev, q_dist = _grow(q_pix, cap), _grow(q_prev, cap), _grow(q_dist, cap)
                    stamp[q] = c
                    q_pix[qt], q_prev[qt], q_dist[qt] = q, qh, q_dist[qh] + 1
                    qt += 1
            qh += 1
        if found < 0:
            continue
        r = out[found]
        for k in range(n_path):
            size[saved[k]] -= 1
        size[r] += n_path + _fragment_size(q_dist, qt)
        size[c] -= _fragment_size(q_dist, qt)
        for k in range(qt):  # the fragment's pixels are the queue's distance-0 entries
            if q_dist[k] == 0:
                out[q_pix[k]] = r
        j = cand_index[r]
        if j >= 0:
            joined[i] = _find(joined, j)
            for k in range(n_path):  # r's candidate searches from these too when its turn comes
                if n_ex == ex_cap:
                    ex_cap *= 2
                    ex_pix, ex_owner = _grow(ex_pix, ex_cap), _grow(ex_owner, ex_cap)
                ex_pix[n_ex], ex_owner[n_ex] = path[k], j
                n_ex += 1
    return size == 0


@numba.njit(cache=True, nogil=True)
def _build_bridge(out, h, w, q_pix, q_prev, e, r, path, saved, max_gap):
    """Gives superpixel ``r`` the uncertain pixels of the search path that ends at queue entry ``e`` (from the
    target's side back to the fragment: ``path``, their former superpixels: ``saved``) when every superpixel they are
    taken from stays connected; returns their number, or -1 (nothing changed) when one would not."""
    n_path = 0
    while q_prev[e] >= 0:
        path[n_path] = q_pix[e]
        n_path += 1
        e = q_prev[e]
    for k in range(n_path):
        saved[k] = out[path[k]]
        out[path[k]] = r
    for k in range(n_path):
        if not _stays_connected(out, h, w, path, n_path, saved[k], 2 * max_gap + 2):
            for k2 in range(n_path):
                out[path[k2]] = saved[k2]
            return -1
    return n_path


@numba.njit(inline="always")
def _fragment_size(q_dist, qt):
    """How many queue entries are the fragment's own pixels (distance 0)."""
    n = 0
    for k in range(qt):
        if q_dist[k] == 0:
            n += 1
    return n


@numba.njit(inline="always")
def _grow(a, cap):
    b = np.empty(cap, a.dtype)
    b[:a.shape[0]] = a
    return b


def bridge_stranded(labels: np.ndarray, partition: np.ndarray, stranded: np.ndarray, min_size: int,
                    max_gap: int = MAX_BRIDGE_GAP) -> tuple[np.ndarray, np.ndarray]:
    """Joins stranded fragments to their object's superpixels through uncertain pixels (the bridging rule above).

    A candidate is a superpixel flagged in ``stranded`` (a fragment on its own), holding pixels of an object, smaller
    than ``min_size``. Smallest first (ties: lowest id), a breadth-first search from its pixels through uncertain
    pixels (scanning left, right, up, down) stops at the first superpixel of the same object; the uncertain pixels on
    the path (at most ``max_gap``) and the candidate join it. A path pixel is only taken from a superpixel that stays
    4-connected without it; when none fits, the candidate stays as it is.

    Args:
        labels: (H, W) int32 labels 0..K'-1 (every superpixel 4-connected, none crossing the prior).
        partition: (H, W) integer prior object ids, -1 = uncertain.
        stranded: (K',) bool.
        min_size, max_gap: as above.
    Returns:
        (labels, kept): (H, W) int32 labels 0..K''-1 — the ids that remain, renumbered in their order — and (K',) bool,
        which of the input superpixels remain.
    """
    h, w = labels.shape
    out = np.ascontiguousarray(labels, np.int32).reshape(-1)
    n = int(out.max()) + 1 if out.size else 0
    size = np.bincount(out, minlength=n).astype(np.int64)
    obj = _region_objects(out, np.asarray(partition).reshape(-1), n)
    cand = np.flatnonzero(np.asarray(stranded, bool) & (obj >= 0) & (size < min_size))
    if len(cand) == 0 or max_gap <= 0:
        return labels.astype(np.int32, copy=False), np.ones(n, bool)
    order = cand[np.argsort(size[cand], kind="stable")]
    # the candidates' pixels, grouped in that order
    member = np.full(n, -1, np.int64)
    member[order] = np.arange(len(order))
    at = member[out]
    px = np.flatnonzero(at >= 0)
    px = px[np.argsort(at[px], kind="stable")]
    pix_start = np.zeros(len(order) + 1, np.int64)
    np.cumsum(np.bincount(at[px], minlength=len(order)), out=pix_start[1:])
    out = out.copy()
    part = np.ascontiguousarray(partition, np.int64).reshape(-1)
    empty = _bridge(out, part, h, w, size, obj, order.astype(np.int64), pix_start, px.astype(np.int64), int(max_gap))
    kept = ~empty
    if kept.all():
        return out.reshape(h, w), kept
    new_id = (np.cumsum(kept) - 1).astype(np.int32)
    return new_id[out].reshape(h, w), kept
