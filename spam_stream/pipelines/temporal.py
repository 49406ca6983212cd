"""Temporal coherence for video: warm starts and superpixel ids that persist from frame to frame.

* **Motion.** The global motion between consecutive frames is measured by phase correlation on small grey frames
  (:class:`MotionEstimator`, in the seed stage: ``frame.meta["motion"]`` = (dy, dx) pixels).
* **Warm start that follows the motion.** While the prior partition is the same (no prior, or a prior reused
  between ``--prior-every`` refreshes), frame t+1 reuses frame t's seeds and candidates and starts clustering from
  frame t's final centroids. Still content: at most ``warm_iterations`` rounds, stopping as soon as the labels stop
  changing (compared with frame t's); moved content: each centroid is moved with the content and handed to the
  seed cell it now lies in (:func:`follow_motion`; a cell nobody moved into starts from its own pixels), then up
  to the model's iterations until converged — the superpixels follow the content instead of restarting from a grid.
* **Features where the picture changed.** The encoder runs only on the tiles whose input changed beyond
  compression noise since their features were computed (:class:`WarmFeatures`); static regions keep theirs. When
  the picture moved as a whole, the previous features are moved with it and only the band that came into view
  (plus the encoder's reach) and the tiles that do not match the moved picture are recomputed.
* **Persistent ids.** Superpixel k of frame t+1 is the same cluster as superpixel k of frame t (or, after a move,
  as the cluster it was handed from: ``meta["cluster_origin"]``), so it keeps its id.
  When the seeds are made anew (a new prior), ids carry over by overlap: a new superpixel takes the id of the old
  one it shares more than half of its pixels with, when that old superpixel also gives it more than half of its
  own. Everything else gets a fresh id; an id whose superpixel disappears is retired. Ids never exceed
  ``max_id`` (65535, the uint16 label PNG): past it, the longest-retired ids are reused.

Each class here is a stateful pipeline step: it must see the frames in order (one thread, as the executor runs it).
"""
from __future__ import annotations

import functools

from collections import deque

import numpy as np
import torch

from ..encoder import ALIGN, HALO
from ..frame import Frame

MOVING_TOL = 0.015
"""Convergence tolerance of a frame whose content moved, when the model has none of its own (its ``tol`` = 0)."""
STILL_TOL = 0.005
"""Convergence tolerance of a still frame (compared with the previous frame's labels), when the model has none."""


def grey_small(image: np.ndarray, factor: int) -> np.ndarray:
    """(H // factor, W // factor) float32 grey (R + 2G + B) of an (H, W, 3) uint8 image, by block sums."""
    from ..kernels.changes import grey_blocks

    return grey_blocks(image, factor)


def _overlap(a: np.ndarray, b: np.ndarray, dy: int, dx: int):
    """The parts of ``b`` and ``a`` that show the same content when b's content is a's moved by (dy, dx)."""
    h, w = a.shape[:2]
    return (b[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)],
            a[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)])


@functools.lru_cache(maxsize=8)
def _hann(shape: tuple[int, int]) -> np.ndarray:
    """The separable 2-D Hann window (the outer product of numpy's, as OpenCV's ``createHanningWindow`` makes for
    its phase correlation). Not ``skimage.filters.window``: its import loads ``scipy.signal``, 0.4-0.8 s of a fresh
    process's start (a tenth of a short clip's whole run), for a window numpy gives in microseconds."""
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


def phase_shift(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """(dy, dx) float: the shift that registers ``moving`` with ``reference`` (two (H, W) float images), as
    :func:`skimage.registration.phase_cross_correlation` defines it — by phase correlation of the two images
    (mean removed, Hann window: without it, a crop's borders correlate with themselves and smooth content gives
    a peak at no shift), refined below a pixel by a parabola through the peak and its neighbours on each axis.
    numpy's FFT only: skimage's upsampled-DFT refinement multiplies matrices, and a BLAS that threads them
    busy-waits on the cores the stages need (a pipelined 481×321 video lost a fifth of its frame rate)."""
    win = _hann(reference.shape)
    cross = np.fft.rfft2((reference - reference.mean()) * win) * np.fft.rfft2((moving - moving.mean()) * win).conj()
    cross /= np.maximum(np.abs(cross), 100 * np.finfo(np.float32).eps)
    corr = np.fft.irfft2(cross, reference.shape)
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    shift = np.zeros(2)
    for axis, n in enumerate(corr.shape):
        i = peak[axis]
        around = [corr[tuple((i + d) % n if a == axis else peak[a] for a in range(2))] for d in (-1, 0, 1)]
        curve = around[0] - 2 * around[1] + around[2]
        offset = 0.5 * (around[0] - around[2]) / curve if curve < 0 else 0.0
        at = i + float(np.clip(offset, -0.5, 0.5))
        shift[axis] = at - n if at > n // 2 else at
    return shift


def _textured_crop(small: np.ndarray, factor: int, c: int, h: int, w: int) -> tuple[int, int]:
    """Top-left corner of the c×c crop of an (h, w) frame, among the centre and the centres of its four quadrants,
    whose content has the most gradient in the block-summed grey ``small`` (a smooth crop — sky, a wall, an
    enlarged picture — has no phase-correlation peak; the centre wins ties)."""
    gy, gx = np.abs(np.diff(small, axis=0)), np.abs(np.diff(small, axis=1))
    best, corner = -1.0, None
    for cy, cx in ((h // 2, w // 2), (h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4),
                   (3 * h // 4, 3 * w // 4)):
        y0, x0 = min(max(0, cy - c // 2), h - c), min(max(0, cx - c // 2), w - c)
        sy, sx = slice(y0 // factor, -(-(y0 + c) // factor)), slice(x0 // factor, -(-(x0 + c) // factor))
        energy = float(gy[sy, sx].mean()) + float(gx[sy, sx].mean()) if min(small[sy, sx].shape) > 1 else 0.0
        if energy > best * 1.05:  # clearly more texture than the best so far (the centre first)
            best, corner = energy, (y0, x0)
    return corner


class MotionEstimator:
    """Global motion between consecutive frames: ``estimate(image)`` → (dy, dx) float pixels that the content moved
    since the previous image (``image[y, x] ≈ previous[y - dy, x - dx]``), or None for the first image or a new
    size.

    Phase correlation (:func:`phase_shift`: windowed, below a pixel) of grey frames block-summed to about
    ``side`` pixels on their short side, then refined on a full-resolution crop of about ``side`` pixels — the most
    textured of the centre and the quadrants' centres (a few milliseconds in all). A shift that does not make the
    small frames more alike than no shift does (a cut, a flash, motion that is not global) counts as no motion.
    """

    def __init__(self, side: int = 128):
        self.side = int(side)
        self._prev: tuple | None = None  # (small grey, image)

    def estimate(self, image: np.ndarray):
        h, w = image.shape[:2]
        factor = max(1, -(-min(h, w) // self.side))
        small = grey_small(image, factor)
        prev, self._prev = self._prev, (small, image)
        if prev is None or prev[1].shape != image.shape or min(small.shape) < 8:
            return None
        coarse = -phase_shift(prev[0], small)  # below a small pixel: a pan slower than half a block is seen
        sy, sx = int(round(coarse[0])), int(round(coarse[1]))
        if abs(sy) >= small.shape[0] // 2 or abs(sx) >= small.shape[1] // 2:
            return 0.0, 0.0
        moved, before = _overlap(prev[0], small, sy, sx)
        if (sy or sx) and np.abs(moved - before).mean() >= np.abs(small - prev[0]).mean():
            return 0.0, 0.0  # the shift explains nothing
        dy, dx = float(coarse[0]) * factor, float(coarse[1]) * factor
        if factor > 1:  # refine on a full-resolution crop, offset by the coarse shift: the most textured of five
            c = min(self.side, h // 2, w // 2)
            y0, x0 = _textured_crop(prev[0], factor, c, h, w)
            oy, ox = int(round(dy)), int(round(dx))
            y1, x1 = min(max(0, y0 + oy), h - c), min(max(0, x0 + ox), w - c)
            a = grey_small(prev[1][y0:y0 + c, x0:x0 + c], 1)
            b = grey_small(image[y1:y1 + c, x1:x1 + c], 1)
            fine = -phase_shift(a, b)
            dy, dx = (y1 - y0) + float(fine[0]), (x1 - x0) + float(fine[1])
        if abs(dy) < 0.5 and abs(dx) < 0.5:
            return 0.0, 0.0
        return dy, dx


class PriorSchedule:
    """Runs the prior every ``every`` frames and hands the same partition to the frames in between."""

    def __init__(self, model, every: int = 1, attention=None, attention_ratio: float = 2.5, focus=None):
        self.model, self.every = model, max(1, int(every))
        self.attention, self.attention_ratio, self.focus = attention, attention_ratio, focus
        self._last: Frame | None = None  # the frame whose prior is being reused

    def __call__(self, frame: Frame) -> Frame:
        last = self._last
        same_shape = last is not None and last.image.shape == frame.image.shape
        fixed = same_shape and frame.prior is not None and frame.prior is last.prior and isinstance(
            frame.prior, np.ndarray)  # one partition given for every frame
        reuse = same_shape and (fixed or frame.index - last.index < self.every)
        if reuse:
            frame.partition, frame.density = last.partition, last.density
            frame.meta["prior_frame"] = last.meta["prior_frame"]
            frame.timings["prior"] = 0.0
            return frame
        self.model.prior_stage(frame, self.attention, self.attention_ratio, self.focus)
        no_prior = frame.prior is None and self.model.prior is None
        frame.meta["prior_frame"] = "none" if no_prior else frame.index
        self._last = frame
        return frame


class WarmSeeds:
    """Seed stage that reuses the previous frame's seeds and candidates while the prior stays the same."""

    def __init__(self, model, coherent: bool = True):
        self.model, self.coherent = model, coherent
        self._prev: tuple | None = None  # (prior frame, shape, K, seeds, cands)
        self.motion = MotionEstimator()

    def __call__(self, frame: Frame) -> Frame:
        if self.coherent and frame.image is not None:
            with frame.timed("seeds"):
                frame.meta["motion"] = self.motion.estimate(frame.image)
        sig = (frame.meta.get("prior_frame"), frame.image.shape, frame.n_superpixels)
        if self.coherent and self._prev is not None and self._prev[0] == sig:
            frame.seeds, frame.cands = self._prev[1], self._prev[2]
            frame.meta["reseeded"] = False
            frame.timings.setdefault("seeds", 0.0)
        else:
            self.model.seed_stage(frame)
            frame.meta["reseeded"] = True
        self._prev = (sig, frame.seeds, frame.cands)
        return frame


class WarmFeatures:
    """Feature stage that recomputes the encoder only where the picture changed (CPU, full-resolution encoder).

    The encoder's output at a pixel depends only on the input within :data:`spam_stream.encoder.HALO` pixels, so
    the frame is cut into ``tile``-pixel tiles, and a tile whose input window (tile + halo) still matches the window
    its features were computed from — mean absolute difference ≤ ``mean_threshold`` and maximum ≤
    ``max_threshold`` (uint8 levels, worst channel; compression noise stays below them, motion does not) — keeps
    its learned channels; the others are recomputed exactly as :func:`spam_stream.encoder.encode_tiled` computes
    them. The 5 colour/position channels are always the current frame's. When more than ``max_changed`` of the
    tiles changed, the whole frame is recomputed the normal way. ``coherent=False``, a fast (reduced-resolution)
    encoder, no encoder, or a CUDA model: the plain feature stage.

    Motion (``frame.meta["motion"]``, whole pixels after rounding): the previous learned channels are moved with the
    picture; recomputed are the band that came into view widened by the encoder's reach (HALO), so that no feature
    computed next to a frame border is carried inside, and the ``tile`` tiles whose window does not match the
    moved previous picture (local motion, occlusions). The moved features are those of the same content one
    frame earlier; they differ from a fresh computation only by the encoder's dependence on where the content
    sits on its 4-pixel pooling grid and near the frame borders (measured in BENCHMARKS.md, issue 23).

    Three steps, so that a pipeline can run the expensive one on several frames at once: :meth:`plan` (stateful,
    cheap: which regions to recompute, from the pictures alone, in ``meta["feature_plan"]``), :meth:`compute`
    (stateless: the frame's colour/position channels and the encoder on the planned regions — everything that
    costs) and :meth:`assemble` (stateful, cheap: the previous frame's features, moved, everywhere else). Plan and
    assemble must each see the frames in order; ``warm(frame)`` does the three in turn.
    """

    def __init__(self, model, coherent: bool = True, tile: int = 128, mean_threshold: float = 2.0,
                 max_threshold: int = 48, max_changed: float = 0.4):
        self.model, self.coherent = model, coherent
        self.tile = -(-int(tile) // ALIGN) * ALIGN
        self.mean_threshold, self.max_threshold, self.max_changed = mean_threshold, max_threshold, max_changed
        self._refs: dict[tuple, np.ndarray] = {}  # tile core origin → the input window its features came from
        self._sig = None
        self._image = None  # the previous frame (the moved picture is compared with it)
        self._planned = 0  # frames planned; a plan names the frame whose features it builds on
        self._features = None  # the last assembled frame's features ...
        self._assembled = 0  # ... and its number (1-based; 0: none)

    def _usable(self) -> bool:
        enc = self.model.encoder
        return (self.coherent and enc is not None and self.model.device.type == "cpu"
                and float(getattr(enc, "resolution", 1.0)) == 1.0)

    def _windows(self, h: int, w: int):
        for c0 in range(0, h, self.tile):
            for d0 in range(0, w, self.tile):
                c1, d1 = min(h, c0 + self.tile), min(w, d0 + self.tile)
                yield (c0, c1, d0, d1), (slice(max(0, c0 - HALO), min(h, c1 + HALO)),
                                         slice(max(0, d0 - HALO), min(w, d1 + HALO)))

    def __call__(self, frame: Frame) -> Frame:
        return self.assemble(self.compute(self.plan(frame)))

    # -- 1. plan (stateful, pictures only) ------------------------------------------------------------------------
    def plan(self, frame: Frame) -> Frame:
        """Decide what :meth:`compute` recomputes: ``meta["feature_plan"]`` = (kind, builds on, ...) with kind
        "full", "static" (changed tiles) or "moved" (shift, bands, changed tiles); ``meta["tiles_recomputed"]``."""
        if not self._usable():
            return frame
        with frame.timed("features"):
            self._plan(frame)
        return frame

    def _plan(self, frame: Frame) -> None:
        from ..kernels.changes import window_difference

        image = frame.image
        h, w = image.shape[:2]
        sig = (image.shape, frame.n_superpixels)
        before, self._planned = self._planned, self._planned + 1
        motion = frame.meta.get("motion")
        shift = (0, 0) if motion is None else (int(round(motion[0])), int(round(motion[1])))
        if before and sig == self._sig and shift != (0, 0):
            moved = self._plan_moved(image, shift)
            if moved is not None:
                band_y, band_x, changed, area = moved
                self._refs = {core: image[win].copy() for core, win in self._windows(h, w)}
                self._image = image
                frame.meta["feature_plan"] = ("moved", before, shift, band_y, band_x, changed)
                frame.meta["tiles_recomputed"] = min(1.0, area)
                return
        changed = set()
        if before and sig == self._sig:
            for core, win in self._windows(h, w):
                mean, top = window_difference(image, win[0], win[1], self._refs[core])
                if mean > self.mean_threshold or top > self.max_threshold:
                    changed.add(core)
        if not before or sig != self._sig or len(changed) > self.max_changed * len(self._refs):
            frame.meta["feature_plan"] = ("full", before)
            frame.meta["tiles_recomputed"] = 1.0
            self._refs = {core: image[win].copy() for core, win in self._windows(h, w)}
        else:
            frame.meta["feature_plan"] = ("static", before, changed)
            frame.meta["tiles_recomputed"] = len(changed) / max(1, len(self._refs))
            for core, win in self._windows(h, w):
                if core in changed:
                    self._refs[core] = image[win].copy()
        self._sig, self._image = sig, image

    def _plan_moved(self, image: np.ndarray, shift: tuple[int, int]):
        """(band rows, band columns, changed tiles, area recomputed) for a picture moved by ``shift`` (dy, dx) whole
        pixels since the previous frame; None when too much would be recomputed."""
        from ..kernels.changes import moved_difference

        prev = self._image
        h, w = image.shape[:2]
        dy, dx = shift
        if abs(dy) >= h // 3 or abs(dx) >= w // 3:
            return None
        # the tiles whose window does not match the moved previous picture (outside it counts as not matching)
        diff = moved_difference(image, prev, dy, dx)
        band_y = -(-(abs(dy) + HALO) // ALIGN) * ALIGN if dy else 0  # rows / columns that came into view + reach
        band_x = -(-(abs(dx) + HALO) // ALIGN) * ALIGN if dx else 0
        inner_y, inner_x = _inner(h, dy, band_y), _inner(w, dx, band_x)
        changed = set()
        for core, win in self._windows(h, w):
            c0, c1, d0, d1 = core
            if c1 <= inner_y.start or c0 >= inner_y.stop or d1 <= inner_x.start or d0 >= inner_x.stop:
                continue  # entirely inside the bands: recomputed with them
            wy = slice(max(win[0].start, inner_y.start), min(win[0].stop, inner_y.stop))
            wx = slice(max(win[1].start, inner_x.start), min(win[1].stop, inner_x.stop))
            d = diff[wy, wx]
            if d.mean() > self.mean_threshold or d.max() > self.max_threshold:
                changed.add(core)
        area = (band_y * w + band_x * h) / (h * w) + len(changed) / max(1, len(self._refs))
        if area > self.max_changed:
            return None
        return band_y, band_x, changed, area

    # -- 2. compute (stateless: safe on several frames at once) ----------------------------------------------------
    def compute(self, frame: Frame) -> Frame:
        """The planned features of ``frame``: all of them ("full", or no plan), else its colour/position channels
        and the encoder's channels of the planned regions only (the rest is filled in by :meth:`assemble`)."""
        from .. import kernels
        from ..encoder import encode_tiled
        from ..features import COLOR_SCALE, scaled_lab_yx

        plan = frame.meta.get("feature_plan")
        if plan is None or plan[0] == "full":
            return self.model.feature_stage(frame)
        model, enc, image = self.model, self.model.encoder, frame.image
        h, w = image.shape[:2]
        with frame.timed("features"):
            out = kernels.empty_features(h, w, model.n_features, model.device)
            scaled_lab_yx(image, frame.n_superpixels, model.color_scale, model.compactness, out=out[:5])
            factor = getattr(enc, "input_color_scale", COLOR_SCALE) / model.color_scale
            changed = plan[-1]
            if plan[0] == "moved":  # each band as one tile (see _kept: what is not recomputed)
                (dy, dx), band_y, band_x = plan[2], plan[3], plan[4]
                if band_y:
                    ky = _kept(h, dy, band_y)
                    rows = (0, ky.start) if dy > 0 else (ky.stop, h)
                    encode_tiled(enc, out[:3], out[5:], tile=(rows[1] - rows[0], w), colour_factor=factor,
                                 region=(*rows, 0, w))
                if band_x:
                    kx = _kept(w, dx, band_x)
                    cols = (0, kx.start) if dx > 0 else (kx.stop, w)
                    encode_tiled(enc, out[:3], out[5:], tile=(h, cols[1] - cols[0]), colour_factor=factor,
                                 region=(0, h, *cols))
            if changed:
                encode_tiled(enc, out[:3], out[5:], tile=self.tile, colour_factor=factor,
                             skip=lambda c0, c1, d0, d1: (c0, c1, d0, d1) not in changed)
            frame.features = out
        return frame

    # -- 3. assemble (stateful) -----------------------------------------------------------------------------------
    def assemble(self, frame: Frame) -> Frame:
        """The previous frame's learned channels (moved with the picture) wherever :meth:`compute` did not
        recompute them. A plan that builds on a frame which never got here (it failed) is recomputed in full."""
        plan = frame.meta.pop("feature_plan", None)
        if plan is None:
            return frame
        if plan[0] != "full" and (plan[1] != self._assembled or self._features is None):
            frame.meta["tiles_recomputed"] = 1.0
            self.model.feature_stage(frame)
        elif plan[0] != "full":
            with frame.timed("features"):
                out, prev = frame.features, self._features
                h, w = out.shape[1:]
                dy, dx = plan[2] if plan[0] == "moved" else (0, 0)
                band_y, band_x = plan[3:5] if plan[0] == "moved" else (0, 0)
                iy, ix = _kept(h, dy, band_y), _kept(w, dx, band_x)
                fresh = [(core, out[5:, core[0]:core[1], core[2]:core[3]].clone()) for core in plan[-1]]
                # copy_ (not slice assignment, which holds the GIL while it copies): other threads run meanwhile
                out[5:, iy, ix].copy_(prev[5:, iy.start - dy:iy.stop - dy, ix.start - dx:ix.stop - dx])
                for (c0, c1, d0, d1), values in fresh:
                    out[5:, c0:c1, d0:d1].copy_(values)
        self._features, self._assembled = frame.features, plan[1] + 1
        return frame


def _inner(n: int, shift: int, band: int) -> slice:
    """The rows (or columns) of a length-``n`` axis moved by ``shift`` that lie outside the ``band`` that came into
    view (plus the encoder's reach)."""
    return slice(band, n) if shift > 0 else slice(0, n - band)


def _kept(n: int, shift: int, band: int) -> slice:
    """The rows (or columns) :meth:`WarmFeatures.compute` does not recompute with the ``band``: it encodes the band
    as one tile, which must start at a multiple of the encoder's ALIGN, so a band at the far end starts at the
    multiple at or before ``n - band``."""
    if shift > 0 or not band:
        return slice(band, n)
    return slice(0, (n - band) // ALIGN * ALIGN)


def follow_motion(centroids: torch.Tensor, features: torch.Tensor, seeds, shape: tuple[int, int],
                  n_superpixels: int, pos_scale: float, motion: tuple[float, float]):
    """Starting centroids of a frame whose content moved by ``motion`` (dy, dx) pixels since the frame that ended
    with ``centroids`` (K, D), both clustered on the same ``seeds`` (:class:`~spam_stream.seeding.Seeds`; a seed's
    cell is its region, :meth:`~spam_stream.seeding.Seeds.regions_at`).

    Each old centroid is moved with the content (its position channels 3, 4 are y·``pos_scale``, x·``pos_scale``)
    and handed to the seed cell its new position lies in; when several land in one cell the one nearest that
    cell's own centre (the mean position of its pixels) wins; a centroid that left the frame is dropped. A cell
    that received none starts from its own pixels (:func:`~spam_stream.clustering.initial_centroids` of
    ``features`` (N, D)). Returns ((K, D) centroids, (K,) int64 origin: the old cluster each one continues, -1
    for a fresh one).
    """
    from ..clustering import initial_centroids

    h, w = shape
    k = n_superpixels
    init_labels = torch.as_tensor(seeds.init_labels, device=features.device)
    cold = initial_centroids(features, init_labels, k)
    old = centroids.to(cold.device, cold.dtype)
    pos = old[:, 3:5].double().cpu().numpy() / pos_scale + np.asarray(motion, np.float64)  # (K, 2) moved y, x
    cy = np.rint(pos[:, 0]).astype(np.int64)
    cx = np.rint(pos[:, 1]).astype(np.int64)
    inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    cells = np.full(k, -1, np.int64)
    cells[inside] = seeds.regions_at(cy[inside], cx[inside], w)
    origin = np.full(k, -1, np.int64)
    home = cold[:, 3:5].double().cpu().numpy() / pos_scale
    ok = np.flatnonzero(cells >= 0)
    if ok.size:
        dist = ((pos[ok] - home[cells[ok]]) ** 2).sum(1)
        order = ok[np.lexsort((dist, cells[ok]))]  # by cell, nearest first
        first = np.r_[True, cells[order][1:] != cells[order][:-1]]
        origin[cells[order][first]] = order[first]
    start = cold.clone()
    taken = np.flatnonzero(origin >= 0)
    if taken.size:
        src = torch.as_tensor(origin[taken], device=cold.device)
        dst = torch.as_tensor(taken, device=cold.device)
        start[dst] = old[src]
        start[dst, 3:5] = torch.as_tensor(pos[origin[taken]] * pos_scale, dtype=cold.dtype, device=cold.device)
    return start, origin


def follow_motion_grid(centroids: torch.Tensor, features: torch.Tensor, init_labels, grid: tuple[int, int],
                       shape: tuple[int, int], pos_scale: float, motion: tuple[float, float], cells: tuple[int, int]):
    """:func:`follow_motion` for grid seeds under a global motion: every centroid is moved with the content and the
    clusters are handed on together, ``cells`` (rows, columns) grid cells at once, so that the hand-over is one to
    one: cluster (r, c) continues as cluster (r + rows, c + cols); the cells that came into view start from their
    own pixels and the clusters pushed out of the grid end. Returns ((K, D) centroids, (K,) int64 origin)."""
    from ..clustering import initial_centroids

    nh, nw = grid
    k = nh * nw
    init_labels = torch.as_tensor(init_labels, device=features.device)
    old = centroids.to(features.device, features.dtype)
    start = old.clone()
    start[:, 3] += float(motion[0]) * pos_scale
    start[:, 4] += float(motion[1]) * pos_scale
    rows, cols = cells
    r, c = np.divmod(np.arange(k), nw)
    src_r, src_c = r - rows, c - cols
    ok = (src_r >= 0) & (src_r < nh) & (src_c >= 0) & (src_c < nw)
    origin = np.where(ok, src_r * nw + src_c, -1).astype(np.int64)
    if rows or cols:
        start = start[torch.as_tensor(np.maximum(origin, 0), device=start.device)]
        if not ok.all():
            fresh = torch.as_tensor(np.flatnonzero(~ok), device=start.device)
            start[fresh] = initial_centroids(features, init_labels, k)[fresh]
    return start, origin


class WarmCluster:
    """Cluster stage that starts from the previous frame's centroids (same seeds only), moved with the content.

    Still content (``frame.meta["motion"]`` rounds to no move): the previous centroids, at most ``warm_iterations``
    rounds, stopping once at most ``tol`` of the pixels change label (the first round compared with the previous
    frame's labels, so an unchanged frame stops after one). Moved content: :func:`follow_motion`, then up to the
    model's iterations (at least ``warm_iterations``) until converged at ``tol``. ``tol`` None: the model's
    tolerance when it has one, else :data:`STILL_TOL` / :data:`MOVING_TOL`. Sets ``meta["cluster_origin"]`` for
    the id tracker after a move.
    """

    def __init__(self, model, coherent: bool = True, warm_iterations: int = 3, tol: float | None = None):
        self.model, self.coherent, self.warm_iterations = model, coherent, int(warm_iterations)
        self.tol = tol
        self._centroids = None
        self._labels = None
        self._offset = np.zeros(2)  # content displacement (y, x) since the grid's clusters were last handed on

    def _tol(self, default: float) -> float:
        if self.tol is not None:
            return self.tol
        return self.model.tol if getattr(self.model, "tol", 0.0) > 0 else default

    def __call__(self, frame: Frame) -> Frame:
        if self.coherent and not frame.meta.get("reseeded", True) and self._centroids is not None:
            frame.meta["warm_start"] = True  # from the previous frame's clusters: every row (SPAM.cluster_stage)
            motion = frame.meta.get("motion")
            if motion is None or (round(motion[0]) == 0 and round(motion[1]) == 0):
                frame.init_centroids = self._centroids
                frame.iterations = self.warm_iterations
                frame.tol = self._tol(STILL_TOL)
                if self._labels is not None and self._labels.shape == frame.image.shape[:2]:
                    frame.meta["prev_cluster_labels"] = self._labels
            else:
                from ..clustering import as_pixel_rows
                from ..features import position_scale

                h, w = frame.image.shape[:2]
                scale = position_scale(h, w, frame.n_superpixels, self.model.compactness)
                rows = as_pixel_rows(frame.features)
                grid = frame.seeds.grid
                with frame.timed("cluster"):
                    if grid is not None and frame.seeds.grid[0] * frame.seeds.grid[1] == frame.cands.n_superpixels:
                        cell = np.array([h / grid[0], w / grid[1]])
                        self._offset += np.asarray(motion, np.float64)
                        cells = np.rint(self._offset / cell).astype(int)
                        self._offset -= cells * cell
                        frame.init_centroids, frame.meta["cluster_origin"] = follow_motion_grid(
                            self._centroids, rows, frame.seeds.init_labels, grid, (h, w), scale, motion,
                            (int(cells[0]), int(cells[1])))
                    else:
                        frame.init_centroids, frame.meta["cluster_origin"] = follow_motion(
                            self._centroids, rows, frame.seeds, (h, w), frame.n_superpixels, scale, motion)
                frame.iterations = max(self.model.iterations, self.warm_iterations)
                frame.tol = self._tol(MOVING_TOL)
        else:
            self._offset[:] = 0.0
        self.model.cluster_stage(frame)
        self._centroids, self._labels = frame.centroids, frame.cluster_labels
        return frame


def _pair_counts(a: np.ndarray, b: np.ndarray, nb: int):
    """Distinct pairs (a, b) of two label maps with their pixel counts: (a_ids, b_ids, counts)."""
    key = a.ravel().astype(np.int64) * nb + b.ravel()
    uniq, counts = np.unique(key, return_counts=True)
    return uniq // nb, uniq % nb, counts


class IdTracker:
    """Turns each frame's labels 0..K'-1 into ids that persist across frames (see the module docstring).

    Reads ``frame.labels``, ``frame.cluster_labels`` and ``frame.meta["reseeded"]``; replaces ``frame.labels`` by
    (H, W) int32 ids and sets ``frame.meta["n_superpixels"]`` (K')."""

    def __init__(self, max_id: int = 65535):
        self.max_id = int(max_id)
        self._next = 0
        self._retired: deque[int] = deque()
        self._cluster_id: dict[int, int] = {}  # cluster index → id, valid while the seeds stay the same
        self._alive: set[int] = set()
        self._prev_ids: np.ndarray | None = None

    def _fresh(self) -> int:
        if self._next <= self.max_id:
            self._next += 1
            return self._next - 1
        if not self._retired:
            raise RuntimeError(f"more than {self.max_id + 1} superpixels alive at once")
        return self._retired.popleft()

    def __call__(self, frame: Frame) -> Frame:
        from ..kernels.labeling import apply_ids, present_ids

        labels, clusters = frame.labels, frame.cluster_labels
        n = int(labels.max()) + 1
        ids = np.full(n, -1, np.int64)
        # the cluster each superpixel keeps (connectivity's source; a fragment kept on its own has none)
        source = frame.label_source
        if source is None:  # labels made elsewhere: the cluster most of each superpixel's pixels come from
            sp, cl, cnt = _pair_counts(labels, clusters + 1, int(clusters.max()) + 2)
            order = np.lexsort((-cnt, sp))
            first = np.r_[True, sp[order][1:] != sp[order][:-1]]
            maj_sp, maj_cl, maj_cnt = sp[order][first], cl[order][first] - 1, cnt[order][first]
            keep = np.lexsort((-maj_cnt, maj_cl))  # a cluster feeding several superpixels: the largest keeps it
            keep = keep[np.r_[True, maj_cl[keep][1:] != maj_cl[keep][:-1]]]
            source = np.full(n, -1, np.int64)
            source[maj_sp[keep]] = maj_cl[keep]
        claims: dict[int, int] = {}
        for j, c in enumerate(np.asarray(source)[:n].tolist()):
            if c >= 0 and c not in claims:
                claims[c] = j
        same_shape = self._prev_ids is not None and self._prev_ids.shape == labels.shape
        if same_shape and not frame.meta.get("reseeded", True):
            origin = frame.meta.get("cluster_origin")  # after a move: the cluster each one continues
            for c, j in claims.items():
                src = c if origin is None else int(origin[c])
                old = self._cluster_id.get(src) if src >= 0 else None
                if old is not None and old in self._alive:
                    ids[j] = old
        elif same_shape:  # new seeds: carry ids over by mutual majority overlap
            prev = self._prev_ids
            a, b, both = _pair_counts(labels, prev, int(prev.max()) + 1)
            area_new = np.bincount(labels.ravel(), minlength=n)
            area_old = np.bincount(prev.ravel())
            ok = (2 * both > area_new[a]) & (2 * both > area_old[b])
            ids[a[ok]] = b[ok]
        present = present_ids(labels, n)  # (numba, without the GIL: the pipeline's other threads run)
        for j in np.flatnonzero((ids < 0) & present):
            ids[j] = self._fresh()
        self._cluster_id = {c: int(ids[j]) for c, j in claims.items()}
        alive = set(ids[present].tolist())
        self._retired.extend(sorted(self._alive - alive))
        self._alive = alive
        frame.labels = apply_ids(labels, ids)
        frame.meta["n_superpixels"] = int(present.sum())
        self._prev_ids = frame.labels
        return frame
