"""CPU fast path: fused numba loops over both cores, the default for CPU tensors.

Each pass walks the pixels once: the distances to the ≤9 candidates are computed in registers (never an
(N, 9, D) tensor), the pixel is assigned, and its features are added into per-thread centroid sums (float64) in the
same pass; the per-thread sums are added at the end of the pass. Distances are accumulated channel by channel in the
same order as the reference, so hard labels agree bit for bit.

Why numba: it compiles plain Python loops to vectorised machine code with ``prange`` threads and an on-disk cache,
needs no compiler at install time (unlike a torch C++ extension), and keeps the kernel readable next to its
reference; torch.compile cannot express the per-pixel candidate loop without materialising the gathers.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from .candidates import N_SLOTS, Candidates

INF = np.float32(np.inf)


def _n_chunks(n_rows: int) -> int:
    return max(1, min(n_rows, 4 * numba.get_num_threads()))


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


@njit(parallel=True, cache=True)
def _distances(f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, out):
    n = f.shape[0]
    for p in prange(n):
        idx = np.empty(N_SLOTS, np.int64)
        dist = np.empty(N_SLOTS, np.float32)
        _pixel_distances(p, f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, idx, dist)
        for s in range(N_SLOTS):
            out[p, s] = dist[s]


@njit(parallel=True, cache=True)
def _assign_pass(f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, labels, accumulate, sums, counts):
    """Hard assignment of every pixel; with ``accumulate``, also Σf and counts per (chunk, superpixel)."""
    n, d_count = f.shape
    n_chunks = sums.shape[0]
    for t in prange(n_chunks):
        idx = np.empty(N_SLOTS, np.int64)
        dist = np.empty(N_SLOTS, np.float32)
        for p in range(t * n // n_chunks, (t + 1) * n // n_chunks):
            _pixel_distances(p, f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, idx, dist)
            best = -1
            best_d = INF
            for s in range(N_SLOTS):
                if dist[s] < best_d:
                    best_d = dist[s]
                    best = s
            k = -1 if best < 0 else idx[best]
            labels[p] = k
            if accumulate and k >= 0:
                counts[t, k] += 1.0
                for d in range(d_count):
                    sums[t, k, d] += f[p, d]


@njit(parallel=True, cache=True)
def _soft_pass(f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, q, sums, counts):
    """Soft association q (N, 9) and Σq·f, Σq per (chunk, superpixel)."""
    n, d_count = f.shape
    n_chunks = sums.shape[0]
    for t in prange(n_chunks):
        idx = np.empty(N_SLOTS, np.int64)
        dist = np.empty(N_SLOTS, np.float32)
        for p in range(t * n // n_chunks, (t + 1) * n // n_chunks):
            _pixel_distances(p, f, c, pix_obj, sp_obj, width, height, nh, nw, table, use_table, idx, dist)
            m = INF
            for s in range(N_SLOTS):
                if dist[s] < m:
                    m = dist[s]
            total = np.float32(0.0)
            for s in range(N_SLOTS):
                e = np.float32(0.0) if dist[s] == INF else np.exp(m - dist[s])
                q[p, s] = e
                total += e
            for s in range(N_SLOTS):
                if total > 0:
                    q[p, s] = q[p, s] / total
                w = q[p, s]
                k = idx[s]
                if k >= 0 and w != 0:
                    counts[t, k] += w
                    for d in range(d_count):
                        sums[t, k, d] += w * f[p, d]


@njit(parallel=True, cache=True)
def _soft_backward_pass(f, c, q, pix_obj, sp_obj, width, height, nh, nw, table, use_table, g_q, g_s, g_z,
                        g_f, g_c):
    """Fused gradient of one soft iteration (formulas in reference.soft_iteration_backward); g_c per chunk."""
    n, d_count = f.shape
    n_chunks = g_c.shape[0]
    for t in prange(n_chunks):
        gq = np.empty(N_SLOTS, np.float64)
        idx = np.empty(N_SLOTS, np.int64)
        for p in range(t * n // n_chunks, (t + 1) * n // n_chunks):
            dot = 0.0
            for s in range(N_SLOTS):
                k = _slot(p, s, width, height, nh, nw, table, use_table)
                idx[s] = k
                g = g_q[p, s]
                if k >= 0:
                    acc = g_z[k]
                    for d in range(d_count):
                        acc += g_s[k, d] * f[p, d]
                    g += acc
                    for d in range(d_count):
                        g_f[p, d] += q[p, s] * g_s[k, d]
                gq[s] = g
                dot += q[p, s] * g
            for s in range(N_SLOTS):
                k = idx[s]
                if k < 0 or q[p, s] == 0:
                    continue
                gd = -q[p, s] * (gq[s] - dot)
                for d in range(d_count):
                    v = gd * 2.0 * (f[p, d] - c[k, d])
                    g_f[p, d] += v
                    g_c[t, k, d] -= v


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
    f, po, so, w, h, nh, nw, table, use_table = _args(features, cands)
    labels = np.empty(f.shape[0], np.int32)
    unused = np.zeros((_n_chunks(cands.height), 1, 1), np.float64)
    _assign_pass(f, centroids.detach().contiguous().numpy(), po, so, w, h, nh, nw, table, use_table, labels,
                 False, unused, unused[:, :, 0])
    return torch.from_numpy(labels)


def associate(features, centroids, cands: Candidates):
    return _soft(features, centroids, cands)[0]


def _soft(features, centroids, cands):
    f, po, so, w, h, nh, nw, table, use_table = _args(features, cands)
    chunks = _n_chunks(cands.height)
    q = np.empty((f.shape[0], N_SLOTS), np.float32)
    sums = np.zeros((chunks, cands.n_superpixels, f.shape[1]), np.float64)
    counts = np.zeros((chunks, cands.n_superpixels), np.float64)
    _soft_pass(f, centroids.detach().contiguous().numpy(), po, so, w, h, nh, nw, table, use_table, q, sums, counts)
    return torch.from_numpy(q), torch.from_numpy(sums.sum(0).astype(np.float32)), \
        torch.from_numpy(counts.sum(0).astype(np.float32))


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
def _sums_soft(f, q, pix_obj, width, height, nh, nw, table, use_table, sums, counts):
    n, d_count = f.shape
    n_chunks = sums.shape[0]
    for t in prange(n_chunks):
        for p in range(t * n // n_chunks, (t + 1) * n // n_chunks):
            for s in range(N_SLOTS):
                k = _slot(p, s, width, height, nh, nw, table, use_table)
                w = q[p, s]
                if k >= 0 and w != 0:
                    counts[t, k] += w
                    for d in range(d_count):
                        sums[t, k, d] += w * f[p, d]


def centroid_sums_hard(features, labels, n_superpixels: int):
    f = features.detach().contiguous().numpy()
    chunks = _n_chunks(max(1, f.shape[0] // 256))
    sums = np.zeros((chunks, n_superpixels, f.shape[1]), np.float64)
    counts = np.zeros((chunks, n_superpixels), np.float64)
    _sums_hard(f, labels.contiguous().numpy().astype(np.int64), sums, counts)
    return torch.from_numpy(sums.sum(0).astype(np.float32)), torch.from_numpy(counts.sum(0).astype(np.float32))


def centroid_sums_soft(features, q, cands: Candidates):
    f, po, so, w, h, nh, nw, table, use_table = _args(features, cands)
    chunks = _n_chunks(cands.height)
    sums = np.zeros((chunks, cands.n_superpixels, f.shape[1]), np.float64)
    counts = np.zeros((chunks, cands.n_superpixels), np.float64)
    _sums_soft(f, q.detach().contiguous().numpy(), po, w, h, nh, nw, table, use_table, sums, counts)
    return torch.from_numpy(sums.sum(0).astype(np.float32)), torch.from_numpy(counts.sum(0).astype(np.float32))


def _new_centroids(sums, counts, old):
    s, c = sums.sum(0), counts.sum(0)
    has = c > 0
    out = old.copy()
    out[has] = (s[has] / c[has, None]).astype(np.float32)
    return out


def hard_iterations(features, centroids, cands: Candidates, n_iter: int):
    """(labels (N,) int32, centroids (K, D)) after ``n_iter`` fused assign+accumulate passes and a final assign."""
    f, po, so, w, h, nh, nw, table, use_table = _args(features, cands)
    c = centroids.detach().contiguous().numpy().copy()
    k, chunks = cands.n_superpixels, _n_chunks(cands.height)
    labels = np.empty(f.shape[0], np.int32)
    sums = np.zeros((chunks, k, f.shape[1]), np.float64)
    counts = np.zeros((chunks, k), np.float64)
    for _ in range(n_iter):
        sums[:] = 0
        counts[:] = 0
        _assign_pass(f, c, po, so, w, h, nh, nw, table, use_table, labels, True, sums, counts)
        c = _new_centroids(sums, counts, c)
    _assign_pass(f, c, po, so, w, h, nh, nw, table, use_table, labels, False, sums, counts)
    return torch.from_numpy(labels), torch.from_numpy(c)


def soft_iteration_backward(features, centroids, cands: Candidates, q, counts, new_c, grad_q, grad_new_c):
    """Fused analytic backward of a soft iteration; same formulas as reference.soft_iteration_backward."""
    f, po, so, w, h, nh, nw, table, use_table = _args(features, cands)
    cnt = counts.detach().numpy().astype(np.float64)
    gc_new = grad_new_c.detach().numpy().astype(np.float64)
    has = cnt > 0
    z = np.maximum(cnt, 1e-12)
    g_s = np.where(has[:, None], gc_new / z[:, None], 0.0)
    g_z = np.where(has, -(gc_new * new_c.detach().numpy()).sum(1) / z, 0.0)
    g_q = np.zeros((f.shape[0], N_SLOTS), np.float64) if grad_q is None else grad_q.detach().numpy().astype(np.float64)
    chunks = _n_chunks(cands.height)
    g_f = np.zeros(f.shape, np.float64)
    g_c = np.zeros((chunks,) + tuple(centroids.shape), np.float64)
    _soft_backward_pass(f, centroids.detach().contiguous().numpy(), q.detach().contiguous().numpy(), po, so, w, h,
                        nh, nw, table, use_table, g_q, g_s, g_z, g_f, g_c)
    g_c = g_c.sum(0) + np.where(has[:, None], 0.0, gc_new)
    return torch.from_numpy(g_f.astype(np.float32)), torch.from_numpy(g_c.astype(np.float32))
