"""CPU hard clustering in the cell layout: a grid cell's pixels share its 9 candidates, so no per-pixel table.

The twin of :func:`.reference.hard_converge` for grid candidates (labels and centroids equal to the reference's, bit
for bit, like :mod:`.cpu`), written the way fast SLIC implementations are: the pixels are visited cell row by cell
row, and inside a cell row one image row at a time in runs of :data:`XC` pixels. For such a run the centroids of
each of the 9 candidate slots are first laid out *per pixel column* (``cexp[j, d, x]``: slot j's centroid for the
cell of column x, +inf for an empty slot or one of another object), once per cell row; every image row of the cell
row then reads them as plain arrays. The distance, argmin and label loops are thus straight loops over x that LLVM
vectorises (8 float32 lanes) without any gather, any per-pixel candidate table (the table layout's 36 bytes per
pixel, and the block plan :mod:`.cpu` builds per candidate set: 0.19 s at 1080p) or any hand-written vector code.

* Distances are accumulated channel by channel, d = 0..D-1, in float32 with separate sub/mul/add (no fast-math),
  like the reference; the argmin keeps the lowest slot on ties (strict ``<`` in slot order) and gives -1 to a
  pixel whose slots are all empty (+inf). D = 5 has its own loop body (every channel in registers); any other D
  accumulates into a small scratch row.
* Centroid sums are made in the same pass: along an image row the labels come in runs (a superpixel is ~20-30
  pixels wide), each run's features are summed in float64 and added once to the chunk's (K, D) sums.
* Cell rows are split into a fixed number of chunks (not the thread count), each with its own sums added in chunk
  order, so results do not depend on the numba thread budget.

Used by :func:`.cpu.hard_converge` for

* grid candidates whose cells each hold pixels of one prior object (every grid layout spam-stream makes: the plain
  grid, and a batch's tiles): a cell's 9 neighbours, emptied where they belong to another object;
* candidates given in their compact form (``Candidates.rows`` / ``pixel_row`` / ``block_y`` / ``block_x``, one
  row per (block, object) of a separable block grid: what :func:`spam_stream.candidates.object_candidates` makes for
  object seeds, and :mod:`spam_stream.tiling` for a tile's cells): a block's most
  common row is laid out for it, and its pixels of another object (the blocks an object boundary crosses) are
  *exceptions*, listed per image row and assigned from their own row by the scalar rule after the vector loop.

Other layouts (an explicit table alone) take :mod:`.cpu`'s block path.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .candidates import N_SLOTS, Candidates
from .threads import apply_threads, run_with_budget

INF = np.float32(np.inf)
XC = 128  # pixels per run: 9 slots x 5 channels x 128 x 4 B = 23 KB of laid-out centroids, in L1 beside the rows
FAST_DIMS = (5,)
"""The feature counts for which :func:`.cpu.hard_converge` takes this layout: D = 5 has its own loop body, every
channel in registers. For other D (the bundled encoder's 20) the channel-by-channel scratch loop measured 2-3x
slower than :mod:`.cpu`'s block path at 1080p (1.1 s vs 0.34-0.57 s for 10 rounds), so they keep that path until
they get a loop body of their own; the generic loop stays tested against the reference."""
SUM_BYTES = 64 << 20  # at most this much memory for the chunks' float64 partial sums


@njit(inline="always", error_model="numpy")
def _argmin5(f0a, f1a, f2a, f3a, f4a, cexp, cid, lab, n):
    """lab[x] = the nearest of the 9 laid-out candidates of pixel x < n (D = 5, every channel in registers).

    ``cexp`` is (9·5, XC) and ``cid`` (9, XC): indexed [constant row, x] with x from ``range(n)``, so LLVM knows
    every index is non-negative and drops numba's negative-index wraparound (with flat ``cexp[o + x]`` indices it
    could not, and loaded the laid-out centroids lane by lane: 4x slower)."""
    for x in range(n):
        f0 = f0a[x]
        f1 = f1a[x]
        f2 = f2a[x]
        f3 = f3a[x]
        f4 = f4a[x]
        bd = INF
        bl = np.int32(-1)
        for j in range(N_SLOTS):
            d0 = f0 - cexp[5 * j, x]
            d1 = f1 - cexp[5 * j + 1, x]
            d2 = f2 - cexp[5 * j + 2, x]
            d3 = f3 - cexp[5 * j + 3, x]
            d4 = f4 - cexp[5 * j + 4, x]
            a = d0 * d0
            a = a + d1 * d1
            a = a + d2 * d2
            a = a + d3 * d3
            a = a + d4 * d4
            m = a < bd
            bd = min(a, bd)
            bl = cid[j, x] if m else bl
        lab[x] = bl


@njit(inline="always", error_model="numpy")
def _argmin_any(fT, n_cols, base, d_count, cexp, cid, lab, n, acc, best):
    """:func:`_argmin5` for any D: each slot's distances accumulated channel by channel into ``acc``."""
    for x in range(n):
        best[x] = INF
        lab[x] = -1
    for j in range(N_SLOTS):
        for x in range(n):
            acc[x] = np.float32(0.0)
        for d in range(d_count):
            fa = fT[d * n_cols + base:d * n_cols + base + n]
            ce = cexp[j * d_count + d]
            for x in range(n):
                diff = fa[x] - ce[x]
                acc[x] = acc[x] + diff * diff
        ci = cid[j]
        for x in range(n):
            a = acc[x]
            b = best[x]
            m = a < b
            best[x] = min(a, b)
            lab[x] = ci[x] if m else lab[x]


@njit(inline="always")
def _flush(sums, counts, k, run, d_count, cnt):
    if k >= 0:
        counts[k] += cnt
        for d in range(d_count):
            sums[k, d] += run[d]
    for d in range(d_count):
        run[d] = 0.0  # also after a run of unassigned pixels (-1), whose features go nowhere


@njit(inline="always")
def _flush5(sums, counts, k, cnt, r0, r1, r2, r3, r4):
    if k >= 0:
        counts[k] += cnt
        sums[k, 0] += r0
        sums[k, 1] += r1
        sums[k, 2] += r2
        sums[k, 3] += r3
        sums[k, 4] += r4


@njit(inline="always")
def _accumulate5(f0a, f1a, f2a, f3a, f4a, lab, n, sums, counts):
    """D = 5: the runs of one label along a row summed in float64 registers, added once per run."""
    cur = lab[0]
    cnt = 0
    r0 = r1 = r2 = r3 = r4 = 0.0
    for x in range(n):
        k = lab[x]
        if k != cur:
            _flush5(sums, counts, cur, cnt, r0, r1, r2, r3, r4)
            cur = k
            cnt = 0
            r0 = r1 = r2 = r3 = r4 = 0.0
        cnt += 1
        r0 += f0a[x]
        r1 += f1a[x]
        r2 += f2a[x]
        r3 += f3a[x]
        r4 += f4a[x]
    _flush5(sums, counts, cur, cnt, r0, r1, r2, r3, r4)


@njit(inline="always")
def _fix_exceptions(fT, n_cols, y, width, x0, n, c, lab, exc_start, exc_x, exc_row, rows, pix_obj, sp_obj):
    """Pixels of image row y in [x0, x0 + n) whose candidates are not their block's laid-out ones (another object
    in the block): assigned from their own row, the reference's scalar rule (same float32 order, lowest slot wins
    ties, -1 when no slot is valid)."""
    d_count = c.shape[1]
    for e in range(exc_start[y], exc_start[y + 1]):
        x = exc_x[e]
        if x < x0 or x >= x0 + n:
            continue
        p = y * width + x
        po = pix_obj[p]
        q = exc_row[e]
        bd = INF
        bl = np.int32(-1)
        for s in range(N_SLOTS):
            k = rows[q, s]
            if k < 0 or (po >= 0 and sp_obj[k] != po):
                continue
            a = np.float32(0.0)
            for d in range(d_count):
                diff = fT[d * n_cols + p] - c[k, d]
                a = a + diff * diff
            if a < bd:
                bd = a
                bl = k
        lab[x - x0] = bl


@njit(inline="always")
def _pass_chunk(t, n_chunks, fT, n_cols, width, ybound, xblock, rowtab, c, labels, accumulate, sums, counts,
                exc_start, exc_x, exc_row, rows, pix_obj, sp_obj, stride, phases, rem):
    """Assign the cell rows of chunk t (and add their pixels' features into sums / counts when accumulating);
    only the image rows y with phases[y] == rem when stride > 1. Returns the number of pixels whose label
    changed."""
    d_count = c.shape[1]
    n_brow = ybound.shape[0] - 1
    lab = np.empty(XC, np.int32)
    acc = np.empty(XC, np.float32)
    best = np.empty(XC, np.float32)
    cexp = np.empty((N_SLOTS * d_count, XC), np.float32)
    cid = np.empty((N_SLOTS, XC), np.int32)
    run = np.zeros(d_count, np.float64)
    changed = 0
    for br in range(t * n_brow // n_chunks, (t + 1) * n_brow // n_chunks):
        y0, y1 = ybound[br], ybound[br + 1]
        for x0 in range(0, width, XC):
            n = min(XC, width - x0)
            xs = 0
            live = False  # any candidate in this run's cells (none: e.g. outside a mask, every pixel is -1)
            while xs < n:  # lay out the slots' centroids per pixel column, once per cell row: cell by cell,
                bx = xblock[x0 + xs]  # each value filled along the cell's columns (a vector fill, no gather)
                xe = xs + 1
                while xe < n and xblock[x0 + xe] == bx:
                    xe += 1
                for j in range(N_SLOTS):
                    k = rowtab[br, bx, j]
                    live |= k >= 0
                    ci = cid[j]
                    for x in range(xs, xe):
                        ci[x] = k
                    for d in range(d_count):
                        v = INF if k < 0 else c[k, d]
                        ce = cexp[j * d_count + d]
                        for x in range(xs, xe):
                            ce[x] = v
                xs = xe
            for y in range(y0, y1):
                if stride > 1 and phases[y] != rem:
                    continue
                base = y * width + x0
                if d_count == 5:
                    f0a = fT[base:base + n]
                    f1a = fT[n_cols + base:n_cols + base + n]
                    f2a = fT[2 * n_cols + base:2 * n_cols + base + n]
                    f3a = fT[3 * n_cols + base:3 * n_cols + base + n]
                    f4a = fT[4 * n_cols + base:4 * n_cols + base + n]
                    if live:
                        _argmin5(f0a, f1a, f2a, f3a, f4a, cexp, cid, lab, n)
                    else:  # what the argmin gives when every slot is empty (+inf), without the distances
                        lab[:n] = -1
                    if exc_start[y + 1] > exc_start[y]:
                        _fix_exceptions(fT, n_cols, y, width, x0, n, c, lab, exc_start, exc_x, exc_row, rows,
                                        pix_obj, sp_obj)
                    if accumulate:
                        _accumulate5(f0a, f1a, f2a, f3a, f4a, lab, n, sums, counts)
                else:
                    if live:
                        _argmin_any(fT, n_cols, base, d_count, cexp, cid, lab, n, acc, best)
                    else:
                        lab[:n] = -1
                    if exc_start[y + 1] > exc_start[y]:
                        _fix_exceptions(fT, n_cols, y, width, x0, n, c, lab, exc_start, exc_x, exc_row, rows,
                                        pix_obj, sp_obj)
                lrow = labels[base:base + n]
                for x in range(n):
                    changed += lrow[x] != lab[x]
                    lrow[x] = lab[x]
                if accumulate and d_count != 5:  # runs of one label along the row: float64, added once per run
                    cur = lab[0]
                    cnt = 0
                    for x in range(n):
                        k = lab[x]
                        if k != cur:
                            _flush(sums, counts, cur, run, d_count, cnt)
                            cur = k
                            cnt = 0
                        cnt += 1
                        for d in range(d_count):
                            run[d] += fT[d * n_cols + base + x]
                    _flush(sums, counts, cur, run, d_count, cnt)
                    for d in range(d_count):
                        run[d] = 0.0
    return changed


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _cell_loop(fT, n_cols, width, ybound, xblock, rowtab, c, labels, n_iter, n_chunks, max_changed, compare_first,
               stride, phases, exc_start, exc_x, exc_row, rows, pix_obj, sp_obj, budget):
    """At most ``n_iter`` rounds of (assign + centroid sums, new centroids; ``c`` updated in place), then a final
    assignment, in one call — the rounds and the convergence rule of :func:`.cpu._hard_loop`. Returns the rounds
    run. ``labels`` (≥ H·W,) int32: -1 before a cold start, the labels to compare the first round with when
    ``compare_first``. ``budget``: the live thread count read before every pass (:mod:`.threads`; 0: leave it).

    ``stride`` > 1 (row subsampling, :func:`.reference.hard_converge`): round r assigns and sums only the image rows
    y with phases[y] == r % stride (phases (H,) int64); ``max_changed`` (stride,) int64 is the limit of a round by r % stride, and a converged
    round is followed by the final full assignment like the last one."""
    k_count, d_count = c.shape
    sums = np.zeros((n_chunks, k_count, d_count), np.float64)
    counts = np.zeros((n_chunks, k_count), np.int64)
    n_changed = np.zeros(n_chunks, np.int64)
    it = 0
    applied = 0  # the budget last applied
    final = n_iter <= 0
    while True:
        accumulate = not final
        if budget[0] > 0 and budget[0] != applied:  # (a budget that changed: switch in object mode, see threads)
            applied = budget[0]
            with numba.objmode():
                apply_threads(applied)
        for t in prange(n_chunks):
            if accumulate:
                sums[t] = 0.0
                counts[t] = 0
            n_changed[t] = _pass_chunk(t, n_chunks, fT, n_cols, width, ybound, xblock, rowtab, c, labels,
                                       accumulate, sums[t], counts[t], exc_start, exc_x, exc_row, rows, pix_obj,
                                       sp_obj, stride if accumulate else 1, phases, it % stride)
        if final:
            return it
        if (it > 0 or compare_first) and n_changed.sum() <= max_changed[it % stride]:
            it += 1
            if stride == 1:
                return it  # converged: these labels are the nearest to c, the result
            final = True  # converged on a subsample: the full assignment to these centroids is the result
            continue
        for k in range(k_count):
            total = 0
            for t in range(n_chunks):
                total += counts[t, k]
            if total > 0:
                cnt = np.float32(total)
                for d in range(d_count):
                    s = 0.0
                    for t in range(n_chunks):
                        s += sums[t, k, d]
                    c[k, d] = np.float32(s) / cnt
        it += 1
        if it >= n_iter:
            final = True


@njit(cache=True, nogil=True)
def _cells_uniform(pix_obj, height, width, nh, nw):
    """(nh, nw) int32 prior object of every grid cell's pixels, or None when some cell holds pixels of two."""
    out = np.empty((nh, nw), np.int32)
    o0 = pix_obj[0]
    same = True
    for p in range(height * width):  # one object everywhere (no prior): a vectorised scan, no division per pixel
        same &= pix_obj[p] == o0
    if same:
        out[:] = o0
        return out
    seen = np.zeros((nh, nw), np.bool_)
    for y in range(height):
        cy = y * nh // height
        for x in range(width):
            cx = x * nw // width
            o = pix_obj[y * width + x]
            if not seen[cy, cx]:
                seen[cy, cx] = True
                out[cy, cx] = o
            elif out[cy, cx] != o:
                return None
    return out


@njit(cache=True, nogil=True)
def _block_plan(pixel_row, rows, pix_obj, sp_obj, height, width, block_y, block_x):
    """For compact candidates (one row per (block, object) of a separable block grid: block_y (H,), block_x (W,)
    non-decreasing block indices): each block's most common row laid
    out as its candidates (slots invalid for its pixels' object emptied), and the other pixels of the block as
    exceptions, listed by image row. Returns (rowtab (nby, nbx, 9) int32, exc_start (H+1,) int64, exc_x (E,) int32,
    exc_row (E,) int32)."""
    nby = block_y[height - 1] + 1
    nbx = block_x[width - 1] + 1
    ystart = np.zeros(nby + 1, np.int64)
    xstart = np.zeros(nbx + 1, np.int64)
    for y in range(height):
        ystart[block_y[y] + 1] = y + 1
    for x in range(width):
        xstart[block_x[x] + 1] = x + 1
    dom = np.empty((nby, nbx), np.int64)
    cand_q = np.empty(16, np.int64)
    cand_n = np.empty(16, np.int64)
    for by in range(nby):
        for bx in range(nbx):
            m = 0
            for y in range(ystart[by], ystart[by + 1]):
                for x in range(xstart[bx], xstart[bx + 1]):
                    q = pixel_row[y * width + x]
                    found = False
                    for i in range(m):
                        if cand_q[i] == q:
                            cand_n[i] += 1
                            found = True
                            break
                    if not found and m < 16:
                        cand_q[m] = q
                        cand_n[m] = 1
                        m += 1
            best = 0
            for i in range(1, m):
                if cand_n[i] > cand_n[best]:
                    best = i
            dom[by, bx] = cand_q[best]
    rowtab = np.full((nby, nbx, N_SLOTS), -1, np.int32)
    exc_start = np.zeros(height + 1, np.int64)
    for y in range(height):
        n_exc = 0
        for x in range(width):
            if pixel_row[y * width + x] != dom[block_y[y], block_x[x]]:
                n_exc += 1
        exc_start[y + 1] = exc_start[y] + n_exc
    exc_x = np.empty(exc_start[height], np.int32)
    exc_row = np.empty(exc_start[height], np.int32)
    filled = np.zeros((nby, nbx), np.bool_)
    for y in range(height):
        e = exc_start[y]
        for x in range(width):
            p = y * width + x
            q = pixel_row[p]
            by, bx = block_y[y], block_x[x]
            if q != dom[by, bx]:
                exc_x[e] = x
                exc_row[e] = q
                e += 1
            elif not filled[by, bx]:  # the laid-out row, with the validity rule of this object's pixels
                filled[by, bx] = True
                po = pix_obj[p]
                for s in range(N_SLOTS):
                    k = rows[q, s]
                    if k >= 0 and (po < 0 or sp_obj[k] == po):
                        rowtab[by, bx, s] = k
    return rowtab, exc_start, exc_x, exc_row


def _no_exceptions(height: int):
    return (np.zeros(height + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32),
            np.full((1, N_SLOTS), -1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.int32))


def plan(cands: Candidates):
    """(ybound (nh+1,) int64 first image row of each cell row, xblock (W,) int64 cell column of each pixel column,
    rowtab (nh, nw, 9) int32 each cell's valid candidates, -1 = empty or of another object) for grid candidates
    whose cells are each inside one prior object; None for any other layout. Cached on ``cands`` (a video's frames
    share theirs)."""
    cached = cands.__dict__.get("_cell_plan")
    if cached is not None:
        return cached[0]
    h, w = cands.height, cands.width
    result = None
    if cands.grid is None:
        if cands.rows is not None and cands.pixel_row is not None and cands.block_y is not None:
            po, so = cands.pixel_object.numpy(), cands.superpixel_object.numpy()
            rows = np.ascontiguousarray(cands.rows.numpy(), np.int32)
            block_y = np.ascontiguousarray(np.asarray(cands.block_y), np.int64)
            xblock = np.ascontiguousarray(np.asarray(cands.block_x), np.int64)
            rowtab, exc_start, exc_x, exc_row = _block_plan(cands.pixel_row.numpy(), rows, po, so, h, w, block_y,
                                                            xblock)
            ybound = np.searchsorted(block_y, np.arange(rowtab.shape[0] + 1)).astype(np.int64)
            result = (ybound, xblock, rowtab, (exc_start, exc_x, exc_row, rows, po, so))
        cands.__dict__["_cell_plan"] = (result,)
        return result
    nh, nw = cands.grid
    cell_obj = _cells_uniform(cands.pixel_object.numpy(), h, w, nh, nw)
    if cell_obj is not None:
        sp_obj = cands.superpixel_object.numpy().reshape(nh, nw)
        ybound = np.searchsorted(np.arange(h) * nh // h, np.arange(nh + 1)).astype(np.int64)
        xblock = (np.arange(w, dtype=np.int64) * nw // w)
        rowtab = np.full((nh, nw, N_SLOTS), -1, np.int32)
        cy, cx = np.meshgrid(np.arange(nh), np.arange(nw), indexing="ij")
        for s in range(N_SLOTS):  # slot s: the neighbour at offset (s // 3 - 1, s % 3 - 1), as in the grid layout
            ny, nx = cy + s // 3 - 1, cx + s % 3 - 1
            inside = (ny >= 0) & (ny < nh) & (nx >= 0) & (nx < nw)
            k = np.where(inside, ny * nw + nx, 0)
            same = (cell_obj < 0) | (sp_obj.reshape(-1)[k] == cell_obj)
            rowtab[..., s] = np.where(inside & same, k, -1)
        result = (ybound, xblock, rowtab, _no_exceptions(h))
    cands.__dict__["_cell_plan"] = (result,)
    return result


def n_chunks(n_cell_rows: int, n_superpixels: int, n_features: int) -> int:
    """Fixed work split (independent of the thread count), bounded by the partial sums' memory."""
    by_memory = SUM_BYTES // max(1, n_superpixels * (n_features + 1) * 8)
    return int(max(1, min(n_cell_rows, 8, by_memory)))


def hard_converge(f_flat, n_cols, c, cell_plan, cands: Candidates, labels, max_iter: int, max_changed,
                  compare_first: bool, stride: int = 1, phases=None) -> int:
    """Run :func:`_cell_loop` on channel-major features ``f_flat`` (D·n_cols,) float32 with centroids ``c``
    (K, D) float32 (updated in place) and ``labels`` (n_cols,) int32 (written); returns the rounds run.
    ``max_changed``: an int, or (stride,) the limit of a round by its row phase (:func:`.reference.round_limits`);
    ``phases``: (H,) int64 each image row's phase (:meth:`Candidates.row_phases`), needed when ``stride`` > 1."""
    ybound, xblock, rowtab, exceptions = cell_plan
    chunks = n_chunks(len(ybound) - 1, c.shape[0], c.shape[1])
    limits = np.broadcast_to(np.asarray(max_changed, np.int64), (int(stride),)).copy()
    phases = np.zeros(cands.height, np.int64) if phases is None else np.ascontiguousarray(phases, np.int64)
    return int(run_with_budget(_cell_loop, f_flat, n_cols, cands.width, ybound, xblock, rowtab, c, labels,
                               int(max_iter), chunks, limits, bool(compare_first), int(stride), phases,
                               *exceptions))
