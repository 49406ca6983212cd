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


# --- fast implementations against the reference twin (exact equality) -------------------------------------------------

import pytest  # noqa: E402
import torch  # noqa: E402

import spam_stream.aggregation as aggregation  # noqa: E402
from spam_stream.aggregation import (aggregate_crops, aggregate_reference, aggregate_resized,  # noqa: E402
                                     letterbox_crop, open_unlabelled, open_unlabelled_torch, upsample_nearest)
from spam_stream.kernels.labeling import label_components_torch  # noqa: E402


def random_stack(rng, m, h, w):
    """Boxes, ellipses and noise masks, many touching or crossing the image border."""
    masks = np.zeros((m, h, w), bool)
    yy, xx = np.ogrid[:h, :w]
    for mask in masks:
        kind = rng.integers(4)
        y, x = rng.integers(-3, h + 1), rng.integers(-3, w + 1)
        if kind == 0:
            mask[max(y, 0):y + rng.integers(1, h + 2), max(x, 0):x + rng.integers(1, w + 2)] = True
        elif kind == 1:
            mask[((yy - y) / rng.integers(1, h + 1)) ** 2 + ((xx - x) / rng.integers(1, w + 1)) ** 2 < 1] = True
        elif kind == 2:
            mask[:] = rng.random((h, w)) < 0.4
        # kind 3: empty
    return masks


def random_cases(seed, n):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = rng.integers(1, 60, 2)
        yield rng, random_stack(rng, int(rng.integers(0, 12)), h, w)


def test_opening_equals_scipy_binary_opening_with_disk():
    rng = np.random.default_rng(5)
    for h, w in [(1, 1), (3, 40), (37, 23), (64, 65)]:
        for density in (0.5, 0.8, 0.97):
            x = rng.random((h, w)) < density
            for r in (1, 2, 3, 5, 8):
                from scipy import ndimage
                from skimage.morphology import disk

                ref = ndimage.binary_opening(np.pad(x, r, mode="edge"), structure=disk(r))[r:-r, r:-r] & x
                assert np.array_equal(open_unlabelled(x, r), ref)
                assert np.array_equal(open_unlabelled_torch(torch.from_numpy(x), r).numpy(), ref)


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 6])
def test_numpy_path_equals_the_reference(radius):
    for rng, masks in random_cases(radius, 25):
        options = dict(min_area=int(rng.integers(1, 12)), background_min_area=int(rng.integers(1, 40)),
                       opening_radius=radius)
        assert np.array_equal(aggregate(masks, **options), aggregate_reference(masks, **options))
    for rng, masks in random_cases(10 + radius, 5):  # the size-relative defaults
        assert np.array_equal(aggregate(masks), aggregate_reference(masks))


def test_empty_stacks_and_full_masks():
    for shape in [(0, 1, 1), (0, 9, 14), (2, 9, 14)]:
        masks = np.zeros(shape, bool)
        assert np.array_equal(aggregate(masks), aggregate_reference(masks))
    masks = np.ones((3, 12, 10), bool)  # three identical full masks: the last one painted keeps everything
    assert np.array_equal(aggregate(masks), aggregate_reference(masks))


@pytest.mark.parametrize("torch_labelling", [False, True])
def test_torch_path_equals_the_reference(monkeypatch, torch_labelling):
    """The GPU path on CPU tensors; with ``torch_labelling`` its components come from the torch hooking kernel (what
    CUDA runs) instead of the numba one."""
    if torch_labelling:
        monkeypatch.setattr(aggregation, "label_components", label_components_torch)
    for rng, masks in random_cases(20 + torch_labelling, 12):
        options = dict(min_area=int(rng.integers(1, 12)), background_min_area=int(rng.integers(1, 40)),
                       opening_radius=int(rng.integers(0, 4)))
        got = aggregate(torch.from_numpy(masks), **options)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.int32
        assert np.array_equal(got.numpy(), aggregate_reference(masks, **options))


def test_resized_masks_equal_the_reference_on_the_upsampled_stack():
    rng = np.random.default_rng(7)
    for _ in range(15):
        h, w = rng.integers(2, 40, 2)
        masks = random_stack(rng, int(rng.integers(0, 10)), h, w)
        shape = tuple(int(v) for v in rng.integers(1, 130, 2))
        crop = None if rng.random() < 0.5 else (int(rng.integers(0, h)), int(rng.integers(0, w)), h, w)
        ref = aggregate_reference(upsample_nearest(masks, shape, crop))
        assert np.array_equal(aggregate_resized(masks, shape, crop), ref)
        assert np.array_equal(aggregate_resized(torch.from_numpy(masks), shape, crop).numpy(), ref)


def test_nearest_resize_is_ultralytics_scale_masks_nearest_exact():
    """letterbox_crop + nearest_indices reproduce ultralytics' own resize of letterboxed masks (mode nearest-exact)."""
    from ultralytics.utils.ops import scale_masks

    g = torch.Generator().manual_seed(0)
    for mask_shape, shape in [((384, 640), (1080, 1920)), ((320, 224), (481, 321)), ((64, 96), (30, 100)),
                              ((640, 480), (1000, 777))]:
        masks = torch.rand((3, *mask_shape), generator=g) < 0.5
        ours = upsample_nearest(masks, shape)
        theirs = scale_masks(masks[None].float(), shape, mode="nearest-exact")[0].bool()
        assert torch.equal(ours, theirs)
    assert letterbox_crop((384, 640), (1080, 1920)) == (12, 0, 372, 640)


def test_crops_equal_the_reference():
    for rng, masks in random_cases(30, 15):
        crops, offsets = [], []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                crops.append(np.zeros((0, 0), bool))
                offsets.append((0, 0))
                continue
            crops.append(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
            offsets.append((int(ys.min()), int(xs.min())))
        assert np.array_equal(aggregate_crops(crops, offsets, masks.shape[1:]), aggregate_reference(masks))


@pytest.mark.parametrize("imgsz", [160, 320])
def test_random_fastsam_masks(fastsam_checkpoint, imgsz):
    """Masks of the random-weight FastSAM model: stack, network-resolution and torch paths equal the reference."""
    from helpers import synthetic_image

    from spam_stream.priors.fastsam import FastSamProvider

    provider = FastSamProvider(fastsam_checkpoint, imgsz=imgsz)
    for seed in (0, 1):
        image = synthetic_image(seed=seed)
        masks = provider.masks(image)
        assert len(masks) > 0 and masks.shape[1:] != image.shape[:2]  # network resolution
        full = provider.full_resolution(masks, image.shape[:2])
        ref = aggregate_reference(full)
        assert np.array_equal(aggregate(full), ref)
        assert np.array_equal(aggregate(torch.from_numpy(full)).numpy(), ref)
        assert np.array_equal(aggregate_resized(masks.numpy(), image.shape[:2]), ref)
        assert np.array_equal(aggregate_resized(masks, image.shape[:2]).numpy(), ref)
        assert np.array_equal(provider(image).partition, ref)
