"""Step 2-3 on the device: grid seeds' starting labels and the grid candidate layout as tensors on the frame's device.

Without a prior, the grid layout needs no table: the kernels compute a pixel's 9 candidate cells from its position,
so the only per-pixel inputs are the pixel objects (all 0) and the starting cell of each pixel. Both are built here
directly on the device (no host array, no upload). Object seeds (k-means on yx inside each prior object) and their
candidate table stay on the CPU (:mod:`spam_stream.seeding`, :mod:`spam_stream.candidates`; a numba bucket-grid
search) and go to the device with the Candidates.
"""
from __future__ import annotations

import torch

from .candidates import Candidates


def grid_init_labels_torch(height: int, width: int, grid: tuple[int, int], device) -> torch.Tensor:
    """(H*W,) int32 on ``device``: the grid cell each pixel starts in — equal to ``grid_seeds(...).init_labels``."""
    nh, nw = grid
    cy = torch.arange(height, device=device, dtype=torch.int64) * nh // height
    cx = torch.arange(width, device=device, dtype=torch.int64) * nw // width
    return (cy[:, None] * nw + cx[None, :]).reshape(-1).to(torch.int32)


def grid_candidates_torch(height: int, width: int, grid: tuple[int, int], device) -> Candidates:
    """The grid layout without a prior (every pixel and superpixel in object 0), its tensors on ``device`` — equal
    to :func:`spam_stream.candidates.grid_candidates`."""
    nh, nw = grid
    return Candidates(height, width, torch.zeros(height * width, dtype=torch.int32, device=device),
                      torch.zeros(nh * nw, dtype=torch.int32, device=device), grid=(nh, nw))


__all__ = ["grid_init_labels_torch", "grid_candidates_torch"]
