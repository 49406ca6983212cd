"""Clustering kernels and the one place that chooses an implementation by device.

Implementations (same functions, same results):

* ``reference`` — plain torch (:mod:`.reference`), the ground truth;
* ``cpu``       — fused numba loops over both cores, no (N, 9, D) intermediate (:mod:`.cpu`), the default on CPU;
* ``triton``    — Triton kernels (:mod:`.triton_kernels`), the default for CUDA tensors.

``SPAM_KERNELS=reference|cpu|triton`` forces one implementation everywhere (``triton`` on CPU tensors needs
``TRITON_INTERPRET=1`` set before triton is imported; that is how the test suite runs the GPU code path here).

Public functions (shapes in :mod:`.reference`): :func:`masked_distances`, :func:`assign`, :func:`associate`,
:func:`centroid_sums_hard`, :func:`centroid_sums_soft`, :func:`hard_iterations`, :func:`hard_converge`,
:func:`soft_iteration`.

GPU-resident frames: :func:`resident_frame` says whether a model's per-frame stages keep the frame on its device
(a CUDA device; ``SPAM_DEVICE_FRAME=1`` forces that path on CPU tensors, to test it without a GPU), and
:func:`resident_features`, :func:`resident_grid_candidates`, :func:`resident_object_seeds`,
:func:`resident_object_candidates`, :func:`resident_connectivity` are those stages' device implementations
(:mod:`.features`, :mod:`.seeding` with :mod:`.nearest`, :mod:`.connectivity`).

Superpixel graphs and tokens (:mod:`spam_stream.graph`): :func:`region_stats`, :func:`token_layout`,
:func:`pooling_matrix` (:mod:`.regions`: numba on the CPU, the torch reference elsewhere).
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from . import reference
from .candidates import N_SLOTS, Candidates, candidate_table, grid_table, valid_slots

BACKENDS = ("reference", "cpu", "triton")
_MODULES = {"reference": ".reference", "cpu": ".cpu", "triton": ".triton_kernels"}


def resolve_device(name) -> torch.device:
    """The torch device a user's ``--device`` / ``device=`` names: ``"auto"`` → cuda when torch sees a CUDA device,
    else cpu; any other name as torch spells it (cpu, cuda, cuda:1, …). ValueError (one line) for a name torch does
    not know (e.g. "gpu") or a CUDA device that is not there."""
    if isinstance(name, torch.device):
        device = name
    elif str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(str(name))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"--device {name}: not a device torch knows; expected cpu, cuda, cuda:N or auto") \
                from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch sees no CUDA device on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: expected cpu, cuda, cuda:N or auto")
    return device


def backend_name(device: torch.device | str) -> str:
    """The implementation used for tensors on ``device`` (honours ``SPAM_KERNELS``)."""
    forced = os.environ.get("SPAM_KERNELS", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"SPAM_KERNELS={forced!r}: expected one of {', '.join(BACKENDS)}")
        return forced
    return "triton" if torch.device(device).type == "cuda" else "cpu"


def backend(device: torch.device | str):
    """The kernel module for ``device``: the single dispatch point."""
    return importlib.import_module(_MODULES[backend_name(device)], __name__)


def empty_features(height: int, width: int, channels: int, device) -> torch.Tensor:
    """An uninitialised (D, H, W) float32 feature tensor on ``device`` in the layout its backend reads in place:
    one zero-padded plane per channel for the CPU kernels (:func:`.cpu.empty_features`), pixel rows ((H, W, D)
    storage, so that ``as_pixel_rows`` is a contiguous view) for the Triton and reference kernels."""
    return backend(device).empty_features(height, width, channels, device)


def initial_centroids(features, init_labels, n_superpixels: int):
    """The seeds' mean features (K, D) for hard clustering, computed by the backend when it has a faster way
    (:func:`.cpu.initial_centroids`, equal to :func:`spam_stream.clustering.initial_centroids`), else None: the
    caller then uses the torch version."""
    impl = getattr(backend(features.device), "initial_centroids", None)
    return None if impl is None else impl(features, init_labels, n_superpixels)


def masked_distances(features, centroids, cands: Candidates):
    return backend(features.device).masked_distances(features, centroids, cands)


def assign(features, centroids, cands: Candidates):
    return backend(features.device).assign(features, centroids, cands)


def associate(features, centroids, cands: Candidates):
    return backend(features.device).associate(features, centroids, cands)


def centroid_sums_hard(features, labels, n_superpixels: int):
    return backend(features.device).centroid_sums_hard(features, labels, n_superpixels)


def centroid_sums_soft(features, q, cands: Candidates):
    return backend(features.device).centroid_sums_soft(features, q, cands)


def hard_iterations(features, centroids, cands: Candidates, n_iter: int):
    """(labels (N,) int32, centroids (K, D)) after ``n_iter`` hard iterations and a final assignment."""
    return backend(features.device).hard_iterations(features, centroids, cands, n_iter)


def hard_converge(features, centroids, cands: Candidates, max_iter: int, tol: float = 0.0, prev_labels=None,
                  subsample: int = 1):
    """(labels (N,) int32, centroids (K, D), rounds run): hard iterations until at most ``tol`` · N pixels change
    label in a round (``prev_labels``: what the first round is compared with), at most ``max_iter``, then a final
    assignment; ``subsample``: rounds on every s-th image row (:func:`.reference.hard_converge`)."""
    return backend(features.device).hard_converge(features, centroids, cands, max_iter, tol, prev_labels, subsample)


class _FusedSoftIteration(torch.autograd.Function):
    """A soft iteration computed by a fused backend, with the analytic backward of the same backend."""

    @staticmethod
    def forward(ctx, features, centroids, cands, impl_name):
        impl = importlib.import_module(_MODULES[impl_name], __name__)
        q = impl.associate(features, centroids, cands)
        sums, counts = impl.centroid_sums_soft(features, q, cands)
        new_c = reference.new_centroids(sums, counts, centroids)
        ctx.cands, ctx.impl = cands, impl
        ctx.save_for_backward(features, centroids, q, counts, new_c)
        return q, new_c

    @staticmethod
    def backward(ctx, grad_q, grad_new_c):
        features, centroids, q, counts, new_c = ctx.saved_tensors
        if grad_new_c is None:
            grad_new_c = torch.zeros_like(new_c)
        backward = getattr(ctx.impl, "soft_iteration_backward", reference.soft_iteration_backward)
        g_f, g_c = backward(features, centroids, ctx.cands, q, counts, new_c, grad_q, grad_new_c)
        return g_f, g_c, None, None


def soft_iteration(features, centroids, cands: Candidates):
    """One differentiable soft iteration: (q (N, 9), new centroids (K, D)).

    The reference runs through torch autograd; fused backends run forward and backward as their own kernels.
    """
    name = backend_name(features.device)
    if name == "reference":
        return reference.soft_iteration(features, centroids, cands)
    return _FusedSoftIteration.apply(features, centroids, cands, name)


# --- GPU-resident frame: the stages' device implementations, chosen here ---------------------------------------------

def resident_frame(device: torch.device | str) -> bool:
    """True when the per-frame stages keep the frame on ``device`` (uint8 upload, Lab in torch, grid candidates and
    connectivity on the device): a CUDA device, or any device with ``SPAM_DEVICE_FRAME=1``; ``SPAM_DEVICE_FRAME=0``
    turns it off (the CPU stages then feed the device as before)."""
    forced = os.environ.get("SPAM_DEVICE_FRAME", "").strip()
    if forced:
        return forced not in ("0", "false", "no")
    return torch.device(device).type == "cuda"


def resident_features(image, n_superpixels: int, encoder, color_scale: float, spatial_scale: float, device):
    """(D, H, W) float32 features on ``device`` from an (H, W, 3) uint8 image uploaded once (Lab in torch).

    On a GPU the encoder's activation budget is a quarter of the free device memory (a 1080p frame's ≈2.7 GB runs
    as one tile instead of the CPU default's several)."""
    from .features import pixel_features_torch

    budget = None
    if encoder is not None and torch.device(device).type == "cuda":
        budget = torch.cuda.mem_get_info(torch.device(device))[0] // 4
    return pixel_features_torch(image, n_superpixels, encoder, color_scale, spatial_scale, device, budget)


def upload(array, device) -> torch.Tensor:
    """An array as a tensor on ``device``; to a GPU through pinned memory without blocking the host
    (:func:`.features.upload`)."""
    from .features import upload as upload_to

    return upload_to(array, device)


def resident_grid_seeds(height: int, width: int, n_superpixels: int, device):
    """:func:`spam_stream.seeding.grid_seeds` whose (H*W,) starting cells are made on ``device`` (no frame-sized
    upload per frame; cached per size, read-only: a video's frames share them)."""
    from ..seeding import grid_seeds, grid_shape

    grid = grid_shape(height, width, n_superpixels)
    return grid_seeds(height, width, n_superpixels, _grid_init_labels(height, width, grid, torch.device(device)))


@functools.lru_cache(maxsize=8)
def _grid_init_labels(height: int, width: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    from .seeding import grid_init_labels_torch

    return grid_init_labels_torch(height, width, grid, device)


def resident_grid_candidates(height: int, width: int, grid: tuple[int, int], device) -> Candidates:
    """The grid candidate layout (no prior) built on ``device``."""
    from .seeding import grid_candidates_torch

    return grid_candidates_torch(height, width, grid, device)


def resident_object_seeds(partition, n_superpixels: int, density, seed: int, device):
    """Object seeds of a prior partition on ``device``: the (H, W) partition (array or tensor) goes up once and a
    :class:`~spam_stream.seeding.Seeds` of tensors there comes back — equal to
    :func:`spam_stream.seeding.object_seeds`. ``density``: (n_objects,) numpy factors or None."""
    from .seeding import object_seeds_torch

    return object_seeds_torch(torch.as_tensor(partition).to(device), n_superpixels, density, seed=seed)


def resident_object_candidates(partition, seeds, max_distance: float, device) -> Candidates:
    """The candidate table of object seeds built on ``device`` — equal to
    :func:`spam_stream.candidates.object_candidates`; ``partition``, ``seeds`` as ``seeds.candidate_groups(...)``
    gives them (tensors on ``device`` for seeds from :func:`resident_object_seeds`)."""
    from .seeding import object_candidates_torch

    return object_candidates_torch(torch.as_tensor(partition).to(device), seeds, max_distance)


def resident_connectivity(cluster_labels, partition, min_size: int, device, return_source: bool = False):
    """Connectivity of a frame on ``device``: (H, W) int32 numpy labels, the one transfer back (with
    ``return_source`` also the (K',) source labels) — equal to :func:`spam_stream.connectivity.enforce_connectivity`.

    ``cluster_labels`` (H, W) integer array or tensor (used in place when already on ``device``); ``partition``
    (H, W) integer array / tensor or None."""
    from .connectivity import enforce_connectivity_torch

    labels = torch.as_tensor(cluster_labels).to(device)
    out = enforce_connectivity_torch(labels, None if partition is None else torch.as_tensor(partition).to(device),
                                     min_size, return_source=return_source)
    if return_source:
        return out[0].cpu().numpy(), out[1]
    return out.cpu().numpy()


def region_stats(labels: torch.Tensor, image=None, features=None, prior=None) -> dict:
    """Per-superpixel statistics and adjacency of an (H, W) label tensor on its device (:mod:`.regions`): the fused
    numba scan for CPU tensors, the torch reference otherwise (CUDA, or ``SPAM_KERNELS=reference``)."""
    from . import regions

    if labels.device.type == "cpu" and backend_name(labels.device) == "cpu":
        return regions.region_stats_cpu(labels, image, features, prior)
    return regions.region_stats_torch(labels, image, features, prior)


def _cpu_twin(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and backend_name(tensor.device) == "cpu"


def token_layout(labels: torch.Tensor):
    """The token table layout of a (B, H, W) label batch (:func:`.regions.token_layout_torch`), numba on the CPU."""
    from . import regions

    return (regions.token_layout_cpu if _cpu_twin(labels) else regions.token_layout_torch)(labels)


def pooling_matrix(slot: torch.Tensor, b: int, k_max: int, h: int, w: int, fh: int, fw: int) -> torch.Tensor:
    """(B, K_max, fh·fw) bilinear pooling weights of low-resolution features (:func:`.regions.pooling_matrix_torch`),
    numba on the CPU."""
    from . import regions

    impl = regions.pooling_matrix_cpu if _cpu_twin(slot) else regions.pooling_matrix_torch
    return impl(slot, b, k_max, h, w, fh, fw)


__all__ = [
    "region_stats", "token_layout", "pooling_matrix",
    "upload", "resident_frame", "resident_features", "resident_grid_seeds", "resident_grid_candidates",
    "resident_object_seeds", "resident_object_candidates", "resident_connectivity",
    "empty_features", "N_SLOTS", "Candidates", "candidate_table", "grid_table", "valid_slots", "backend", "backend_name",
    "initial_centroids", "masked_distances", "assign", "associate", "centroid_sums_hard", "centroid_sums_soft", "hard_iterations",
    "hard_converge", "soft_iteration",
]
