"""Prior object partitions for SPAM: SAM, FastSAM, user masks — each a :class:`Provider` returning a :class:`Prior`.

    >>> from spam_stream.priors import make_provider
    >>> provider = make_provider("fastsam", checkpoint="FastSAM-s.pt")     # load once
    >>> prior = provider(image)                                            # prior.partition: (H, W) int32, -1 = uncertain
"""
from .base import Prior, PriorCheckpointError, Provider
from .registry import PRIOR_NAMES, make_provider

__all__ = ["Prior", "PriorCheckpointError", "Provider", "PRIOR_NAMES", "make_provider"]
