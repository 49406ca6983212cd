"""The record one image or video frame carries through SPAM's stages (decode → prior → seeds → features → cluster →
connectivity → write).

Every stage of :class:`~spam_stream.model.SPAM` reads and fills fields of a :class:`Frame`; ``SPAM.segment`` runs
them one after the other, the pipelines in :mod:`spam_stream.pipelines` run them in threads joined by queues.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Frame:
    """One item of work.

    Attributes:
        index: position in the input (frame number of a video, item number of a batch); results leave in this order.
        key: the input's name for priors read per input (file stem, or the frame index) and for messages.
        image: (H, W, 3) uint8 RGB, or None before decoding / after a decoding error.
        n_superpixels: K requested.
        prior: what the prior stage turns into ``partition``: None, an (H, W) integer array, a Prior or a Provider.
        partition: (H, W) int32 checked prior partition (ids 0..n-1, -1 = uncertain), or None for no prior.
        density: (n_objects,) float64 per-object seed density factors, or None.
        seeds: :class:`~spam_stream.seeding.Seeds`; cands: :class:`~spam_stream.kernels.Candidates`.
        features: (D, H, W) float32 tensor on the model's device.
        init_centroids: (K, D) tensor to start clustering from (a video's previous frame), or None for the seeds.
        iterations: clustering iterations for this frame (at most, see ``tol``), or None for the model's default.
        tol: convergence tolerance of this frame's clustering (fraction of pixels changing label in a round), or
            None for the model's; the rounds run are in ``meta["iterations"]``.
        cluster_labels: (H, W) int32 raw cluster index of each pixel (before connectivity); centroids (K, D).
        labels: (H, W) int32 final superpixel labels.
        label_source: (K',) int64 the cluster (index into centroids) each superpixel keeps after connectivity, -1 for
            a fragment that became a superpixel of its own.
        timings: seconds per stage name.
        error: one-line message when a stage failed (later stages skip the frame), else None.
        meta: anything else a pipeline carries along (source path, presentation time, outputs written…).
    """

    index: int = 0
    key: Any = None
    image: np.ndarray | None = None
    n_superpixels: int = 400
    prior: Any = None
    partition: np.ndarray | None = None
    density: np.ndarray | None = None
    seeds: Any = None
    cands: Any = None
    features: Any = None
    init_centroids: Any = None
    iterations: int | None = None
    tol: float | None = None
    cluster_labels: np.ndarray | None = None
    centroids: Any = None
    labels: np.ndarray | None = None
    label_source: np.ndarray | None = None
    timings: dict = field(default_factory=dict)
    error: str | None = None
    meta: dict = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str):
        """Add the wall time of the ``with`` body to ``timings[stage]``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t

    def release(self) -> None:
        """Drop the large intermediates (features, candidates, seeds) once the labels exist."""
        self.features = self.cands = self.seeds = self.init_centroids = None
