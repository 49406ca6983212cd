import numpy as np
from scipy import ndimage

from spam_stream.connectivity import enforce_connectivity


def n_components(mask):
    return ndimage.label(mask)[1]  # 4-connectivity by default


def check_connected(labels):
    for k in range(labels.max() + 1):
        assert n_components(labels == k) == 1, f"superpixel {k} is not one 4-connected region"


def test_small_fragment_merges_and_labels_are_consecutive():
    labels = np.zeros((20, 20), int)
    labels[:, 10:] = 1
    labels[3, 3] = 1  # a stray pixel of superpixel 1 inside superpixel 0
    out = enforce_connectivity(labels, None, min_size=5)
    check_connected(out)
    assert out.max() == 1
    assert out[3, 3] == out[0, 0]


def test_large_fragment_becomes_its_own_superpixel():
    labels = np.zeros((20, 20), int)
    labels[:, 10:] = 1
    labels[2:8, 2:8] = 1  # 36-pixel island of superpixel 1
    out = enforce_connectivity(labels, None, min_size=10)
    check_connected(out)
    assert out.max() == 2


def test_fragments_never_merge_across_prior_objects():
    rng = np.random.default_rng(0)
    prior = np.zeros((40, 40), np.int32)
    prior[:, 20:] = 1
    prior[:, 19:21] = -1
    labels = rng.integers(0, 6, size=(40, 40))  # noisy labels: many tiny fragments
    labels[prior == 1] += 10  # superpixels never span both objects
    out = enforce_connectivity(labels, prior, min_size=30)
    check_connected(out)
    for k in range(out.max() + 1):
        objs = np.unique(prior[out == k])
        assert len(objs[objs >= 0]) <= 1


# ---- the numba implementation equals the reference twin -----------------------------------------------------

import pytest  # noqa: E402

import spam_stream.model as model_module  # noqa: E402
from helpers import (assert_connected, assert_superpixels_respect_prior, bsds_test_split, dotted_line_case,  # noqa: E402
                     synthetic_image, voronoi_partition)
from spam_stream.connectivity import enforce_connectivity_reference  # noqa: E402


def random_case(rng, blocky):
    h, w = (int(v) for v in rng.integers(1, 45, 2))
    k = int(rng.integers(1, 9))
    if blocky:  # superpixel-like blocks with speckle: fragments of many sizes
        b = int(rng.integers(2, 6))
        labels = np.kron(rng.integers(0, k, size=(h // b + 1, w // b + 1)), np.ones((b, b), int))[:h, :w]
        noise = rng.random((h, w)) < rng.uniform(0, 0.3)
        labels[noise] = rng.integers(-1, k, size=noise.sum())
    else:
        labels = rng.integers(-1, k, size=(h, w))
    return labels


def random_prior(rng, h, w):
    b = int(rng.integers(1, 8))
    return np.kron(rng.integers(-1, 4, size=(h // b + 1, w // b + 1)), np.ones((b, b), int))[:h, :w].astype(np.int32)


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("blocky", [False, True])
def test_equals_reference_on_random_label_maps(with_prior, blocky):
    rng = np.random.default_rng(10 * with_prior + blocky)
    for _ in range(20):
        labels = random_case(rng, blocky)
        prior = random_prior(rng, *labels.shape) if with_prior else None
        for min_size in (1, int(rng.integers(2, 12)), int(rng.integers(12, 60))):
            ref = enforce_connectivity_reference(labels, prior, min_size)
            out = enforce_connectivity(labels, prior, min_size)
            assert out.dtype == np.int32
            np.testing.assert_array_equal(out, ref)
            assert_connected(out)


def test_equals_reference_for_other_label_dtypes():
    rng = np.random.default_rng(3)
    labels = random_case(rng, True)
    ref = enforce_connectivity_reference(labels, None, 8)
    for dtype in (np.int16, np.uint16, np.int64):
        np.testing.assert_array_equal(enforce_connectivity(np.abs(labels).astype(dtype), None, 8),
                                      enforce_connectivity_reference(np.abs(labels).astype(dtype), None, 8))
    np.testing.assert_array_equal(enforce_connectivity(labels.astype(np.int32), None, 8), ref)


def clustering_labels(monkeypatch, image, k, prior):
    """The labels ``SPAM.segment`` hands to connectivity (before it), with its partition and min_size."""
    seen = []

    def capture(labels, partition, min_size, **kw):
        seen.append((labels.copy(), partition, min_size))
        return enforce_connectivity(labels, partition, min_size, **kw)

    monkeypatch.setattr(model_module, "enforce_connectivity", capture)
    model_module.SPAM(encoder=None).segment(image, k, prior)
    assert len(seen) == 1, "SPAM.segment no longer calls model.enforce_connectivity once"
    return seen[0]


@pytest.mark.parametrize("h, w, k, n_objects", [(95, 127, 60, 0), (80, 101, 40, 5), (33, 47, 12, 3)])
def test_equals_reference_on_segment_internals(monkeypatch, h, w, k, n_objects):
    image = synthetic_image(h, w, seed=k)
    prior = voronoi_partition(h, w, n_objects, seed=1) if n_objects else None
    labels, partition, min_size = clustering_labels(monkeypatch, image, k, prior)
    for ms in (min_size, 1, 4 * min_size):
        out = enforce_connectivity(labels, partition, ms)
        np.testing.assert_array_equal(out, enforce_connectivity_reference(labels, partition, ms))
        assert_connected(out)
        if partition is not None:
            assert_superpixels_respect_prior(out, partition)


def largest_component_owner(labels, out, partition=None):
    """For each input label: the output superpixel holding its largest 4-connected component — with a prior, its
    largest that holds object pixels if it has one — (ties: first in raster order), computed with scipy. Bridging may
    give a few of that component's uncertain pixels to another superpixel (a stranded fragment's path): the owner
    holds the rest."""
    owner = {}
    for value in np.unique(labels):
        comp, n = ndimage.label(labels == value)
        sizes = np.bincount(comp.ravel())[1:]
        first = ndimage.minimum(np.arange(labels.size).reshape(labels.shape), comp, np.arange(1, n + 1))
        has_obj = [partition is None or (partition[comp == i + 1] >= 0).any() for i in range(n)]
        best = min(range(n), key=lambda i: (not has_obj[i], -sizes[i], first[i]))
        members, counts = np.unique(out[comp == best + 1], return_counts=True)
        kept = members[np.argmax(counts)]
        moved = (comp == best + 1) & (out != kept)
        assert not moved.any() if partition is None else (partition[moved] < 0).all()
        owner[int(value)] = int(kept)
    return owner


@pytest.mark.parametrize("with_prior", [False, True])
def test_source_names_the_label_whose_largest_component_each_superpixel_keeps(with_prior):
    rng = np.random.default_rng(5)
    for _ in range(25):
        labels = random_case(rng, True)
        prior = random_prior(rng, *labels.shape) if with_prior else None
        min_size = int(rng.integers(1, 20))
        out, source = enforce_connectivity(labels, prior, min_size, return_source=True)
        np.testing.assert_array_equal(out, enforce_connectivity_reference(labels, prior, min_size))
        assert source.dtype == np.int64 and source.shape == (out.max() + 1,)
        owner = largest_component_owner(labels, out, prior)
        expected = np.full(out.max() + 1, -1, np.int64)
        for value, k in owner.items():
            expected[k] = value
        assert len(set(owner.values())) == len(owner), "two labels keep the same superpixel"
        np.testing.assert_array_equal(source, expected)


def test_equals_reference_on_bsds_segment_internals(monkeypatch):
    from spam_stream.datasets import oracle_partition

    s = bsds_test_split()[57]
    for prior in (None, oracle_partition(s.gts[0], band=1)):
        labels, partition, min_size = clustering_labels(monkeypatch, s.image, 400, prior)
        out = enforce_connectivity(labels, partition, min_size)
        np.testing.assert_array_equal(out, enforce_connectivity_reference(labels, partition, min_size))
        assert_connected(out)
        if partition is not None:
            assert_superpixels_respect_prior(out, partition)


# ---- bridging stranded fragments through uncertain pixels (issue 11: K with a banded prior) ---------------------

def test_dots_of_a_thin_object_join_its_superpixel_through_the_band():
    labels, prior, dots = dotted_line_case()
    without = enforce_connectivity(labels, prior, min_size=20, max_gap=0)
    out = enforce_connectivity(labels, prior, min_size=20)
    assert without.max() + 1 == 2 + len(dots)      # every dot stranded: one superpixel each
    assert out.max() + 1 == 2                      # bridged: the thin object is one superpixel again
    check_connected(out)
    assert_superpixels_respect_prior(out, prior)
    assert len({out[y, x] for y, x in dots} | {out[4, 4]}) == 1
    moved = out != out[0, 0]
    assert (prior[moved & (labels == 0)] == -1).all()  # only uncertain pixels change hands
    np.testing.assert_array_equal(out, enforce_connectivity_reference(labels, prior, 20))


def test_a_gap_wider_than_max_gap_is_not_bridged():
    labels, prior, dots = dotted_line_case()
    assert enforce_connectivity(labels, prior, min_size=20, max_gap=1).max() + 1 == 2 + len(dots)


def test_bridging_never_cuts_the_superpixel_it_takes_pixels_from():
    """The only path from the speck to its object runs through a 1-px corridor of uncertain pixels that is all of
    superpixel 2's link between its two halves: taking it would cut superpixel 2, so the speck stays."""
    prior = np.zeros((9, 15), np.int32)
    prior[:, 7:] = -1            # columns 7.. uncertain
    prior[:, 8:] = 2             # object 2 on the right ...
    prior[4, 7:10] = -1          # ... with a band row across it
    prior[4, 9] = 0              # speck of object 0 at the end of the corridor
    prior[0:4, 8:] = 2
    prior[5:, 8:] = 3
    labels = np.zeros_like(prior, dtype=np.int64)
    labels[:, 7] = 2             # the band column belongs to superpixel 2 ...
    labels[0:4, 8:] = 2
    labels[5:, 8:] = 3
    labels[4, 8] = 2             # ... and the corridor pixel joins it to row 4
    labels[4, 10:] = 2
    labels[4, 9] = 0             # the speck: a fragment of superpixel 0 (object 0), cut off by the band
    prior[4, 10:] = -1
    out = enforce_connectivity(labels, prior, min_size=5)
    check_connected(out)
    assert_superpixels_respect_prior(out, prior)
    assert out.max() == enforce_connectivity(labels, prior, min_size=5, max_gap=0).max()  # the speck stays
    assert (out == out[4, 9]).sum() == 1


@pytest.mark.parametrize("blocky", [False, True])
def test_bridging_keeps_every_superpixel_connected_and_inside_one_object(blocky):
    rng = np.random.default_rng(40 + blocky)
    fewer = 0
    for _ in range(40):
        labels = random_case(rng, blocky)
        prior = random_prior(rng, *labels.shape)
        # labels that respect the prior, as clustering's do; uncertain pixels take any object's labels
        labels = 10 * labels + np.where(prior >= 0, prior + 1, rng.integers(0, 5, size=prior.shape))
        for min_size in (4, 30):
            out = enforce_connectivity(labels, prior, min_size)
            plain = enforce_connectivity(labels, prior, min_size, max_gap=0)
            assert_connected(out)
            assert_superpixels_respect_prior(out, prior)
            assert out.max() <= plain.max()
            fewer += out.max() < plain.max()
            np.testing.assert_array_equal(out, enforce_connectivity_reference(labels, prior, min_size))
    assert fewer > 0, "no case bridged anything: the test would not see a broken bridge"


def test_a_label_keeps_its_object_pixels_over_a_larger_piece_of_uncertain_pixels():
    """A seed in a small object (9 px) whose label also covers a larger, separate run of uncertain pixels (12 px):
    the object's pixels keep the label; the uncertain run is the fragment (and merges into its neighbour)."""
    prior = np.zeros((12, 12), np.int32)
    prior[2:5, 2:5] = 1
    prior[8:10, 3:9] = -1
    labels = np.zeros((12, 12), np.int64)
    labels[2:5, 2:5] = 1
    labels[8:10, 3:9] = 1
    out, source = enforce_connectivity(labels, prior, min_size=20, return_source=True)
    assert out.max() + 1 == 2                        # not 3: the object piece is not left as a stray fragment
    assert source[out[3, 3]] == 1 and source[out[0, 0]] == 0
    assert out[8, 3] == out[0, 0]
    np.testing.assert_array_equal(out, enforce_connectivity_reference(labels, prior, 20))
