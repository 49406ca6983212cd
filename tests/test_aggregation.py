"""Aggregation of overlapping object masks into a partition, on small hand-checkable arrays."""
import numpy as np

from spam_stream.aggregation import aggregate, default_parameters


def stack(*masks):
    return np.stack(masks).astype(bool)


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def assert_partition(p):
    assert p.dtype == np.int32 and p.min() >= -1
    ids = np.unique(p[p >= 0])
    assert ids.tolist() == list(range(len(ids)))


def test_overlap_goes_to_the_smaller_mask():
    big = box(10, 10, 0, 10, 0, 10)
    small = box(10, 10, 3, 6, 3, 6)
    p = aggregate(stack(big, small), min_area=1, background_min_area=1, opening_radius=0)
    assert_partition(p)
    assert (p[3:6, 3:6] == p[4, 4]).all()
    assert p[0, 0] != p[4, 4]  # the big mask lost the overlap
    assert np.count_nonzero(p == p[0, 0]) == 100 - 9
    # the order of the masks in the stack does not matter
    assert np.array_equal(aggregate(stack(small, big), min_area=1, background_min_area=1, opening_radius=0), p)


def test_partial_overlap_is_taken_from_the_larger_mask():
    a = box(8, 12, 0, 8, 0, 8)   # 64 px
    b = box(8, 12, 0, 8, 6, 12)  # 48 px, overlaps a on columns 6-7
    p = aggregate(stack(a, b), min_area=1, background_min_area=1, opening_radius=0)
    assert (p[:, 6:] == p[0, 11]).all() and (p[:, :6] == p[0, 0]).all() and p[0, 0] != p[0, 11]
    assert p[0, 0] == 0  # ids: largest mask first


def test_masks_below_min_area_are_dropped():
    a = box(10, 10, 0, 10, 0, 5)
    tiny = box(10, 10, 1, 3, 6, 8)  # 4 px
    p = aggregate(stack(a, tiny), min_area=5, background_min_area=1000, opening_radius=0)
    assert_partition(p)
    assert p.max() == 0 and (p[:, 5:] == -1).all()


def test_background_component_kept_or_dropped_by_its_size():
    a = box(12, 12, 0, 12, 0, 6)  # the right half (72 px) is unlabelled
    kept = aggregate(stack(a), min_area=1, background_min_area=72, opening_radius=0)
    assert_partition(kept)
    assert kept.max() == 1 and (kept[:, 6:] == 1).all()
    dropped = aggregate(stack(a), min_area=1, background_min_area=73, opening_radius=0)
    assert dropped.max() == 0 and (dropped[:, 6:] == -1).all()


def test_thin_strip_between_masks_becomes_uncertain():
    """Two masks with a 2-px gap, and a large unlabelled area below: the opening keeps the area, not the strip."""
    a = box(30, 30, 0, 15, 0, 14)
    b = box(30, 30, 0, 15, 16, 30)
    p = aggregate(stack(a, b), min_area=1, background_min_area=20, opening_radius=2)
    assert_partition(p)
    assert (p[:12, 14:16] == -1).all()       # the strip
    assert p.max() == 2 and (p[20:, :] == 2).all()  # the background object
    assert (p[:15, :14] == p[0, 0]).all() and (p[:15, 16:] == p[0, 20]).all()


def test_thin_strip_along_the_image_edge_becomes_uncertain():
    a = box(20, 20, 0, 20, 0, 19)  # leaves the last column unlabelled
    p = aggregate(stack(a), min_area=1, background_min_area=1, opening_radius=1)
    assert p.max() == 0 and (p[:, 19] == -1).all()


def test_objects_are_split_into_connected_components():
    """A small mask cutting a large one in two: both halves are separate (connected) objects."""
    big = box(10, 20, 0, 10, 0, 20)
    bar = box(10, 20, 0, 10, 9, 11)
    p = aggregate(stack(big, bar), min_area=1, background_min_area=1, opening_radius=0)
    assert_partition(p)
    assert p.max() == 2 and len({p[0, 0], p[0, 10], p[0, 19]}) == 3


def test_no_masks_and_defaults_scale_with_the_image():
    p = aggregate(np.zeros((0, 40, 60), bool))
    assert p.shape == (40, 60) and p.dtype == np.int32
    assert (p == 0).all()  # one background object: the opening does not eat the image corners
    d = default_parameters(321, 481)
    assert d == {"min_area": 77, "background_min_area": 309, "opening_radius": 2}


def test_random_overlapping_masks_give_a_valid_partition():
    rng = np.random.default_rng(0)
    masks = np.zeros((30, 64, 80), bool)
    for m in masks:
        y, x = rng.integers(0, 60), rng.integers(0, 76)
        m[y:y + rng.integers(2, 40), x:x + rng.integers(2, 50)] = True
    p = aggregate(masks)
    assert_partition(p)
    from scipy import ndimage
    for obj in range(p.max() + 1):
        assert ndimage.label(p == obj)[1] == 1  # every object is 4-connected
