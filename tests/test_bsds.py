"""SPAM on real BSDS500 images (skipped with a reason when ../shared/datasets/bsds500 is absent).

The prior is the oracle partition (first annotator's segmentation with a 1-px band of -1): superpixels must never
contain pixels of two prior objects, every superpixel is one 4-connected component, and ΔK ≤ 0.1.
"""
import numpy as np
import pytest

import spam_stream
from spam_stream.datasets import BSDS500, default_bsds_root, oracle_partition
from spam_stream.metrics import asa

from helpers import assert_connected, assert_superpixels_respect_prior


@pytest.fixture(scope="module")
def samples():
    root = default_bsds_root()
    if root is None or not (root / "data" / "images" / "test").is_dir():
        pytest.skip(f"BSDS500 not found at {root or '../shared/datasets/bsds500'} (set SPAM_BSDS_ROOT)")
    ds = BSDS500(root, "test")
    return [ds[i] for i in (0, 57, 123)]


@pytest.mark.parametrize("k", [200, 400, 800])
def test_oracle_prior_is_never_crossed_on_bsds(samples, k):
    for s in samples:
        prior = oracle_partition(s.gts[0], band=1)
        labels = spam_stream.segment(s.image, k, prior=prior)
        assert labels.shape == s.image.shape[:2] and labels.dtype == np.int32
        assert_superpixels_respect_prior(labels, prior)
        assert_connected(labels)
        assert abs(labels.max() + 1 - k) / k <= 0.1, f"{s.name}: {labels.max() + 1} superpixels for K={k}"
        # the oracle prior makes the first annotator's segmentation nearly recoverable
        assert asa(labels, s.gts[0]) > 0.97


@pytest.mark.parametrize("k", [200, 400, 800])
def test_no_prior_on_bsds_is_connected_and_near_k(samples, k):
    for s in samples:
        labels = spam_stream.segment(s.image, k, encoder=None)
        assert_connected(labels)
        assert abs(labels.max() + 1 - k) / k <= 0.1
