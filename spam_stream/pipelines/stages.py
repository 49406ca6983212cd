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

    Stages that keep no state between frames are marked ``parallel`` (see
    :class:`~spam_stream.pipelines.executor.Stage`): the executor may run them on several frames at once. In a
    video: the features (the warm features are planned in the seed stage and assembled in the cluster stage) and
    connectivity; the prior schedule, warm seeds, warm clustering and ids take the frames in order. Independent
    images (``video=False``): every stage.

    ``video``: frames of one stream (prior every ``prior_every`` frames; with ``coherent``, warm starts and
    persistent ids). ``threads``: numba threads for each stage on a CPU (None: leave the defaults).
    """
    if video:
        prior = PriorSchedule(model, prior_every, attention, attention_ratio, focus)
        warm_seeds = WarmSeeds(model, coherent)
        warm_cluster = WarmCluster(model, coherent, warm_iterations)
        warm = WarmFeatures(model, coherent)

        def seeds(frame):  # the seeds, then which regions the encoder must recompute (both follow the motion)
            return warm.plan(warm_seeds(frame))

        def cluster(frame):  # the previous features where they were kept, then the warm clustering
            return warm_cluster(warm.assemble(frame))

        features = warm.compute
    else:
        def prior(frame):
            return model.prior_stage(frame, attention, attention_ratio, focus)
        seeds, cluster, features = model.seed_stage, model.cluster_stage, model.feature_stage

    def connectivity(frame):
        model.connectivity_stage(frame)
        frame.release()  # features and candidates are not needed downstream: keep the frames in flight small
        return frame

    free = not video  # independent images: no stage keeps state
    stages = [Stage("prior", prior, threads=threads, parallel=free), Stage("seeds", seeds, threads=threads,
                                                                           parallel=free),
              Stage("features", features, threads=threads, parallel=True),
              Stage("cluster", cluster, threads=threads, parallel=free),
              Stage("connectivity", connectivity, threads=threads, parallel=True)]
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


IN_FLIGHT_BUDGET = 2 * 2**30  # bytes the frames waiting in a pipeline's queues may hold together


def frame_bytes(model, height: int, width: int, prior: bool = True) -> int:
    """Upper bound of what one frame in flight holds between stages (bytes): the image (3 B/px), features
    (4·D B/px, between the features and cluster stages), a candidate table with a prior (36 B/px), partition,
    cluster labels and labels (4 B/px each). The encoder's activations are not in flight: they live inside the
    features stage, bounded by its tile budget (see spam_stream.encoder.tile_for_budget)."""
    per_pixel = 3 + 4 * model.n_features + (36 + 4 if prior else 0) + 8
    return height * width * per_pixel


def queue_size_for(model, height: int, width: int, n_stages: int, budget: int = IN_FLIGHT_BUDGET,
                   largest: int = 4) -> int:
    """Capacity of each queue so that the frames in flight (about ``n_stages`` queues of ``q + 1`` frames) fit
    ``budget`` bytes: 1 for 4K frames, up to ``largest`` for small ones."""
    per_frame = frame_bytes(model, height, width, prior=model.prior is not None)
    return int(max(1, min(largest, budget // max(1, n_stages * per_frame) - 1)))
