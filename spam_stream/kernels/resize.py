"""Bilinear resampling at given source rows/columns, for the tiled encoder (:func:`spam_stream.encoder.encode_tiled`).

A tile of the encoder upsamples its coarse maps to the frame's rows and columns with the *frame's* bilinear mapping
(``F.interpolate(size=..., align_corners=False)`` of the whole frame), which is not a translation of the tile's own:
so the source rows ``r0, r1`` with weights ``a0, a1`` (and columns ``c0, c1``, ``b0, b1``) are computed once per tile
and the values gathered here. Layout NHWC (a channels-last map's memory order), writing into a view of the output
conv's input buffer.

* :func:`bilinear_gather_torch` — plain torch (the reference twin, and the CUDA path);
* :func:`bilinear_gather_cpu`   — one numba pass, parallel over output rows (the CPU path; 3–4× fewer memory passes).

Both compute ``a0·(b0·s[r0,c0] + b1·s[r0,c1]) + a1·(b0·s[r1,c0] + b1·s[r1,c1])``, PyTorch's own order.
"""
from __future__ import annotations

import torch
from numba import njit, prange


def bilinear_gather_torch(src: torch.Tensor, r0, r1, a0, a1, c0, c1, b0, b1, out: torch.Tensor) -> torch.Tensor:
    """src (h, w, C) float32; r0, r1 (R,) int64 and a0, a1 (R,) float32 source rows and weights; c0, c1, b0, b1
    (Q,) likewise for columns; out (R, Q, C) float32 (any strides) written and returned."""
    dev = src.device
    a0, a1 = a0.to(dev).view(-1, 1, 1), a1.to(dev).view(-1, 1, 1)
    b0, b1 = b0.to(dev).view(1, -1, 1), b1.to(dev).view(1, -1, 1)
    c0, c1 = c0.to(dev), c1.to(dev)
    top, bottom = src.index_select(0, r0.to(dev)), src.index_select(0, r1.to(dev))
    torch.mul(top.index_select(1, c0) * b0 + top.index_select(1, c1) * b1, a0, out=out)
    out.addcmul_(bottom.index_select(1, c0) * b0 + bottom.index_select(1, c1) * b1, a1)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _gather(src, r0, r1, a0, a1, c0, c1, b0, b1, out):
    n_rows, n_cols, n_ch = out.shape
    for i in prange(n_rows):
        top, bottom = src[r0[i]], src[r1[i]]
        wa0, wa1 = a0[i], a1[i]
        for j in range(n_cols):
            wb0, wb1 = b0[j], b1[j]
            t0, t1, u0, u1 = top[c0[j]], top[c1[j]], bottom[c0[j]], bottom[c1[j]]
            dst = out[i, j]
            for c in range(n_ch):
                dst[c] = wa0 * (wb0 * t0[c] + wb1 * t1[c]) + wa1 * (wb0 * u0[c] + wb1 * u1[c])


def bilinear_gather_cpu(src: torch.Tensor, r0, r1, a0, a1, c0, c1, b0, b1, out: torch.Tensor) -> torch.Tensor:
    """:func:`bilinear_gather_torch` for CPU tensors, in one numba pass (``out`` may be a strided view)."""
    _gather(src.numpy(), r0.numpy(), r1.numpy(), a0.numpy(), a1.numpy(), c0.numpy(), c1.numpy(), b0.numpy(),
            b1.numpy(), out.numpy())
    return out


def bilinear_gather(src: torch.Tensor, r0, r1, a0, a1, c0, c1, b0, b1, out: torch.Tensor) -> torch.Tensor:
    """The CPU kernel for CPU tensors, torch elsewhere; arguments as :func:`bilinear_gather_torch`."""
    if src.device.type == "cpu":
        return bilinear_gather_cpu(src, r0, r1, a0, a1, c0, c1, b0, b1, out)
    return bilinear_gather_torch(src, r0, r1, a0, a1, c0, c1, b0, b1, out)


__all__ = ["bilinear_gather", "bilinear_gather_cpu", "bilinear_gather_torch"]
