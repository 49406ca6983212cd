"""``spam-stream batch --engine ray``: the batch job on Ray Data, from a laptop to a cluster.

The driver plans the job exactly like the local engine (:func:`~spam_stream.pipelines.batch.plan_batch`: inputs,
shard, ``--resume`` filter), makes a Ray Data dataset of the items to do (``ray.data.from_items``, one block per
item) and maps it with :class:`SpamWorker`, a callable class run by a fixed pool of actors: each actor builds SPAM and
the prior provider **once** (from a picklable spec) and runs the local engine's per-item work on each item
(:func:`~spam_stream.pipelines.batch.batch_frames` + :class:`~spam_stream.pipelines.batch.BatchWriter`: decode,
stages, atomic writes), so outputs are bit-identical to the local engine's. Each actor returns one manifest entry per
item (plus ``node``, the Ray node id, and ``node_ip``); the driver appends it to ``manifest.jsonl`` as it arrives and
rewrites the manifest atomically at the end, in input order, like the local engine.

Videos. A video is one row of the same dataset, so one Ray task on the same actors (no second pool, no second
model load): the actor runs :func:`~spam_stream.pipelines.batch.video_entry`, the local engine's per-video work
(:func:`~spam_stream.pipelines.video.process_video`, the code path of ``spam-stream video``), with the stages run
one frame at a time in the actor's thread (same labels as the pipelined local run), and returns the video's one
manifest entry. The videos are put first in the dataset (the long tasks start first), and when the job has videos
each actor is sent one task at a time (``max_tasks_in_flight_per_actor=1``), so no image or video waits in the
queue of an actor busy with a long video while another actor is free. The pool's size and CPUs are the same as for
images, so videos cannot starve Ray Data's own tasks either.

Large images. A TIFF or slide too large for one frame (:func:`~spam_stream.pipelines.batch.large_unit`, decided
by the driver) is not one actor's task: after the dataset, the driver runs its rows of tiles
(:func:`~spam_stream.pipelines.batch.large_entry`, the local engine's code) with each tile a Ray task
(:class:`RayTiles`: the worker builds the model once and reads its tile's region from the file), so the tiles
spread over the cluster's workers while the driver runs the connectivity windows and writes the label TIFF; the
manifest line's ``tile_workers`` counts the worker processes that clustered its tiles.

Resources. Each actor takes ``num_cpus`` CPUs (its torch and numba threads) and ``num_gpus`` GPUs; the pool is sized
so that actors never hold all the cluster's CPUs: ``workers × num_cpus ≤ CPUs − 1``. (Measured with ray 2.60 on a
2-CPU machine: a pool whose actors take both CPUs leaves none for Ray Data's own tasks and the job stalls.) The
Dataset's CPU limit is set to the cluster's CPUs.

Failures. An input that cannot be read or segmented is one failed manifest line (the actor catches it). An actor
that dies (a killed process, a lost node) is restarted by Ray and its in-flight item retried (Ray Data's defaults
for actor pools: ``max_restarts=-1``, ``max_task_retries=-1``; passing them again is deprecated in ray 2.60, and
``tests/test_ray.py`` kills a worker mid-job to check that no item is lost); outputs are written under temporary names and renamed, so a retried
item leaves each output complete, once.

OUTDIR is a path every worker can reach (one machine, or a shared filesystem on a cluster), or a URI that
``pyarrow.fs`` opens (``s3://bucket/prefix``, ``gs://…``; :mod:`spam_stream.pipelines.outputs`): each actor reopens
it from the URI (with its own machine's credentials), writes each item into a temporary staging folder of its own
and uploads it; the driver plans ``--resume`` from one listing of OUTDIR and writes the manifest there.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ..io import InputError
from .batch import BatchItem, BatchWriter, batch_frames, large_entry, large_unit, plan_batch, video_entry
from .executor import Stage, describe
from .outputs import RemoteOutputs, resolve_outdir
from .video import VideoOptions



def require_ray():
    """Import ray (and ray.data), or raise :class:`InputError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError("--engine ray needs Ray Data: pip install 'spam-stream[ray]' (or pip install 'ray[data]')") \
            from None
    return ray


def make_spec(*, encoder="default", compactness: float | None = None, color_scale: float = 0.26, iterations: int | str = 10,
              tol: float | None = None, subsample: int | None = None, device: str = "cpu", prior: str | None = None,
              prior_options: dict | None = None,
              attention=None, attention_ratio: float = 2.5, focus=None, memory_budget: int | None = None,
              memory_limit: int | None = None) -> dict:
    """The picklable description of the per-worker model: SPAM's arguments, the prior provider's
    (:func:`spam_stream.priors.make_provider` keyword arguments, ``name`` included) and the density options.

    ``attention``: None, ``"saliency"`` (spectral residual) or ``{"dino_weights": PATH}`` (DINO saliency)."""
    return {"model": {"encoder": str(encoder) if isinstance(encoder, Path) else encoder, "compactness": compactness,
                      "color_scale": color_scale, "iterations": iterations, "tol": tol, "subsample": subsample,
                      "device": device,
                      "memory_budget": memory_budget, "memory_limit": memory_limit},
            "prior": {"name": prior or "none", **(prior_options or {})},
            "attention": attention, "attention_ratio": attention_ratio, "focus": focus}


def build_worker(spec: dict):
    """``(model, options)`` from a :func:`make_spec` dict: SPAM with its prior provider (loaded once) and the keyword
    options of :func:`~spam_stream.pipelines.batch.batch_frames`."""
    from ..model import SPAM
    from ..priors import make_provider

    prior_args = dict(spec["prior"])
    provider = make_provider(prior_args.pop("name"), **prior_args)
    model = SPAM(**spec["model"], prior=provider)
    attention = spec["attention"]
    if isinstance(attention, dict):
        from ..attention import DinoSaliency

        attention = DinoSaliency(attention["dino_weights"])
    return model, {"attention": attention, "attention_ratio": spec["attention_ratio"], "focus": spec["focus"]}


def failed_entry(item: BatchItem, message: str) -> dict:
    """A manifest entry for an item that failed outside the per-item stages (same fields as BatchWriter's)."""
    message = " ".join(message.split())
    if not message.startswith(str(item.path)):
        message = f"{item.path}: {message}"
    entry = {"input": str(item.path), "outputs": {}, "superpixels": None, "ms": {}, "status": "failed",
             "error": message}
    if item.is_video:  # the fields of a video line (batch.video_entry)
        del entry["superpixels"]
        entry.update(kind="video", frames=0, fps=None, rate=None)
    return entry


class SpamWorker:
    """Ray Data callable class: builds the model once; maps a batch of items ``{"index", "path", "rel"}`` (images
    or videos) to ``{"index", "entry"}`` (the manifest entry as a JSON string) after writing the item's outputs.
    ``video_options``: :class:`~spam_stream.pipelines.video.VideoOptions` of every video. ``outdir``: a local
    path, a URI or a RemoteOutputs (then each item is staged in a temporary folder and uploaded)."""

    def __init__(self, spec: dict, outdir, n_superpixels: int, color="auto", threads: int = 1,
                 video_options: VideoOptions | None = None, superpixel_size: int | None = None):
        import ray

        self.n_superpixels, self.color, self.threads = n_superpixels, color, threads
        self.superpixel_size = superpixel_size
        self.outdir = self.remote = None
        self.video_options = video_options or VideoOptions()
        self._set_threads()
        context = ray.get_runtime_context()
        self.node = {"node": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}
        try:
            self.outdir = resolve_outdir(outdir)  # a URI: reopened here, with this machine's credentials
            self.remote = self.outdir if isinstance(self.outdir, RemoteOutputs) else None
            self.model, self.options = build_worker(spec)
            self.init_error = None
        except Exception as exc:  # a bad checkpoint: every item fails with the reason, the job does not hang
            self.model, self.init_error = None, describe(exc)

    def _set_threads(self):
        import torch

        torch.set_num_threads(self.threads)
        try:
            import numba

            numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))
        except Exception:  # pragma: no cover - numba missing
            pass

    def process(self, item: BatchItem) -> dict:
        """The local engine's per-item work (decode, SPAM stages, atomic writes): one manifest entry."""
        if self.init_error is not None:
            return failed_entry(item, f"model: {self.init_error}")
        if self.remote is not None:  # a URI OUTDIR: this item alone in a staging folder, removed after the upload
            with tempfile.TemporaryDirectory(prefix="spam-stream-staging-") as staging:
                return self._process(item, Path(staging))
        return self._process(item, self.outdir)

    def _process(self, item: BatchItem, outdir: Path) -> dict:
        if item.is_video:
            return video_entry(self.model, item, outdir, self.n_superpixels, self.video_options,
                               color=self.color, pipelined=False, remote=self.remote, **self.options)
        if large_unit(self.model, item, self.n_superpixels, self.superpixel_size):  # (the driver takes these first)
            return large_entry(self.model, item, outdir, self.n_superpixels, superpixel_size=self.superpixel_size,
                               start_label=self.video_options.start_label, color=self.color, remote=self.remote,
                               graph=self.video_options.graph)
        writer = BatchWriter(outdir, self.color, manifest_name=None, remote=self.remote, options=self.video_options)
        stage = Stage("write", writer, fatal=True, run_on_error=True)
        for _ in batch_frames(self.model, [item], self.n_superpixels, pipelined=False, extra_stages=[stage],
                              superpixel_size=self.superpixel_size, **self.options):
            pass
        return writer.entries[0]

    def __call__(self, batch: dict) -> dict:
        self._set_threads()  # numba's thread count is per calling thread
        entries = []
        for path, rel in zip(batch["path"], batch["rel"]):
            item = BatchItem(Path(path), Path(rel))
            try:
                entry = self.process(item)
            except Exception as exc:  # never fail the job for one input
                entry = failed_entry(item, describe(exc))
            entry.update(self.node, pid=os.getpid())
            entries.append(json.dumps(entry))
        return {"index": np.asarray(batch["index"]), "entry": np.asarray(entries, dtype=object)}


_TILE_STATE: dict = {}  # in a Ray worker process: the model per spec and the open image per path (built once)


def _tile_task(spec_key: str, spec: dict, path: str, shape, k: int, grid, core, halo: int):
    """One tile of a large image, in a Ray worker: :func:`spam_stream.tiling.segment_tile` with this process's
    model (built from ``spec`` once) and the image opened lazily (once per path). Returns (labels, pid, node)."""
    import ray

    from ..largeio import open_large
    from ..tiling import segment_tile

    state = _TILE_STATE
    if state.get("spec") != spec_key:
        state.clear()
        state["spec"], state["model"] = spec_key, build_worker(spec)[0]
        state["images"] = {}
    images = state["images"]
    if path not in images:
        for old in images.values():
            old.close()
        images.clear()
        images[path] = open_large(path)
    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    labels = segment_tile(state["model"], images[path].read, tuple(shape), k, tuple(grid), tuple(core), halo)
    return labels, os.getpid(), ray.get_runtime_context().get_node_id()


class _TileResult:
    """A tile in flight on Ray: ``result()`` waits for it (the task's own exception, e.g. a TileError, re-raised
    as itself) and records which worker process ran it."""

    def __init__(self, ref, workers: set):
        self.ref, self.workers = ref, workers

    def result(self):
        import ray

        try:
            labels, pid, node = ray.get(self.ref)
        except ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc) from None
        self.workers.add((node, pid))
        return labels


class RayTiles:
    """The ``tiles`` factory of :func:`~spam_stream.pipelines.batch.large_entry` on Ray: each tile of a large
    image is a Ray task (one CPU; its worker process builds the model once from ``spec`` and reads its tile's
    region from the file itself, so only the tile's labels travel back), spread by Ray over the cluster's
    workers; the driver runs the connectivity windows and writes the outputs. The file must be readable at the
    same path on every node (one machine, or a shared filesystem, as OUTDIR). ``workers``: the (node, pid) pairs
    that ran a tile."""

    def __init__(self, spec: dict, num_gpus: float = 0):
        import ray

        self.spec, self.key = spec, json.dumps(spec, sort_keys=True, default=str)
        resources = {"num_cpus": 1, **({"num_gpus": num_gpus} if num_gpus else {})}
        self.remote = ray.remote(max_retries=3, **resources)(_tile_task)

    def __call__(self, path):
        spec_ref, workers = self.spec, set()
        remote, key, path = self.remote, self.key, str(path)

        def submit(shape, k, grid, core, halo):
            return _TileResult(remote.remote(key, spec_ref, path, shape, k, grid, core, halo), workers)
        submit.workers = workers
        return submit


def remote_free(outdir) -> bool:
    """Whether OUTDIR is a local path (not a URI's RemoteOutputs)."""
    return not isinstance(outdir, RemoteOutputs)


def _large_units(spec: dict, todo, n_superpixels: int, superpixel_size: int | None):
    """The indices of the large units among ``todo`` (:func:`~spam_stream.pipelines.batch.large_unit`) and the
    driver's model that decides it and runs their connectivity windows (None when no input is a TIFF or slide)."""
    from ..largeio import is_large_format

    if not any(not it.is_video and is_large_format(it.path) for it in todo):
        return set(), None
    model = build_worker(spec)[0]
    return {i for i, it in enumerate(todo) if large_unit(model, it, n_superpixels, superpixel_size)}, model


def size_pool(cluster_cpus: float, workers: int | None = None, num_gpus_per_worker: float = 0,
              cluster_gpus: float = 0, gpu_node_cpus: float | None = None) -> tuple[int, float]:
    """``(workers, num_cpus per worker)`` such that the actors leave at least one CPU of the cluster free for Ray
    Data's own tasks: ``workers × num_cpus ≤ cluster_cpus − 1``.

    Default ``workers``: one per GPU group when ``num_gpus_per_worker`` > 0, else one 1-CPU actor per spare CPU. A
    given ``workers`` shares the spare CPUs (whole CPUs; fractions of a CPU when there are more workers than spare
    CPUs; each actor still runs at least one thread). GPU actors must also fit beside their GPUs:
    ``gpu_node_cpus`` (the fewest CPUs per GPU on a GPU node, one CPU kept) caps their CPUs at
    ``gpu_node_cpus × num_gpus_per_worker``."""
    spare = float(cluster_cpus) - 1
    if spare <= 0:
        raise InputError(f"the Ray cluster has {cluster_cpus:g} CPU(s): --engine ray needs at least 2 (one is kept "
                         "for Ray Data's own tasks, or the job stalls)")
    if workers is None:
        if num_gpus_per_worker > 0:
            workers = int(cluster_gpus // num_gpus_per_worker)
            if workers < 1:
                raise InputError(f"--num-gpus-per-worker {num_gpus_per_worker:g}: the Ray cluster has "
                                 f"{cluster_gpus:g} GPU(s)")
        else:
            workers = int(spare)
    workers = max(1, int(workers))
    num_cpus = spare / workers
    if num_gpus_per_worker > 0 and gpu_node_cpus is not None:
        num_cpus = min(num_cpus, max(gpu_node_cpus * num_gpus_per_worker, 1e-4))
    num_cpus = float(int(num_cpus)) if num_cpus >= 1 else np.floor(num_cpus * 1e4) / 1e4
    return workers, num_cpus


def _gpu_node_cpus(ray) -> float | None:
    """The fewest CPUs per GPU over the alive GPU nodes, one CPU of each node kept (None: no GPU node)."""
    shares = [(n["Resources"].get("CPU", 0.0) - 1) / n["Resources"]["GPU"] for n in ray.nodes()
              if n.get("Alive") and n["Resources"].get("GPU", 0) > 0]
    return min(shares) if shares else None


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray: ``address`` ("auto", "ray://HOST:PORT", "HOST:PORT"), an already initialised Ray (a Python
    user's), or a new local Ray with this machine's CPUs (even when ``ray start`` runs here: use ``address="auto"``
    to join it). Quiet logs. Returns True when this call started or
    connected it (then :func:`run_batch_ray` shuts it down at the end)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
    if address is not None:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"--address {address}: cannot connect to Ray: {describe(exc)}") from None
    else:
        # "local": always a new Ray, never a cluster a stale /tmp/ray/ray_current_cluster points to
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    return True


def run_batch_ray(spec: dict, inputs, outdir, n_superpixels: int = 400, *, resume: bool = False,
                  shard_spec: tuple[int, int] = (0, 1), color="auto", workers: int | None = None,
                  num_gpus_per_worker: float = 0, address: str | None = None, progress=None,
                  video_options: VideoOptions | None = None, superpixel_size: int | None = None):
    """The batch job on Ray Data: returns (entries of this run, skipped items' carried entries, number of items),
    like :func:`~spam_stream.pipelines.batch.run_batch`.

    Args:
        spec: the per-worker model, from :func:`make_spec`.
        inputs: input specs (files, folders, globs, list files), as for the local engine.
        outdir: output folder, reachable by every worker, or a URI that ``pyarrow.fs`` opens (``s3://…``) or a
            RemoteOutputs (see :mod:`spam_stream.pipelines.outputs`).
        workers, num_gpus_per_worker: the actor pool (see :func:`size_pool`); GPU actors get ``device="cuda"``
            when the spec says "cpu".
        address: Ray cluster address; None: an initialised Ray, else a new local one.
        progress: optional callable invoked with each finished entry (a dict).
        video_options: :class:`~spam_stream.pipelines.video.VideoOptions` of every video among the inputs.
    """
    outdir = resolve_outdir(outdir)
    remote = outdir if isinstance(outdir, RemoteOutputs) else None
    items, todo, carried, manifest_name = plan_batch(inputs, outdir, resume=resume, shard_spec=shard_spec,
                                                     video_options=video_options)
    writer = BatchWriter(None if remote else outdir, color, manifest_name, remote=remote)
    try:
        if todo:
            _run(writer, spec, todo, outdir, n_superpixels, color, workers, num_gpus_per_worker, address, progress,
                 video_options, superpixel_size)
    finally:
        writer.close(carried)
    return writer.entries, carried, len(items)


def _run(writer, spec, todo, outdir, n_superpixels, color, workers, num_gpus_per_worker, address, progress,
         video_options=None, superpixel_size=None):
    ray = require_ray()
    started = init_ray(address)
    try:
        from ray.data import ActorPoolStrategy, DataContext, ExecutionResources

        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        workers, num_cpus = size_pool(cpus, workers, num_gpus_per_worker, gpus,
                                      _gpu_node_cpus(ray) if num_gpus_per_worker > 0 else None)
        if num_gpus_per_worker > 0 and spec["model"]["device"] == "cpu":
            spec = {**spec, "model": {**spec["model"], "device": "cuda"}}
        context = DataContext.get_current()
        context.execution_options.resource_limits = ExecutionResources(cpu=cpus, gpu=gpus)
        large, driver = _large_units(spec, todo, n_superpixels, superpixel_size)
        rows = [{"index": i, "path": str(it.path), "rel": str(it.rel)} for i, it in enumerate(todo) if i not in large]
        # one row = one task; videos (long tasks) first, and then one task in flight per actor (see the docstring)
        has_videos = any(it.is_video for it in todo)
        rows.sort(key=lambda row: not todo[row["index"]].is_video)
        pool = ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1 if has_videos else None)
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(SpamWorker, batch_size=1, compute=pool,
                            num_cpus=num_cpus, num_gpus=num_gpus_per_worker or None,
                            fn_constructor_kwargs={"spec": spec,
                                                   "outdir": outdir if isinstance(outdir, RemoteOutputs)
                                                   else str(outdir),
                                                   "n_superpixels": n_superpixels, "color": color,
                                                   "threads": max(1, int(num_cpus)),
                                                   "video_options": video_options,
                                                   "superpixel_size": superpixel_size})
        done: dict[int, dict] = {}
        for row in (ds.iter_rows() if rows else ()):
            index, entry = int(row["index"]), json.loads(row["entry"])
            if index in done:  # a retried item that had already come back: keep one line
                continue
            done[index] = entry
            writer.record(entry)
            if progress is not None:
                progress(entry)
        if large:  # after the images and videos (whose actors hold the CPUs): each large image's tiles as tasks
            tiles = RayTiles(spec, num_gpus_per_worker)
            options = video_options or VideoOptions()
            for index in sorted(large):
                item = todo[index]
                kwargs = dict(superpixel_size=superpixel_size, start_label=options.start_label, color=color,
                              graph=options.graph, tiles=tiles)
                if remote_free(outdir):
                    entry = large_entry(driver, item, Path(outdir), n_superpixels, **kwargs)
                else:  # staged here, then uploaded (as an actor does)
                    with tempfile.TemporaryDirectory(prefix="spam-stream-staging-") as staging:
                        entry = large_entry(driver, item, Path(staging), n_superpixels, remote=outdir, **kwargs)
                entry.update(node="driver", pid=os.getpid())
                done[index] = entry
                writer.record(entry)
                if progress is not None:
                    progress(entry)
    finally:
        if started:
            ray.shutdown()
    # the manifest's final order is the input order, as with the local engine; an item Ray never returned is a
    # failed line (it cannot happen with the retries above, but a missing line would hide it)
    writer.entries[:] = [done.get(i) or failed_entry(it, "lost by the Ray job") for i, it in enumerate(todo)]
