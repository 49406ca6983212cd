"""Step 1 on the device: the scaled ``[L, a, b, y, x]`` channels of a frame uploaded once as uint8, in torch.

The torch twin of :func:`spam_stream.color.lab_yx_features` / :func:`spam_stream.features.pixel_features`: the frame
goes to the device as (H, W, 3) uint8 (3 bytes per pixel instead of 20 for the float32 channels), Lab comes from
:func:`spam_stream.color.rgb_to_lab_torch` (the same 256-entry sRGB table and white-scaled matrix), positions are
float32 ``row · pos_scale`` and ``column · pos_scale`` as on the CPU, and the encoder (if any) adds its learned
channels through :func:`spam_stream.encoder.encode_learned`, tile by tile, as ``pixel_features`` runs it.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from ..color import rgb_to_lab_torch
from ..scales import COLOR_SCALE, SPATIAL_SCALE, position_scale


def upload(array, device) -> torch.Tensor:
    """An array (or tensor) as a tensor on ``device``: to a GPU through pinned memory, without blocking (the host
    does not wait for the device's queue; the copy is ordered before later work on the stream)."""
    if isinstance(array, torch.Tensor):
        t = array
    else:
        arr = np.ascontiguousarray(array)
        with warnings.catch_warnings():  # read-only arrays (decoded frames) are only read here, never written
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(arr)
    if t.device.type == "cpu" and torch.device(device).type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def upload_image(image, device) -> torch.Tensor:
    """(H, W, 3) uint8 RGB (array or tensor) → the same uint8 tensor on ``device`` (one copy of 3·H·W bytes,
    :func:`upload`)."""
    shape, dtype = tuple(image.shape), image.dtype
    if dtype not in (np.uint8, torch.uint8) or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {dtype} of shape {shape}")
    return upload(image, device)


def lab_yx_torch(image: torch.Tensor, color_scale: float, pos_scale: float, out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Torch twin of :func:`spam_stream.color.lab_yx_features`.

    Args:
        image: (H, W, 3) uint8 RGB tensor on any device.
        color_scale: factor on Lab (λc).
        pos_scale: factor on pixel coordinates (row y, column x).
        out: optional (5, H, W) float32 tensor (any strides, e.g. a view of an (H, W, D) buffer) to write into.
    Returns:
        (5, H, W) float32 on ``image``'s device: ``[L, a, b]·color_scale``, ``[y, x]·pos_scale``.
    """
    h, w = image.shape[:2]
    if out is None:
        out = torch.empty((5, h, w), dtype=torch.float32, device=image.device)
    out[:3] = rgb_to_lab_torch(image.permute(2, 0, 1), channels_first=True)
    out[:3] *= float(color_scale)
    ys, xs = _positions(h, w, float(pos_scale), image.device)
    out[3] = ys[:, None]
    out[4] = xs[None, :]
    return out


@functools.lru_cache(maxsize=16)
def _positions(h: int, w: int, pos_scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(H,) and (W,) float32 row and column positions × ``pos_scale`` on ``device``: float32(i) · float32(s) as on
    the CPU, computed there and uploaded once per size (a video's frames share them; an upload waits for a GPU)."""
    ps = torch.tensor(pos_scale, dtype=torch.float32)
    return ((torch.arange(h, dtype=torch.float32) * ps).to(device),
            (torch.arange(w, dtype=torch.float32) * ps).to(device))


def pixel_features_torch(image, n_superpixels: int, encoder=None, color_scale: float | None = None,
                         spatial_scale: float | None = None, device="cuda", memory_budget: int | None = None,
                         tile=None) -> torch.Tensor:
    """:func:`spam_stream.features.pixel_features` for a GPU-resident frame: (D, H, W) float32 on ``device``.

    ``image`` (H, W, 3) uint8, an array (uploaded once) or a tensor already on ``device``."""
    from ..encoder import encode_learned

    color_scale = COLOR_SCALE if color_scale is None else color_scale
    spatial_scale = SPATIAL_SCALE if spatial_scale is None else spatial_scale
    img = upload_image(image, device)
    h, w = img.shape[:2]
    # a (D, H, W) view of an (H, W, D) buffer, as pixel_features: the kernels' (N, D) rows need no copy
    d = 5 if encoder is None else encoder.out_dim
    out = torch.empty((h, w, d), dtype=torch.float32, device=img.device).permute(2, 0, 1)
    lab_yx_torch(img, color_scale, position_scale(h, w, n_superpixels, spatial_scale), out=out[:5])
    if encoder is None:
        return out
    factor = getattr(encoder, "input_color_scale", COLOR_SCALE) / color_scale
    encode_learned(encoder, out[:3], out[5:], tile, memory_budget, factor)
    return out


__all__ = ["upload", "upload_image", "lab_yx_torch", "pixel_features_torch"]
