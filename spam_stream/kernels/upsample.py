"""Joint bilateral (guided) upsampling of the fast encoder's learned channels (``spam_stream.encoder.fast_encoder``).

The fast encoder runs at reduced resolution; plain bilinear upsampling of its channels smears every feature edge over
the low-resolution sample spacing. Here each full-resolution pixel ``(i, j)`` takes a weighted mean of the
low-resolution samples around it — source rows ``rows[p, i]`` with spatial weights ``row_w[p, i]`` (p < P) times
columns ``cols[q, j]`` with ``col_w[q, j]`` (q < Q): a tent footprint, the 2×2 of bilinear upsampling at support 1 —
each sample weighted by its spatial weight times a colour similarity::

    w_pq = row_w[p] · col_w[q] · φ(max(0, ‖G[:, i, j] − g[:, rows[p], cols[q]]‖² − dmin) · scale)
    out[:, i, j] = Σ w_pq · s[:, rows[p], cols[q]] / Σ w_pq

with φ(x) = (1 + x/64)^−64 ≈ exp(−x) (a Gaussian colour weight, as a rational function that vectorises), ``G`` the
full-resolution colour (the guide), ``g`` the low-resolution colour the encoder saw, ``scale`` = 1/(2σ²) in the
guides' units and ``dmin`` the smallest squared distance among the samples of non-zero spatial weight (it would cancel
in the normalisation of a true exponential; it keeps the largest weight at its spatial weight: no underflow; the clamp
at 0 keeps a zero-weight sample nearer in colour from making 0·inf). So a pixel next to a colour edge takes its
features from the samples on its own side; ``scale = 0`` is the spatial (tent) interpolation alone.

Layouts: low-resolution channels pixel-major (h, w, C) (the channels of one sample are contiguous: one vector
multiply-add per sample), guides and output channel planes (3, h, w), (3, R, W), (C, R, W) (any strides).

* :func:`guided_gather_torch` — plain torch (the reference twin, and the CUDA path);
* :func:`guided_gather_cpu`   — one numba pass, parallel over output rows (the CPU path).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange


def range_weight(x: torch.Tensor) -> torch.Tensor:
    """(1 + x/64)^−64 ≈ exp(−x), x ≥ 0 float32 (the colour weight; a rational function the CPU kernel vectorises)."""
    t = 1.0 + x * 0.015625
    for _ in range(6):
        t = t * t
    return 1.0 / t


def guided_gather_torch(src: torch.Tensor, small_guide: torch.Tensor, guide: torch.Tensor, rows, row_w, cols, col_w,
                        scale: float, out: torch.Tensor) -> torch.Tensor:
    """src (h, w, C) float32 low-resolution channels (pixel-major); small_guide (3, h, w) float32 low-resolution
    colour; guide (3, R, W) float32 full-resolution colour of the output pixels; rows, row_w (P, R) int64 / float32
    source rows and spatial weights of each output row, cols, col_w (Q, W) likewise for columns; ``scale`` = 1/(2σ²)
    ≥ 0; out (C', R, W) float32 (any strides; C' ≤ C: the first C' channels, the others being padding) written and
    returned."""
    dev = src.device
    rows, row_w, cols, col_w = rows.to(dev), row_w.to(dev), cols.to(dev), col_w.to(dev)
    dist, spatial, values = [], [], []
    for p in range(rows.shape[0]):
        g_rows, s_rows = small_guide.index_select(1, rows[p]), src.index_select(0, rows[p])
        for q in range(cols.shape[0]):
            dist.append(((guide - g_rows.index_select(2, cols[q])) ** 2).sum(0))
            spatial.append(row_w[p][:, None] * col_w[q][None, :])
            values.append(s_rows.index_select(1, cols[q])[:, :, :out.shape[0]].permute(2, 0, 1))
    dist, spatial = torch.stack(dist), torch.stack(spatial)  # (P·Q, R, W)
    dmin = torch.where(spatial > 0, dist, torch.full_like(dist, math.inf)).amin(0)
    weight = spatial * range_weight((dist - dmin).clamp_min(0.0) * torch.tensor(scale, dtype=torch.float32))
    weight = weight * (1.0 / weight.sum(0))
    res = weight[0] * values[0]
    for k in range(1, len(values)):
        res = res + weight[k] * values[k]
    out.copy_(res)
    return out


@njit(cache=True, inline="always")
def _range_weight(x):
    """(1 + x/64)^−64 ≈ exp(−x) for x ≥ 0 (within 6 % of the weight where it is ≥ 0.05), in 6 squarings."""
    t = np.float32(1.0) + x * np.float32(0.015625)
    t = t * t
    t = t * t
    t = t * t
    t = t * t
    t = t * t
    t = t * t
    return np.float32(1.0) / t


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _guided(src, small_guide, guide, rows, row_w, cols, col_w, scale, out):
    n_ch, n_rows, n_cols = out.shape
    n_p, n_q = rows.shape[0], cols.shape[0]
    n_s, n_acc = n_p * n_q, src.shape[2]  # n_acc ≥ n_ch: a padded source (16 channels for 15) fills vector lanes
    zero, far = np.float32(0.0), np.float32(3.0e38)
    for i in prange(n_rows):
        dist = np.empty((n_s, n_cols), np.float32)
        weight = np.empty((n_s, n_cols), np.float32)
        dmin = np.full(n_cols, far)
        total = np.zeros(n_cols, np.float32)
        acc = np.zeros((n_cols, n_acc), np.float32)
        for p in range(n_p):
            r, wr = rows[p, i], row_w[p, i]
            for q in range(n_q):
                k = p * n_q + q
                for j in range(n_cols):
                    c = cols[q, j]
                    e0 = guide[0, i, j] - small_guide[0, r, c]
                    e1 = guide[1, i, j] - small_guide[1, r, c]
                    e2 = guide[2, i, j] - small_guide[2, r, c]
                    d = e0 * e0 + e1 * e1 + e2 * e2
                    s = wr * col_w[q, j]
                    dist[k, j] = d
                    weight[k, j] = s
                    dmin[j] = min(dmin[j], d if s > zero else far)
        for k in range(n_s):
            for j in range(n_cols):
                w = weight[k, j] * _range_weight(max(dist[k, j] - dmin[j], zero) * scale)
                weight[k, j] = w
                total[j] += w
        for j in range(n_cols):
            total[j] = np.float32(1.0) / total[j]
        for p in range(n_p):
            r = rows[p, i]
            for q in range(n_q):
                k = p * n_q + q
                for j in range(n_cols):
                    w = weight[k, j] * total[j]
                    c = cols[q, j]
                    for ch in range(n_acc):
                        acc[j, ch] += w * src[r, c, ch]
        for ch in range(n_ch):  # one contiguous row of each output plane
            for j in range(n_cols):
                out[ch, i, j] = acc[j, ch]


def guided_gather_cpu(src: torch.Tensor, small_guide: torch.Tensor, guide: torch.Tensor, rows, row_w, cols, col_w,
                      scale: float, out: torch.Tensor) -> torch.Tensor:
    """:func:`guided_gather_torch` for CPU tensors, in one numba pass (``out`` may be a strided view)."""
    _guided(src.numpy(), small_guide.numpy(), guide.numpy(), rows.numpy(), row_w.numpy(), cols.numpy(),
            col_w.numpy(), np.float32(scale), out.numpy())
    return out


def guided_gather(src: torch.Tensor, small_guide: torch.Tensor, guide: torch.Tensor, rows, row_w, cols, col_w,
                  scale: float, out: torch.Tensor) -> torch.Tensor:
    """The CPU kernel for CPU tensors, torch elsewhere; arguments as :func:`guided_gather_torch`."""
    if src.device.type == "cpu":
        return guided_gather_cpu(src, small_guide, guide, rows, row_w, cols, col_w, scale, out)
    return guided_gather_torch(src, small_guide, guide, rows, row_w, cols, col_w, scale, out)


__all__ = ["guided_gather", "guided_gather_cpu", "guided_gather_torch"]
