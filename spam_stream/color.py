"""RGB → CIE Lab (D65, 2° observer), equal to ``skimage.color.rgb2lab`` within 1e-3, in float32 without
frame-sized float64 temporaries.

The sRGB transfer of a uint8 channel takes only 256 values, so it is a table; the rest (3×3 matrix to XYZ scaled
by the white point, the cube-root companding and the Lab rows) runs per pixel in a numba ``prange`` kernel on the
CPU, or in torch (:func:`rgb_to_lab_torch`) for a frame that already lives on a GPU.

``lab_yx_features`` writes the scaled ``[L, a, b, y, x]`` feature layout (5, H, W) directly, in one pass.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
import torch

# skimage.color.colorconv.xyz_from_rgb and the D65 / 2° reference white of xyz2lab
XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_EPS = 0.008856  # xyz2lab's threshold between the cube root and the linear segment
_KAPPA = 7.787


def srgb_to_linear_table() -> np.ndarray:
    """(256,) float32: the linear-light value of each uint8 sRGB level (skimage's transfer, computed in float64)."""
    v = np.arange(256) / 255.0
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92).astype(np.float32)


def _white_scaled_matrix() -> np.ndarray:
    """(3, 3) float32: rows of XYZ_FROM_RGB divided by the reference white, so that the product is X/Xn, Y/Yn, Z/Zn."""
    return (XYZ_FROM_RGB / WHITE_D65[:, None]).astype(np.float32)


_TABLE = srgb_to_linear_table()
_MATRIX = _white_scaled_matrix()


_CBRT_MAGIC = 709921077  # (127 - 127 / 3) << 23: a first guess of the cube root from the float's bits


def _lab_signature(readonly: bool):
    t = numba.types
    return t.void(t.Array(t.uint8, 3, "C", readonly=readonly), t.Array(t.float32, 1, "C", readonly=True),
                  t.Array(t.float32, 2, "C", readonly=True), t.Array(t.float32, 3, "A"), t.float64, t.float64,
                  t.boolean)


# explicit signatures: one compiled version for every call (a C-contiguous ``out`` and a feature buffer's planes
# alike), loaded at import, so no frame of a stream loads another on first use
@numba.njit([_lab_signature(False), _lab_signature(True)], parallel=True, cache=True, fastmath=True, nogil=True)
def _lab_kernel(image, table, m, out, color_scale, pos_scale, with_yx):
    """image (H, W, 3) uint8 → out (C, H, W) float32: rows 0..2 Lab·color_scale, rows 3, 4 y·pos_scale, x·pos_scale
    when ``with_yx``.

    Per row: the white-scaled XYZ goes to a (3W,) buffer; the cube root is a bit-level first guess refined by two
    Halley steps (relative error < 1e-7), written as plain loops so that they vectorise (libm's cbrtf does not).
    """
    h, w = image.shape[0], image.shape[1]
    cs = np.float32(color_scale)
    ps = np.float32(pos_scale)
    kl, ka, kb = np.float32(116.0) * cs, np.float32(500.0) * cs, np.float32(200.0) * cs
    l0 = np.float32(16.0) * cs
    eps, kappa, c0 = np.float32(_EPS), np.float32(_KAPPA), np.float32(16.0 / 116.0)
    two = np.float32(2.0)
    m00, m01, m02 = m[0, 0], m[0, 1], m[0, 2]
    m10, m11, m12 = m[1, 0], m[1, 1], m[1, 2]
    m20, m21, m22 = m[2, 0], m[2, 1], m[2, 2]
    rows_per_block = 16
    n_blocks = (h + rows_per_block - 1) // rows_per_block
    for blk in numba.prange(n_blocks):
        t = np.empty(3 * w, np.float32)
        y = np.empty(3 * w, np.float32)
        t_bits = t.view(np.uint32)
        y_bits = y.view(np.uint32)
        for i in range(blk * rows_per_block, min(h, (blk + 1) * rows_per_block)):
            for j in range(w):
                r = table[image[i, j, 0]]
                g = table[image[i, j, 1]]
                b = table[image[i, j, 2]]
                t[j] = m00 * r + m01 * g + m02 * b
                t[w + j] = m10 * r + m11 * g + m12 * b
                t[2 * w + j] = m20 * r + m21 * g + m22 * b
            for k in range(3 * w):
                y_bits[k] = t_bits[k] // np.uint32(3) + np.uint32(_CBRT_MAGIC)
            for k in range(3 * w):
                tk = t[k]
                c = y[k]
                c3 = c * c * c
                c = c * (c3 + two * tk) / (two * c3 + tk)
                c3 = c * c * c
                c = c * (c3 + two * tk) / (two * c3 + tk)
                y[k] = c if tk > eps else kappa * tk + c0
            yv = np.float32(i) * ps
            for j in range(w):
                fx, fy, fz = y[j], y[w + j], y[2 * w + j]
                out[0, i, j] = kl * fy - l0
                out[1, i, j] = ka * (fx - fy)
                out[2, i, j] = kb * (fy - fz)
            if with_yx:
                for j in range(w):
                    out[3, i, j] = yv
                    out[4, i, j] = np.float32(j) * ps


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} array of shape {image.shape}")
    return np.ascontiguousarray(image)  # (the kernel's signature: a crop's view is copied)


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """CIE Lab of an sRGB image, as ``skimage.color.rgb2lab`` (D65, 2°) computes it, within 1e-3.

    Args:
        image: (H, W, 3) uint8 RGB.
    Returns:
        (H, W, 3) float32 Lab (L in [0, 100]): a view of a channel-first (3, H, W) buffer (``.transpose(2, 0, 1)``
        gives it back contiguous; ``np.ascontiguousarray`` for a pixel-interleaved copy).
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    out = np.empty((3, h, w), np.float32)
    _lab_kernel(image, _TABLE, _MATRIX, out, 1.0, 0.0, False)
    return out.transpose(1, 2, 0)


def lab_yx_features(image: np.ndarray, color_scale: float, pos_scale: float, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """The scaled hand-made feature channels in one pass: ``[L, a, b]·color_scale`` and ``[y, x]·pos_scale``.

    Args:
        image: (H, W, 3) uint8 RGB.
        color_scale: factor on Lab (λc).
        pos_scale: factor on pixel coordinates (row y, column x).
        out: optional (5, H, W) float32 array (any strides, e.g. the first planes of a feature buffer) to write into.
    Returns:
        (5, H, W) float32 (``out`` when given, else a new C-contiguous array).
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    if out is None:
        out = np.empty((5, h, w), np.float32)
    elif out.shape != (5, h, w) or out.dtype != np.float32:
        raise ValueError(f"out must be (5, {h}, {w}) float32, got {out.dtype} {out.shape}")
    _lab_kernel(image, _TABLE, _MATRIX, out, float(color_scale), float(pos_scale), True)
    return out


@functools.lru_cache(maxsize=8)
def _lab_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The sRGB linearisation table and the RGB → XYZ matrix on ``device``, uploaded once (an upload per frame
    would make the host wait for a GPU)."""
    return torch.from_numpy(_TABLE).to(device), torch.from_numpy(_MATRIX).to(device)


def rgb_to_lab_torch(image: torch.Tensor, channels_first: bool | None = None) -> torch.Tensor:
    """Torch twin of :func:`rgb_to_lab` for a frame already on a device (CPU or CUDA), in float32.

    Args:
        image: uint8 RGB tensor, (3, H, W) or (H, W, 3).
        channels_first: which of the two layouts ``image`` has; None guesses from the shape ((H, W, 3) when the
            last dimension is 3, else (3, H, W)).
    Returns:
        float32 Lab on ``image``'s device, in the same layout as ``image``.
    """
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 (3, H, W) or (H, W, 3) tensor, got {image.dtype} {tuple(image.shape)}")
    if channels_first is None:
        channels_first = image.shape[-1] != 3
    if (image.shape[0] if channels_first else image.shape[-1]) != 3:
        raise ValueError(f"expected 3 colour channels, got shape {tuple(image.shape)}")
    table, m = _lab_constants(image.device)
    rgb = image if channels_first else image.permute(2, 0, 1)
    lin = table[rgb.int()]  # (3, H, W) float32 (int32 indices: no int64 frame-sized temporary)
    t = torch.einsum("cd,dhw->chw", m, lin)
    f = torch.where(t > _EPS, torch.pow(t.clamp_min(_EPS), 1.0 / 3.0), _KAPPA * t + 16.0 / 116.0)
    lab = torch.stack([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])
    return lab if channels_first else lab.permute(1, 2, 0)


def lab_yx_features_torch(image: torch.Tensor, color_scale: float, pos_scale: float,
                          channels_first: bool | None = None) -> torch.Tensor:
    """Torch twin of :func:`lab_yx_features` for a frame on a device: (5, H, W) float32 on ``image``'s device.

    Args:
        image: uint8 RGB tensor, (3, H, W) or (H, W, 3) (see :func:`rgb_to_lab_torch`).
        color_scale: factor on Lab (λc).
        pos_scale: factor on pixel coordinates (row y, column x); the yx rows equal :func:`lab_yx_features`'s.
    """
    if channels_first is None:
        channels_first = image.shape[-1] != 3
    lab = rgb_to_lab_torch(image, channels_first)
    if not channels_first:
        lab = lab.permute(2, 0, 1)
    h, w = lab.shape[1:]
    out = torch.empty((5, h, w), dtype=torch.float32, device=lab.device)
    torch.mul(lab, float(color_scale), out=out[:3])
    s = torch.tensor(pos_scale, dtype=torch.float32, device=lab.device)
    out[3] = (torch.arange(h, dtype=torch.float32, device=lab.device) * s)[:, None]
    out[4] = (torch.arange(w, dtype=torch.float32, device=lab.device) * s)[None, :]
    return out
