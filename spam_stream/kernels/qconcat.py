"""The int8 encoder's output-conv input in one pass: ``[colour, s1, up(s2), up(s3)]`` as one uint8 map.

The int8 encoder (:class:`spam_stream.encoder.Int8LearnedChannels`) concatenates its quantized colour and scale-1 maps
with its scale-2 and scale-3 maps upsampled bilinearly (``align_corners=False``) to full resolution, all requantized
to the concatenation's (scale, zero point). torch does that as two quantized ``upsample_bilinear2d`` calls and one
``quantized::cat``: three passes over full-resolution 32- to 99-channel maps, together more time than the int8
convolutions around them on an AVX2 CPU. Here the uint8 result is written once, NHWC (a channels-last map's memory).

* :func:`qconcat_torch` — the torch reference twin (quantized upsampling, then ``quantized::cat``);
* :func:`qconcat_cpu`   — one numba pass, parallel over blocks of output rows (each coarse row blended to the
  output's columns once per block): inputs already in the result's quantization are
  copied, the others requantized; the bilinear value is computed from the uint8 levels in float32 and rounded once
  (torch rounds twice: to the coarse map's levels, then to the result's), so the two differ by at most one level
  (a few % of the upsampled values).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import numba
from numba import njit, prange


def qconcat_torch(parts, size, scale: float, zero_point: int) -> torch.Tensor:
    """parts: quint8 (1, C_i, h_i, w_i) maps — full-resolution ones (h_i, w_i) == ``size`` as they are, coarser ones
    upsampled bilinearly to ``size`` — concatenated along channels in the quantization (scale, zero_point)."""
    full = [p if tuple(p.shape[-2:]) == tuple(size) else F.interpolate(p, size=size, mode="bilinear",
                                                                        align_corners=False) for p in parts]
    return torch.ops.quantized.cat(full, 1, scale, zero_point)


@njit(cache=True, nogil=True, inline="always")
def _copy_or_requant(src, zp, ratio, same, out_zp, dst, base):
    """src (w, C) uint8 row → dst[:, base:base + C], requantized unless ``same``."""
    n_ch = src.shape[1]
    if same:
        dst[:, base:base + n_ch] = src
        return
    offset = np.float32(out_zp) - zp * ratio + np.float32(0.5)
    for j in range(src.shape[0]):
        for c in range(n_ch):
            q = np.float32(src[j, c]) * ratio + offset
            dst[j, base + c] = np.uint8(min(np.float32(255.0), max(np.float32(0.0), np.floor(q))))


@njit(cache=True, nogil=True, inline="always")
def _column_blend(src_row, c0, c1, b0, b1, buf):
    """buf[j] = b0[j]·src_row[c0[j]] + b1[j]·src_row[c1[j]]: one source row (w', C) uint8 resampled to the output's
    columns, float32 (w, C)."""
    for j in range(buf.shape[0]):
        t0, t1 = src_row[c0[j]], src_row[c1[j]]
        wb0, wb1 = b0[j], b1[j]
        for c in range(buf.shape[1]):
            buf[j, c] = wb0 * np.float32(t0[c]) + wb1 * np.float32(t1[c])


@njit(cache=True, nogil=True, inline="always")
def _blended(row, other, keys, bufs, src, c0, c1, b0, b1):
    """The slot of ``bufs`` (2, w, C) that holds source row ``row`` blended to the output's columns, computing it
    (into the slot not holding ``other``) unless one already does: consecutive output rows share source rows."""
    if keys[0] == row:
        return 0
    if keys[1] == row:
        return 1
    slot = 1 if keys[0] == other else 0
    _column_blend(src[row], c0, c1, b0, b1, bufs[slot])
    keys[slot] = row
    return slot


@njit(cache=True, nogil=True, inline="always")
def _upsample_row(top, bottom, wa0, wa1, zp, ratio, out_zp, dst, base):
    """One output row from its two source rows blended to the output's columns (``top``/``bottom`` (w, C) float32),
    requantized into dst[:, base:base + C]: level = round((v − zp)·ratio) + out_zp with v the bilinear value of the
    levels (wa0·top + wa1·bottom: the same float32 operations, in the same order, as blending each pixel's four)."""
    n_ch = top.shape[1]
    offset = np.float32(out_zp) - zp * ratio + np.float32(0.5)
    for j in range(dst.shape[0]):
        for c in range(n_ch):
            v = wa0 * top[j, c] + wa1 * bottom[j, c]
            q = np.floor(v * ratio + offset)  # round half up (torch: half to even; only exact halves differ)
            dst[j, base + c] = np.uint8(min(np.float32(255.0), max(np.float32(0.0), q)))


@njit(parallel=True, cache=True, nogil=True)
def _qconcat(col, s1, s2, s3, qp, r2, a2, c2, b2, r4, a4, c4, b4, out, out_scale, out_zp, n_blocks):
    """col (h, w, 3), s1 (h, w, C), s2 (h2, w2, C), s3 (h4, w4, C) uint8; qp (4, 2) float64 (scale, zero point) of
    each; r*, c* (2, n) int64 source rows/columns and a*, b* (2, n) float32 weights of s2 / s3; out (h, w, 3 + 3C).
    Parallel over blocks of consecutive output rows; within a block each coarse source row is blended to the
    output's columns once (two rows of each coarse map kept), not once per output row and pixel."""
    h, w = out.shape[0], out.shape[1]
    nc, n1, n2, n3 = col.shape[2], s1.shape[2], s2.shape[2], s3.shape[2]
    ratio = (qp[:, 0] / out_scale).astype(np.float32)
    zps = qp[:, 1].astype(np.float32)
    same_col = qp[0, 0] == out_scale and qp[0, 1] == out_zp
    same_s1 = qp[1, 0] == out_scale and qp[1, 1] == out_zp
    n_blocks = max(1, min(h, n_blocks))
    for blk in prange(n_blocks):
        bufs2, keys2 = np.empty((2, w, n2), np.float32), np.full(2, -1, np.int64)
        bufs3, keys3 = np.empty((2, w, n3), np.float32), np.full(2, -1, np.int64)
        for i in range(blk * h // n_blocks, (blk + 1) * h // n_blocks):
            dst = out[i]
            _copy_or_requant(col[i], zps[0], ratio[0], same_col, out_zp, dst, 0)
            _copy_or_requant(s1[i], zps[1], ratio[1], same_s1, out_zp, dst, nc)
            t = _blended(r2[0, i], r2[1, i], keys2, bufs2, s2, c2[0], c2[1], b2[0], b2[1])
            b = _blended(r2[1, i], r2[0, i], keys2, bufs2, s2, c2[0], c2[1], b2[0], b2[1])
            _upsample_row(bufs2[t], bufs2[b], a2[0, i], a2[1, i], zps[2], ratio[2], out_zp, dst, nc + n1)
            t = _blended(r4[0, i], r4[1, i], keys3, bufs3, s3, c4[0], c4[1], b4[0], b4[1])
            b = _blended(r4[1, i], r4[0, i], keys3, bufs3, s3, c4[0], c4[1], b4[0], b4[1])
            _upsample_row(bufs3[t], bufs3[b], a4[0, i], a4[1, i], zps[3], ratio[3], out_zp, dst, nc + n1 + n2)


def _nhwc_bytes(q: torch.Tensor):
    """The uint8 levels of a channels-last quint8 (1, C, h, w) map as an (h, w, C) array on its memory, no copy (a
    plain uint8 tensor set on the map's storage: torch ops on ``q.view(torch.uint8)`` itself are not safe)."""
    _, c, h, w = q.shape
    if not q.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("qconcat: maps must be channels-last contiguous")
    raw = torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), (h, w, c), (w * c, c, 1))
    return raw.numpy()


def qconcat_cpu(parts, size, scale: float, zero_point: int, taps) -> torch.Tensor:
    """:func:`qconcat_torch` for [colour, s1, s2, s3] (full-resolution colour and s1, coarser s2 and s3; channels-last
    quint8 CPU maps) in one numba pass; a channels-last quint8 (1, 3 + 3C, *size) result. ``taps``: the bilinear
    source rows and columns of s2 and s3, ``(rows2, cols2, rows3, cols3)``, each (index (2, n) int64, weight (2, n)
    float32) for the n output rows / columns (PyTorch's mapping: ``spam_stream.encoder._source_rows``)."""
    col, s1, s2, s3 = (p.contiguous(memory_format=torch.channels_last) for p in parts)
    h, w = size
    out = torch._empty_affine_quantized((1, col.shape[1] + s1.shape[1] + s2.shape[1] + s3.shape[1], h, w),
                                        scale=float(scale), zero_point=int(zero_point), dtype=torch.quint8,
                                        memory_format=torch.channels_last)
    qp = torch.tensor([[p.q_scale(), p.q_zero_point()] for p in (col, s1, s2, s3)], dtype=torch.float64).numpy()
    (r2, a2), (c2, b2), (r4, a4), (c4, b4) = taps
    _qconcat(_nhwc_bytes(col), _nhwc_bytes(s1), _nhwc_bytes(s2), _nhwc_bytes(s3), qp, r2, a2, c2, b2, r4, a4, c4, b4,
             _nhwc_bytes(out), float(scale), int(zero_point), 4 * numba.get_num_threads())
    return out


# --- the int8 tile's way in and out, from and to the feature planes ---------------------------------------------------
# The float path around the quantized network was four passes with a layout change in two: the colour planes copied
# to a channels-last tile, scaled, quantized; the result dequantized (channels-last) and copied, transposed, into the
# (C, H, W) feature planes. Each of them is one pass here (parallel over rows, no intermediate map).

def quantize_planes_torch(planes: torch.Tensor, factor: float, scale: float, zero_point: int) -> torch.Tensor:
    """planes (C, h, w) float32 (any strides) × ``factor`` quantized to a channels-last quint8 (1, C, h, w) map."""
    x = planes[None].contiguous(memory_format=torch.channels_last)
    if factor != 1.0:
        x = x * factor
    return torch.quantize_per_tensor(x, float(scale), int(zero_point), torch.quint8)


# explicit signatures (any strides): the warm-up's tile and a real frame's take the one compiled version
@njit("void(float32[:, :, :], float32, float32, float32, uint8[:, :, :])", parallel=True, cache=True, nogil=True)
def _quantize_planes(src, factor, inv_scale, zp, out):
    """src (C, h, w) float32 → out (h, w, C) uint8 levels of src·factor: clamp(round_half_even(v·inv_scale) + zp)."""
    n_ch, h, w = src.shape
    lo, hi = np.float32(0.0) - zp, np.float32(255.0) - zp
    for i in prange(h):
        for j in range(w):
            for c in range(n_ch):
                v = np.rint(np.float32(src[c, i, j] * factor) * inv_scale)
                out[i, j, c] = np.uint8(min(hi, max(lo, v)) + zp)


def quantize_planes(planes: torch.Tensor, factor: float, scale: float, zero_point: int) -> torch.Tensor:
    """:func:`quantize_planes_torch` in one numba pass (the same levels but where v·(1/scale) falls within float32
    rounding of a half level: torch computes 1/scale and rounds in its own order)."""
    n_ch, h, w = planes.shape
    out = torch._empty_affine_quantized((1, n_ch, h, w), scale=float(scale), zero_point=int(zero_point),
                                        dtype=torch.quint8, memory_format=torch.channels_last)
    _quantize_planes(planes.numpy(), np.float32(factor), np.float32(1.0) / np.float32(scale),
                     np.float32(zero_point), _nhwc_bytes(out))
    return out


def dequantize_planes_torch(q: torch.Tensor, r0: int, c0: int, out: torch.Tensor) -> torch.Tensor:
    """The window at (r0, c0) of a quint8 (1, C, h, w) map, dequantized into ``out`` (C, h', w') float32."""
    return out.copy_(q.dequantize()[0, :, r0:r0 + out.shape[1], c0:c0 + out.shape[2]])


@njit("void(uint8[:, :, :], int64, int64, float32, float32, float32[:, :, :])", parallel=True, cache=True, nogil=True)
def _dequantize_planes(src, r0, c0, scale, zp, out):
    """src (h, w, C) uint8 levels → out (C, h', w') float32 = (level − zp)·scale of src[r0 + i, c0 + j]."""
    n_ch, oh, ow = out.shape
    for i in prange(oh):
        row = src[r0 + i]
        for c in range(n_ch):
            dst = out[c, i]
            for j in range(ow):
                dst[j] = (np.float32(row[c0 + j, c]) - zp) * scale


def dequantize_planes(q: torch.Tensor, r0: int, c0: int, out: torch.Tensor) -> torch.Tensor:
    """:func:`dequantize_planes_torch` in one numba pass (equal: the same float32 arithmetic); ``q`` channels-last,
    ``out`` a CPU float32 tensor of any strides (a window of the feature planes)."""
    _, n_ch, h, w = q.shape
    if out.shape[0] != n_ch or r0 < 0 or c0 < 0 or r0 + out.shape[1] > h or c0 + out.shape[2] > w:
        raise ValueError(f"dequantize_planes: a {tuple(out.shape)} window at ({r0}, {c0}) of a {tuple(q.shape)} map")
    _dequantize_planes(_nhwc_bytes(q), int(r0), int(c0), np.float32(q.q_scale()), np.float32(q.q_zero_point()),
                       out.numpy())
    return out


__all__ = ["qconcat_cpu", "qconcat_torch", "quantize_planes", "quantize_planes_torch", "dequantize_planes",
           "dequantize_planes_torch"]
