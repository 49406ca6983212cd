"""Pixel features: scaled CIE Lab colour and yx position, plus the encoder's learned channels.

The scales (λc, λs and the position factor) live in :mod:`spam_stream.scales` and are re-exported here.
"""
from __future__ import annotations

import numpy as np
import torch

from .color import lab_yx_features
from .encoder import encode_learned
from .scales import COLOR_SCALE, FAST_SPATIAL_SCALE, SPATIAL_SCALE, default_spatial_scale, position_scale  # noqa: F401


def scaled_lab_yx(image: np.ndarray, n_superpixels: int, color_scale: float = COLOR_SCALE,
                  spatial_scale: float = SPATIAL_SCALE, out: torch.Tensor | None = None) -> torch.Tensor:
    """The 5 hand-made channels ``[L, a, b, y, x]`` scaled: (5, H, W) float32 tensor, from an (H, W, 3) uint8 RGB image.

    ``out``: an optional (5, H, W) float32 CPU tensor (any strides) written in place and returned."""
    h, w = image.shape[:2]
    s = position_scale(h, w, n_superpixels, spatial_scale)
    if out is None:
        return torch.from_numpy(lab_yx_features(image, color_scale, s))  # one float32 pass (spam_stream.color)
    lab_yx_features(image, color_scale, s, out=out.numpy())
    return out


def pixel_features(image: np.ndarray, n_superpixels: int, encoder=None, color_scale: float = COLOR_SCALE,
                   spatial_scale: float = SPATIAL_SCALE, device="cpu", memory_budget: int | None = None,
                   tile=None) -> torch.Tensor:
    """Features of every pixel: (D, H, W) float32 tensor; D = 5 without an encoder, ``encoder.out_dim`` with one.

    ``encoder`` is an inference-ready :class:`~spam_stream.encoder.Encoder` (see ``fold_batchnorm``) or None. The
    encoder sees colour at the scale it was trained with (``encoder.input_color_scale``, default λc); the user's
    ``color_scale`` and ``spatial_scale`` apply to the 5 hand-made output channels, so both stay test-time knobs.
    The encoder runs tile by tile (:func:`~spam_stream.encoder.encode_tiled`; ``tile`` or ``memory_budget`` bytes of
    activations, default ``encoder.DEFAULT_MEMORY_BUDGET``) and writes into the one (D, H, W) result: no
    frame-sized activations, no concatenation copy. The result is allocated by ``kernels.empty_features`` in the
    layout the device's kernels read in place (channel planes on the CPU, pixel rows on a GPU), so that neither
    ``as_pixel_rows`` nor the clustering copies it.
    """
    from . import kernels  # the layout is the device's kernels' choice (dispatch lives there)

    h, w = image.shape[:2]
    out = kernels.empty_features(h, w, 5 if encoder is None else encoder.out_dim, device)
    if out.device.type == "cpu":  # Lab + yx written straight into the buffer's first planes
        scaled_lab_yx(image, n_superpixels, color_scale, spatial_scale, out=out[:5])
    else:
        out[:5] = scaled_lab_yx(image, n_superpixels, color_scale, spatial_scale)
    if encoder is None:
        return out
    factor = getattr(encoder, "input_color_scale", COLOR_SCALE) / color_scale
    encode_learned(encoder, out[:3], out[5:], tile, memory_budget, factor)
    return out
