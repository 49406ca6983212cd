"""Triton kernels: the default for CUDA tensors (and, under ``TRITON_INTERPRET=1``, runnable on CPU tensors).

Two kernels, each followed by its Python wrappers:

1. :func:`_candidate_kernel` — one program per block of ``BLOCK_PIXELS`` pixels works on a ``(BLOCK_PIXELS, 16)``
   tile (the 9 candidate slots padded to a power of two). It reads each slot's superpixel index either from the
   grid layout (cell and neighbours computed from the pixel position exactly as :func:`.candidates.grid_table` does)
   or from the ``(N, 9)`` table (the constexpr ``USE_TABLE`` selects), masks the slot by prior object, accumulates the
   squared distance channel by channel in the order d = 0..D-1 with plain ``diff * diff`` adds (launched with
   ``enable_fp_fusion=False`` so no fused multiply-add changes the rounding: distances and argmin labels equal the
   reference bit for bit) and writes, depending on the constexpr ``OUTPUT``, the ``(N, 9)`` distances, the soft
   association (softmax over valid slots), or the argmin label (lowest slot among equal minima, -1 when no slot is
   valid). With ``ACCUMULATE`` the label pass also adds each pixel into the centroid sums (a fused hard iteration).
2. :func:`_soft_sums_kernel` — Σ q·f and Σ q per superpixel from a soft association over the candidate slots
   (the hard version, Σ f and member counts, is :func:`_hard_sums_kernel` / the ``ACCUMULATE`` branch above).

The centroid update (hard and soft) is reduced inside the program before it touches global memory
(:func:`_reduce_add`): a block's pixels are a run of one image row, so their labels (or candidate slots) name a
handful of superpixels; each round takes the smallest pending superpixel, sums its pixels' (weighted) features over
the block's (BLOCK, D) tile and issues one float32 atomic per channel. The previous kernel issued one atomic per pixel
and channel onto the K centroid rows, and the contention on those few rows cost 10x the assignment on an H100
(2.99 ms vs 0.28 ms at 1080p); it stays selectable (``CENTROID_UPDATE = "atomic"`` or :func:`fused_hard_pass`'s
``update``) for the benchmark. Beyond ``ROUNDS`` distinct superpixels in one block (only adversarial layouts: random
tables) the remaining entries fall back to per-entry atomics. Float32 atomics commit in an unspecified order, so sums
are not bitwise reproducible run to run and agree with the float64-accumulated reference to ~1e-5 relative (of
Σ|terms|), not bit for bit; counts of hard labels are exact; distances, q and labels computed from the *same*
centroids remain exact.

Shapes and dtypes (as in :mod:`.reference`): ``features`` (N, D) float32, ``centroids`` (K, D) float32, ``q`` (N, 9)
float32, ``labels`` (N,) int32; candidate layouts and validity rules in :mod:`.candidates`. Tensors must all be on one
device; offsets are int32, so N·9 and N·D must stay below 2**31.

The backward of a soft iteration on this backend is :func:`soft_iteration_backward`: the formulas of
:func:`.reference.soft_iteration_backward` (its twin) in one pass over the pixels, with per-entry float32 atomics for
the centroids' gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from .candidates import N_SLOTS, Candidates

SLOTS_PAD = 16  # 9 candidate slots padded to a power of two (tile width)
OUT_DISTANCES, OUT_SOFT, OUT_LABEL = 0, 1, 2
UPDATES = {"atomic": 1, "reduce": 2}  # the ACCUMULATE constexpr of the kernels (0: no centroid sums)

#: Centroid update of the fused hard pass and of the sums kernels: "reduce" (block-reduced, default) or "atomic"
#: (one float32 atomic per pixel and channel, the previous kernel; kept for the benchmark's comparison).
CENTROID_UPDATE = "reduce"
#: Distinct superpixels a block reduces before falling back to per-entry atomics for the rest, by device type: a
#: 128-pixel run of a row meets ~3-15 of them in the grid layout (up to ~40 counting the soft pass's 9 candidate
#: slots). Under the interpreter every round costs a dozen interpreted calls, so fewer (the tests cover both paths).
ROUNDS = {"cuda": 32, "cpu": 4}


@triton.jit
def _candidate_tile(offs_p, slots, n_pixels, width, height, nh, nw, table_ptr, USE_TABLE: tl.constexpr):
    """(BLOCK, SLOTS_PAD) int32 superpixel index of every (pixel, slot); -1 for empty slots, padding and the tail."""
    in_tile = (offs_p[:, None] < n_pixels) & (slots[None, :] < 9)
    if USE_TABLE:
        k = tl.load(table_ptr + offs_p[:, None] * 9 + slots[None, :], mask=in_tile, other=-1)
    else:
        # grid layout: pixel (y, x) lies in cell (y * nh // height, x * nw // width); slot s is offset (s//3-1, s%3-1)
        y = offs_p // width
        x = offs_p - y * width
        ny = (y * nh // height)[:, None] + (slots // 3 - 1)[None, :]
        nx = (x * nw // width)[:, None] + (slots % 3 - 1)[None, :]
        inside = in_tile & (ny >= 0) & (ny < nh) & (nx >= 0) & (nx < nw)
        k = tl.where(inside, ny * nw + nx, -1)
    return k


@triton.jit
def _accumulate_hard(f_ptr, offs_p, label, sums_ptr, counts_ptr, D):
    """sums[label] += f[p], counts[label] += 1 for every pixel of the block with label >= 0 (float32 atomics, one per
    pixel and channel: the old update, kept for comparison as ``CENTROID_UPDATE = "atomic"``)."""
    member = label >= 0
    row = tl.maximum(label, 0)
    tl.atomic_add(counts_ptr + row, tl.full(label.shape, 1.0, tl.float32), mask=member, sem="relaxed")
    for d in range(D):
        fd = tl.load(f_ptr + offs_p * D + d, mask=member, other=0.0)
        tl.atomic_add(sums_ptr + row * D + d, fd, mask=member, sem="relaxed")


@triton.jit
def _reduce_add(f_ptr, offs_p, keys, weights, sums_ptr, counts_ptr, n_pixels, D,
                D_PAD: tl.constexpr, ROUNDS: tl.constexpr):
    """sums[keys[p, s]] += weights[p, s]·f[p] and counts[keys[p, s]] += weights[p, s] over a block, reduced inside
    the program first: one atomic per (distinct key, channel) instead of one per (pixel, slot, channel).

    keys (BLOCK, S) int32 (-1 = nothing to add), weights (BLOCK, S) float32 (1.0 for hard labels, q for soft).
    Each round takes the smallest pending key, sums the weights of its entries per pixel, then the weighted block
    features over the pixels (a (BLOCK, D_PAD) tile read once), and issues D + 1 atomics. A block's pixels are a run
    of one image row, so their keys are a handful of superpixels; after ROUNDS rounds (adversarial layouts: every
    pixel a different key) the remaining entries fall back to per-entry atomics. Exact within float32 summation
    error (the block sums are float32 sums in another order).
    """
    cols = tl.arange(0, D_PAD)
    in_range = offs_p < n_pixels
    tile = tl.load(f_ptr + offs_p[:, None] * D + cols[None, :], mask=in_range[:, None] & (cols[None, :] < D),
                   other=0.0)
    pending = tl.where(keys >= 0, keys, 2147483647)  # int32 max: done / nothing
    cur = tl.min(pending)
    r = 0
    while (cur < 2147483647) & (r < ROUNDS):
        sel = pending == cur
        w = tl.sum(tl.where(sel, weights, 0.0), axis=1)  # (BLOCK,) weight of key `cur` at each pixel
        tl.atomic_add(counts_ptr + cur, tl.sum(w, axis=0), sem="relaxed")
        tl.atomic_add(sums_ptr + cur * D + cols, tl.sum(w[:, None] * tile, axis=0), mask=cols < D, sem="relaxed")
        pending = tl.where(sel, 2147483647, pending)
        cur = tl.min(pending)
        r += 1
    rest = pending < 2147483647
    row = tl.where(rest, pending, 0)
    tl.atomic_add(counts_ptr + row, weights, mask=rest, sem="relaxed")
    for d in range(D):
        fd = tl.load(f_ptr + offs_p * D + d, mask=in_range, other=0.0)
        tl.atomic_add(sums_ptr + row * D + d, weights * fd[:, None], mask=rest, sem="relaxed")


@triton.jit
def _accumulate(f_ptr, offs_p, label, sums_ptr, counts_ptr, n_pixels, D,
                ACCUMULATE: tl.constexpr, D_PAD: tl.constexpr, ROUNDS: tl.constexpr):
    """Hard centroid sums of a block's labels (BLOCK,) int32: ACCUMULATE 1 = per-pixel atomics, 2 = block-reduced."""
    if ACCUMULATE == 1:
        _accumulate_hard(f_ptr, offs_p, label, sums_ptr, counts_ptr, D)
    else:
        _reduce_add(f_ptr, offs_p, label[:, None], tl.full((label.shape[0], 1), 1.0, tl.float32), sums_ptr,
                    counts_ptr, n_pixels, D, D_PAD, ROUNDS)


@triton.jit
def _candidate_kernel(
    f_ptr, c_ptr, pix_obj_ptr, sp_obj_ptr, table_ptr, out_ptr, sums_ptr, counts_ptr,
    n_pixels, D, width, height, nh, nw,
    USE_TABLE: tl.constexpr, OUTPUT: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_PIXELS: tl.constexpr, SLOTS: tl.constexpr, D_PAD: tl.constexpr, ROUNDS: tl.constexpr,
):
    """Masked candidate distances of a block of pixels, written as distances, soft association or argmin label.

    f (N, D) f32, c (K, D) f32, pix_obj (N,) i32, sp_obj (K,) i32, table (N, 9) i32 (read only if USE_TABLE).
    OUTPUT 0: out (N, 9) f32 distances, +inf on invalid slots. OUTPUT 1: out (N, 9) f32 softmax(-distance) over the
    valid slots, 0 elsewhere (all-invalid rows are all zeros). OUTPUT 2: out (N,) i32 label of the nearest valid
    candidate (lowest slot wins ties, -1 if none); with ACCUMULATE also sums (K, D) f32 += f, counts (K,) f32 += 1.
    """
    pid = tl.program_id(0)
    offs_p = pid * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    slots = tl.arange(0, SLOTS)
    in_range = offs_p < n_pixels

    k = _candidate_tile(offs_p, slots, n_pixels, width, height, nh, nw, table_ptr, USE_TABLE)
    row = tl.maximum(k, 0)
    pix_obj = tl.load(pix_obj_ptr + offs_p, mask=in_range, other=-1)
    sp_obj = tl.load(sp_obj_ptr + row, mask=k >= 0, other=-1)
    valid = (k >= 0) & ((pix_obj[:, None] < 0) | (sp_obj == pix_obj[:, None]))

    # squared distance, channel by channel in the reference's order (plain mul then add: same rounding)
    dist = tl.zeros((BLOCK_PIXELS, SLOTS), dtype=tl.float32)
    for d in range(D):
        fd = tl.load(f_ptr + offs_p * D + d, mask=in_range, other=0.0)
        cd = tl.load(c_ptr + row * D + d, mask=valid, other=0.0)
        diff = fd[:, None] - cd
        dist = dist + diff * diff
    dist = tl.where(valid, dist, float("inf"))

    if OUTPUT == 0:
        tl.store(out_ptr + offs_p[:, None] * 9 + slots[None, :], dist,
                 mask=in_range[:, None] & (slots[None, :] < 9))
    elif OUTPUT == 1:
        best = tl.min(dist, axis=1)
        best = tl.where(best < float("inf"), best, 0.0)  # all-invalid row: avoid inf - inf (its q is all zeros)
        e = tl.where(valid, tl.exp(best[:, None] - dist), 0.0)
        total = tl.sum(e, axis=1)
        q = e / tl.where(total > 0, total, 1.0)[:, None]
        tl.store(out_ptr + offs_p[:, None] * 9 + slots[None, :], q,
                 mask=in_range[:, None] & (slots[None, :] < 9))
    else:
        best = tl.min(dist, axis=1)
        # lowest slot attaining the minimum == a strict `<` scan over slots 0..8 (reference: torch argmin, first min)
        best_slot = tl.min(tl.where(dist == best[:, None], slots[None, :], SLOTS), axis=1)
        label = tl.max(tl.where(slots[None, :] == best_slot[:, None], k, -1), axis=1)
        label = tl.where(best < float("inf"), label, -1)
        tl.store(out_ptr + offs_p, label, mask=in_range)
        if ACCUMULATE != 0:
            _accumulate(f_ptr, offs_p, label, sums_ptr, counts_ptr, n_pixels, D, ACCUMULATE, D_PAD, ROUNDS)


@triton.jit
def _hard_sums_kernel(f_ptr, labels_ptr, sums_ptr, counts_ptr, n_pixels, D, BLOCK_PIXELS: tl.constexpr,
                      ACCUMULATE: tl.constexpr, D_PAD: tl.constexpr, ROUNDS: tl.constexpr):
    """sums (K, D) f32 += f[p], counts (K,) f32 += 1 over pixels with labels (N,) i32 >= 0."""
    offs_p = tl.program_id(0) * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    label = tl.load(labels_ptr + offs_p, mask=offs_p < n_pixels, other=-1)
    _accumulate(f_ptr, offs_p, label, sums_ptr, counts_ptr, n_pixels, D, ACCUMULATE, D_PAD, ROUNDS)


@triton.jit
def _soft_sums_kernel(
    f_ptr, q_ptr, table_ptr, sums_ptr, counts_ptr, n_pixels, D, width, height, nh, nw,
    USE_TABLE: tl.constexpr, BLOCK_PIXELS: tl.constexpr, SLOTS: tl.constexpr,
    ACCUMULATE: tl.constexpr, D_PAD: tl.constexpr, ROUNDS: tl.constexpr,
):
    """sums (K, D) f32 += q[p, s] f[p], counts (K,) f32 += q[p, s] for every non-empty slot s (q (N, 9) f32);
    ACCUMULATE 1 = one atomic per (pixel, slot, channel), 2 = reduced per distinct superpixel of the block."""
    offs_p = tl.program_id(0) * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    slots = tl.arange(0, SLOTS)
    in_range = offs_p < n_pixels
    k = _candidate_tile(offs_p, slots, n_pixels, width, height, nh, nw, table_ptr, USE_TABLE)
    q = tl.load(q_ptr + offs_p[:, None] * 9 + slots[None, :], mask=in_range[:, None] & (slots[None, :] < 9),
                other=0.0)
    hit = (k >= 0) & (q != 0.0)  # adding 0 changes nothing: skip the atomic
    if ACCUMULATE == 1:
        row = tl.maximum(k, 0)
        tl.atomic_add(counts_ptr + row, q, mask=hit, sem="relaxed")
        for d in range(D):
            fd = tl.load(f_ptr + offs_p * D + d, mask=in_range, other=0.0)
            tl.atomic_add(sums_ptr + row * D + d, q * fd[:, None], mask=hit, sem="relaxed")
    else:
        _reduce_add(f_ptr, offs_p, tl.where(hit, k, -1), q, sums_ptr, counts_ptr, n_pixels, D, D_PAD, ROUNDS)


@triton.jit
def _soft_backward_kernel(
    f_ptr, c_ptr, q_ptr, gq_ptr, gs_ptr, gz_ptr, table_ptr, gf_ptr, gc_ptr, n_pixels, D, width, height, nh, nw,
    USE_TABLE: tl.constexpr, HAS_GQ: tl.constexpr, BLOCK_PIXELS: tl.constexpr, SLOTS: tl.constexpr,
):
    """Gradient of one soft iteration for a block of pixels (formulas of reference.soft_iteration_backward).

    f (N, D), c (K, D) the iteration's input centroids, q (N, 9) its association, gq (N, 9) the gradient of q (read
    only if HAS_GQ), gs (K, D) = g(c')/Z and gz (K,) = -(g(c')·c')/Z (zero where Z = 0). Writes gf (N, D) and adds
    -Σ gd·2(f - c_k) into gc (K, D) with one atomic per (pixel, slot, channel) where gd != 0.
    """
    offs_p = tl.program_id(0) * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    slots = tl.arange(0, SLOTS)
    in_range = offs_p < n_pixels
    tile = in_range[:, None] & (slots[None, :] < 9)
    k = _candidate_tile(offs_p, slots, n_pixels, width, height, nh, nw, table_ptr, USE_TABLE)
    present = k >= 0
    row = tl.maximum(k, 0)
    q = tl.load(q_ptr + offs_p[:, None] * 9 + slots[None, :], mask=tile, other=0.0)
    if HAS_GQ:
        gq = tl.load(gq_ptr + offs_p[:, None] * 9 + slots[None, :], mask=tile, other=0.0)
    else:
        gq = tl.zeros((BLOCK_PIXELS, SLOTS), dtype=tl.float32)
    # gq += gs[k]·f + gz[k] on present slots (through the sums S and the mass Z of each candidate)
    dot = tl.zeros((BLOCK_PIXELS, SLOTS), dtype=tl.float32)
    for d in range(D):
        fd = tl.load(f_ptr + offs_p * D + d, mask=in_range, other=0.0)
        dot += tl.load(gs_ptr + row * D + d, mask=present, other=0.0) * fd[:, None]
    gq += tl.where(present, dot + tl.load(gz_ptr + row, mask=present, other=0.0), 0.0)
    # through the softmax: gd = -q (gq - Σ_s q gq)
    gd = -q * (gq - tl.sum(q * gq, axis=1)[:, None])
    gd = tl.where(present, gd, 0.0)
    hit = present & (gd != 0.0)
    for d in range(D):
        fd = tl.load(f_ptr + offs_p * D + d, mask=in_range, other=0.0)
        cd = tl.load(c_ptr + row * D + d, mask=present, other=0.0)
        gsd = tl.load(gs_ptr + row * D + d, mask=present, other=0.0)
        contrib = gd * 2.0 * (fd[:, None] - cd)
        tl.store(gf_ptr + offs_p * D + d, tl.sum(q * gsd + contrib, axis=1), mask=in_range)
        tl.atomic_add(gc_ptr + row * D + d, -contrib, mask=hit, sem="relaxed")


# ----------------------------------------------------------------------------------------------- Python wrappers


def _block_pixels(device: torch.device) -> int:
    """Pixels per program: 128 on a GPU (a 128 x 16 tile, 4 warps); larger under the interpreter, whose cost is per
    program and per operation rather than per element."""
    return 128 if device.type == "cuda" else 1024


def _launch_options(device: torch.device) -> dict:
    # No fused multiply-add: keeps `dist + diff * diff` rounding identical to the reference (ignored by the interpreter)
    return {"enable_fp_fusion": False} if device.type == "cuda" else {}


def _update_options(d: int, device: torch.device, update: str | None = None) -> dict:
    """Constexprs of the centroid update: ACCUMULATE (1 atomic, 2 reduce), D_PAD (channels padded to a power of two)
    and ROUNDS (distinct superpixels reduced per block before the per-entry fallback)."""
    update = CENTROID_UPDATE if update is None else update
    if update not in UPDATES:
        raise ValueError(f"centroid update {update!r}: expected one of {', '.join(UPDATES)}")
    return {"ACCUMULATE": UPDATES[update], "D_PAD": triton.next_power_of_2(max(d, 1)), "ROUNDS": ROUNDS.get(device.type, 4)}


def _layout(features: torch.Tensor, cands: Candidates):
    """(table, use_table, nh, nw, pixel_object, superpixel_object) as contiguous int32 tensors on features' device."""
    dev = features.device
    use_table = cands.table is not None
    table = cands.table.to(dev, torch.int32).contiguous() if use_table else torch.empty(1, dtype=torch.int32, device=dev)
    nh, nw = (1, 1) if use_table else cands.grid
    pix_obj = cands.pixel_object.to(dev, torch.int32).contiguous()
    sp_obj = cands.superpixel_object.to(dev, torch.int32).contiguous()
    return table, use_table, nh, nw, pix_obj, sp_obj


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32).contiguous()


def _candidate_pass(features, centroids, cands: Candidates, output: int, out, sums=None, counts=None, update=None):
    f, c = _f32(features), _f32(centroids)
    n, d = f.shape
    if n == 0:
        return out
    table, use_table, nh, nw, pix_obj, sp_obj = _layout(f, cands)
    opts = _update_options(d, f.device, update)
    if sums is None:
        sums = counts = out  # never written
        opts["ACCUMULATE"] = 0
    block = _block_pixels(f.device)
    _candidate_kernel[(triton.cdiv(n, block),)](
        f, c, pix_obj, sp_obj, table, out, sums, counts,
        n, d, cands.width, cands.height, nh, nw,
        USE_TABLE=use_table, OUTPUT=output, BLOCK_PIXELS=block, SLOTS=SLOTS_PAD, **opts,
        **_launch_options(f.device),
    )
    return out


def masked_distances(features, centroids, cands: Candidates) -> torch.Tensor:
    """Squared distance of each pixel to each candidate slot: (N, 9) float32, +inf on invalid slots."""
    out = torch.empty(features.shape[0], N_SLOTS, dtype=torch.float32, device=features.device)
    return _candidate_pass(features, centroids, cands, OUT_DISTANCES, out)


def assign(features, centroids, cands: Candidates) -> torch.Tensor:
    """Hard assignment: (N,) int32 index of the nearest valid candidate (lowest slot on ties, -1 if none)."""
    out = torch.empty(features.shape[0], dtype=torch.int32, device=features.device)
    return _candidate_pass(features, centroids, cands, OUT_LABEL, out)


def associate(features, centroids, cands: Candidates) -> torch.Tensor:
    """Soft association softmax(-distance) over the valid slots: (N, 9) float32, 0 on invalid slots."""
    out = torch.empty(features.shape[0], N_SLOTS, dtype=torch.float32, device=features.device)
    return _candidate_pass(features, centroids, cands, OUT_SOFT, out)


def centroid_sums_hard(features, labels, n_superpixels: int):
    """Σ f and member count per superpixel for labels (N,) int32 (-1 = none): ((K, D) float32, (K,) float32)."""
    f = _f32(features)
    n, d = f.shape
    sums = torch.zeros(n_superpixels, d, dtype=torch.float32, device=f.device)
    counts = torch.zeros(n_superpixels, dtype=torch.float32, device=f.device)
    if n:
        block = _block_pixels(f.device)
        _hard_sums_kernel[(triton.cdiv(n, block),)](
            f, labels.to(f.device, torch.int32).contiguous(), sums, counts, n, d, BLOCK_PIXELS=block,
            **_update_options(d, f.device))
    return sums, counts


def centroid_sums_soft(features, q, cands: Candidates):
    """Σ_p q_pk f_p and Σ_p q_pk per superpixel: ((K, D) float32, (K,) float32). Not differentiable by itself
    (the dispatcher's fused soft iteration supplies the backward)."""
    f = _f32(features)
    n, d = f.shape
    sums = torch.zeros(cands.n_superpixels, d, dtype=torch.float32, device=f.device)
    counts = torch.zeros(cands.n_superpixels, dtype=torch.float32, device=f.device)
    if n:
        table, use_table, nh, nw, _, _ = _layout(f, cands)
        block = _block_pixels(f.device)
        _soft_sums_kernel[(triton.cdiv(n, block),)](
            f, _f32(q), table, sums, counts, n, d, cands.width, cands.height, nh, nw,
            USE_TABLE=use_table, BLOCK_PIXELS=block, SLOTS=SLOTS_PAD, **_update_options(d, f.device),
        )
    return sums, counts


new_centroids = reference.new_centroids


def fused_hard_pass(features, centroids, cands: Candidates, update: str | None = None):
    """One fused hard pass: assignment + centroid sums of the new labels in the same kernel.

    ``update``: "reduce" (block-reduced sums), "atomic" (per-pixel atomics, the previous kernel), or None for
    :data:`CENTROID_UPDATE`. Returns (labels (N,) int32, sums (K, D) float32, counts (K,) float32).
    """
    k, d = centroids.shape
    dev = features.device
    labels = torch.empty(features.shape[0], dtype=torch.int32, device=dev)
    sums = torch.zeros(k, d, dtype=torch.float32, device=dev)
    counts = torch.zeros(k, dtype=torch.float32, device=dev)
    _candidate_pass(features, centroids, cands, OUT_LABEL, labels, sums, counts, update)
    return labels, sums, counts


def hard_iterations(features, centroids, cands: Candidates, n_iter: int):
    """``n_iter`` fused passes then a final assignment: :func:`hard_converge` with ``tol`` = 0 (ends early only at a
    fixed point, which changes nothing). Returns (labels (N,) int32, centroids (K, D) float32)."""
    return hard_converge(features, centroids, cands, n_iter)[:2]


def hard_converge(features, centroids, cands: Candidates, max_iter: int, tol: float = 0.0, prev_labels=None,
                  subsample: int = 1):
    """At most ``max_iter`` fused passes (assign + Σf/count, :data:`CENTROID_UPDATE`), each followed by
    centroids = Σf / count on the device (:func:`.reference.new_centroids`: an empty superpixel keeps its centroid),
    then a final assignment; a pass whose labels changed on at most ``tol`` · N pixels (one count and one device
    sync per pass) ends them with its labels — the twin of :func:`.reference.hard_converge`. With ``tol`` = 0 and
    no ``prev_labels`` nothing is counted (all ``max_iter`` passes run, asynchronously): the same result as the
    reference's, which may report fewer rounds when it reaches a fixed point.

    Returns (labels (N,) int32, centroids (K, D) float32, passes run). ``subsample`` > 1 (row subsampling):
    the reference's rounds (:func:`.reference.hard_converge_rows`) with this module's assignment — a full pass
    kept on the round's rows; on a GPU the clustering is not what a frame costs.
    """
    stride = reference.subsample_rows(subsample)
    if stride > 1:
        return reference.hard_converge_rows(features, _f32(centroids).clone(), cands, max_iter, tol, prev_labels,
                                            stride, assign)
    c = _f32(centroids).clone()
    n = features.shape[0]
    # tol = 0 without previous labels: no count (and no device sync) per pass — an exact fixed point, the only stop
    # it could make, changes nothing in the result, so the passes stay asynchronous as before
    limit = reference.max_changed(tol, n) if (tol > 0 or prev_labels is not None) else -1
    labels = torch.empty(n, dtype=torch.int32, device=features.device)
    prev = None if prev_labels is None else prev_labels.to(features.device, torch.int32).clone()
    sums = torch.empty_like(c)
    counts = torch.empty(c.shape[0], dtype=torch.float32, device=c.device)
    run = 0
    while run < max_iter:
        sums.zero_()
        counts.zero_()
        _candidate_pass(features, c, cands, OUT_LABEL, labels, sums, counts)
        run += 1
        if limit >= 0:
            if prev is not None and int(torch.count_nonzero(labels != prev)) <= limit:
                return labels, c, run  # converged: these labels of c are the result
            if prev is None:
                prev = torch.empty_like(labels)
            prev.copy_(labels)
        c = reference.new_centroids(sums, counts, c)
    _candidate_pass(features, c, cands, OUT_LABEL, labels)
    return labels, c, run


def soft_iteration_backward(features, centroids, cands: Candidates, q, counts, new_c, grad_q, grad_new_c):
    """Analytic gradient of a soft iteration in one kernel (formulas of :func:`.reference.soft_iteration_backward`,
    its twin): (grad_features (N, D), grad_centroids (K, D)) float32. The per-superpixel terms (K-sized) are torch;
    the per-(pixel, slot) work, ~15 (N, 9, D) torch passes in the reference, is one pass over the pixels."""
    f, c = _f32(features), _f32(centroids)
    n, d = f.shape
    has, g_s, g_z = reference.superpixel_gradients(counts, new_c, grad_new_c)
    g_s, g_z = _f32(g_s), _f32(g_z)
    g_f = torch.empty_like(f)
    g_c = torch.zeros_like(c)
    if n:
        table, use_table, nh, nw, _, _ = _layout(f, cands)
        block = _block_pixels(f.device)
        gq = _f32(grad_q) if grad_q is not None else q  # q: a placeholder pointer, not read without HAS_GQ
        _soft_backward_kernel[(triton.cdiv(n, block),)](
            f, c, _f32(q), gq, g_s, g_z, table, g_f, g_c, n, d, cands.width, cands.height, nh, nw,
            USE_TABLE=use_table, HAS_GQ=grad_q is not None, BLOCK_PIXELS=block, SLOTS=SLOTS_PAD,
        )
    return g_f, g_c + torch.where(has[:, None], torch.zeros_like(grad_new_c), grad_new_c)
empty_features = reference.empty_features  # pixel rows: the layout the kernels read in place

__all__ = [
    "masked_distances", "assign", "associate", "centroid_sums_hard", "centroid_sums_soft", "new_centroids",
    "hard_iterations", "hard_converge", "fused_hard_pass", "soft_iteration_backward",
]


def initial_centroids(features, init_labels, n_superpixels: int):
    """No kernel of its own: None, so that :func:`spam_stream.clustering.cluster_converge` uses the torch version
    (on a GPU :func:`~spam_stream.clustering.initial_centroids_fixed`, fixed shapes, no host read)."""
    return None
