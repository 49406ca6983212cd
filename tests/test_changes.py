"""The frame-difference kernels of a video's warm start equal their numpy twins (spam_stream/kernels/changes.py)."""
import numpy as np
import pytest

from spam_stream.kernels.changes import (grey_blocks, grey_blocks_reference, moved_difference,
                                         moved_difference_reference, window_difference,
                                         window_difference_reference)


def frames(h=37, w=53, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    b = a.copy()
    b[5:20, 7:30] = rng.integers(0, 256, (15, 23, 3), dtype=np.uint8)  # a changed patch: every level of difference
    return a, b


@pytest.mark.parametrize("factor", [1, 2, 5, 6])
def test_grey_blocks_equal_the_numpy_block_sums(factor):
    a, _ = frames()
    got = grey_blocks(a, factor)
    assert got.dtype == np.float32 and got.shape == (37 // factor, 53 // factor)
    assert np.array_equal(got, grey_blocks_reference(a, factor))
    assert np.array_equal(grey_blocks(a[3:30, 4:40], factor), grey_blocks_reference(a[3:30, 4:40], factor))


@pytest.mark.parametrize("dy,dx", [(0, 0), (3, -2), (-5, 7), (0, 11), (36, 0), (-36, 3)])
def test_moved_difference_equals_numpy(dy, dx):
    a, b = frames(seed=1)
    got = moved_difference(b, a, dy, dx)
    assert got.dtype == np.uint8 and got.shape == a.shape[:2]
    assert np.array_equal(got, moved_difference_reference(b, a, dy, dx))
    if dy == dx == 0:  # unchanged pixels: 0; outside the patch nothing changed
        assert got[25:, 35:].max() == 0 and got[5:20, 7:30].max() > 0


def test_moved_difference_refuses_frames_of_different_sizes():
    a, _ = frames()
    with pytest.raises(ValueError, match="different sizes"):
        moved_difference(a, a[:-1], 0, 0)


@pytest.mark.parametrize("rows,cols", [(slice(0, 37), slice(0, 53)), (slice(4, 22), slice(6, 31)),
                                       (slice(30, 37), slice(40, 53))])
def test_window_difference_equals_numpy(rows, cols):
    a, b = frames(seed=2)
    ref = a[rows, cols].copy()
    mean, top = window_difference(b, rows, cols, ref)
    want_mean, want_top = window_difference_reference(b, rows, cols, ref)
    assert top == want_top and mean == pytest.approx(want_mean, rel=1e-12)
    assert window_difference(a, rows, cols, ref) == (0.0, 0)
