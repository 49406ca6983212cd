"""Plain-torch reference of the clustering kernels: the ground truth the fast paths are tested against.

Shapes: ``features`` (N, D) float32, ``centroids`` (K, D) float32, ``q`` (N, 9) float32 soft association over the
candidate slots, ``labels`` (N,) int32. Candidate layouts and validity rules: :mod:`.candidates`.

Squared distances are accumulated channel by channel in the order d = 0..D-1, so that every implementation rounds
identically and the argmin (lowest slot wins ties) agrees bit for bit. Centroid sums are accumulated in float64 and
returned as float32.
"""
from __future__ import annotations

import numbers

import torch

from .candidates import Candidates, candidate_table, valid_slots


def masked_distances(features: torch.Tensor, centroids: torch.Tensor, cands: Candidates) -> torch.Tensor:
    """Squared feature distance of each pixel to each candidate slot: (N, 9) float32, +inf on invalid slots."""
    table = candidate_table(cands)
    valid = valid_slots(cands, table)
    idx = table.clamp(min=0).long()
    dist = torch.zeros(table.shape, dtype=features.dtype, device=features.device)
    for d in range(features.shape[1]):
        diff = features[:, d, None] - centroids[idx, d]
        dist = dist + diff * diff
    return dist.masked_fill(~valid, float("inf"))


def assign(features: torch.Tensor, centroids: torch.Tensor, cands: Candidates) -> torch.Tensor:
    """Hard assignment: (N,) int32 superpixel index of the nearest valid candidate (-1 if none)."""
    table = candidate_table(cands)
    dist = masked_distances(features, centroids, cands)
    best = dist.argmin(1, keepdim=True)  # first minimum: lowest slot wins ties
    labels = table.gather(1, best)[:, 0]
    none = torch.isinf(dist.gather(1, best)[:, 0])
    return torch.where(none, torch.full_like(labels, -1), labels)


def associate(features: torch.Tensor, centroids: torch.Tensor, cands: Candidates) -> torch.Tensor:
    """Soft association q = softmax(-distance) over the valid slots: (N, 9) float32, 0 on invalid slots."""
    neg = -masked_distances(features, centroids, cands)
    all_invalid = torch.isinf(neg).all(1, keepdim=True)
    q = torch.softmax(neg.masked_fill(all_invalid, 0.0), dim=1)
    return q.masked_fill(torch.isinf(neg), 0.0)


def centroid_sums_hard(features: torch.Tensor, labels: torch.Tensor, n_superpixels: int):
    """Σ f and member count per superpixel for a hard assignment: ((K, D) float32, (K,) float32)."""
    keep = labels >= 0
    idx = labels[keep].long()
    sums = torch.zeros(n_superpixels, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, idx, features[keep].double())
    counts = torch.zeros(n_superpixels, dtype=torch.float64, device=features.device)
    counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    return sums.float(), counts.float()


def centroid_sums_soft(features: torch.Tensor, q: torch.Tensor, cands: Candidates):
    """Σ_p q_pk f_p and Σ_p q_pk per superpixel: ((K, D) float32, (K,) float32). Differentiable."""
    table = candidate_table(cands)
    idx = table.clamp(min=0).long().reshape(-1)
    w = q.masked_fill(table < 0, 0.0).reshape(-1).double()
    k = cands.n_superpixels
    f = features.double()[:, None, :].expand(-1, table.shape[1], -1).reshape(-1, features.shape[1])
    sums = torch.zeros(k, features.shape[1], dtype=torch.float64, device=features.device).index_add(0, idx, f * w[:, None])
    counts = torch.zeros(k, dtype=torch.float64, device=features.device).index_add(0, idx, w)
    return sums.float(), counts.float()


def new_centroids(sums: torch.Tensor, counts: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Centroid = sums / counts; a superpixel with no members keeps its old centroid."""
    has = counts > 0
    return torch.where(has[:, None], sums / counts.clamp(min=1e-12)[:, None], old)


def soft_iteration(features, centroids, cands: Candidates):
    """One differentiable SSN iteration: q = softmax(-‖f - c‖²) over candidates, then centroids = Σqf / Σq.

    Returns (q (N, 9), new centroids (K, D)); gradients flow through plain torch autograd.
    """
    q = associate(features, centroids, cands)
    sums, counts = centroid_sums_soft(features, q, cands)
    return q, new_centroids(sums, counts, centroids)


def superpixel_gradients(counts, new_c, grad_new_c):
    """The per-superpixel terms of the soft iteration's gradient: (has (K,) bool = Z > 0, gS = g(c')/Z (K, D),
    gZ = -(g(c')·c')/Z (K,)), both zero where Z = 0 (that centroid passed through unchanged)."""
    has = counts > 0
    z = counts.clamp(min=1e-12)[:, None]
    g_s = torch.where(has[:, None], grad_new_c / z, torch.zeros_like(grad_new_c))
    g_z = torch.where(has, -(grad_new_c * new_c).sum(1) / z[:, 0], torch.zeros_like(counts))
    return has, g_s, g_z


def soft_iteration_backward(features, centroids, cands: Candidates, q, counts, new_c, grad_q, grad_new_c):
    """Analytic gradient of :func:`soft_iteration`, from its saved outputs (q, counts, new centroids).

    With S = Σ q f, Z = Σ q, c' = S / Z and q = softmax(-d), d = ‖f - c‖²:
    gS = gc'/Z, gZ = -(gc'·c')/Z, gq += gS[k]·f_p + gZ[k], gf = Σ_s q gS[k] + Σ_s gd·2(f - c_k),
    gd = -q (gq - Σ_s q gq), gc_k = -Σ gd·2(f - c_k) (+ gc' itself where Z = 0). Returns (grad_features, grad_centroids).
    This is the documented torch backward of the fused soft iteration (the CPU fast path fuses the same formulas).
    """
    table = candidate_table(cands)
    idx = table.clamp(min=0).long()
    valid = table >= 0
    has, g_s, g_z = superpixel_gradients(counts, new_c, grad_new_c)
    g_q = (grad_q if grad_q is not None else torch.zeros_like(q)).clone()
    g_s_p = g_s[idx]  # (N, 9, D)
    g_q = g_q + torch.where(valid, (g_s_p * features[:, None, :]).sum(-1) + g_z[idx], torch.zeros_like(q))
    g_f = (q[:, :, None] * g_s_p * valid[:, :, None]).sum(1)
    g_d = -q * (g_q - (q * g_q).sum(1, keepdim=True))
    diff2 = 2.0 * (features[:, None, :] - centroids[idx])  # (N, 9, D)
    contrib = g_d[:, :, None] * diff2 * valid[:, :, None]
    g_f = g_f + contrib.sum(1)
    g_c = torch.zeros_like(centroids).index_add_(0, idx.reshape(-1), -contrib.reshape(-1, features.shape[1]))
    g_c = g_c + torch.where(has[:, None], torch.zeros_like(grad_new_c), grad_new_c)
    return g_f, g_c


def max_changed(tol: float, n_pixels: int) -> int:
    """The most pixels whose label may change in a round that ends the iterations: floor(tol · N); -1 (never stop)
    for a negative ``tol``."""
    return -1 if tol < 0 else int(float(tol) * n_pixels)


def round_limits(tol: float, phases, width: int, stride: int) -> list[int]:
    """With row subsampling (``stride`` > 1): the most label changes that end the iterations in a round of phase
    r (the rows whose ``phases`` entry, :meth:`Candidates.row_phases`, is r), :func:`max_changed` of that round's
    pixel count, for r < stride; all -1 (never stop early) when ``tol`` is 0 — a round without changes on a
    subsample is no fixed point of the whole image, so ``tol`` = 0 keeps its meaning "the result of all the
    rounds"."""
    phases = torch.as_tensor(phases)
    return [-1 if tol <= 0 else max_changed(tol, int((phases == r).sum()) * width) for r in range(stride)]


def subsample_rows(stride) -> int:
    """The row stride of the clustering rounds, checked: an int >= 1 (1: every row in every round)."""
    if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride < 1:
        raise ValueError(f"subsample must be an integer >= 1 (rows per round: 1 = every row), got {stride!r}")
    return int(stride)


def hard_converge(features, centroids, cands: Candidates, max_iter: int, tol: float = 0.0, prev_labels=None,
                  subsample: int = 1):
    """Hard iterations until convergence: rounds of (assign, recompute centroids), at most ``max_iter``, then a
    final assignment. A round whose assignment changed the label of at most ``tol`` · N pixels (:func:`max_changed`)
    compared with the round before — the first round too when ``prev_labels`` ((N,) int32, e.g. the previous
    frame's) is given — ends them: its labels and the centroids they were assigned to are the result (no update,
    no final assignment; an unchanged video frame keeps its labels exactly).

    ``tol`` = 0 stops only at a fixed point (unchanged labels give unchanged centroids: the result is that of all
    ``max_iter`` rounds); ``tol`` < 0 runs every round. Returns (labels (N,) int32, centroids (K, D) float32,
    rounds run).

    ``subsample`` = s > 1 (row subsampling, as fast SLIC implementations do): round r assigns only the image rows
    y ≡ r (mod s) (:meth:`Candidates.row_phases`: a stacked tile's own rows, a region's rows in its image), and the
    centroids are the means of those rows' members; the other pixels keep the label they
    last had (-1 before their first round, or ``prev_labels``). A round converges when its rows' labels changed
    on at most :func:`round_limits` pixels against what those rows held; then, as after the last round, one full
    assignment gives the labels. Rounds cost 1/s of a full one; the final assignment is a full one.
    """
    stride = subsample_rows(subsample)
    if stride > 1:
        return hard_converge_rows(features, centroids, cands, max_iter, tol, prev_labels, stride)
    limit = max_changed(tol, features.shape[0])
    prev = prev_labels
    run = 0
    while run < max_iter:
        labels = assign(features, centroids, cands)
        run += 1
        if prev is not None and int((labels != prev.to(labels.device)).sum()) <= limit:
            return labels, centroids, run  # converged: the labels of these centroids are the result
        sums, counts = centroid_sums_hard(features, labels, cands.n_superpixels)
        centroids = new_centroids(sums, counts, centroids)
        prev = labels
    return assign(features, centroids, cands), centroids, run


def hard_converge_rows(features, centroids, cands: Candidates, max_iter: int, tol: float, prev_labels, stride: int,
                       assign_fn=None):
    """:func:`hard_converge` with row subsampling (``stride`` > 1), written plainly: every round assigns every pixel
    (with ``assign_fn``, default :func:`assign`: a backend's own, e.g. the Triton one) and keeps its rows' labels."""
    assign_fn = assign if assign_fn is None else assign_fn
    n = features.shape[0]
    phases = torch.from_numpy(cands.row_phases(stride)).to(features.device)
    row_phase = phases[torch.arange(n, device=features.device) // cands.width]
    limits = round_limits(tol, phases, cands.width, stride)
    held = (torch.full((n,), -1, dtype=torch.int32, device=features.device) if prev_labels is None
            else prev_labels.to(features.device, torch.int32).clone())
    compare = prev_labels is not None
    run = 0
    while run < max_iter:
        phase = run % stride
        sel = row_phase == phase
        labels = assign_fn(features, centroids, cands)
        changed = int((labels[sel] != held[sel]).sum())
        held[sel] = labels[sel]
        run += 1
        if (run > 1 or compare) and changed <= limits[phase]:
            break  # converged on this subsample: the full assignment below is the result
        sums, counts = centroid_sums_hard(features[sel], labels[sel], cands.n_superpixels)
        centroids = new_centroids(sums, counts, centroids)
    return assign_fn(features, centroids, cands), centroids, run


def hard_iterations(features, centroids, cands: Candidates, n_iter: int):
    """``n_iter`` rounds of (assign, recompute centroids), then a final assignment (:func:`hard_converge` with
    ``tol`` = 0: the rounds end early at a fixed point, which changes nothing).

    Returns (labels (N,) int32, centroids (K, D) float32).
    """
    return hard_converge(features, centroids, cands, n_iter)[:2]


def empty_features(height: int, width: int, channels: int, device="cpu") -> torch.Tensor:
    """An uninitialised (D, H, W) float32 feature tensor stored as pixel rows ((H, W, D) storage): ``as_pixel_rows``
    of it is a contiguous (N, D) view, the layout these kernels (and the Triton ones) read."""
    return torch.empty((height, width, channels), dtype=torch.float32, device=device).permute(2, 0, 1)
