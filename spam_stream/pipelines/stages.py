"""SPAM's per-frame stages as executor :class:`~spam_stream.pipelines.executor.Stage` objects.

The functions are the methods of :class:`~spam_stream.model.SPAM` (the same code ``SPAM.segment`` composes); video
wraps three of them in the stateful steps of :mod:`.temporal` (prior every N frames, warm seeds, warm clustering) and
adds the id tracker.
"""
from __future__ import annotations

import torch

from .executor import Stage, cpu_thread_budget
from .temporal import IdTracker, PriorSchedule, WarmCluster, WarmFeatures, WarmSeeds


def spam_stages(model, *, attention=None, attention_ratio: float = 2.5, focus=None, video: bool = False,
                coherent: bool = True, prior_every: int = 1, warm_iterations: int = 3,
                threads: int | None = None) -> list[Stage]:
    """prior → seeds → features → cluster → connectivity (→ ids for a coherent video).

    ``video``: frames of one stream (prior every ``prior_every`` frames; with ``coherent``, warm starts and
    persistent ids). ``threads``: numba threads for each stage on a CPU (None: leave the defaults).
    """
    if video:
        prior = PriorSchedule(model, prior_every, attention, attention_ratio, focus)
        seeds = WarmSeeds(model, coherent)
        cluster = WarmCluster(model, coherent, warm_iterations)
        features = WarmFeatures(model, coherent)
    else:
        def prior(frame):
            return model.prior_stage(frame, attention, attention_ratio, focus)
        seeds, cluster, features = model.seed_stage, model.cluster_stage, model.feature_stage
    def connectivity(frame):
        model.connectivity_stage(frame)
        frame.release()  # features and candidates are not needed downstream: keep the frames in flight small
        return frame

    stages = [Stage("prior", prior, threads=threads), Stage("seeds", seeds, threads=threads),
              Stage("features", features, threads=threads), Stage("cluster", cluster, threads=threads),
              Stage("connectivity", connectivity, threads=threads)]
    if video and coherent:
        stages.append(Stage("ids", IdTracker(), threads=threads))
    return stages


def configure_threads(model, pipelined: bool) -> int | None:
    """On a CPU, split the cores between the busy stages (prior model, encoder, clustering) when pipelined:
    returns the per-stage thread count and sets torch's intra-op pool to it; None on CUDA or when sequential."""
    if not pipelined or model.device.type == "cuda":
        return None
    busy = 1 + (model.encoder is not None) + (model.prior is not None and getattr(model.prior, "name", "") in
                                              ("sam", "fastsam"))
    n = cpu_thread_budget(busy)
    torch.set_num_threads(n)
    return n
