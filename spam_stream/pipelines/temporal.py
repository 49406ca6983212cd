"""Temporal coherence for video: warm starts and superpixel ids that persist from frame to frame.

* **Warm start.** While the prior partition is the same (no prior, or a prior reused between ``--prior-every``
  refreshes), frame t+1 reuses frame t's seeds and candidates and starts clustering from frame t's final centroids,
  so it needs fewer iterations (``warm_iterations``) — the superpixels follow the content instead of restarting
  from a grid.
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
        # the cluster each superpixel mostly comes from; a cluster feeding several superpixels (a fragment kept on
        # its own) is claimed by the largest of them only
        sp, cl, cnt = _pair_counts(labels, clusters + 1, int(clusters.max()) + 2)
        cl = cl - 1
        order = np.lexsort((-cnt, sp))
        first = np.r_[True, sp[order][1:] != sp[order][:-1]]
        maj_sp, maj_cl, maj_cnt = sp[order][first], cl[order][first], cnt[order][first]
        claims: dict[int, int] = {}
        for j in np.argsort(-maj_cnt, kind="stable"):
            c = int(maj_cl[j])
            if c >= 0 and c not in claims:
                claims[c] = int(maj_sp[j])
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
