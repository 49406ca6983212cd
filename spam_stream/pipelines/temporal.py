"""Temporal coherence for video: warm starts and superpixel ids that persist from frame to frame.

* **Warm start.** While the prior partition is the same (no prior, or a prior reused between ``--prior-every``
  refreshes), frame t+1 reuses frame t's seeds and candidates and starts clustering from frame t's final centroids,
  so it needs fewer iterations (``warm_iterations``) — the superpixels follow the content instead of restarting
  from a grid.
* **Features where the picture changed.** The encoder runs only on the tiles whose input changed beyond
  compression noise since their features were computed (:class:`WarmFeatures`); static regions keep theirs.
* **Persistent ids.** Superpixel k of frame t+1 is the same cluster as superpixel k of frame t, so it keeps its id.
  When the seeds are made anew (a new prior), ids carry over by overlap: a new superpixel takes the id of the old
  one it shares more than half of its pixels with, when that old superpixel also gives it more than half of its
  own. Everything else gets a fresh id; an id whose superpixel disappears is retired. Ids never exceed
  ``max_id`` (65535, the uint16 label PNG): past it, the longest-retired ids are reused.

Each class here is a stateful pipeline step: it must see the frames in order (one thread, as the executor runs it).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from ..frame import Frame


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

    def __call__(self, frame: Frame) -> Frame:
        sig = (frame.meta.get("prior_frame"), frame.image.shape, frame.n_superpixels)
        if self.coherent and self._prev is not None and self._prev[0] == sig:
            frame.seeds, frame.cands = self._prev[1], self._prev[2]
            frame.meta["reseeded"] = False
            frame.timings["seeds"] = 0.0
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
    """

    def __init__(self, model, coherent: bool = True, tile: int = 128, mean_threshold: float = 2.0,
                 max_threshold: int = 48, max_changed: float = 0.4):
        from ..encoder import ALIGN

        self.model, self.coherent = model, coherent
        self.tile = -(-int(tile) // ALIGN) * ALIGN
        self.mean_threshold, self.max_threshold, self.max_changed = mean_threshold, max_threshold, max_changed
        self._features = None
        self._refs: dict[tuple, np.ndarray] = {}  # tile core origin → the input window its features came from
        self._sig = None

    def _usable(self) -> bool:
        enc = self.model.encoder
        return (self.coherent and enc is not None and self.model.device.type == "cpu"
                and float(getattr(enc, "resolution", 1.0)) == 1.0)

    def _windows(self, h: int, w: int):
        from ..encoder import HALO

        for c0 in range(0, h, self.tile):
            for d0 in range(0, w, self.tile):
                c1, d1 = min(h, c0 + self.tile), min(w, d0 + self.tile)
                yield (c0, c1, d0, d1), (slice(max(0, c0 - HALO), min(h, c1 + HALO)),
                                         slice(max(0, d0 - HALO), min(w, d1 + HALO)))

    def __call__(self, frame: Frame) -> Frame:
        if not self._usable():
            return self.model.feature_stage(frame)
        image = frame.image
        h, w = image.shape[:2]
        sig = (image.shape, frame.n_superpixels)
        changed = set()
        if self._features is not None and sig == self._sig:
            for core, win in self._windows(h, w):
                diff = np.abs(image[win].astype(np.int16) - self._refs[core]).max(-1)
                if diff.mean() > self.mean_threshold or diff.max() > self.max_threshold:
                    changed.add(core)
            n_tiles = len(self._refs)
        if self._features is None or sig != self._sig or len(changed) > self.max_changed * n_tiles:
            self.model.feature_stage(frame)
            frame.meta["tiles_recomputed"] = 1.0
            self._refs = {core: image[win].astype(np.int16) for core, win in self._windows(h, w)}
        else:
            self._incremental(frame, changed)
            frame.meta["tiles_recomputed"] = len(changed) / max(1, n_tiles)
            for core, win in self._windows(h, w):
                if core in changed:
                    self._refs[core] = image[win].astype(np.int16)
        self._features, self._sig = frame.features, sig
        return frame

    def _incremental(self, frame: Frame, changed: set) -> None:
        from .. import kernels
        from ..encoder import encode_tiled
        from ..features import COLOR_SCALE, scaled_lab_yx

        model, enc = self.model, self.model.encoder
        with frame.timed("features"):
            out = kernels.empty_features(*self._features.shape[1:], self._features.shape[0], self._features.device)
            if out.device.type == "cpu":
                scaled_lab_yx(frame.image, frame.n_superpixels, model.color_scale, model.compactness, out=out[:5])
            else:
                out[:5] = scaled_lab_yx(frame.image, frame.n_superpixels, model.color_scale, model.compactness)
            out[5:] = self._features[5:]
            if changed:
                factor = getattr(enc, "input_color_scale", COLOR_SCALE) / model.color_scale
                encode_tiled(enc, out[:3], out[5:], tile=self.tile, colour_factor=factor,
                             skip=lambda c0, c1, d0, d1: (c0, c1, d0, d1) not in changed)
            frame.features = out


class WarmCluster:
    """Cluster stage that starts from the previous frame's centroids with fewer iterations (same seeds only)."""

    def __init__(self, model, coherent: bool = True, warm_iterations: int = 3):
        self.model, self.coherent, self.warm_iterations = model, coherent, int(warm_iterations)
        self._centroids = None

    def __call__(self, frame: Frame) -> Frame:
        if self.coherent and not frame.meta.get("reseeded", True) and self._centroids is not None:
            frame.init_centroids = self._centroids
            frame.iterations = self.warm_iterations
        self.model.cluster_stage(frame)
        self._centroids = frame.centroids
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
            for c, j in claims.items():
                old = self._cluster_id.get(c)
                if old is not None and old in self._alive:
                    ids[j] = old
        elif same_shape:  # new seeds: carry ids over by mutual majority overlap
            prev = self._prev_ids
            a, b, both = _pair_counts(labels, prev, int(prev.max()) + 1)
            area_new = np.bincount(labels.ravel(), minlength=n)
            area_old = np.bincount(prev.ravel())
            ok = (2 * both > area_new[a]) & (2 * both > area_old[b])
            ids[a[ok]] = b[ok]
        present = np.bincount(labels.ravel(), minlength=n) > 0
        for j in np.flatnonzero((ids < 0) & present):
            ids[j] = self._fresh()
        self._cluster_id = {c: int(ids[j]) for c, j in claims.items()}
        alive = set(ids[present].tolist())
        self._retired.extend(sorted(self._alive - alive))
        self._alive = alive
        frame.labels = ids[labels].astype(np.int32)
        frame.meta["n_superpixels"] = int(present.sum())
        self._prev_ids = frame.labels
        return frame
