"""Connected components of equal value (spam_stream.kernels.labeling): numba and torch implementations against
scikit-image, on random maps, long spirals and stripes, odd sizes, both connectivities."""
import math

import numpy as np
import pytest
import torch

from spam_stream.hostsync import HostSyncCounter
from spam_stream.kernels.labeling import (ROUNDS_PER_CHECK, label_array, label_components, label_components_reference,
                                          label_components_torch, label_with_sizes)


def spiral(n: int) -> np.ndarray:
    """(n, n) int: a 1-px wide square spiral of 1s in 0s (walls 1 px wide) — one component of ~n²/2 pixels whose
    ends are as many steps apart."""
    a = np.zeros((n, n), np.int64)
    y, x, dy, dx = 0, 0, 0, 1
    a[0, 0] = 1
    turns = 0
    while turns < 2:
        ny, nx, by, bx = y + dy, x + dx, y + 2 * dy, x + 2 * dx
        inside = 0 <= ny < n and 0 <= nx < n
        if inside and a[ny, nx] == 0 and not (0 <= by < n and 0 <= bx < n and a[by, bx] == 1):
            y, x, turns = ny, nx, 0
            a[y, x] = 1
        else:
            dy, dx, turns = dx, -dy, turns + 1
    return a


def serpentine(h: int, w: int) -> np.ndarray:
    """(h, w) int: one boustrophedon path (rows joined alternately at the right and left ends) and its walls."""
    a = np.zeros((h, w), np.int64)
    a[::2] = 1
    for i, y in enumerate(range(1, h, 2)):
        a[y, w - 1 if i % 2 == 0 else 0] = 1
    return a


def maps(seed=0):
    rng = np.random.default_rng(seed)
    for h, w in [(1, 1), (1, 17), (13, 1), (7, 9), (31, 17), (33, 64)]:
        for k in (2, 3, 7):
            yield rng.integers(0, k, (h, w))
    blocks = np.kron(rng.integers(0, 4, (6, 9)), np.ones((5, 4), np.int64))[:29, :35]  # odd crop of 5x4 blocks
    yield blocks
    yield spiral(41)
    yield serpentine(37, 23)
    yield (np.arange(20 * 21).reshape(20, 21) // 3) % 2  # stripes that touch only at corners
    yield np.zeros((5, 6), np.int64)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("background", [None, 0, 1])
def test_equal_to_skimage(connectivity, background):
    for values in maps():
        ref = label_components_reference(values, background, connectivity)
        assert np.array_equal(label_array(values, background, connectivity), ref)
        got = label_components_torch(torch.from_numpy(values), background, connectivity)
        assert got.dtype == torch.int64 and np.array_equal(got.numpy(), ref)
        got = label_components(torch.from_numpy(values), background, connectivity)  # CPU dispatch: numba
        assert got.dtype == torch.int64 and np.array_equal(got.numpy(), ref)


def test_sizes_and_values_of_the_components():
    rng = np.random.default_rng(3)
    values = rng.integers(-1, 4, (40, 27)).astype(np.int32)
    labels, sizes, comp_values = label_with_sizes(values, background=-1)
    assert np.array_equal(sizes, np.bincount(labels.ravel(), minlength=labels.max() + 1))
    for c in range(1, labels.max() + 1):
        assert (values[labels == c] == comp_values[c]).all()


def test_long_paths_take_few_hooking_rounds():
    """The spiral is one component of ~900 pixels along a path of ~900 steps: min-label propagation would need
    hundreds of rounds, hooking + pointer jumping stays logarithmic."""
    for values in (spiral(41), serpentine(37, 23)):
        ref = label_components_reference(values, 0)
        assert ref.max() == 1  # one path
        got, rounds = label_components_torch(torch.from_numpy(values), 0, return_rounds=True)
        assert np.array_equal(got.numpy(), ref)
        assert rounds <= 2 * math.ceil(math.log2(values.size)) + 2


def test_the_host_waits_only_for_the_convergence_checks():
    """On a GPU every op the host must read drains the device: the torch labeller's only such op is its check, run
    once every ROUNDS_PER_CHECK hooking rounds (the old version read back at every round and pointer jump)."""
    for values in (spiral(41), serpentine(37, 23), np.kron(np.arange(12).reshape(3, 4), np.ones((9, 7), np.int64))):
        with HostSyncCounter() as syncs:
            got, rounds = label_components_torch(torch.from_numpy(values), 0, return_rounds=True)
        assert np.array_equal(got.numpy(), label_components_reference(values, 0))
        assert syncs.total == math.ceil(rounds / ROUNDS_PER_CHECK), dict(syncs.by_place)
        assert syncs.total <= 2


def test_bool_and_other_integer_types():
    rng = np.random.default_rng(1)
    b = rng.random((19, 23)) < 0.5
    ref = label_components_reference(b.astype(np.int64), 0)
    assert np.array_equal(label_array(b, 0), ref)
    assert np.array_equal(label_components(torch.from_numpy(b), 0).numpy(), ref)
    u = rng.integers(0, 3, (19, 23)).astype(np.uint8)
    assert np.array_equal(label_array(u, 0), label_components_reference(u, 0))
    assert np.array_equal(label_array(u, -1), label_components_reference(u, None))  # -1 absent from uint8


def test_bad_arguments():
    with pytest.raises(ValueError):
        label_components(torch.zeros(3, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError):
        label_components(torch.zeros(3, 4, dtype=torch.int64), connectivity=6)


def test_present_and_apply_ids_equal_numpy():
    from spam_stream.kernels.labeling import apply_ids, present_ids

    rng = np.random.default_rng(7)
    labels = rng.integers(-1, 50, (33, 41)).astype(np.int32)
    labels[labels == 17] = 3  # an id that does not occur
    present = present_ids(labels, 60)
    assert present.shape == (60,)
    assert np.array_equal(present, np.bincount(labels[labels >= 0], minlength=60) > 0)
    lut = rng.integers(0, 65535, 60)
    assert np.array_equal(apply_ids(labels, lut), np.where(labels >= 0, lut[labels], -1).astype(np.int32))
