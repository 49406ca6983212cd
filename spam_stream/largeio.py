"""Large images read lazily, and large label maps written tile by tile.

* :class:`LargeImage` — a TIFF, BigTIFF, OME-TIFF or GeoTIFF (through ``tifffile``, which comes with
  scikit-image: no new dependency) whose tiles or strips are decoded on demand: ``read(y0, y1, x0, x1)`` decodes
  only the tiles that window meets. A pyramid's level 0 by default, ``level=N`` for another. A tile that fails
  to decode (a truncated file) raises :class:`TileError`, one line naming the tile. A tiled TIFF is never decoded
  whole, so Pillow's decompression-bomb guard (kept for the formats Pillow decodes whole) does not apply to it.
  With ``openslide`` installed (the ``slides`` extra), the whole-slide formats it reads (.svs, .ndpi, .mrxs …) open
  through :class:`SlideImage` with the same interface.
* :func:`write_label_tiff` — labels as a tiled, deflate-compressed uint32 BigTIFF written tile by tile from a
  generator, with the input's resolution and GeoTIFF tags; :func:`read_label_tiff` reads it back whole or a window.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .io import InputError, check_finite

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8", ".ome.tif"}
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"}
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)  # ModelPixelScale … GDAL metadata / nodata
LABEL_TILE = 256


class TileError(InputError):
    """A tile or strip of a large image that cannot be read (truncated or corrupt data)."""


def _rgb(block: np.ndarray) -> np.ndarray:
    if block.ndim == 2:
        block = block[..., None]
    if block.dtype == np.uint16:
        block = (block >> 8).astype(np.uint8)
    elif np.issubdtype(block.dtype, np.floating):  # values in [0, 1], as for arrays (io.as_rgb)
        check_finite(block, "it")
        block = np.clip(block * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif block.dtype != np.uint8:
        block = np.clip(block, 0, 255).astype(np.uint8)
    if block.shape[2] == 1:
        block = np.repeat(block, 3, 2)
    return np.ascontiguousarray(block[..., :3])


class LargeImage:
    """A TIFF read lazily (module docstring): ``shape`` (H, W, 3), ``read(y0, y1, x0, x1)`` → uint8 RGB,
    ``extratags`` (resolution and GeoTIFF tags to copy into outputs), ``close()``."""

    def __init__(self, path, level: int = 0):
        import tifffile

        self.path = Path(path)
        try:
            self._tf = tifffile.TiffFile(self.path)
            series = self._tf.series[0]
            levels = series.levels
            if not 0 <= level < len(levels):
                raise InputError(f"{self.path}: --level {level}: the image has {len(levels)} level(s) "
                                 f"(0..{len(levels) - 1})")
            page = levels[level].keyframe
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{self.path}: unreadable TIFF ({' '.join(str(exc).split())[:200]})") from None
        self._page = page
        if page.planarconfig != 1 and page.samplesperpixel > 1:
            raise InputError(f"{self.path}: planar (separate-plane) TIFFs are not supported")
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.shape = (self.height, self.width, 3)
        chunks = page.chunks
        self._ch, self._cw = int(chunks[0]), int(chunks[1]) if page.is_tiled else self.width
        self._nty = -(-self.height // self._ch)
        self._ntx = -(-self.width // self._cw)
        self._lock = threading.Lock()
        self._cache, self._cached = OrderedDict(), 0
        # six rows of tiles (a row of segmentation tiles with its halos reaches over up to six rows of 512, the
        # next row re-reads the last one), at most 128 MB (a wide image then decodes that last row again)
        self.cache_bytes = min(128 << 20, 6 * self._ntx * self._ch * self._cw * 3)
        self.level = level
        self.extratags = []
        for tag in page.tags.values():
            if tag.code in GEO_TAGS:
                self.extratags.append((tag.code, tag.dtype, tag.count, tag.value, True))
        self.resolution = None
        xr, yr = page.tags.get("XResolution"), page.tags.get("YResolution")
        if xr is not None and yr is not None:
            unit = page.tags.get("ResolutionUnit")
            self.resolution = (xr.value, yr.value, None if unit is None else unit.value)

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        """Decoded tile (ty, tx) as (h, w, 3) uint8, from a small LRU cache: neighbouring segmentation tiles read
        overlapping windows (their halos), so a tile is decoded once, not up to four times."""
        key = (ty, tx)
        with self._lock:
            block = self._cache.get(key)
            if block is not None:
                self._cache.move_to_end(key)
                return block
        try:
            block = _rgb(self._decode(ty, tx))
        except ValueError as exc:  # NaN or ±inf in a float TIFF
            what = "tile" if self._page.is_tiled else "strip"
            raise InputError(f"{self.path}: {what} {ty * self._ntx + tx} (rows {ty * self._ch}.., columns "
                             f"{tx * self._cw}..): {exc}") from None
        with self._lock:
            self._cache[key] = block
            self._cached += block.nbytes
            while self._cached > self.cache_bytes and len(self._cache) > 1:
                self._cached -= self._cache.popitem(last=False)[1].nbytes
        return block

    def _decode(self, ty: int, tx: int) -> np.ndarray:
        index = ty * self._ntx + tx
        page = self._page
        try:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            with self._lock:
                fh = self._tf.filehandle
                fh.seek(offset)
                data = fh.read(count)
            if count == 0 or len(data) < count:
                raise ValueError("the file ends inside it")
            block, _, _ = page.decode(data, index)
        except Exception as exc:
            what = "tile" if page.is_tiled else "strip"
            raise TileError(f"{self.path}: {what} {index} (rows {ty * self._ch}.., columns {tx * self._cw}..) "
                            f"cannot be decoded ({' '.join(str(exc).split())[:120]})") from None
        return block.reshape(block.shape[-3:])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window rows y0..y1-1, columns x0..x1-1 as (h, w, 3) uint8, decoding only the tiles it meets."""
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for ty in range(y0 // self._ch, -(-y1 // self._ch)):
            for tx in range(x0 // self._cw, -(-x1 // self._cw)):
                block = self._tile(ty, tx)
                by, bx = ty * self._ch, tx * self._cw
                a, b = max(y0, by), min(y1, by + self._ch, self.height)
                c, d = max(x0, bx), min(x1, bx + self._cw, self.width)
                out[a - y0:b - y0, c - x0:d - x0] = block[a - by:b - by, c - bx:d - bx]
        return out

    def close(self) -> None:
        self._tf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SlideImage:
    """A whole-slide image through OpenSlide (``pip install 'spam-stream[slides]'``), as :class:`LargeImage`."""

    def __init__(self, path, level: int = 0):
        try:
            import openslide
        except ImportError:
            raise InputError(f"{path}: whole-slide formats need OpenSlide: pip install 'spam-stream[slides]'") from None
        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise InputError(f"{path}: unreadable slide ({' '.join(str(exc).split())[:200]})") from None
        if not 0 <= level < self._slide.level_count:
            raise InputError(f"{path}: --level {level}: the slide has {self._slide.level_count} level(s)")
        self.level = level
        self.width, self.height = self._slide.level_dimensions[level]
        self.shape = (self.height, self.width, 3)
        self._down = self._slide.level_downsamples[level]
        self.extratags, self.resolution = [], None

    def read(self, y0, y1, x0, x1):
        region = self._slide.read_region((int(x0 * self._down), int(y0 * self._down)), self.level,
                                         (x1 - x0, y1 - y0))
        return np.ascontiguousarray(np.asarray(region.convert("RGB")))

    def close(self):
        self._slide.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def is_large_format(path) -> bool:
    """Whether a path is read by :func:`open_large` (a TIFF or a whole-slide format) rather than Pillow."""
    suffix = Path(path).suffix.lower()
    return suffix in TIFF_SUFFIXES or suffix in SLIDE_SUFFIXES


def open_large(path, level: int = 0):
    """:class:`LargeImage` for a TIFF, :class:`SlideImage` for a whole-slide format."""
    if Path(path).suffix.lower() in SLIDE_SUFFIXES:
        return SlideImage(path, level)
    return LargeImage(path, level)


def label_tiles(rows, width: int, tile: int = LABEL_TILE, dtype=np.uint32):
    """The (tile, tile) blocks of label rows in raster order (edge tiles padded with 0), as tifffile's
    tile-by-tile writer takes them. ``rows``: ``(y0, labels)`` pieces in order, of any heights (a row of
    segmentation tiles, or one (H, W) array); at most one row of label tiles is copied."""
    rest = None  # rows carried over (fewer than ``tile``)
    for _, part in rows:
        if rest is not None:
            need = tile - len(rest)
            rest = np.concatenate([rest, part[:need]])
            part = part[need:]
            if len(rest) < tile:
                continue
            yield from _row_of_tiles(rest, width, tile, dtype)
            rest = None
        full = len(part) // tile * tile
        for y in range(0, full, tile):
            yield from _row_of_tiles(part[y:y + tile], width, tile, dtype)
        if full < len(part):
            rest = np.array(part[full:])
        part = None  # not held while the next rows are made
    if rest is not None:
        yield from _row_of_tiles(rest, width, tile, dtype)


def _row_of_tiles(strip, width, tile, dtype):
    for x in range(0, width, tile):
        block = np.zeros((tile, tile), dtype)
        part = strip[:, x:x + tile]
        block[:part.shape[0], :part.shape[1]] = part
        yield block


def write_label_tiff(path, labels, source: LargeImage | None = None, tile: int = LABEL_TILE,
                     shape: tuple[int, int] | None = None, dtype=np.uint32) -> None:
    """Write labels as a tiled deflate BigTIFF (uint32, or ``dtype``), tile by tile, atomically (a temporary name
    renamed when complete; a full disk removes the partial file and raises InputError saying so). ``labels``: an
    (H, W) array, or ``(y0, rows)`` pieces in order (:func:`spam_stream.tiling.iter_bands`) with ``shape`` (H, W):
    then written as they come. ``source``: the input, whose resolution and GeoTIFF tags are copied."""
    import errno

    import tifffile

    from .io import atomic_path

    if shape is None:
        labels = np.asarray(labels)
        shape, labels = labels.shape, [(0, labels)]
    h, w = shape
    options = {}
    if source is not None and source.resolution is not None:
        xr, yr, unit = source.resolution
        options["resolution"] = (xr, yr)
        if unit is not None:
            options["resolutionunit"] = unit
    try:
        with atomic_path(path) as tmp:
            with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
                tw.write(label_tiles(labels, w, tile, dtype), shape=(h, w), dtype=dtype, tile=(tile, tile),
                         compression="zlib", photometric="minisblack",
                         extratags=[] if source is None else source.extratags, **options)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InputError(f"{path}: the disk is full: the partial label TIFF was removed") from None
        raise


def read_label_tiff(path, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A label TIFF as (H, W) int64, or the window (y0, y1, x0, x1) of it (only its tiles decoded)."""
    import tifffile

    if window is None:
        return tifffile.imread(path).astype(np.int64)
    y0, y1, x0, x1 = window
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        th, tw = page.chunks[:2] if page.is_tiled else (page.rowsperstrip, page.imagewidth)
        ntx = -(-page.imagewidth // tw)
        out = np.empty((y1 - y0, x1 - x0), np.int64)
        fh = tf.filehandle
        for ty in range(y0 // th, -(-y1 // th)):
            for tx in range(x0 // tw, -(-x1 // tw)):
                index = ty * ntx + tx
                fh.seek(page.dataoffsets[index])
                block, _, _ = page.decode(fh.read(page.databytecounts[index]), index)
                block = block.reshape(block.shape[-3:-1])
                by, bx = ty * th, tx * tw
                a, b = max(y0, by), min(y1, by + th)
                c, d = max(x0, bx), min(x1, bx + tw)
                out[a - y0:b - y0, c - x0:d - x0] = block[a - by:b - by, c - bx:d - bx]
    return out
