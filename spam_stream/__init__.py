"""spam-stream: SPAM (SuperPixel Anything Model) superpixels for images, batches and video.

    >>> import spam_stream
    >>> labels = spam_stream.segment(image, n_superpixels=400)            # (H, W) int32, 0..K'-1
    >>> labels = spam_stream.segment(image, 400, prior=partition)         # superpixels inside prior objects
"""
from __future__ import annotations

from functools import lru_cache

from .model import SPAM

__version__ = "0.1.0"


@lru_cache(maxsize=4)
def _model(encoder, compactness, color_scale, iterations, min_size_factor, device, seed) -> SPAM:
    return SPAM(encoder, compactness, color_scale, iterations, min_size_factor, device=device, seed=seed)


def segment(image, n_superpixels: int = 400, prior=None, *, encoder="default", compactness: float = 7.5,
            color_scale: float = 0.26, iterations: int = 10, min_size_factor: float = 0.5, device: str = "cpu",
            seed: int = 0, density=None):
    """SPAM superpixels of one image: (H, W) int32 labels 0..K'-1.

    Args:
        image: (H, W, 3) uint8 RGB array (grayscale / RGBA / float [0, 1] are converted).
        n_superpixels: K requested.
        prior: (H, W) integer object partition (-1 = uncertain pixel) or None. No superpixel crosses an object.
        encoder: "default" (bundled weights; D=5 if none), a weights path, or None for D=5 (no CNN).
        compactness: λs, regularity. color_scale: λc. iterations: clustering iterations.
    The model is cached across calls with the same settings; for many images, :class:`SPAM` is explicit.
    """
    enc = str(encoder) if encoder is not None and not hasattr(encoder, "state_dict") else encoder
    model = _model(enc, compactness, color_scale, iterations, min_size_factor, device, seed)
    return model.segment(image, n_superpixels, prior, density=density)


__all__ = ["SPAM", "segment", "__version__"]
