"""Reading images and partitions, writing label maps and overlays (the decode and write ends of the pipeline)."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".m4v", ".flv",
                  ".wmv", ".ogv", ".3gp", ".y4m", ".gif"}
MAX_LABELS = int(np.iinfo(np.uint16).max) + 1  # a uint16 label PNG holds ids 0..65535


class InputError(Exception):
    """A user input that cannot be used; the message is one line that names the input."""


def _pil_open(path):
    """Pillow's own ``Image.open``. ultralytics (the FastSAM prior) replaces ``PIL.Image.open`` by a wrapper that, on
    an unidentifiable file, tries to install a HEIF plugin from the network; an unreadable input must stay a one-line
    error here."""
    import sys

    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None) if patches is not None else None
    return (original or Image.open)(path)


def check_finite(img: np.ndarray, name: str = "image") -> None:
    """ValueError (one line) for a float array holding NaN or ±inf, which would give meaningless superpixels."""
    bad = ~np.isfinite(img)
    if bad.any():
        kinds = [k for k, m in (("NaN", np.isnan(img)), ("+inf", np.isposinf(img)), ("-inf", np.isneginf(img)))
                 if m.any()]
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite values ({', '.join(kinds)}): replace them "
                         "(e.g. numpy.nan_to_num) or mask them out before segmenting")


def as_rgb(image) -> np.ndarray:
    """Any image array → (H, W, 3) uint8 RGB. Grayscale (H, W) or (H, W, 1) is repeated, RGBA drops alpha,
    float images are taken as values in [0, 1]."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    img = img[:, :, :3]
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"empty image of shape {img.shape}")
    if np.issubdtype(img.dtype, np.floating):
        check_finite(img)
        img = np.clip(img * 255.0 + 0.5, 0, 255)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255)
    return np.ascontiguousarray(img.astype(np.uint8))


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB (grayscale, palette, RGBA and 16-bit images are converted).

    Raises :class:`InputError` (one line naming the file) for a missing, empty, unreadable or non-image file, a
    video (pointing to ``spam-stream video``) and an image above Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``: 2× that many pixels are refused before decoding)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in VIDEO_SUFFIXES - IMAGE_SUFFIXES:
        raise InputError(f"{path}: is a video, not an image: use 'spam-stream video' (or 'spam-stream batch', "
                         "which takes both)")
    if path.suffix.lower() in (".tif", ".tiff", ".btf"):  # read through tifffile: no bomb guard for a tiled TIFF
        from .largeio import LargeImage

        try:
            with LargeImage(path) as big:
                return big.read(0, big.height, 0, big.width)
        except InputError:
            pass  # not a TIFF tifffile reads (e.g. a planar one): Pillow's turn, with its guard
        except MemoryError:
            raise InputError(f"{path}: unreadable image (not enough memory to decode it)") from None
    try:
        with _pil_open(path) as im:
            im.load()
            if im.mode == "F":  # 32-bit float pixels: NaN / inf would be converted to garbage silently
                try:
                    check_finite(np.asarray(im), "float image")
                except ValueError as exc:
                    raise InputError(f"{path}: {exc}") from None
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / max(arr.max(), 1) * 255).astype(np.uint8)
                return np.ascontiguousarray(np.stack([arr] * 3, -1))
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: image too large to decode safely ({' '.join(str(exc).split())})") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data (Pillow raises all three)
        raise InputError(f"{path}: unreadable image ({' '.join(str(exc).split())[:200]})") from None
    except MemoryError:
        raise InputError(f"{path}: unreadable image (not enough memory to decode it)") from None


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
        n_objects = len(np.unique(arr[arr >= 0]))
        if n_objects > MAX_LABELS:
            raise InputError(f"{path}: {n_objects} objects, more than the {MAX_LABELS} superpixels a label map "
                             "holds (each object gets at least one)")
        return np.where(arr < 0, -1, arr).astype(np.int32)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty prior mask file (0 bytes)")
    try:
        with _pil_open(path) as im:
            arr = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: label image too large to decode safely ({' '.join(str(exc).split())})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: unreadable label image ({' '.join(str(exc).split())[:200]})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.int64)
        arr = (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]
    ids, inv = np.unique(arr, return_inverse=True)
    if len(ids) > MAX_LABELS:
        raise InputError(f"{path}: {len(ids)} distinct values, too many for a label image (each value is one "
                         f"object; at most {MAX_LABELS}): is it a photo rather than a mask? (a lossy JPEG of a mask "
                         "is no label image either: save masks as PNG)")
    return inv.reshape(arr.shape).astype(np.int32)


def prepare_outdir(path) -> Path:
    """Create the output folder (and its parents); one-line :class:`InputError` when the path is an existing file,
    lies under one, or cannot be written."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder (outputs go into a folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".spam-stream-write-test-"):
            pass
    except FileExistsError:
        raise InputError(f"{path}: a part of this path is a file, not a folder") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{path}: cannot write there ({reason})") from None
    if not os.access(path, os.W_OK):
        raise InputError(f"{path}: cannot write there (permission denied)")
    return path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success it is renamed to ``path`` (atomic on one filesystem),
    on an exception it is deleted. A crash therefore never leaves a half-written file under the final name.

    The temporary name starts with ``.`` and ends with ``.part`` plus the final suffix (writers that pick a format
    from the suffix still see it)."""
    path = Path(path)
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.part{path.suffix}"
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write (H, W) labels as a uint16 PNG (at most 65536 superpixels), atomically."""
    if labels.max() >= MAX_LABELS:
        raise ValueError(f"{labels.max() + 1} labels do not fit a uint16 PNG (at most {MAX_LABELS})")
    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG", compress_level=1)


COLORS = {"red": (255, 40, 40), "green": (40, 255, 40), "blue": (40, 80, 255), "yellow": (255, 230, 0),
          "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255), "black": (0, 0, 0)}
AUTO_COLORS = ((255, 230, 0), (0, 40, 160))  # yellow on dark pixels, dark blue on bright ones


def parse_color(text: str):
    """``auto``, a name (red, green, blue, yellow, magenta, cyan, white, black), ``R,G,B`` or ``#RRGGBB`` →
    "auto" or an (r, g, b) tuple; ValueError otherwise."""
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    if text in COLORS:
        return COLORS[text]
    try:
        if text.startswith("#") and len(text) == 7:
            rgb = tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(v) for v in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"expected auto, a colour name ({', '.join(COLORS)}), R,G,B or #RRGGBB, got {text!r}")
    return rgb


def overlay(image: np.ndarray, labels: np.ndarray, color=(255, 40, 40)) -> np.ndarray:
    """The image (H, W, 3) uint8 with superpixel boundaries drawn in ``color``: (H, W, 3) uint8.

    ``color="auto"`` draws yellow over dark pixels and dark blue over bright ones, so boundaries show on any
    image."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    out = image.copy()
    edge = np.flatnonzero(boundaries(labels))  # flat pixel indices: gathers/scatters far faster than 2-D masks
    pixels = out.view(_RGB).reshape(-1)  # one 3-byte item per pixel
    if isinstance(color, str) and color == "auto":
        px = image.view(_RGB).reshape(-1)[edge].view(np.uint8).reshape(-1, 3)  # the boundary pixels only
        bright = px.astype(np.int32) @ np.array([299, 587, 114], np.int32) >= 128_000  # luma >= 128
        pixels[edge] = np.asarray(AUTO_COLORS, np.uint8).view(_RGB).reshape(-1)[bright.astype(np.intp)]
    else:
        pixels[edge] = np.asarray(color, np.uint8).view(_RGB)[0]
    return out


_RGB = np.dtype((np.void, 3))


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels with a 4-neighbour of another label, label 0 excluded — what
    ``skimage.segmentation.find_boundaries(labels, mode="inner")`` returns, in a few array passes (5× faster at
    1080p, where the overlay is drawn on every frame of a video)."""
    labels = np.asarray(labels)
    edges = np.zeros(labels.shape, bool)
    d = labels[1:] != labels[:-1]
    edges[1:] |= d
    edges[:-1] |= d
    d = labels[:, 1:] != labels[:, :-1]
    edges[:, 1:] |= d
    edges[:, :-1] |= d
    edges &= labels != 0
    return edges


def write_overlay(path: str | Path, image: np.ndarray, labels: np.ndarray, color=(255, 40, 40)) -> None:
    """Write the overlay of ``labels`` on ``image`` as an image file (format from the suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(overlay(image, labels, color)).save(tmp, format=Image.registered_extensions().get(
            path.suffix.lower(), "PNG"))
