"""The SPAM model: load the encoder once, then segment many images.

decode (caller) → prior → seeds + candidates → features → cluster → connectivity → labels: one method per stage,
each filling fields of a :class:`~spam_stream.frame.Frame`; :meth:`SPAM.segment` is their plain composition and the
pipelines (:mod:`spam_stream.pipelines`) run the same methods in threads.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .candidates import grid_candidates, object_candidates
from .clustering import as_pixel_rows, cluster_converge
from .connectivity import enforce_connectivity
from .encoder import Encoder, attach_int8, estimate_frame_bytes, fold_batchnorm, load_encoder, tile_for_budget
from .frame import Frame
from .features import COLOR_SCALE, default_spatial_scale, pixel_features
from .io import InputError, as_rgb, read_image  # noqa: F401  (as_rgb: model.as_rgb, as before)
from .priors.base import Prior, Provider
from .seeding import grid_seeds, object_seeds

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "spam_encoder.pt"


_WARMED: set = set()  # kinds of model warmed up in this process (SPAM.warm_up)

DEFAULT_MEMORY_FRACTION = 0.5  # the default frame limit: half of the machine's memory (or less, if less is free)


def available_memory() -> int | None:
    """Bytes of memory the system can still give this process (Linux ``MemAvailable``; None when unknown)."""
    info = _meminfo()
    if "MemAvailable" in info:
        return info["MemAvailable"]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_limit() -> int | None:
    """The peak one frame may take by default: :data:`DEFAULT_MEMORY_FRACTION` of the machine's memory, or the memory
    available now when that is less (None when unknown). A frame that would take most of a machine is refused in one
    line rather than run for minutes at the edge of an out-of-memory kill (issue 21: a 12000×12000 image took 17 GB
    of a 24 GB machine)."""
    total = _meminfo().get("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            total = None
    free = available_memory()
    limits = [v for v in (None if total is None else int(total * DEFAULT_MEMORY_FRACTION), free) if v]
    return min(limits) if limits else None


def _meminfo() -> dict[str, int]:
    """Linux /proc/meminfo in bytes ({} elsewhere)."""
    out = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    out[name] = int(fields[0]) * 1024
    except OSError:
        pass
    return out


class MemoryLimitError(InputError):
    """A frame whose estimated peak memory exceeds the memory available (or the user's limit): refused before any
    work, rather than an out-of-memory kill."""


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _fitting_size(width: int, height: int, need: int, limit: int) -> str:
    """"WxH": the frame scaled so that its estimated peak (about proportional to the pixels) fits ``limit``."""
    scale = min(1.0, (0.9 * limit / need) ** 0.5)
    return f"{max(1, int(width * scale))}x{max(1, int(height * scale))}"


def check_prior(prior, shape) -> np.ndarray | None:
    """Validate a prior partition against the image shape; returns it as (H, W) int32 with consecutive ids
    (-1 kept for uncertain pixels)."""
    if prior is None:
        return None
    prior = np.asarray(prior)
    if prior.shape != tuple(shape):
        raise ValueError(f"prior partition has shape {prior.shape} but the image is {tuple(shape)}")
    if not np.issubdtype(prior.dtype, np.integer):
        raise ValueError(f"prior partition must hold integer object ids, got dtype {prior.dtype}")
    from .kernels.labeling import consecutive_ids

    out = consecutive_ids(prior)
    if out is None:
        return None  # nothing but uncertain pixels: no usable prior
    return out


def is_batch(image) -> bool:
    """Whether ``image`` is a batch of images: 4 dimensions ((B, H, W, 3) or a (B, 3, H, W) tensor)."""
    return getattr(image, "ndim", np.ndim(image)) == 4


def check_start_label(start_label) -> int:
    """``start_label`` as an int ≥ 0 (ValueError otherwise)."""
    if isinstance(start_label, bool) or int(start_label) != start_label or start_label < 0:
        raise ValueError(f"start_label must be an integer >= 0, got {start_label!r}")
    return int(start_label)


def prior_partition(prior, image: np.ndarray, key=None) -> np.ndarray | None:
    """The one place where a prior of any kind becomes a checked partition for ``image`` (H, W, 3).

    ``prior``: None; an (H, W) integer partition (-1 = uncertain); a :class:`~spam_stream.priors.Prior`; or a
    :class:`~spam_stream.priors.Provider` (called on the image, ``key`` naming the input for folder providers).
    Returns (H, W) int32 with consecutive ids, or None.
    """
    if isinstance(prior, Provider):
        prior = prior(image, key=key)
    if isinstance(prior, Prior):
        prior = prior.partition
    return check_prior(prior, image.shape[:2])


def adaptive_density(partition: np.ndarray, image: np.ndarray, density=None, attention=None,
                     attention_ratio: float = 2.5, focus=None) -> np.ndarray | None:
    """Per-object seed density factors (n_objects,) for the attention and user-driven modes, combined with an
    explicit ``density`` by multiplication; ``density`` unchanged when no mode is on or there is no object."""
    if (attention is None and not focus) or partition is None:
        return density
    from .attention import attention_density, focus_density, saliency_map

    n = int(partition.max()) + 1
    factors = np.ones(n) if density is None else np.asarray(density, dtype=np.float64)[:n].copy()
    if attention is not None:
        factors *= attention_density(partition, saliency_map(image, attention), attention_ratio)
    if focus:
        factors = focus_density(partition, focus, base=factors)
    return factors


def resolve_encoder(encoder) -> tuple[Encoder | None, dict]:
    """``"default"`` → the bundled weights if the package ships them, else None (D=5); ``"fast"`` → the bundled
    weights run at half resolution (:func:`~spam_stream.encoder.fast_encoder`); a path → loaded; an Encoder → used
    as is; None → no CNN (D=5)."""
    if encoder is None or encoder == "none":
        return None, {}
    if isinstance(encoder, Encoder):
        return encoder, {}
    if encoder in ("default", "fast"):
        if not DEFAULT_WEIGHTS.is_file():
            return None, {}
        if encoder == "fast":
            from .encoder import fast_encoder

            enc, meta = load_encoder(DEFAULT_WEIGHTS)
            return fast_encoder(enc), meta
        encoder = DEFAULT_WEIGHTS
    return load_encoder(encoder)


AUTO_ITERATIONS = 50
"""The cap of ``iterations="auto"`` (``--iterations auto``): the rounds stop on convergence (:data:`AUTO_TOL`)."""
AUTO_TOL = 0.015
"""The tolerance of ``iterations="auto"``: stop after a round that changes at most 1.5 % of the pixels' labels
(on BSDS500 test images at K=400 that is about 10 rounds, at the ASA of 10 fixed rounds; see BENCHMARKS.md)."""


DEFAULT_SUBSAMPLE = 3
"""The default row subsampling of the clustering rounds (``SPAM(subsample=...)``, ``--subsample``): every third
row per round, as fast-slic does by default. Rounds cost a third, the final full assignment stays; on BSDS500 test
images at K=400 it keeps ASA and GR within 0.001 / 0.01 of every-row rounds (bundled encoder, D=5 and the oracle
prior; BENCHMARKS.md)."""


def resolve_iterations(iterations, tol=None) -> tuple[int, float]:
    """(cap, tolerance) for ``iterations`` (an int >= 0 or "auto") and ``tol`` (a fraction in [0, 1] or None):
    "auto" is (:data:`AUTO_ITERATIONS`, ``tol`` or :data:`AUTO_TOL`); a number is (it, ``tol`` or 0)."""
    if isinstance(iterations, str):
        if iterations.strip().lower() != "auto":
            raise ValueError(f"iterations: expected a number or 'auto', got {iterations!r}")
        cap, default_tol = AUTO_ITERATIONS, AUTO_TOL
    else:
        cap, default_tol = int(iterations), 0.0
        if cap < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
    tol = default_tol if tol is None else float(tol)
    if not 0.0 <= tol <= 1.0:
        raise ValueError(f"tol must be a fraction of the pixels in [0, 1], got {tol}")
    return cap, tol


class SPAM:
    """SuperPixel Anything Model, ready to segment many images with the same settings.

    Args:
        encoder: "default" (bundled weights, or D=5 when none ship), a weights path, an Encoder, or None (D=5).
        compactness: λs, the regularity knob (position weight in grid steps); None = the encoder's default
            (:func:`~spam_stream.features.default_spatial_scale`).
        color_scale: λc, the colour weight.
        iterations: hard clustering iterations, at most (see ``tol``); "auto": :data:`AUTO_ITERATIONS` with
            ``tol`` :data:`AUTO_TOL` unless ``tol`` is given.
        tol: stop the iterations after a round that changes the label of at most this fraction of the pixels (0:
            only at a fixed point, which changes nothing in the result).
        subsample: row subsampling of the clustering rounds: each round assigns and averages every
            ``subsample``-th image row (rotating), one full assignment at the end (1: every row in every round).
            None: :data:`DEFAULT_SUBSAMPLE`. Cold starts only (a video's warm frames run every row).
        min_size_factor: disconnected fragments smaller than this fraction of the mean superpixel area merge into
            a neighbour.
        max_candidate_distance: with a prior, candidate seeds farther than this many grid steps are ignored.
        device: torch device for features and clustering ("cpu" or "cuda").
        seed: random seed for seeding (results are deterministic for a given seed).
        prior: a ready prior :class:`~spam_stream.priors.Provider` (e.g. ``make_provider("fastsam", checkpoint=…)``)
            used for every image that :meth:`segment` gets without its own prior: the prior model loads once.
        memory_budget: bytes of encoder activations at once (the encoder runs tile by tile within it; default
            :data:`spam_stream.encoder.DEFAULT_MEMORY_BUDGET`, 128 MiB); the results do not depend on it.
        memory_limit: bytes one frame may take at its peak (:func:`~spam_stream.encoder.estimate_frame_bytes`);
            a larger frame is refused with :class:`MemoryLimitError` before any work. None: half of the machine's
            memory, or what is free when the frame arrives if that is less (:func:`default_memory_limit`; CPU
            frames); 0 turns the guard off.
    """

    def __init__(self, encoder="default", compactness: float | None = None, color_scale: float = COLOR_SCALE,
                 iterations: int | str = 10, min_size_factor: float = 0.5, max_candidate_distance: float = 3.0,
                 device="cpu", seed: int = 0, prior: Provider | None = None, memory_budget: int | None = None,
                 tol: float | None = None, memory_limit: int | None = None, subsample: int | None = None):
        from .kernels import resolve_device  # device names are checked in one place
        from .kernels.reference import subsample_rows

        self.device = resolve_device(device)
        enc, meta = resolve_encoder(encoder)
        self.encoder = None
        if enc is not None:
            self.encoder = fold_batchnorm(enc).to(self.device)
            self.encoder.input_color_scale = float(meta.get("color_scale", COLOR_SCALE))
            if self.device.type == "cpu":  # int8 twin where the CPU runs it and the weights ship a calibration
                attach_int8(self.encoder, enc, getattr(enc, "weights_path", None))
        self.compactness = default_spatial_scale(encoder) if compactness is None else compactness
        self.color_scale = color_scale
        self.iterations, self.tol = resolve_iterations(iterations, tol)
        self.subsample = subsample_rows(DEFAULT_SUBSAMPLE if subsample is None else subsample)
        self.min_size_factor, self.max_candidate_distance, self.seed = min_size_factor, max_candidate_distance, seed
        self.prior = prior
        self.memory_budget = memory_budget
        self.memory_limit = memory_limit
        if self.device.type == "cpu":
            self.warm_up()

    def _warm_key(self):
        """What a warm-up covers for the whole process: the kernels of this kind of model (numba's are global)."""
        enc = self.encoder
        if enc is None:
            return ("none",)
        return ("int8" in enc.__dict__, float(getattr(enc, "resolution", 1.0)), getattr(enc, "upsample", None))

    def warm_up(self, force: bool = False) -> None:
        """Segment a small synthetic frame, without and with a prior partition, so that one-time costs are paid
        here, at load, not by the first frame: numba's CPU target starts (≈ 0.7 s in a fresh process) and loads
        the compiled kernels from its on-disk cache (compiles them on a fresh install), the int8 encoder runs once.
        Its colours are those of natural images (the int8 encoder's calibrated range); the model's prior provider,
        if any, is not run. ``SPAM()`` calls it on the CPU, once per process and kind of model (``force``: again)."""
        key = self._warm_key()
        if key in _WARMED and not force:
            return
        rng = np.random.default_rng(0)
        small = torch.from_numpy(rng.integers(0, 256, (3, 9, 13)).astype(np.float32))[None]
        smooth = torch.nn.functional.interpolate(small, size=(145, 229), mode="bilinear", align_corners=False)[0]
        image = np.ascontiguousarray((48 + smooth.permute(1, 2, 0).numpy() * (160 / 255)).astype(np.uint8))
        halves = np.zeros((145, 229), np.int32)
        halves[:, 100:] = 1
        # K: few and many seeds (the nearest-seed search runs serially below PARALLEL_POINTS queries, else parallel)
        for partition, k in ((None, 600), (halves, 24), (halves, 600)):
            frame = self.frame(image, k, prior=partition)
            if partition is not None:
                self.prior_stage(frame)
            for stage in (self.seed_stage, self.feature_stage, self.cluster_stage, self.connectivity_stage):
                stage(frame)
        _WARMED.add(key)

    @property
    def n_features(self) -> int:
        """D: 5 without a CNN, the encoder's output channels with one."""
        return 5 if self.encoder is None else self.encoder.out_dim

    def frame(self, image, n_superpixels: int = 400, prior=None, density=None, *, key=None, index: int = 0,
              mask=None) -> Frame:
        """A checked :class:`~spam_stream.frame.Frame` for ``image`` (any array :func:`as_rgb` takes, or an image
        file's path).

        Raises ValueError for K < 1 or K > H·W, :class:`MemoryLimitError` for a frame too large for the memory
        (:meth:`check_memory`), :class:`~spam_stream.io.InputError` for an unreadable file."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        image = as_rgb(image)
        h, w = image.shape[:2]
        k = self.check_request(h, w, n_superpixels)
        frame = Frame(index=index, key=key, image=image, n_superpixels=k, prior=prior, density=density)
        if mask is not None:  # superpixels only where the mask is non-zero (spam_stream.masking)
            from .masking import check_mask

            frame.meta["mask"] = check_mask(mask, (h, w))
        return frame

    def check_request(self, height: int, width: int, n_superpixels) -> int:
        """K as an int, after checking it against an H×W frame (ValueError) and the frame against the memory
        (:meth:`check_memory`)."""
        k = int(n_superpixels)
        if k < 1:
            raise ValueError(f"the number of superpixels must be at least 1, got {n_superpixels}")
        if k > height * width:
            raise ValueError(f"{k} superpixels requested but the image has only {height * width} pixels")
        self.check_memory(height, width, k)
        return k

    def frame_bytes(self, height: int, width: int, n_superpixels: int) -> int:
        """Estimated peak bytes of one frame (:func:`~spam_stream.encoder.estimate_frame_bytes` with this model's
        encoder, tile and D)."""
        tile, enc_width = None, 32
        if self.encoder is not None:
            tile, enc_width = tile_for_budget(height, width, self.encoder, self.memory_budget), self.encoder.width
        return estimate_frame_bytes(height, width, n_superpixels, self.n_features, tile, enc_width)

    def check_memory(self, height: int, width: int, n_superpixels: int) -> None:
        """Refuse (:class:`MemoryLimitError`, one line) an H×W frame whose estimated peak exceeds ``memory_limit``
        or, by default, :func:`default_memory_limit` (CPU frames; on CUDA the frame lives on the device)."""
        limit = self.memory_limit
        if limit is None:
            if self.device.type != "cpu":
                return
            limit = default_memory_limit()
        if not limit:
            return
        need = self.frame_bytes(height, width, n_superpixels)
        if need > limit:
            source = ("the limit set (--memory-limit)" if self.memory_limit else
                      "the default limit (half of this machine's memory, or what is free now; --memory-limit MB "
                      "raises it)")
            without = estimate_frame_bytes(height, width, n_superpixels, 5, None)
            raise MemoryLimitError(
                f"a {width}x{height} frame needs about {_size(need)} at its peak, more than {source} "
                f"({_size(limit)}): downscale it (e.g. to {_fitting_size(width, height, need, limit)})"
                + (f", or use --encoder none (D=5, about {_size(without)})" if self.encoder is not None else ""))

    # ---- the stages, in pipeline order; each reads and fills fields of a Frame --------------------------------

    def prior_stage(self, frame: Frame, attention=None, attention_ratio: float = 2.5, focus=None) -> Frame:
        """``frame.prior`` (or the model's provider) → ``frame.partition`` (H, W) int32 or None, and the per-object
        ``frame.density`` of the attention / user-driven modes."""
        with frame.timed("prior"):
            source = self.prior if frame.prior is None else frame.prior
            if "tiles" in frame.meta and (source is not None or attention is not None or focus):
                raise ValueError("a batch of images segmented as tiles takes no prior (nor attention / focus): "
                                 "segment those images one by one")
            if source is None and (attention is not None or focus):
                raise ValueError("the attention and focus modes weight prior objects: they need a prior")
            frame.partition = prior_partition(source, frame.image, frame.key)
            frame.density = adaptive_density(frame.partition, frame.image, frame.density, attention,
                                             attention_ratio, focus)
        return frame

    def seed_stage(self, frame: Frame) -> Frame:
        """Seeds and candidates (grid without a prior, object seeds + candidate table with one). Kept when the frame
        already has them (a video reusing its previous frame's seeds). On a resident frame they are made on the
        model's device (``frame.seeds``' arrays are then tensors there), equal to the CPU functions' results."""
        if frame.seeds is not None and frame.cands is not None:
            return frame
        from . import kernels  # device dispatch lives there

        if frame.meta.get("mask") is not None:  # masked-out pixels: no seed, no candidate (spam_stream.masking)
            from .masking import masked_seeds

            with frame.timed("seeds"):
                frame.seeds, frame.cands, frame.partition = masked_seeds(
                    frame.partition, frame.meta["mask"], frame.n_superpixels, frame.density, self.seed,
                    self.max_candidate_distance)
            return frame

        with frame.timed("seeds"):
            h, w = frame.image.shape[:2]
            k = frame.n_superpixels
            if "tiles" in frame.meta:  # a batch as one frame of tiles: each tile its own grid and "object"
                from .tiles import tile_seeds

                frame.seeds, frame.cands, frame.partition = tile_seeds(frame, self.device)
            elif frame.partition is None:
                if kernels.resident_frame(self.device):  # starting cells and candidate layout made on the device
                    frame.seeds = kernels.resident_grid_seeds(h, w, k, self.device)
                    frame.cands = kernels.resident_grid_candidates(h, w, frame.seeds.grid, self.device)
                else:
                    frame.seeds = grid_seeds(h, w, k)
                    frame.cands = grid_candidates(h, w, frame.seeds)
            elif kernels.resident_frame(self.device):
                # the partition goes up once; seeds, starting labels and the candidate table are made and stay there
                part = kernels.upload(frame.partition, self.device)
                frame.meta["partition_device"] = part  # connectivity_stage reads it there (no second upload)
                frame.seeds = kernels.resident_object_seeds(part, k, frame.density, self.seed, self.device)
                frame.cands = kernels.resident_object_candidates(*frame.seeds.candidate_groups(part),
                                                                 self.max_candidate_distance, self.device)
            else:
                frame.seeds = object_seeds(frame.partition, k, density=frame.density, seed=self.seed)
                # candidates inside each pixel's own piece of its object (the uncertain band may cut an object)
                frame.cands = object_candidates(*frame.seeds.candidate_groups(frame.partition),
                                                self.max_candidate_distance)
        return frame

    def feature_stage(self, frame: Frame) -> Frame:
        """(D, H, W) float32 pixel features on the model's device."""
        from . import kernels  # device dispatch lives there

        with frame.timed("features"):
            if "tiles" in frame.meta:  # Lab in one pass, positions and encoder per tile
                from .tiles import tile_features, tile_initial_centroids

                frame.features = tile_features(self, frame)
                if frame.seeds is not None and frame.init_centroids is None and self.device.type == "cpu":
                    frame.init_centroids = tile_initial_centroids(frame)
            elif kernels.resident_frame(self.device):  # uint8 upload, Lab and positions in torch on the device
                frame.features = kernels.resident_features(frame.image, frame.n_superpixels, self.encoder,
                                                           self.color_scale, frame.meta.get("compactness", self.compactness), self.device)
            else:
                frame.features = pixel_features(frame.image, frame.n_superpixels, self.encoder, self.color_scale,
                                                frame.meta.get("compactness", self.compactness), self.device, memory_budget=self.memory_budget)
        return frame

    def cluster_stage(self, frame: Frame) -> Frame:
        """Hard clustering: ``frame.cluster_labels`` (H, W) int32 and ``frame.centroids`` (K, D).

        Starts from ``frame.init_centroids`` when given (a video's previous frame, whose raw labels may come in
        ``meta["prev_cluster_labels"]`` for the convergence test), else from the seeds' cells; runs at most
        ``frame.iterations`` (default: the model's) iterations, fewer once converged (``frame.tol``, default the
        model's); ``meta["iterations"]``: the rounds run. Row subsampling (``subsample``) is for cold starts only: a
        warm-started frame (``meta["warm_start"]``, a video's frame started from the previous one's clusters) runs
        every row, since its few rounds would see their convergence s rounds late (on pans
        warm frames then ran 8-10 subsampled rounds instead of 2-5 full ones, and kept fewer ids)."""
        with frame.timed("cluster"):
            h, w = frame.image.shape[:2]
            iterations = self.iterations if frame.iterations is None else frame.iterations
            tol = self.tol if frame.tol is None else frame.tol
            prev = frame.meta.pop("prev_cluster_labels", None)  # a video's previous frame (same seeds)
            with torch.inference_mode():
                labels, centroids, run = cluster_converge(
                    as_pixel_rows(frame.features), frame.cands.to(self.device),
                    torch.as_tensor(frame.seeds.init_labels, device=self.device), iterations, tol,
                    centroids=frame.init_centroids,
                    prev_labels=None if prev is None else torch.as_tensor(prev, device=self.device).reshape(-1),
                    subsample=1 if frame.meta.get("warm_start") else self.subsample)
            frame.meta["iterations"] = run
            frame.cluster_labels = labels.cpu().numpy().reshape(h, w)
            frame.centroids = centroids
            if self.device.type == "cuda":  # connectivity_stage uses them in place (no upload back)
                frame.meta["cluster_labels_device"] = labels.view(h, w)
        return frame

    def connectivity_stage(self, frame: Frame) -> Frame:
        """Final labels (H, W) int32 0..K'-1: every superpixel 4-connected and inside one prior object; and
        ``frame.label_source`` (K',) int64, the cluster each superpixel keeps (-1: a fragment kept on its own)."""
        if frame.meta.get("mask") is not None:  # the masked-out region is one excluded object, then 0
            from .masking import masked_labels

            with frame.timed("connectivity"):
                inside = frame.meta["mask"]
                frame.meta.pop("cluster_labels_device", None)
                min_size = max(1, int(self.min_size_factor * int(inside.sum()) / frame.n_superpixels))
                labels, frame.label_source = enforce_connectivity(frame.cluster_labels, frame.partition, min_size,
                                                                  return_source=True)
                frame.labels = masked_labels(labels, inside)
            return frame
        with frame.timed("connectivity"):
            h, w = frame.cluster_labels.shape
            tile_h = h // frame.meta.get("tiles", 1)  # a batch of tiles: the fragment size of one tile
            min_size = max(1, int(self.min_size_factor * tile_h * w / frame.n_superpixels))
            from . import kernels  # device dispatch lives there

            if kernels.resident_frame(self.device):  # components on the device, labels come back once
                device_labels = frame.meta.pop("cluster_labels_device", None)  # set by cluster_stage when it keeps them
                device_part = frame.meta.pop("partition_device", None)  # set by seed_stage on a resident frame
                frame.labels, frame.label_source = kernels.resident_connectivity(
                    frame.cluster_labels if device_labels is None else device_labels,
                    frame.partition if device_part is None else device_part, min_size, self.device, return_source=True)
            else:
                frame.labels, frame.label_source = enforce_connectivity(frame.cluster_labels, frame.partition,
                                                                        min_size, return_source=True)
        return frame

    def run_stages(self, frame: Frame, attention=None, attention_ratio: float = 2.5, focus=None) -> Frame:
        """Every stage in order on one frame (what the pipelines run apart, in threads)."""
        self.prior_stage(frame, attention, attention_ratio, focus)
        self.seed_stage(frame)
        self.feature_stage(frame)
        self.cluster_stage(frame)
        return self.connectivity_stage(frame)

    def segment(self, image, n_superpixels: int = 400, prior=None, density=None, *, attention=None,
                attention_ratio: float = 2.5, focus=None, key=None, start_label: int = 0, mask=None,
                tile_size: int | None = None) -> np.ndarray:
        """Superpixels of one image, or of a batch of same-sized images.

        Args:
            image: (H, W, 3) uint8 RGB (grayscale, RGBA and float [0, 1] images are converted); or a batch: a
                (B, H, W, 3) array or tensor, or a (B, 3, H, W) tensor, segmented as one frame of B tiles (one
                clustering and one connectivity call for the whole batch, candidates kept inside each tile; see
                :mod:`spam_stream.tiles`) — labels (B, H, W) equal to segmenting each image alone; no prior.
            n_superpixels: K, the requested number of superpixels (1 ≤ K ≤ H·W).
            prior: (H, W) integer object partition (ids ≥ 0, -1 = uncertain), a Prior, a Provider, or None (then
                the constructor's provider, if any).
            density: optional per-object seed density factors (indexed by the prior's object ids after they are
                made consecutive in increasing order) for the attention and user-driven modes.
            attention: None, "saliency" (spectral-residual saliency), an (H, W) saliency map or a callable
                image → map: objects with mean saliency > 0.1 get ``attention_ratio``× the seeds per pixel.
            focus: [(x, y, factor), ...]: the object under each point gets ``factor``× the seeds per pixel.
            key: the input's name (file stem) or frame index, for providers that read one prior file per input.
            start_label: the first label (default 0). scikit-image's ``regionprops`` skips label 0: pass 1 to give
                it every superpixel (as ``skimage.segmentation.slic`` numbers them).
            mask: optional (H, W) array (or a lower pyramid level's, an integer factor smaller: scaled up by nearest
                neighbour): pixels where it is 0 get no superpixel and label 0, the superpixels are numbered from
                ``max(start_label, 1)``; masked-out pixels are skipped, not segmented (:mod:`spam_stream.masking`).
            tile_size: segment in tiles of this side (edges at its multiples), seam-free, one density over the
                whole image (:mod:`spam_stream.tiling`); None or 0: the whole frame. ``image`` may then also be a
                lazily read file (:func:`spam_stream.largeio.open_large`). A mask, but no prior, in this mode yet.
        Returns:
            (H, W) int32 labels start_label..start_label+K'-1 ((B, H, W) for a batch, numbered per image); every
            superpixel is 4-connected and inside one prior object.
        """
        start = check_start_label(start_label)
        if mask is not None and is_batch(image):
            raise ValueError("a batch of images segmented as tiles takes no mask")
        if tile_size:
            if prior is not None or self.prior is not None or attention is not None or focus:
                raise ValueError("tiled segmentation (tile_size) takes no prior, attention or focus yet: "
                                 "use tile_size=0")
            from .masking import shift_labels
            from .tiling import segment_large

            labels = segment_large(self, image, n_superpixels, tile_size, mask=mask)
            return shift_labels(labels, start, mask is not None)
        if is_batch(image):
            from .tiles import segment_tiles

            labels = segment_tiles(self, image, n_superpixels, prior, density, attention, attention_ratio, focus)
        else:
            frame = self.frame(image, n_superpixels, prior, density, key=key, mask=mask)
            labels = self.run_stages(frame, attention, attention_ratio, focus).labels
            if mask is not None:
                from .masking import shift_labels

                return shift_labels(labels, start, True)
        return labels + np.int32(start) if start else labels
