"""SPAM on real BSDS500 images (skipped with a reason when ../shared/datasets/bsds500 is absent).

The prior is the oracle partition (first annotator's segmentation with a 1-px band of -1): superpixels must never
contain pixels of two prior objects, every superpixel is one 4-connected component, and ΔK ≤ 0.1.
"""
import numpy as np
import pytest

import spam_stream
from spam_stream.datasets import oracle_partition
from spam_stream.metrics import asa

from helpers import assert_connected, assert_superpixels_respect_prior, bsds_test_split


@pytest.fixture(scope="module")
def samples():
    ds = bsds_test_split()
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


# ---------------------------------------------------------------------------------------------------------------
# K control with the ground-truth-derived prior over the whole test split (issue 11): 200 images x K = 200, 400,
# 800 with encoder=None (D=5): ≈ 600 segmentations, ≈ 30-60 s on 2 idle cores.
# ---------------------------------------------------------------------------------------------------------------
SWEEP_K = (200, 400, 800)


@pytest.fixture(scope="module")
def oracle_sweep():
    """[(image, K, K', prior respected, 4-connected)] for every test image and K in SWEEP_K."""
    ds = bsds_test_split()
    out = []
    for i in range(len(ds)):
        s = ds[i]
        prior = oracle_partition(s.gts[0], band=1)
        for k in SWEEP_K:
            labels = spam_stream.segment(s.image, k, prior=prior, encoder=None)
            checks = []
            for check, args in ((assert_superpixels_respect_prior, (labels, prior)), (assert_connected, (labels,))):
                try:
                    check(*args)
                    checks.append(True)
                except AssertionError:
                    checks.append(False)
            out.append((s.name, k, int(labels.max()) + 1, *checks))
    return out


def _misses(sweep, ks=SWEEP_K, tol=0.05):
    return [(name, k, kp, round(abs(kp - k) / k, 3)) for name, k, kp, _, _ in sweep
            if k in ks and abs(kp - k) / k > tol]


def test_oracle_prior_on_the_test_split_every_superpixel_is_inside_one_object_and_connected(oracle_sweep):
    assert len(oracle_sweep) == 200 * len(SWEEP_K)
    assert [r[:3] for r in oracle_sweep if not r[3]] == [], "superpixels crossing a prior object"
    assert [r[:3] for r in oracle_sweep if not r[4]] == [], "superpixels that are not 4-connected"


def test_oracle_prior_on_the_test_split_delta_k_at_most_005_everywhere(oracle_sweep):
    """Issue 11's target: ΔK ≤ 0.05 on every test image at K = 200, 400 and 800. What holds it on images whose band
    cuts objects into more pieces than K (388018, 393035, 2018 at K=200): seeds per bridge group of pieces, stranded
    specks bridged to their object through uncertain pixels, and a label keeping its object pixels over a larger run
    of uncertain ones (measured 2026-11-26: max ΔK 0.035 / 0.010 / 0.0125)."""
    assert _misses(oracle_sweep) == []
