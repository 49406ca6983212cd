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
