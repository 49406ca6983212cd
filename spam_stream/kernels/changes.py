"""What changed between two video frames: the per-pixel measures a video's warm start decides with, with reference
twins.

A video's temporal steps (:mod:`spam_stream.pipelines.temporal`) compare every frame with the previous one on the
host, serially, before the expensive stages may run; in numpy each comparison made (H, W, 3) int16 temporaries and
reduced over the 3-channel axis (slow), ≈ 35 ms per 1280×720 frame. These numba kernels read the uint8 frames once,
in one pass, and release the GIL (a pipeline runs other stages meanwhile). Each has a numpy twin it is tested against
(``*_reference``), equal exactly.

* :func:`grey_blocks` — (H // f, W // f) float32 grey (R + 2G + B) block sums (the motion estimator's small frames).
* :func:`moved_difference` — (H, W) uint8 per-pixel difference (worst channel) between a frame and the previous one
  moved by (dy, dx); 255 where the moved previous frame does not reach.
* :func:`window_difference` — (mean, max) of the same difference between a window of a frame and a stored
  reference window (a tile whose features were computed from it).
"""
from __future__ import annotations

import numpy as np
from numba import njit


def grey_blocks(image: np.ndarray, factor: int) -> np.ndarray:
    """(H // factor, W // factor) float32 sums of R + 2G + B over factor × factor blocks of an (H, W, 3) uint8 image
    (rows and columns beyond the last whole block ignored)."""
    return _grey_blocks(np.ascontiguousarray(image), int(factor))


def grey_blocks_reference(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    img = image[:h, :w]
    if factor > 1:
        img = img.reshape(h // factor, factor, w // factor, factor, 3).sum((1, 3), dtype=np.uint32)
    return (img[..., 0] + 2 * img[..., 1].astype(np.uint32) + img[..., 2]).astype(np.float32)


@njit(cache=True, nogil=True)
def _grey_blocks(image, factor):
    h, w = image.shape[0] // factor, image.shape[1] // factor
    out = np.zeros((h, w), np.float32)
    for i in range(h):
        for y in range(i * factor, (i + 1) * factor):
            for j in range(w):
                s = 0
                for x in range(j * factor, (j + 1) * factor):
                    s += np.int64(image[y, x, 0]) + 2 * np.int64(image[y, x, 1]) + np.int64(image[y, x, 2])
                out[i, j] += s
    return out


def moved_difference(image: np.ndarray, prev: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(H, W) uint8: max over the channels of |image[y, x] − prev[y − dy, x − dx]| for (H, W, 3) uint8 frames of
    one size, 255 where (y − dy, x − dx) lies outside the frame."""
    if image.shape != prev.shape:
        raise ValueError(f"frames of different sizes: {image.shape} and {prev.shape}")
    return _moved_difference(np.ascontiguousarray(image), np.ascontiguousarray(prev), int(dy), int(dx))


def moved_difference_reference(image: np.ndarray, prev: np.ndarray, dy: int, dx: int) -> np.ndarray:
    h, w = image.shape[:2]
    diff = np.full((h, w), 255, np.int16)
    ys, yp = slice(max(0, dy), h + min(0, dy)), slice(max(0, -dy), h + min(0, -dy))
    xs, xp = slice(max(0, dx), w + min(0, dx)), slice(max(0, -dx), w + min(0, -dx))
    diff[ys, xs] = np.abs(image[ys, xs].astype(np.int16) - prev[yp, xp]).max(-1)
    return diff.astype(np.uint8)


@njit(cache=True, nogil=True)
def _moved_difference(image, prev, dy, dx):
    h, w = image.shape[0], image.shape[1]
    out = np.full((h, w), 255, np.uint8)
    for y in range(max(0, dy), h + min(0, dy)):
        for x in range(max(0, dx), w + min(0, dx)):
            m = 0
            for c in range(3):
                d = abs(np.int32(image[y, x, c]) - np.int32(prev[y - dy, x - dx, c]))
                m = max(m, d)
            out[y, x] = m
    return out


def window_difference(image: np.ndarray, rows: slice, cols: slice, ref: np.ndarray) -> tuple[float, int]:
    """(mean, max) over the window ``image[rows, cols]`` of the per-pixel difference (worst channel) with ``ref``,
    a uint8 window of the same shape (h, w, 3)."""
    return _window_difference(image, rows.start, rows.stop, cols.start, cols.stop, np.ascontiguousarray(ref))


def window_difference_reference(image: np.ndarray, rows: slice, cols: slice, ref: np.ndarray) -> tuple[float, int]:
    diff = np.abs(image[rows, cols].astype(np.int16) - ref).max(-1)
    return float(diff.mean()), int(diff.max())


@njit(cache=True, nogil=True)
def _window_difference(image, y0, y1, x0, x1, ref):
    total, top = 0, 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            m = 0
            for c in range(3):
                d = abs(np.int32(image[y, x, c]) - np.int32(ref[y - y0, x - x0, c]))
                m = max(m, d)
            total += m
            top = max(top, m)
    n = (y1 - y0) * (x1 - x0)
    return total / max(1, n), top
