"""spam-stream: SPAM (SuperPixel Anything Model) superpixels for images, batches and video.

    >>> import spam_stream
    >>> labels = spam_stream.segment(image, n_superpixels=400)            # (H, W) int32, 0..K'-1
    >>> labels = spam_stream.segment(image, 400, prior=partition)         # superpixels inside prior objects
    >>> labels = spam_stream.segment(images, 196)      # (B, H, W, 3) batch → (B, H, W), one frame of B tiles
    >>> labels = spam_stream.segment(image, 400, prior="fastsam", prior_checkpoint="FastSAM-s.pt")
    >>> for index, frame, labels in spam_stream.segment_video("clip.mp4", 400): ...   # pipelined, coherent ids
    >>> for item in spam_stream.segment_batch(["a.jpg", "b.png"], 400): ...          # item.labels, item.error
    >>> for index, labels in spam_stream.read_labels("out/clip_labels.mkv"): ...      # a video's labels, read back
    >>> graph = spam_stream.region_graph(labels, image).to_pyg()                      # superpixels as graph nodes
    >>> out = spam_stream.tokens(features, batch_labels)         # (B, K_max, C) pooled tokens, mask, centroids
"""
from __future__ import annotations

import os as _os

# OpenMP worker threads (torch's intra-op pool, numba's "omp" layer) spin after every parallel region by default. In a
# pipeline several threads are busy at once, and on a shared machine other processes are: the spinning then takes the
# cores the working threads need (2-core machine at load 7, `bench_pipeline.py --encoder none`: sequential 5.3 → 45
# frames/s, CPU per frame 92 → 16 ms with PASSIVE). Read once when torch / numba load the OpenMP runtime, so it is set
# before they are imported here; a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from functools import lru_cache  # noqa: E402
from typing import NamedTuple  # noqa: E402

from .graph import RegionGraph, Tokens, region_graph, tokens  # noqa: E402
from .labelio import read_labels  # noqa: E402
from .model import SPAM  # noqa: E402
from .priors import Prior, Provider, make_provider  # noqa: E402

__version__ = "0.1.0"


@lru_cache(maxsize=4)
def _model(encoder, compactness, color_scale, iterations, min_size_factor, device, seed, subsample=None) -> SPAM:
    return SPAM(encoder, compactness, color_scale, iterations, min_size_factor, device=device, seed=seed,
                subsample=subsample)


_providers: dict = {}


def _provider(name, checkpoint, sam_model, masks, options) -> Provider | None:
    """A provider built by name, cached (up to 2) so that repeated calls do not reload the prior model."""
    key = (name, str(checkpoint), sam_model, str(masks), repr(sorted(options.items())))
    if key not in _providers:
        if len(_providers) >= 2:
            _providers.pop(next(iter(_providers)))
        _providers[key] = make_provider(name, checkpoint, sam_model, masks, **options)
    return _providers[key]


def segment(image, n_superpixels: int = 400, prior=None, *, encoder="default", compactness: float | None = None,
            color_scale: float = 0.26, iterations: int = 10, min_size_factor: float = 0.5, device: str = "cpu",
            seed: int = 0, density=None, prior_checkpoint=None, sam_model: str = "vit_h", prior_masks=None,
            prior_options: dict | None = None, attention=None, attention_ratio: float = 2.5, focus=None,
            start_label: int = 0, mask=None, subsample: int | None = None):
    """SPAM superpixels of one image: (H, W) int32 labels start_label..start_label+K'-1 (0..K'-1 by default).

    Args:
        image: (H, W, 3) uint8 RGB array (grayscale / RGBA / float [0, 1] are converted); or a batch of same-sized
            images, (B, H, W, 3) or a (B, 3, H, W) tensor, segmented as one frame of tiles (no prior): (B, H, W)
            labels equal to segmenting each alone (:mod:`spam_stream.tiles`).
        n_superpixels: K requested.
        prior: the prior object partition; no superpixel crosses an object. One of: None; an (H, W) integer
            partition (-1 = uncertain pixel); "none" | "sam" | "fastsam" | "masks" (with ``prior_checkpoint`` for
            sam/fastsam, ``sam_model`` for sam, ``prior_masks`` (file or folder) for masks, ``prior_options`` for
            the provider's other options, see :func:`spam_stream.priors.make_provider`); a ready
            :class:`spam_stream.priors.Provider`; or a :class:`spam_stream.priors.Prior`.
        encoder: "default" (bundled weights; D=5 if none), a weights path, or None for D=5 (no CNN).
        compactness: λs, regularity (None: 9.25, or 8.x for ``encoder="fast"``, see
            :func:`~spam_stream.features.default_spatial_scale`). color_scale: λc. iterations: clustering iterations.
        attention: None or "saliency" (spectral-residual visual attention; or an (H, W) saliency map / a callable
            image → map): objects with mean saliency > 0.1 get ``attention_ratio`` (2.5)× the seeds per pixel.
        focus: [(x, y, factor), ...] user-driven mode: the object under each point gets ``factor``× the density.
        density: explicit per-object density factors (multiplied with the modes above).
        start_label: the first label (0). scikit-image's ``regionprops`` skips label 0: pass 1 to keep every
            superpixel there.
        mask: optional (H, W) array (or a lower pyramid level's): pixels where it is 0 get no superpixel, label 0;
            the superpixels are numbered from ``max(start_label, 1)`` (:mod:`spam_stream.masking`).
        subsample: row subsampling of the clustering rounds (:class:`SPAM`; None: its default).
    The model (and a prior model named by string) is cached across calls with the same settings; for many images,
    :class:`SPAM` with ``prior=make_provider(...)`` is explicit.
    """
    enc = str(encoder) if encoder is not None and not hasattr(encoder, "state_dict") else encoder
    model = _model(enc, compactness, color_scale, iterations, min_size_factor, device, seed, subsample)
    if isinstance(prior, str):
        prior = _provider(prior, prior_checkpoint, sam_model, prior_masks, dict(prior_options or {}))
    return model.segment(image, n_superpixels, prior, density=density, attention=attention,
                         attention_ratio=attention_ratio, focus=focus, start_label=start_label, mask=mask)


def _resolve(prior, encoder, compactness, color_scale, iterations, min_size_factor, device, seed, prior_checkpoint,
             sam_model, prior_masks, prior_options):
    """A SPAM model (prior loaded once) for the iterators below."""
    if isinstance(prior, str):
        prior = _provider(prior, prior_checkpoint, sam_model, prior_masks, dict(prior_options or {}))
    return SPAM(encoder, compactness, color_scale, iterations, min_size_factor, device=device, seed=seed,
                prior=prior if isinstance(prior, Provider) else None), prior


def segment_video(path, n_superpixels: int = 400, prior=None, *, encoder="default", compactness: float | None = None,
                  color_scale: float = 0.26, iterations: int | str = 10, min_size_factor: float = 0.5,
                  device: str = "cpu", seed: int = 0, prior_checkpoint=None, sam_model: str = "vit_h",
                  prior_masks=None, prior_options: dict | None = None, prior_every: int = 1,
                  independent: bool = False, warm_iterations: int = 3, start: int = 0, max_frames: int | None = None,
                  attention=None, attention_ratio: float = 2.5, focus=None, pipelined: bool = True,
                  start_label: int = 0, tol: float | None = None, input_format: str | None = None,
                  realtime: bool = False, stop=None):
    """Superpixels of every frame of a video, pipelined: yields ``(index, frame, labels)`` in frame order.

    ``path``: a video file, ``"-"`` (standard input), a URL or device PyAV opens (``input_format`` e.g. ``"v4l2"``),
    or an iterable of (H, W, 3) uint8 frames (arrays, e.g. a generator; 25 frames/s assumed for timestamps).
    ``realtime``: frames arriving faster than they are processed are dropped before any stage (indices skip them);
    ``stop``: a ``threading.Event`` that ends a live source after the frames in flight. ``iterations`` may be
    ``"auto"`` and ``tol`` the convergence tolerance (:class:`SPAM`). ``start_label`` is added to every label.

    ``frame`` is (H, W, 3) uint8 RGB, ``labels`` (H, W) int32. Frames are temporally coherent (warm starts; an id
    names the same superpixel from frame to frame while its content stays in view) unless ``independent=True``
    (labels 0..K'-1 per frame); ``start_label`` is added to every id. ``prior`` and the model options are those of :func:`segment` (a provider name, a
    Provider, or a fixed (H, W) partition for every frame); ``prior_every=N`` runs the prior every N frames.
    A damaged or cut file raises :class:`spam_stream.io.InputError` after the frames decoded before the damage;
    a frame that fails alone raises the same after the frames before it.
    """
    from .io import InputError
    from .model import check_start_label
    from .pipelines.video import video_frames

    start_label = check_start_label(start_label)
    model, prior = _resolve(prior, encoder, compactness, color_scale, iterations, min_size_factor, device, seed,
                            prior_checkpoint, sam_model, prior_masks, prior_options)
    if tol is not None:
        from .model import resolve_iterations

        model.iterations, model.tol = resolve_iterations(iterations, tol)
    fixed = None if isinstance(prior, Provider) else prior
    frames = video_frames(model, path, n_superpixels, prior_every=prior_every, coherent=not independent,
                          warm_iterations=warm_iterations, attention=attention, attention_ratio=attention_ratio,
                          focus=focus, start=start, max_frames=max_frames, pipelined=pipelined, fixed_prior=fixed,
                          input_format=input_format, realtime=realtime, stop=stop)
    for frame in frames:
        if frame.error is not None:
            frames.close()
            raise InputError(frame.error)
        yield frame.index, frame.image, frame.labels + start_label if start_label else frame.labels


def segment_batch(images_or_paths, n_superpixels: int = 400, prior=None, *, encoder="default",
                  compactness: float | None = None, color_scale: float = 0.26, iterations: int = 10,
                  min_size_factor: float = 0.5, device: str = "cpu", seed: int = 0, prior_checkpoint=None,
                  sam_model: str = "vit_h", prior_masks=None, prior_options: dict | None = None, attention=None,
                  attention_ratio: float = 2.5, focus=None, pipelined: bool = True, start_label: int = 0):
    """Superpixels of many images, pipelined: yields one :class:`BatchResult` per input, in input order.

    ``images_or_paths``: an iterable of (H, W, 3) arrays and/or image paths (decoded in the pipeline's source
    thread). A bad item does not stop the others: its result has ``labels=None`` and a one-line ``error``.
    Options as in :func:`segment`. (For many small images of one size, ``segment`` on the stacked batch is faster.)
    """
    from .model import check_start_label
    from .pipelines.batch import array_frames

    start_label = check_start_label(start_label)
    model, prior = _resolve(prior, encoder, compactness, color_scale, iterations, min_size_factor, device, seed,
                            prior_checkpoint, sam_model, prior_masks, prior_options)
    fixed = None if isinstance(prior, Provider) else prior
    for frame in array_frames(model, images_or_paths, n_superpixels, attention=attention,
                              attention_ratio=attention_ratio, focus=focus, pipelined=pipelined, fixed_prior=fixed):
        labels = frame.labels + start_label if start_label and frame.labels is not None else frame.labels
        yield BatchResult(frame.index, frame.key, frame.image, labels, frame.error)


class BatchResult(NamedTuple):
    """One result of :func:`segment_batch`: ``labels`` (H, W) int32 or None when ``error`` says why."""

    index: int
    key: object
    image: object
    labels: object
    error: str | None


__all__ = ["SPAM", "Prior", "Provider", "make_provider", "segment", "segment_video", "segment_batch", "BatchResult",
           "read_labels", "region_graph", "RegionGraph", "tokens", "Tokens", "__version__"]
