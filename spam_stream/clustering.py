"""Step 4 — clustering iterations (SSN): soft association over the candidates and centroid updates.

Soft (differentiable, training): q = softmax(−‖f_p − c_k‖²) over a pixel's valid candidates, c_k = Σ q f / Σ q.
Hard (inference): assign each pixel to its nearest valid candidate, c_k = mean of its members.
The heavy steps run in :mod:`spam_stream.kernels`, which picks the implementation for the tensors' device.
"""
from __future__ import annotations

import torch

from . import kernels
from .kernels.candidates import Candidates


def as_pixel_rows(features: torch.Tensor) -> torch.Tensor:
    """(D, H, W) → (N, D), a view (no copy): contiguous rows for features stored pixel-major, an (N, D) view with
    strides (1, n_cols) for the CPU kernels' channel-major buffers (``kernels.empty_features``); each backend
    copies only a layout it cannot read."""
    return features.reshape(features.shape[0], -1).t()


def initial_centroids(features: torch.Tensor, init_labels: torch.Tensor, n_superpixels: int) -> torch.Tensor:
    """Mean feature of the pixels that start in each seed: (K, D). Differentiable; pixels with label -1 ignored.

    A seed with no starting pixel gets the mean of all features.
    """
    if features.device.type != "cpu":
        return initial_centroids_fixed(features, init_labels, n_superpixels)
    keep = init_labels >= 0
    if bool(keep.all()):  # no uncertain pixel (every grid seeding): no masked copies of the features
        idx, kept = init_labels.long(), features
    else:  # e.g. object seeds: only their k-means sample starts in a seed; gather those rows alone
        pos = torch.nonzero(keep).squeeze(1)
        idx, kept = init_labels.index_select(0, pos).long(), features.index_select(0, pos)
    sums = torch.zeros(n_superpixels, features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, idx, kept)
    counts = torch.bincount(idx, minlength=n_superpixels).to(features.dtype)
    means = sums / counts.clamp(min=1)[:, None]
    if not bool((counts == 0).any()):
        return means  # the fallback (a pass over every pixel) only when a seed has no starting pixel
    fallback = features.mean(0, keepdim=True).expand_as(sums)
    return torch.where(counts[:, None] > 0, means, fallback)


def initial_centroids_fixed(features: torch.Tensor, init_labels: torch.Tensor, n_superpixels: int) -> torch.Tensor:
    """:func:`initial_centroids` in fixed shapes, the GPU's version: every pixel is added, those without a seed into
    an extra row that is dropped, so the host reads nothing (no mask compaction, no ``bincount``, no test of the
    counts). Same (K, D) result up to the float summation order; any device."""
    k, d = n_superpixels, features.shape[1]
    idx = torch.where(init_labels >= 0, init_labels.long(), k)
    sums = torch.zeros(k + 1, d, dtype=features.dtype, device=features.device).index_add(0, idx, features)[:k]
    counts = torch.zeros(k + 1, dtype=features.dtype, device=features.device).index_add(
        0, idx, torch.ones_like(idx, dtype=features.dtype))[:k]
    means = sums / counts.clamp(min=1)[:, None]
    return torch.where(counts[:, None] > 0, means, features.mean(0, keepdim=True))


def cluster_hard(features: torch.Tensor, cands: Candidates, init_labels: torch.Tensor, iterations: int = 10,
                 centroids: torch.Tensor | None = None):
    """Inference: (N,) int32 labels (superpixel index, -1 where no candidate is valid) and (K, D) centroids.

    ``features`` (N, D) float32; ``init_labels`` (N,) int32 starting superpixel of each pixel; ``centroids``
    optional (K, D) starting centroids (e.g. a video's previous frame), used instead of the seeds' cell means when
    given with the right shape. :func:`cluster_converge` with ``tol`` = 0 (the same result).
    """
    return cluster_converge(features, cands, init_labels, iterations, centroids=centroids)[:2]


def cluster_converge(features: torch.Tensor, cands: Candidates, init_labels: torch.Tensor, max_iter: int = 10,
                     tol: float = 0.0, centroids: torch.Tensor | None = None, prev_labels: torch.Tensor | None = None,
                     subsample: int = 1):
    """Hard clustering until convergence: (labels (N,) int32, centroids (K, D), rounds run).

    The iterations stop after the first round that changes the label of at most ``tol`` · N pixels (a fraction;
    0: only at a fixed point, which is the result of all ``max_iter`` rounds), and after ``max_iter`` rounds at
    most. ``prev_labels`` (N,) int32: labels the first round is compared with (a video's previous frame, whose
    centroids start this one), so that an unchanged frame stops after one round. ``subsample`` s > 1: each round
    assigns and averages every s-th image row only (the rows rotate), and one full assignment ends the rounds
    (:func:`spam_stream.kernels.reference.hard_converge`). Other arguments: :func:`cluster_hard`.
    """
    k, d = cands.n_superpixels, features.shape[1]
    if centroids is not None and tuple(centroids.shape) == (k, d):
        centroids = centroids.to(device=features.device, dtype=features.dtype).contiguous()
    else:
        centroids = kernels.initial_centroids(features, init_labels, k)  # the backend's equal, faster twin
        if centroids is None:
            centroids = initial_centroids(features, init_labels, k)
        prev_labels = None
    return kernels.hard_converge(features, centroids, cands, max_iter, tol, prev_labels, subsample)


def cluster_soft(features: torch.Tensor, cands: Candidates, init_labels: torch.Tensor, iterations: int = 5):
    """Training: differentiable SSN iterations. Returns (q (N, 9) of the last iteration, centroids (K, D))."""
    centroids = initial_centroids(features, init_labels, cands.n_superpixels)
    q = None
    for _ in range(iterations):
        q, centroids = kernels.soft_iteration(features, centroids, cands)
    return q, centroids
