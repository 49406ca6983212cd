"""Reading images and partitions, writing label maps and overlays (the decode and write ends of the pipeline)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage.segmentation import find_boundaries

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}


class InputError(Exception):
    """A user input that cannot be used; the message is one line that names the input."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB (grayscale, palette, RGBA and 16-bit images are converted)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / max(arr.max(), 1) * 255).astype(np.uint8)
                return np.ascontiguousarray(np.stack([arr] * 3, -1))
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file (format not recognised)") from None
    except OSError as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from None


def read_partition(path: str | Path) -> np.ndarray:
    """Read a prior partition: (H, W) int32, -1 = uncertain.

    ``.npy`` files hold the integer array itself (negative = uncertain). Image files (PNG, TIFF…) are label images:
    each distinct value is one object (an RGB label image is read as colour triplets).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: prior mask file not found")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{path}: unreadable .npy partition ({exc})") from None
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{path}: a partition must be a 2-D integer array, got {arr.dtype} {arr.shape}")
        return np.where(arr < 0, -1, arr).astype(np.int32)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: unreadable label image ({exc})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.int64)
        arr = (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]
    _, inv = np.unique(arr, return_inverse=True)
    return inv.reshape(arr.shape).astype(np.int32)


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write (H, W) labels as a uint16 PNG (at most 65536 superpixels)."""
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{labels.max() + 1} labels do not fit a uint16 PNG")
    Image.fromarray(labels.astype(np.uint16)).save(path)


def overlay(image: np.ndarray, labels: np.ndarray, color=(255, 40, 40)) -> np.ndarray:
    """The image with superpixel boundaries drawn in ``color``: (H, W, 3) uint8."""
    out = image.copy()
    out[find_boundaries(labels, mode="inner")] = color
    return out


def write_overlay(path: str | Path, image: np.ndarray, labels: np.ndarray) -> None:
    Image.fromarray(overlay(image, labels)).save(path)
