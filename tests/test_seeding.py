import numpy as np
import pytest

from spam_stream.seeding import allocate_seeds, grid_seeds, grid_shape, object_seeds


@pytest.mark.parametrize("h,w,k", [(321, 481, 400), (481, 321, 200), (50, 50, 1), (10, 300, 30), (7, 9, 63)])
def test_grid_shape_is_close_to_k_and_fits_the_image(h, w, k):
    nh, nw = grid_shape(h, w, k)
    assert 1 <= nh <= h and 1 <= nw <= w
    assert abs(nh * nw - k) / k <= 0.1


def test_grid_seeds_start_every_pixel_in_its_cell():
    s = grid_seeds(30, 40, 12)
    nh, nw = s.grid
    init = s.init_labels.reshape(30, 40)
    assert init.min() == 0 and init.max() == nh * nw - 1
    assert len(np.unique(init)) == nh * nw


def test_allocation_follows_area_with_at_least_one_seed_and_sums_to_k():
    sizes = np.array([10000, 5000, 100, 3, 2])
    counts = allocate_seeds(sizes, 100)
    assert counts.sum() == 100
    assert (counts >= 1).all()
    assert counts[0] == pytest.approx(2 * counts[1], abs=2)


def test_density_factor_scales_an_objects_share():
    sizes = np.array([5000, 5000])
    counts = allocate_seeds(sizes, 60, density=np.array([2.0, 1.0]))
    assert counts.tolist() == [40, 20]


def test_object_seeds_lie_inside_their_objects_and_cover_them():
    part = np.full((60, 80), -1, np.int32)
    part[5:55, 5:40] = 0
    part[10:30, 45:75] = 1
    yy, xx = np.mgrid[:60, :80]
    part[((yy - 45) ** 2 + (xx - 60) ** 2) < 60] = 2
    s = object_seeds(part, 20)
    assert len(s) == 20
    # every pixel of an object starts in a seed of that object; uncertain pixels start nowhere
    init = s.init_labels.reshape(part.shape)
    assert (init[part < 0] == -1).all()
    assert (s.obj[init[part >= 0]] == part[part >= 0]).all()
    # seeds of a large object are spread: each covers a reasonable share of it
    sizes = np.bincount(s.init_labels[s.init_labels >= 0], minlength=len(s))
    assert sizes.min() > 0
