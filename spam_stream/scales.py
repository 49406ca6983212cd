"""The feature scales, a leaf module every stage reads: λc (colour) and λs (position, in grid steps).

Colour is scaled by λc (``COLOR_SCALE``, 0.26) and position by λs·max(√K/H, √K/W) (``SPATIAL_SCALE``, 9.25): position
is measured in units of the superpixel grid step, so λs is the regularity (compactness) knob at test time. The default
λs was selected on BSDS500 validation images with the bundled encoder: the highest validation ASA whose global
regularity (GR) is at least 0.555 at K=400 (BENCHMARKS.md, issue 11); the encoder itself was trained at 7.5.

Kept apart from :mod:`spam_stream.features` so that the encoder, the features and their device twin
(:mod:`spam_stream.kernels.features`) all import the constants from below them (no import circle).
"""
from __future__ import annotations

import math

COLOR_SCALE = 0.26
SPATIAL_SCALE = 9.25
FAST_SPATIAL_SCALE = 8.0  # ``--encoder fast``: chosen by the same rule (its smoother channels are more regular)


def default_spatial_scale(encoder) -> float:
    """λs when none is given: :data:`FAST_SPATIAL_SCALE` for ``encoder="fast"``, else :data:`SPATIAL_SCALE`."""
    return FAST_SPATIAL_SCALE if isinstance(encoder, str) and encoder == "fast" else SPATIAL_SCALE


def position_scale(height: int, width: int, n_superpixels: int, spatial_scale: float = SPATIAL_SCALE) -> float:
    """λs·max(√K/H, √K/W): the factor applied to pixel coordinates."""
    return spatial_scale * max(math.sqrt(n_superpixels) / height, math.sqrt(n_superpixels) / width)
