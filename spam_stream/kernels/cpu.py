"""CPU fast path: fused numba loops over both cores, the default for CPU tensors.

Each pass walks the pixels once: the distances to the ≤9 candidates are computed in registers (never an
(N, 9, D) tensor), the pixel is assigned, and its features are added into per-thread centroid sums (float64) in the
same pass; the per-thread sums are added at the end of the pass. Distances are accumulated channel by channel in the
same order as the reference, so hard labels agree bit for bit.

Why numba: it compiles plain Python loops to vectorised machine code with ``prange`` threads and an on-disk cache,
needs no compiler at install time (unlike a torch C++ extension), and keeps the kernel readable next to its
reference; torch.compile cannot express the per-pixel candidate loop without materialising the gathers.

Hard assignment (``assign``, ``hard_iterations``) is vectorised ACROSS PIXELS, never across channels:

* **Blocks of 16 lanes.** Pixels are cut into blocks of ``LANES = 16`` consecutive pixels; one SIMD lane is one
  pixel (one AVX-512 register of float32). Features are transposed once per call to ``fT`` (D, N padded to a
  multiple of 16), so the 16 values of channel d of a block are one contiguous vector load.
* **Union of candidates.** Consecutive pixels mostly share their candidates (table rows are sorted; grid cells are
  ~20 px wide), so per block the distinct valid candidates of its 16 pixels (≈12 on the BSDS bench, ≤144) are
  listed once per call (``_prepare``): ``members`` (the superpixels, CSR by block) and ``prio[j, lane]`` = the
  lowest slot in which the lane holds member j as a *valid* candidate (object masking included), ``NO_SLOT`` if
  none. Distances are thus computed ≈12 times per 16 pixels instead of 9 times per pixel on one lane.
* **Per pass**, for each member j the 16 distances are accumulated channel by channel d = 0..D-1 with one vector
  ``sub, mul, add`` per channel (``_sq_dist2``: two members per call share the feature loads). Every lane performs
  exactly the scalar reference's float32 operations in the same order, and LLVM gets separate fsub/fmul/fadd
  without the ``contract`` flag, so no fma is formed: distances are bit-identical to the reference.
* **Argmin** (``_argmin_step``): a lane takes member j if its slot is valid and it is strictly closer, or exactly
  as close from a lower slot (``prio``) — the reference's "lowest slot wins ties" rule, whatever the member order.
  A lane whose best distance is +inf (no valid slot) gets -1, as in the reference.
* **Warm start + early exit** (``_sq_dist_unless_beaten``): from the second pass on, the members that won the first
  and last lane of the block in the previous pass are computed first, in full; every other member is dropped as soon
  as (checked every ``CHANNEL_GROUP`` channels) its partial distance exceeds the best so far in all of its valid
  lanes. Partial sums of squares never decrease, so a dropped member could not have won any lane, and the argmin
  is order independent: labels are unchanged, ≈ 1/3 of the channel work is skipped on the BSDS bench.
* **Centroid sums** (``_add_lane_sums``): per distinct label of the block (≈2, found from a lane bit mask), the
  masked features are added in float64 into per-chunk (K, D, 8) partial sums (lanes i and i + 8 paired); only the
  rows a chunk touched are folded and cleared at the end of the pass. Only the float64 summation order differs from
  the reference (as it already did across threads); the new centroid is float32(sum) / float32(count) like
  ``reference.new_centroids``, so centroids match the reference bit for bit.
* **One call** (``_hard_loop``): all passes and the centroid updates run inside one numba function, one parallel
  region per pass, no Python or numpy work in between.

The soft pass (training: ``associate``, ``centroid_sums_soft``, ``soft_iteration_backward``) uses the same blocks:
per block the distances to its members are one vector sub/mul/add per (member, channel) (bit-identical to the
reference's), the softmax runs per lane over the pixel's 9 slots, and the centroid sums Σq·f (float64) and the
backward's ∂f (float32, kept transposed) and ∂c (float64) are one vector op per (member, channel). The block plan is
built once per candidate set and cached on it (training reuses one grid for every sample and iteration), and the sums
of the q that ``associate`` just returned come from the same pass.

The vector bodies are small numba ``@intrinsic`` functions emitting LLVM vector IR. Written as numba loops over 16
lanes, LLVM fully unrolls them and then cannot vectorise them because it cannot prove that the scratch arrays do
not alias the features: it emits scalar ``vsubss/vmulss`` (what the earlier "16-lane" attempt hit), and runs of
identical table rows average 8 pixels, too short for LLVM's runtime-trip-count vector loops ("run-based" attempt).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import cells, reference
from .candidates import N_SLOTS, Candidates
from .threads import apply_threads, run_with_budget

INF = np.float32(np.inf)



MAX_CHUNKS = 32


def _n_chunks(n_rows: int) -> int:
    """Work split of the parallel loops. Fixed (not the thread count), so that partial sums — and so the results —
    are the same whatever the numba thread budget (the pipeline gives each stage fewer threads than a plain call)."""
    return max(1, min(n_rows, MAX_CHUNKS))


@njit(inline="always")
def _slot(p, s, width, height, nh, nw, table, use_table):
    """Superpixel index in slot s of pixel p (-1 if empty), for either layout."""
    if use_table:
        return table[p, s]
    y = p // width
    x = p - y * width
    ny = y * nh // height + s // 3 - 1
    nx = x * nw // width + s % 3 - 1
    if ny < 0 or ny >= nh or nx < 0 or nx >= nw:
        return -1
    return ny * nw + nx


@njit(inline="always")
def _pixel_distances(p, f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, idx, dist):
    """Fill idx[9] and dist[9] (inf on invalid slots) for pixel p."""
    d_count = f.shape[1]
    po = pix_obj[p]
    for s in range(N_SLOTS):
        k = _slot(p, s, width, height, nh, nw, table, use_table)
        idx[s] = k
        if k < 0 or (po >= 0 and sp_obj[k] != po):
            dist[s] = INF
            continue
        acc = np.float32(0.0)
        for d in range(d_count):
            diff = f[p, d] - c[k, d]
            acc += diff * diff
        dist[s] = acc


@njit(parallel=True, cache=True, nogil=True)
def _distances(f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, out):
    n = f.shape[0]
    for p in prange(n):
        idx = np.empty(N_SLOTS, np.int64)
        dist = np.empty(N_SLOTS, np.float32)
        _pixel_distances(p, f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, idx, dist)
        for s in range(N_SLOTS):
            out[p, s] = dist[s]


LANES = 16  # pixels per block = float32 lanes of one AVX-512 register
NO_SLOT = 127  # prio of a (member, lane) pair that is not a valid candidate of that lane
CHANNEL_GROUP = 4  # channels accumulated between two "already beaten?" checks

_F32, _F64, _I32, _I64 = ir.FloatType(), ir.DoubleType(), ir.IntType(32), ir.IntType(64)


def _vec(elem, n=LANES):
    return ir.VectorType(elem, n)


def _vec_ptr(context, builder, arr_type, arr, at, elem, n=LANES):
    """Pointer to the n-vector of ``elem`` starting at flat index ``at`` of a C-contiguous array."""
    data = context.make_array(arr_type)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [at]), _vec(elem, n).as_pointer())


def _splat(builder, x, elem):
    v = builder.insert_element(ir.Constant(_vec(elem), ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_vec(elem), ir.Undefined), ir.Constant(_vec(_I32), [0] * LANES))


def _emit_sq_dists(context, builder, sig, args, n_members):
    """dist[d_at + 16 m : +16] = Σ_{d < n_dims, in order} (feat[f_at + d·stride : +16] - cent[c_at_m + d])², m < n.

    Separate fsub, fmul, fadd without fast-math flags: LLVM may not contract them into an fma, so each lane rounds
    exactly like the scalar reference. The accumulators are allocas that LLVM keeps in registers.
    """
    dist, d_at, feat, f_at, stride, cent = args[:6]
    c_ats, n_dims = args[6:6 + n_members], args[6 + n_members]
    fdata = context.make_array(sig.args[2])(context, builder, feat).data
    cdata = context.make_array(sig.args[5])(context, builder, cent).data
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_vec(_F32), [0.0] * LANES)) for _ in range(n_members)]
    with cgutils.for_range(builder, n_dims) as loop:
        pf = builder.bitcast(builder.gep(fdata, [builder.add(f_at, builder.mul(loop.index, stride))]),
                             _vec(_F32).as_pointer())
        fv = builder.load(pf, align=4)
        for acc, c_at in zip(accs, c_ats):
            cv = builder.load(builder.gep(cdata, [builder.add(c_at, loop.index)]))
            diff = builder.fsub(fv, _splat(builder, cv, _F32))
            builder.store(builder.fadd(builder.load(acc), builder.fmul(diff, diff)), acc)
    for m, acc in enumerate(accs):
        at = builder.add(d_at, ir.Constant(_I64, m * LANES))
        builder.store(builder.load(acc), _vec_ptr(context, builder, sig.args[0], dist, at, _F32), align=4)
    return context.get_dummy_value()


@intrinsic
def _sq_dist(typingctx, dist, d_at, feat, f_at, stride, cent, c_at, n_dims):
    """Squared distances of 16 pixels (lanes) to one centroid, see :func:`_emit_sq_dists`."""
    return types.void(dist, d_at, feat, f_at, stride, cent, c_at, n_dims), \
        lambda context, builder, sig, args: _emit_sq_dists(context, builder, sig, args, 1)


@intrinsic
def _sq_dist2(typingctx, dist, d_at, feat, f_at, stride, cent, c_at0, c_at1, n_dims):
    """Squared distances of 16 pixels to two centroids at once (the feature loads are shared)."""
    return types.void(dist, d_at, feat, f_at, stride, cent, c_at0, c_at1, n_dims), \
        lambda context, builder, sig, args: _emit_sq_dists(context, builder, sig, args, 2)


@intrinsic
def _sq_dist_unless_beaten(typingctx, dist, d_at, feat, f_at, stride, cent, c_at, n_dims, prio, p_at, best_d):
    """Like :func:`_sq_dist`, but every CHANNEL_GROUP channels, stop and return True if every lane where the member
    is a valid candidate already has a partial distance > best_d. Sums of squares only grow (float32 rounding is
    monotone), so such a member cannot win any lane: skipping its remaining channels changes no label. Returns
    False (distance complete in dist) otherwise. Same float32 operations in the same order as the reference."""
    def codegen(context, builder, sig, args):
        dist, d_at, feat, f_at, stride, cent, c_at, n_dims, prio, p_at, best_d = args
        fdata = context.make_array(sig.args[2])(context, builder, feat).data
        cdata = context.make_array(sig.args[5])(context, builder, cent).data
        pr = builder.load(_vec_ptr(context, builder, sig.args[8], prio, p_at, ir.IntType(8)), align=1)
        valid = builder.icmp_signed("!=", pr, ir.Constant(_vec(ir.IntType(8)), [NO_SLOT] * LANES))
        bd = builder.load(_vec_ptr(context, builder, sig.args[10], best_d, ir.Constant(_I64, 0), _F32), align=4)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_vec(_F32), [0.0] * LANES))
        d_var = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))
        beaten = cgutils.alloca_once_value(builder, ir.Constant(ir.IntType(1), 0))
        head, body, check, done = (builder.append_basic_block(name) for name in ("head", "body", "check", "done"))
        builder.branch(head)
        builder.position_at_end(head)
        d = builder.load(d_var)
        builder.cbranch(builder.icmp_signed("<", d, n_dims), body, done)
        builder.position_at_end(body)
        fv = builder.load(builder.bitcast(builder.gep(fdata, [builder.add(f_at, builder.mul(d, stride))]),
                                          _vec(_F32).as_pointer()), align=4)
        diff = builder.fsub(fv, _splat(builder, builder.load(builder.gep(cdata, [builder.add(c_at, d)])), _F32))
        builder.store(builder.fadd(builder.load(acc), builder.fmul(diff, diff)), acc)
        d1 = builder.add(d, ir.Constant(_I64, 1))
        builder.store(d1, d_var)
        at_group_end = builder.icmp_signed("==", builder.srem(d1, ir.Constant(_I64, CHANNEL_GROUP)),
                                           ir.Constant(_I64, 0))
        builder.cbranch(at_group_end, check, head)
        builder.position_at_end(check)
        alive = builder.and_(valid, builder.not_(builder.fcmp_ordered(">", builder.load(acc), bd)))
        none = builder.icmp_unsigned("==", builder.bitcast(alive, ir.IntType(LANES)), ir.Constant(ir.IntType(LANES), 0))
        builder.store(none, beaten)
        builder.cbranch(none, done, head)
        builder.position_at_end(done)
        builder.store(builder.load(acc), _vec_ptr(context, builder, sig.args[0], dist, d_at, _F32), align=4)
        return builder.load(beaten)
    return types.boolean(dist, d_at, feat, f_at, stride, cent, c_at, n_dims, prio, p_at, best_d), codegen


@intrinsic
def _argmin_step(typingctx, dist, d_at, prio, p_at, best_d, best_p, best_j, j):
    """Per lane: take member j if its slot is valid and it is closer, or exactly as close from a lower slot."""
    def codegen(context, builder, sig, args):
        zero = ir.Constant(_I64, 0)
        a = builder.load(_vec_ptr(context, builder, sig.args[0], args[0], args[1], _F32), align=4)
        pr = builder.sext(builder.load(_vec_ptr(context, builder, sig.args[2], args[2], args[3], ir.IntType(8)),
                                       align=1), _vec(_I32))
        pbd = _vec_ptr(context, builder, sig.args[4], args[4], zero, _F32)
        pbp = _vec_ptr(context, builder, sig.args[5], args[5], zero, _I32)
        pbj = _vec_ptr(context, builder, sig.args[6], args[6], zero, _I32)
        bd, bp, bj = builder.load(pbd, align=4), builder.load(pbp, align=4), builder.load(pbj, align=4)
        valid = builder.icmp_signed("!=", pr, ir.Constant(_vec(_I32), [NO_SLOT] * LANES))
        closer = builder.fcmp_ordered("<", a, bd)
        tie = builder.and_(builder.fcmp_ordered("==", a, bd), builder.icmp_signed("<", pr, bp))
        take = builder.and_(valid, builder.or_(closer, tie))
        builder.store(builder.select(take, a, bd), pbd, align=4)
        builder.store(builder.select(take, pr, bp), pbp, align=4)
        builder.store(builder.select(take, _splat(builder, builder.trunc(args[7], _I32), _I32), bj), pbj, align=4)
        return context.get_dummy_value()
    return types.void(dist, d_at, prio, p_at, best_d, best_p, best_j, j), codegen


def _lanes_equal(context, builder, arr_type, arr, j):
    v = builder.load(_vec_ptr(context, builder, arr_type, arr, ir.Constant(_I64, 0), _I32), align=4)
    return builder.icmp_signed("==", v, _splat(builder, builder.trunc(j, _I32), _I32))


@intrinsic
def _lanes_where(typingctx, best_j, j):
    """Bit mask (int64, bit i = lane i) of the lanes with best_j == j."""
    def codegen(context, builder, sig, args):
        bits = builder.bitcast(_lanes_equal(context, builder, sig.args[0], args[0], args[1]), ir.IntType(LANES))
        return builder.zext(bits, _I64)
    return types.int64(best_j, j), codegen


@intrinsic
def _popcount(typingctx, x):
    """Number of set bits of an int64."""
    return types.int64(x), lambda context, builder, sig, args: builder.ctpop(args[0])


@intrinsic
def _lowest_bit(typingctx, x):
    """Index of the lowest set bit of a non-zero int64."""
    return types.int64(x), lambda context, builder, sig, args: builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))


@intrinsic
def _add_lane_sums(typingctx, acc, a_at, feat, f_at, stride, n_dims, lanes):
    """acc[a_at + 8d : +8] (float64) += feat[f_at + d·stride : +16] restricted to the lanes set in the bit mask
    ``lanes``, lanes i and i + 8 added pairwise, for d < n_dims."""
    def codegen(context, builder, sig, args):
        m = builder.bitcast(builder.trunc(args[6], ir.IntType(LANES)), _vec(ir.IntType(1)))
        fdata = context.make_array(sig.args[2])(context, builder, args[2]).data
        adata = context.make_array(sig.args[0])(context, builder, args[0]).data
        with cgutils.for_range(builder, args[5]) as loop:
            pf = builder.bitcast(builder.gep(fdata, [builder.add(args[3], builder.mul(loop.index, args[4]))]),
                                 _vec(_F32).as_pointer())
            v = builder.select(m, builder.load(pf, align=4), ir.Constant(_vec(_F32), [0.0] * LANES))
            halves = [builder.fpext(builder.shuffle_vector(v, v, ir.Constant(_vec(_I32, 8), list(range(h, h + 8)))),
                                    _vec(_F64, 8)) for h in (0, 8)]
            at = builder.add(args[1], builder.mul(loop.index, ir.Constant(_I64, 8)))
            pa = builder.bitcast(builder.gep(adata, [at]), _vec(_F64, 8).as_pointer())
            builder.store(builder.fadd(builder.load(pa, align=8), builder.fadd(*halves)), pa, align=8)
        return context.get_dummy_value()
    return types.void(acc, a_at, feat, f_at, stride, n_dims, lanes), codegen


@njit(parallel=True, cache=True, nogil=True)
def _prepare(n, pix_obj, sp_obj, width, height, nh, nw, table, use_table, n_chunks):
    """Once per candidate set: per block of 16 pixels (of n), its valid candidates (layout above).

    Returns start (n_blocks + 1) CSR offsets, members (int32 superpixels), prio (n_members, 16) int8.
    """
    n_blocks = (n + LANES - 1) // LANES
    n_sp = sp_obj.shape[0]
    size = np.zeros(n_blocks + 1, np.int64)
    for t in prange(n_chunks):  # count the distinct valid candidates of each block
        mark = np.full(n_sp, -1, np.int64)
        for b in range(t * n_blocks // n_chunks, (t + 1) * n_blocks // n_chunks):
            u = 0
            for p in range(b * LANES, min(n, (b + 1) * LANES)):
                po = pix_obj[p]
                for s in range(N_SLOTS):
                    k = _slot(p, s, width, height, nh, nw, table, use_table)
                    if k >= 0 and (po < 0 or sp_obj[k] == po) and mark[k] != b:
                        mark[k] = b
                        u += 1
            size[b + 1] = u
    start = np.cumsum(size)
    members = np.empty(start[-1], np.int32)
    prio = np.full((start[-1], LANES), NO_SLOT, np.int8)
    for t in prange(n_chunks):  # list them, with the lowest valid slot of each member in each lane
        mark = np.full(n_sp, -1, np.int64)
        pos = np.empty(n_sp, np.int64)
        for b in range(t * n_blocks // n_chunks, (t + 1) * n_blocks // n_chunks):
            u = start[b]
            for p in range(b * LANES, min(n, (b + 1) * LANES)):
                po = pix_obj[p]
                for s in range(N_SLOTS):
                    k = _slot(p, s, width, height, nh, nw, table, use_table)
                    if k < 0 or (po >= 0 and sp_obj[k] != po):
                        continue
                    if mark[k] != b:
                        mark[k] = b
                        pos[k] = u
                        members[u] = k
                        u += 1
                    if prio[pos[k], p - b * LANES] == NO_SLOT:
                        prio[pos[k], p - b * LANES] = s
    return start, members, prio


@njit(parallel=True, cache=True, nogil=True)
def _transpose(f, n_cols, n_chunks):
    """fT (D, n_cols) float32: the features (N, D) transposed, zero-padded to n_cols (for features that are not
    already stored channel-major, see :func:`empty_features`)."""
    n, d_count = f.shape
    fT = np.zeros((d_count, n_cols), np.float32)
    for t in prange(n_chunks):
        for p in range(t * n // n_chunks, (t + 1) * n // n_chunks):
            for d in range(d_count):
                fT[d, p] = f[p, d]
    return fT


@njit(inline="always")
def _member_index(k, members, j0, n_u):
    """Index j of superpixel k among the block's members members[j0 : j0 + n_u], -1 if absent."""
    for j in range(n_u):
        if members[j0 + j] == k:
            return j
    return -1


@njit(inline="always")
def _assign_chunk(t, n_chunks, fT, n_cols, c_flat, d_count, start, members, prio_flat, labels, dist, best_d,
                  best_p, best_j, accumulate, part, counts, touched, n_touched, n_changed, width, stride, phases,
                  rem):
    """Hard assignment of the blocks of chunk t (labels padded to n_cols). With ``accumulate``, the member
    features are added (float64) into ``part`` ((K, D, 8 lane pairs) flat, this chunk's) and the member counts
    into ``counts`` (K,); superpixels touched for the first time are appended to ``touched[:n_touched]``
    (count 0 ⇔ untouched). The pixels whose label differs from the one ``labels`` held are counted into
    ``n_changed[t]`` (the convergence test). With ``stride`` > 1 only the pixels of the image rows y with
    phases[y] == rem (``width`` pixels a row) are assigned and summed; the others keep their labels. Returns
    the new n_touched."""
    n_blocks = start.shape[0] - 1
    for b in range(t * n_blocks // n_chunks, (t + 1) * n_blocks // n_chunks):
        j0, n_u, p0 = start[b], start[b + 1] - start[b], b * LANES
        visit = (1 << LANES) - 1  # the lanes of this round's rows (row subsampling)
        if stride > 1:
            n_rows = phases.shape[0]
            ya, yb = p0 // width, (p0 + LANES - 1) // width
            if ya == yb and yb < n_rows:
                if phases[ya] != rem:
                    continue
            else:  # the block straddles two rows (or the padding after the last)
                visit = 0
                for i in range(LANES):
                    y = (p0 + i) // width
                    if y < n_rows and phases[y] == rem:
                        visit |= 1 << i
                if visit == 0:
                    continue
        best_d[:] = INF
        best_p[:] = NO_SLOT
        best_j[:] = -1
        # warm start: the members that won the first and last lane in the previous pass (labels still holds it),
        # in full; then every other member channel group by channel group, dropped once it is beaten in all of
        # its lanes (≈ 2/3 of the channel work on the BSDS bench)
        w0 = _member_index(labels[p0], members, j0, n_u)
        w1 = _member_index(labels[p0 + LANES - 1], members, j0, n_u)
        if w1 == w0:
            w1 = -1
        for j in (w0, w1):
            if j >= 0:
                _sq_dist(dist, j * LANES, fT, p0, n_cols, c_flat, members[j0 + j] * d_count, d_count)
                _argmin_step(dist, j * LANES, prio_flat, (j0 + j) * LANES, best_d, best_p, best_j, j)
        if w0 < 0 and w1 < 0:  # no warm start (first pass): all members in full, two at a time
            for j in range(0, n_u - 1, 2):
                _sq_dist2(dist, j * LANES, fT, p0, n_cols, c_flat, members[j0 + j] * d_count,
                          members[j0 + j + 1] * d_count, d_count)
            if n_u % 2:
                _sq_dist(dist, (n_u - 1) * LANES, fT, p0, n_cols, c_flat, members[j0 + n_u - 1] * d_count, d_count)
            for j in range(n_u):
                _argmin_step(dist, j * LANES, prio_flat, (j0 + j) * LANES, best_d, best_p, best_j, j)
        else:
            for j in range(n_u):
                if j != w0 and j != w1 and not _sq_dist_unless_beaten(
                        dist, j * LANES, fT, p0, n_cols, c_flat, members[j0 + j] * d_count, d_count, prio_flat,
                        (j0 + j) * LANES, best_d):
                    _argmin_step(dist, j * LANES, prio_flat, (j0 + j) * LANES, best_d, best_p, best_j, j)
        assigned = 0
        changed = 0
        for i in range(LANES):
            if not (visit >> i) & 1:  # a row of another round: its label stays, its features go nowhere
                best_j[i] = -1
                continue
            if best_d[i] == INF:  # no valid slot (or only infinite distances): -1 like the reference
                best_j[i] = -1
                new = np.int32(-1)
            else:
                new = members[j0 + best_j[i]]
                assigned |= 1 << i
            changed += labels[p0 + i] != new
            labels[p0 + i] = new
        n_changed[t] += changed
        if accumulate:
            while assigned:  # once per distinct label of the block (≈2)
                j = best_j[_lowest_bit(assigned)]
                lanes = _lanes_where(best_j, j)
                assigned &= ~lanes
                k = members[j0 + j]
                if counts[k] == 0:
                    touched[n_touched] = k
                    n_touched += 1
                counts[k] += _popcount(lanes)
                _add_lane_sums(part, k * d_count * 8, fT, p0, n_cols, d_count, lanes)
    return n_touched


@njit(parallel=True, cache=True, nogil=True)
def _hard_loop(fT, n_cols, c, start, members, prio, labels, n_iter, n_chunks, max_changed, compare_first, width,
               stride, phases, budget):
    """At most ``n_iter`` rounds of (assign + centroid sums, new centroids; c updated in place), then a final
    assignment, all in one call: one parallel region per pass, no Python in between. Returns the rounds run.

    Convergence: a round whose assignment changed at most ``max_changed`` pixels' labels (compared with the round
    before; the first round too when ``compare_first``, ``labels`` then holding the labels to compare with) ends
    the loop: its labels (the nearest centroids of c) and c are the result, no final assignment. With
    ``max_changed`` < 0 every round runs; ``max_changed`` = 0 stops only at a fixed point (the same labels give
    the same centroids), which changes nothing in the result.

    Per chunk, the float64 sums live in ``part[t]`` ((K, D, 8) lane pairs, only touched rows are ever nonzero);
    at the end of the pass the chunk folds its touched rows into ``sums[t]`` ((K, D), the 8 lane pairs added in
    order) and clears them; then, serially, the chunks' touched rows are added in chunk order and the centroids of
    the superpixels with members become float32(sum) / float32(count), the reference's new_centroids (torch
    divides the float32-cast sums and counts); a superpixel without members keeps its centroid.

    Row subsampling (``stride`` > 1, :func:`.reference.hard_converge`): round r assigns and sums the image rows
    y with phases[y] == r % stride only (phases (H,) int64); ``max_changed`` is (stride,) int64, the limit of a round by r % stride, and a round
    that converges is followed by the final full assignment.

    ``budget``: (1,) int64, this call's numba threads, read again before every pass (0: leave them): another
    thread (the executor's pool, :mod:`.threads`) raises it when a core falls idle mid-call. The chunks
    are added in chunk order whatever the threads, so the result does not depend on it.
    """
    k_count, d_count = c.shape
    c_flat = c.ravel()
    prio_flat = prio.ravel()
    part = np.zeros((n_chunks, k_count * d_count * 8), np.float64)
    sums = np.zeros((n_chunks, k_count, d_count), np.float64)
    counts = np.zeros((n_chunks, k_count), np.int64)
    touched = np.empty((n_chunks, k_count), np.int64)
    n_touched = np.zeros(n_chunks, np.int64)
    n_changed = np.zeros(n_chunks, np.int64)
    total = np.zeros((k_count, d_count), np.float64)
    total_counts = np.zeros(k_count, np.int64)
    it = 0
    applied = 0  # the budget last applied
    final = n_iter <= 0
    while True:
        accumulate = not final
        n_changed[:] = 0
        if budget[0] > 0 and budget[0] != applied:  # (a budget that changed: switch in object mode, see threads)
            applied = budget[0]
            with numba.objmode():
                apply_threads(applied)
        for t in prange(n_chunks):
            dist = np.empty(N_SLOTS * LANES * LANES, np.float32)  # (members ≤ 9 · 16, 16 lanes)
            best_d = np.empty(LANES, np.float32)
            best_p = np.empty(LANES, np.int32)
            best_j = np.empty(LANES, np.int32)
            n_t = _assign_chunk(t, n_chunks, fT, n_cols, c_flat, d_count, start, members, prio_flat, labels, dist,
                                best_d, best_p, best_j, accumulate, part[t], counts[t], touched[t], 0, n_changed,
                                width, stride if accumulate else 1, phases, it % stride)
            for i in range(n_t):  # fold this chunk's lane pairs, clear its partial sums
                k = touched[t, i]
                for d in range(d_count):
                    at = (k * d_count + d) * 8
                    acc = 0.0
                    for lane in range(8):
                        acc += part[t, at + lane]
                        part[t, at + lane] = 0.0
                    sums[t, k, d] = acc
            n_touched[t] = n_t
        if final:
            return it
        if (it > 0 or compare_first) and n_changed.sum() <= max_changed[it % stride]:
            for t in range(n_chunks):  # converged: these labels are the nearest to c, the result
                for i in range(n_touched[t]):
                    counts[t, touched[t, i]] = 0
            it += 1
            if stride == 1:
                return it
            final = True  # converged on a subsample: the full assignment to these centroids is the result
            continue
        for t in range(n_chunks):
            for i in range(n_touched[t]):
                k = touched[t, i]
                total_counts[k] += counts[t, k]
                counts[t, k] = 0
                for d in range(d_count):
                    total[k, d] += sums[t, k, d]
        for k in range(k_count):
            if total_counts[k] > 0:
                cnt = np.float32(total_counts[k])
                for d in range(d_count):
                    c[k, d] = np.float32(total[k, d]) / cnt
                    total[k, d] = 0.0
                total_counts[k] = 0
        it += 1
        if it >= n_iter:
            final = True


def _args(features, cands: Candidates):
    f = features.detach().contiguous().numpy()
    use_table = cands.table is not None
    table = cands.table.numpy() if use_table else np.zeros((1, N_SLOTS), np.int32)
    nh, nw = (1, 1) if use_table else cands.grid
    return (f, cands.pixel_object.numpy(), cands.superpixel_object.numpy(), cands.width, cands.height, nh, nw,
            table, use_table)


def masked_distances(features, centroids, cands: Candidates):
    f, po, so, w, h, nh, nw, table, use_table = _args(features, cands)
    out = np.empty((f.shape[0], N_SLOTS), np.float32)
    _distances(f, centroids.detach().contiguous().numpy(), po, so, w, h, nh, nw, table, use_table, out)
    return torch.from_numpy(out)


def assign(features, centroids, cands: Candidates):
    return hard_iterations(features, centroids, cands, 0)[0]


@njit(parallel=True, cache=True, nogil=True)
def _sums_hard(f, labels, sums, counts):
    n, d_count = f.shape
    n_chunks = sums.shape[0]
    for t in prange(n_chunks):
        for p in range(t * n // n_chunks, (t + 1) * n // n_chunks):
            k = labels[p]
            if k >= 0:
                counts[t, k] += 1.0
                for d in range(d_count):
                    sums[t, k, d] += f[p, d]


def centroid_sums_hard(features, labels, n_superpixels: int):
    f = features.detach().contiguous().numpy()
    chunks = _n_chunks(max(1, f.shape[0] // 256))
    sums = np.zeros((chunks, n_superpixels, f.shape[1]), np.float64)
    counts = np.zeros((chunks, n_superpixels), np.float64)
    _sums_hard(f, labels.contiguous().numpy().astype(np.int64), sums, counts)
    return torch.from_numpy(sums.sum(0).astype(np.float32)), torch.from_numpy(counts.sum(0).astype(np.float32))


def empty_features(height: int, width: int, channels: int, device="cpu") -> torch.Tensor:
    """An uninitialised (D, H, W) float32 feature tensor laid out for these kernels: one plane per channel, each
    padded with zeros to a multiple of 16 pixels, i.e. a (D, H, W) view of a (D, n_cols) buffer. The hard pass reads
    it in place as its (D, n_cols) lanes (:func:`_channel_rows`), instead of a transposed copy (D·N·4 bytes: 663 MB
    for a 4K frame with D=20)."""
    n = height * width
    n_cols = -(-n // LANES) * LANES
    # numpy's allocation, not torch.empty: numpy asks the kernel for transparent huge pages on large arrays
    # (madvise), so that the first touch of a fresh frame buffer takes a few hundred page faults instead of
    # ten thousands (1080p, D=5, 41 MB: 35 -> 10 ms to allocate and fill on this machine)
    buf = torch.from_numpy(np.empty((channels, n_cols), np.float32))
    buf[:, n:] = 0
    return buf[:, :n].view(channels, height, width)


@njit(cache=True, nogil=True)
def _seed_sums(planes, n_cols, n, init, k_count, d_count):
    """(sums (K, D) float32, counts (K,) int64) of the pixels p < n with init[p] >= 0, channel planes (D·n_cols,):
    each superpixel's float32 sum in pixel order — the order (and so the rounding) of torch's ``index_add`` in
    :func:`spam_stream.clustering.initial_centroids`. A run of pixels of one label is summed in registers (the same
    sequence of float32 additions), written back once."""
    sums = np.zeros((k_count, d_count), np.float32)
    counts = np.zeros(k_count, np.int64)
    acc = np.zeros(d_count, np.float32)
    cur = -1
    cnt = 0
    for p in range(n):
        k = init[p]
        if k != cur:
            if cur >= 0:
                counts[cur] += cnt
                for d in range(d_count):
                    sums[cur, d] = acc[d]
            cur = k
            cnt = 0
            if k >= 0:
                for d in range(d_count):
                    acc[d] = sums[k, d]
        if k >= 0:
            cnt += 1
            for d in range(d_count):
                acc[d] += planes[d * n_cols + p]
    if cur >= 0:
        counts[cur] += cnt
        for d in range(d_count):
            sums[cur, d] = acc[d]
    return sums, counts


def initial_centroids(features, init_labels, n_superpixels: int):
    """:func:`spam_stream.clustering.initial_centroids` (no gradient) in one numba pass over the channel planes,
    equal to it bit for bit (float32 sums in pixel order, one float32 division), without its int64 copy of the
    labels and torch's index_add over a strided view (1080p: 30 -> 3 ms). None when ``features`` is not in the
    planes layout, or some seed has no starting pixel (the caller's torch version then handles it)."""
    lanes = _channel_rows(features)
    if lanes is None or features.requires_grad:
        return None
    planes, n_cols = lanes
    init = np.ascontiguousarray(torch.as_tensor(init_labels).numpy())
    sums, counts = _seed_sums(planes, n_cols, features.shape[0], init, int(n_superpixels), features.shape[1])
    if n_superpixels and counts.min() == 0:
        return None
    return torch.from_numpy(sums / counts.astype(np.float32)[:, None])


def _channel_rows(features: torch.Tensor):
    """(flat (D·n_cols,) float32 array, n_cols) of (N, D) ``features`` stored channel-major with each channel's row
    padded to n_cols (a multiple of 16) — the hard pass's fT, shared with the tensor, no copy — or None when
    ``features`` is laid out otherwise (pixel rows, an odd stride, too short a buffer)."""
    n, d = features.shape
    n_cols = features.stride(1)
    if (features.dtype != torch.float32 or features.stride(0) != 1 or n_cols < n or n_cols % LANES
            or features.device.type != "cpu"):
        return None
    if features.untyped_storage().nbytes() // 4 - features.storage_offset() < d * n_cols:
        return None  # the last channel's padding is not there to read
    flat = torch.as_strided(features.detach(), (d * n_cols,), (1,))
    return flat.numpy(), n_cols


def hard_iterations(features, centroids, cands: Candidates, n_iter: int):
    """(labels (N,) int32, centroids (K, D)) after ``n_iter`` fused assign+accumulate passes and a final assign
    (the passes end early at a fixed point, which changes nothing)."""
    return hard_converge(features, centroids, cands, n_iter)[:2]


_GRID_PLANS: list = []
"""The block plans of the last few grid layouts (no per-pixel table), whatever Candidates object they came with:
images of one size share their grid, so a batch job's or a benchmark's next image does not build it again
(0.19-0.33 s at 1080p). Each entry: (key, pixel_object, superpixel_object, plan); the object arrays are
compared in full, so a different prior partition on the same grid never reuses a plan."""
GRID_PLANS_KEPT = 2


def _block_plan_for(cands: Candidates, n: int, chunks: int):
    """(start, members, prio) of :func:`_prepare` for ``cands``: cached on the object (a video's next frame) and,
    for grid layouts, across objects with the same grid and objects (:data:`_GRID_PLANS`)."""
    plan = cands.__dict__.get("_cpu_hard_plan")
    if plan is not None and plan[0] == (n, chunks):  # same candidates (a video's next frame): reuse
        return plan[1:]
    use_table = cands.table is not None
    po, so = cands.pixel_object.numpy(), cands.superpixel_object.numpy()
    key = None if use_table else (n, chunks, cands.height, cands.width, tuple(cands.grid))
    found = None
    if key is not None:
        for entry in _GRID_PLANS:
            if entry[0] == key and np.array_equal(entry[1], po) and np.array_equal(entry[2], so):
                found = entry[3]
                break
    if found is None:
        table = cands.table.numpy() if use_table else np.zeros((1, N_SLOTS), np.int32)
        nh, nw = (1, 1) if use_table else cands.grid
        found = _prepare(n, po, so, cands.width, cands.height, nh, nw, table, use_table, chunks)
        if key is not None:
            _GRID_PLANS.insert(0, (key, po.copy(), so.copy(), found))
            del _GRID_PLANS[GRID_PLANS_KEPT:]
    cands.__dict__["_cpu_hard_plan"] = ((n, chunks), *found)
    return found


def hard_converge(features, centroids, cands: Candidates, max_iter: int, tol: float = 0.0, prev_labels=None,
                  subsample: int = 1):
    """(labels (N,) int32, centroids (K, D), rounds run): at most ``max_iter`` fused assign+accumulate passes and a
    final assign; a pass whose labels changed on at most ``tol`` · N pixels ends them with its labels — the twin
    of :func:`.reference.hard_converge` (same labels and centroids, same rounds; ``subsample``: its row
    subsampling, the rounds visiting only their rows).

    ``features`` (N, D) float32: read in place when stored channel-major (:func:`empty_features`, the layout
    ``pixel_features`` gives on the CPU), else transposed once into the (D, N padded to 16) lanes."""
    n = features.shape[0]
    c = np.array(centroids.detach().numpy(), np.float32, order="C")  # a fresh copy, updated in place
    chunks = _n_chunks(cands.height)
    lanes = _channel_rows(features)
    if lanes is None:
        n_cols = (n + LANES - 1) // LANES * LANES
        f_flat = _transpose(features.detach().contiguous().numpy(), n_cols, chunks).ravel()
    else:
        f_flat, n_cols = lanes
    labels = np.full(n_cols, -1, np.int32)  # no warm start in the first pass
    if prev_labels is not None:  # compared with the first pass (whose block winners are tried first)
        labels[:n] = torch.as_tensor(prev_labels).detach().cpu().numpy()
    stride = reference.subsample_rows(subsample)
    phases = cands.row_phases(stride)
    limit = np.array([reference.max_changed(tol, n)] if stride == 1 else
                     reference.round_limits(tol, phases, cands.width, stride), np.int64)
    compare_first = prev_labels is not None
    cell_plan = cells.plan(cands) if features.shape[1] in cells.FAST_DIMS else None
    if cell_plan is not None:  # the cell layout (its vector loop is the faster one for these D), no block plan
        run = cells.hard_converge(f_flat, n_cols, c, cell_plan, cands, labels, max_iter, limit, compare_first,
                                  stride, phases)
        return torch.from_numpy(labels[:n]), torch.from_numpy(c), run
    start, members, prio = _block_plan_for(cands, n, chunks)
    run = run_with_budget(_hard_loop, f_flat, n_cols, c, start, members, prio, labels, int(max_iter), chunks, limit,
                          compare_first, int(cands.width), stride, phases)
    return torch.from_numpy(labels[:n]), torch.from_numpy(c), int(run)


# ---------------------------------------------------------------------------------------------------------------
# Soft pass (training): association, centroid sums and the analytic backward, vectorised across pixels like the
# hard pass — blocks of 16 pixels, one per lane, the distinct valid candidates of a block listed once (members),
# one vector sub/mul/add per (member, channel). ``slot_j[p, s]`` maps a pixel's slot to its block member (-1 =
# invalid slot), so duplicate slots (a superpixel in two slots of a pixel) count twice, as in the reference.
# ---------------------------------------------------------------------------------------------------------------
def _halves_f64(builder, v):
    """(16 x f32) → two (8 x f64): lanes 0..7 and 8..15."""
    return [builder.fpext(builder.shuffle_vector(v, v, ir.Constant(_vec(_I32, 8), list(range(h, h + 8)))),
                          _vec(_F64, 8)) for h in (0, 8)]


@intrinsic
def _dot_lanes(typingctx, out, o_at, feat, f_at, stride, vec, v_at, n_dims):
    """out[o_at : +16] = Σ_{d < n_dims, in order} vec[v_at + d] · feat[f_at + d·stride : +16] (float32)."""
    def codegen(context, builder, sig, args):
        out, o_at, feat, f_at, stride, vec, v_at, n_dims = args
        fdata = context.make_array(sig.args[2])(context, builder, feat).data
        vdata = context.make_array(sig.args[5])(context, builder, vec).data
        acc = cgutils.alloca_once_value(builder, ir.Constant(_vec(_F32), [0.0] * LANES))
        with cgutils.for_range(builder, n_dims) as loop:
            fv = builder.load(builder.bitcast(builder.gep(fdata, [builder.add(f_at, builder.mul(loop.index, stride))]),
                                              _vec(_F32).as_pointer()), align=4)
            g = _splat(builder, builder.load(builder.gep(vdata, [builder.add(v_at, loop.index)])), _F32)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(g, fv)), acc)
        builder.store(builder.load(acc), _vec_ptr(context, builder, sig.args[0], out, o_at, _F32), align=4)
        return context.get_dummy_value()
    return types.void(out, o_at, feat, f_at, stride, vec, v_at, n_dims), codegen


@intrinsic
def _add_weighted_sums(typingctx, acc, a_at, feat, f_at, stride, n_dims, w, w_at):
    """acc[a_at + 8d : +8] (float64) += w[w_at : +16] · feat[f_at + d·stride : +16], products and sums in float64
    (lanes i and i + 8 added pairwise), for d < n_dims."""
    def codegen(context, builder, sig, args):
        acc, a_at, feat, f_at, stride, n_dims, w, w_at = args
        fdata = context.make_array(sig.args[2])(context, builder, feat).data
        adata = context.make_array(sig.args[0])(context, builder, acc).data
        w_lo, w_hi = _halves_f64(builder, builder.load(_vec_ptr(context, builder, sig.args[6], w, w_at, _F32),
                                                       align=4))
        with cgutils.for_range(builder, n_dims) as loop:
            fv = builder.load(builder.bitcast(builder.gep(fdata, [builder.add(f_at, builder.mul(loop.index, stride))]),
                                              _vec(_F32).as_pointer()), align=4)
            f_lo, f_hi = _halves_f64(builder, fv)
            pa = builder.bitcast(builder.gep(adata, [builder.add(a_at, builder.mul(loop.index, ir.Constant(_I64, 8)))]),
                                 _vec(_F64, 8).as_pointer())
            add = builder.fadd(builder.fmul(w_lo, f_lo), builder.fmul(w_hi, f_hi))
            builder.store(builder.fadd(builder.load(pa, align=8), add), pa, align=8)
        return context.get_dummy_value()
    return types.void(acc, a_at, feat, f_at, stride, n_dims, w, w_at), codegen


@intrinsic
def _soft_grad_member(typingctx, gf, feat, f_at, stride, cent, c_at, gs, a, w, aw_at, gc, gc_at, n_dims):
    """Backward of one block member k (centroid cent[c_at:], grad of its sums gs[c_at:]) for the 16 lanes:
    per channel d, diff = feat - c_kd, v = 2·a·diff;  gf[f_at + d·stride : +16] += w·gS_kd + v  (float32) and
    gc[gc_at + 8d : +8] (float64) -= v (lanes i and i + 8 added pairwise). a = Σ gd and w = Σ q over the lane's
    slots holding k (a[aw_at : +16], w[aw_at : +16])."""
    def codegen(context, builder, sig, args):
        gf, feat, f_at, stride, cent, c_at, gs, a, w, aw_at, gc, gc_at, n_dims = args
        gfdata = context.make_array(sig.args[0])(context, builder, gf).data
        fdata = context.make_array(sig.args[1])(context, builder, feat).data
        cdata = context.make_array(sig.args[4])(context, builder, cent).data
        gsdata = context.make_array(sig.args[6])(context, builder, gs).data
        gcdata = context.make_array(sig.args[10])(context, builder, gc).data
        av = builder.load(_vec_ptr(context, builder, sig.args[7], a, aw_at, _F32), align=4)
        a2 = builder.fadd(av, av)
        wv = builder.load(_vec_ptr(context, builder, sig.args[8], w, aw_at, _F32), align=4)
        with cgutils.for_range(builder, n_dims) as loop:
            at = builder.add(f_at, builder.mul(loop.index, stride))
            fv = builder.load(builder.bitcast(builder.gep(fdata, [at]), _vec(_F32).as_pointer()), align=4)
            cv = _splat(builder, builder.load(builder.gep(cdata, [builder.add(c_at, loop.index)])), _F32)
            gsv = _splat(builder, builder.load(builder.gep(gsdata, [builder.add(c_at, loop.index)])), _F32)
            v = builder.fmul(a2, builder.fsub(fv, cv))
            pg = builder.bitcast(builder.gep(gfdata, [at]), _vec(_F32).as_pointer())
            builder.store(builder.fadd(builder.load(pg, align=4), builder.fadd(builder.fmul(wv, gsv), v)), pg, align=4)
            lo, hi = _halves_f64(builder, v)
            pc = builder.bitcast(builder.gep(gcdata, [builder.add(gc_at, builder.mul(loop.index, ir.Constant(_I64, 8)))]),
                                 _vec(_F64, 8).as_pointer())
            builder.store(builder.fsub(builder.load(pc, align=8), builder.fadd(lo, hi)), pc, align=8)
        return context.get_dummy_value()
    return types.void(gf, feat, f_at, stride, cent, c_at, gs, a, w, aw_at, gc, gc_at, n_dims), codegen


@njit(parallel=True, cache=True, nogil=True)
def _prepare_soft(f, pix_obj, sp_obj, width, height, nh, nw, table, use_table, n_chunks):
    """Once per candidate set: per block of 16 pixels its distinct candidates (``start`` (n_blocks + 1) CSR
    offsets, ``members`` int32) and ``slot_j`` (N, 9) int16: the block member j in each slot, -1 = empty slot,
    -2 - j = a member of another prior object (not a valid candidate, but the reference's centroid sums of an
    arbitrary q count it, like any non-empty slot)."""
    n = f.shape[0]
    n_blocks = (n + LANES - 1) // LANES
    n_sp = sp_obj.shape[0]
    size = np.zeros(n_blocks + 1, np.int64)
    slot_j = np.full((n, N_SLOTS), -1, np.int16)
    for t in prange(n_chunks):
        mark = np.full(n_sp, -1, np.int64)
        for b in range(t * n_blocks // n_chunks, (t + 1) * n_blocks // n_chunks):
            u = 0
            for p in range(b * LANES, min(n, (b + 1) * LANES)):
                po = pix_obj[p]
                for s in range(N_SLOTS):
                    k = _slot(p, s, width, height, nh, nw, table, use_table)
                    if k >= 0 and mark[k] != b:
                        mark[k] = b
                        u += 1
            size[b + 1] = u
    start = np.cumsum(size)
    members = np.empty(start[-1], np.int32)
    for t in prange(n_chunks):
        mark = np.full(n_sp, -1, np.int64)
        pos = np.empty(n_sp, np.int64)
        for b in range(t * n_blocks // n_chunks, (t + 1) * n_blocks // n_chunks):
            u = start[b]
            for p in range(b * LANES, min(n, (b + 1) * LANES)):
                po = pix_obj[p]
                for s in range(N_SLOTS):
                    k = _slot(p, s, width, height, nh, nw, table, use_table)
                    if k < 0:
                        continue
                    if mark[k] != b:
                        mark[k] = b
                        pos[k] = u
                        members[u] = k
                        u += 1
                    j = pos[k] - start[b]
                    slot_j[p, s] = j if po < 0 or sp_obj[k] == po else -2 - j
    return start, members, slot_j


@njit(inline="always")
def _fold_lane_pairs(part, sums, k_count, d_count):
    for k in range(k_count):
        for d in range(d_count):
            at = (k * d_count + d) * 8
            acc = 0.0
            for lane in range(8):
                acc += part[at + lane]
            sums[k, d] = acc


@njit(parallel=True, cache=True, nogil=True)
def _soft_forward(fT, n_cols, n, c, start, members, slot_j, q, with_q, sums, counts):
    """With ``with_q``: q (N, 9) = softmax(-distance) over the valid slots (the reference's float32 distances,
    max-subtracted exp); else q is read. Adds Σ q·f (float64) into sums (n_chunks, K, D) and Σ q into counts
    (n_chunks, K) per chunk."""
    k_count, d_count = c.shape
    c_flat = c.ravel()
    n_chunks = sums.shape[0]
    n_blocks = start.shape[0] - 1
    for t in prange(n_chunks):
        dist = np.empty(N_SLOTS * LANES * LANES, np.float32)
        w = np.empty(N_SLOTS * LANES * LANES, np.float32)
        part = np.zeros(k_count * d_count * 8, np.float64)
        for b in range(t * n_blocks // n_chunks, (t + 1) * n_blocks // n_chunks):
            j0, n_u, p0 = start[b], start[b + 1] - start[b], b * LANES
            if with_q:
                for j in range(0, n_u - 1, 2):
                    _sq_dist2(dist, j * LANES, fT, p0, n_cols, c_flat, members[j0 + j] * d_count,
                              members[j0 + j + 1] * d_count, d_count)
                if n_u % 2:
                    _sq_dist(dist, (n_u - 1) * LANES, fT, p0, n_cols, c_flat, members[j0 + n_u - 1] * d_count,
                             d_count)
            for x in range(n_u * LANES):  # (a loop: a slice assignment here becomes a nested parfor, 3 µs a block)
                w[x] = 0.0
            for i in range(min(LANES, n - p0)):
                p = p0 + i
                if with_q:
                    m = INF
                    for s in range(N_SLOTS):
                        j = slot_j[p, s]
                        if j >= 0 and dist[j * LANES + i] < m:
                            m = dist[j * LANES + i]
                    total = np.float32(0.0)
                    for s in range(N_SLOTS):
                        j = slot_j[p, s]
                        e = np.float32(0.0)
                        if j >= 0 and m < INF:
                            e = np.exp(m - dist[j * LANES + i])
                        q[p, s] = e
                        total += e
                    if total > 0:
                        for s in range(N_SLOTS):
                            q[p, s] = q[p, s] / total
                for s in range(N_SLOTS):
                    j = slot_j[p, s]
                    if j <= -2:
                        j = -2 - j
                    if j >= 0:
                        w[j * LANES + i] += q[p, s]
            for j in range(n_u):
                k = members[j0 + j]
                cnt = 0.0
                for i in range(LANES):
                    cnt += w[j * LANES + i]
                if cnt != 0.0:
                    counts[t, k] += cnt
                    _add_weighted_sums(part, k * d_count * 8, fT, p0, n_cols, d_count, w, j * LANES)
        _fold_lane_pairs(part, sums[t], k_count, d_count)


@njit(parallel=True, cache=True, nogil=True)
def _soft_backward(fT, n_cols, n, c, start, members, slot_j, q, g_q, g_s, g_z, gfT, g_c):
    """Fused gradient of one soft iteration (formulas in reference.soft_iteration_backward), vectorised across the
    16 pixels of a block: gfT (D, n_cols) float32, g_c (n_chunks, K, D) float64 per chunk."""
    k_count, d_count = c.shape
    c_flat = c.ravel()
    gs_flat = g_s.ravel()
    n_chunks = g_c.shape[0]
    n_blocks = start.shape[0] - 1
    for t in prange(n_chunks):
        dots = np.empty(N_SLOTS * LANES * LANES, np.float32)
        a = np.empty(N_SLOTS * LANES * LANES, np.float32)
        w = np.empty(N_SLOTS * LANES * LANES, np.float32)
        gq = np.empty(N_SLOTS, np.float32)
        part = np.zeros(k_count * d_count * 8, np.float64)
        for b in range(t * n_blocks // n_chunks, (t + 1) * n_blocks // n_chunks):
            j0, n_u, p0 = start[b], start[b + 1] - start[b], b * LANES
            for j in range(n_u):  # gS_k · f_p for the 16 lanes
                _dot_lanes(dots, j * LANES, fT, p0, n_cols, gs_flat, members[j0 + j] * d_count, d_count)
            for x in range(n_u * LANES):
                a[x] = 0.0
                w[x] = 0.0
            for i in range(min(LANES, n - p0)):
                p = p0 + i
                dot = np.float32(0.0)
                for s in range(N_SLOTS):
                    j = slot_j[p, s]
                    g = g_q[p, s]
                    if j >= 0:
                        g += dots[j * LANES + i] + g_z[members[j0 + j]]
                    gq[s] = g
                    dot += q[p, s] * g
                for s in range(N_SLOTS):
                    j = slot_j[p, s]
                    if j >= 0:
                        a[j * LANES + i] += -q[p, s] * (gq[s] - dot)
                        w[j * LANES + i] += q[p, s]
            for j in range(n_u):
                k = members[j0 + j]
                _soft_grad_member(gfT, fT, p0, n_cols, c_flat, k * d_count, gs_flat, a, w, j * LANES, part,
                                  k * d_count * 8, d_count)
        _fold_lane_pairs(part, g_c[t], k_count, d_count)


class _SoftPlan:
    """What a soft pass needs from a candidate set, built once per (candidates, N) and cached on the Candidates."""

    def __init__(self, f, cands):
        _, po, so, w, h, nh, nw, table, use_table = _args(f, cands)
        self.n = f.shape[0]
        self.n_cols = (self.n + LANES - 1) // LANES * LANES
        self.chunks = _n_chunks(max(1, self.n_cols // LANES // 8))
        self.start, self.members, self.slot_j = _prepare_soft(f.detach().numpy()[:, :1], po, so, w, h, nh, nw,
                                                              table, use_table, self.chunks)


def _plan(features, cands: Candidates) -> _SoftPlan:
    plan = cands.__dict__.get("_cpu_soft_plan")
    if plan is None or plan.n != features.shape[0]:
        plan = _SoftPlan(features, cands)
        cands.__dict__["_cpu_soft_plan"] = plan  # the table is not changed after construction
    return plan


_last_soft = {}  # associate() → centroid_sums_soft() of the same q: the sums are computed in the same pass


def _soft(features, centroids, cands, q=None):
    """(q (N, 9), sums (K, D), counts (K,)) float32; q computed (None) or given."""
    plan = _plan(features, cands)
    f = features.detach().contiguous().numpy()
    fT = _transpose(f, plan.n_cols, MAX_CHUNKS)
    k_count = cands.n_superpixels
    with_q = q is None
    if with_q:
        c = np.ascontiguousarray(centroids.detach().numpy(), np.float32)
        q_np = np.zeros((plan.n, N_SLOTS), np.float32)
    else:
        c = np.zeros((k_count, f.shape[1]), np.float32)  # not read
        q_np = np.ascontiguousarray(q.detach().numpy(), np.float32)
    sums = np.zeros((plan.chunks, k_count, f.shape[1]), np.float64)
    counts = np.zeros((plan.chunks, k_count), np.float64)
    _soft_forward(fT, plan.n_cols, plan.n, c, plan.start, plan.members, plan.slot_j, q_np, with_q, sums, counts)
    return torch.from_numpy(q_np), torch.from_numpy(sums.sum(0).astype(np.float32)), \
        torch.from_numpy(counts.sum(0).astype(np.float32))


def associate(features, centroids, cands: Candidates):
    q, sums, counts = _soft(features, centroids, cands)
    _last_soft.clear()
    _last_soft.update(q=q, features=features, cands=cands, sums=sums, counts=counts)
    return q


def centroid_sums_soft(features, q, cands: Candidates):
    last = dict(_last_soft)
    _last_soft.clear()
    if last.get("q") is q and last.get("features") is features and last.get("cands") is cands:
        return last["sums"], last["counts"]
    return _soft(features, None, cands, q)[1:]


def soft_iteration_backward(features, centroids, cands: Candidates, q, counts, new_c, grad_q, grad_new_c):
    """Fused analytic backward of a soft iteration; same formulas as reference.soft_iteration_backward."""
    plan = _plan(features, cands)
    f = features.detach().contiguous().numpy()
    fT = _transpose(f, plan.n_cols, MAX_CHUNKS)
    cnt = counts.detach().numpy().astype(np.float64)
    gc_new = grad_new_c.detach().numpy().astype(np.float64)
    has = cnt > 0
    z = np.maximum(cnt, 1e-12)
    g_s = np.ascontiguousarray(np.where(has[:, None], gc_new / z[:, None], 0.0), np.float32)
    g_z = np.where(has, -(gc_new * new_c.detach().numpy()).sum(1) / z, 0.0).astype(np.float32)
    g_q = np.zeros((plan.n, N_SLOTS), np.float32) if grad_q is None else \
        np.ascontiguousarray(grad_q.detach().numpy(), np.float32)
    gfT = np.zeros((f.shape[1], plan.n_cols), np.float32)
    g_c = np.zeros((plan.chunks,) + tuple(centroids.shape), np.float64)
    _soft_backward(fT, plan.n_cols, plan.n, np.ascontiguousarray(centroids.detach().numpy(), np.float32),
                   plan.start, plan.members, plan.slot_j, q.detach().contiguous().numpy(), g_q, g_s, g_z, gfT, g_c)
    g_c = g_c.sum(0) + np.where(has[:, None], 0.0, gc_new)
    return torch.from_numpy(np.ascontiguousarray(gfT[:, :plan.n].T)), torch.from_numpy(g_c.astype(np.float32))
