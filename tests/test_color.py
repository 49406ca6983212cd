import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from spam_stream.color import lab_yx_features, rgb_to_lab, rgb_to_lab_torch
from spam_stream.features import position_scale, scaled_lab_yx

TOL = 1e-3


def special_colours():
    """All 256 grey levels and the 8 corners of the RGB cube, as an (1, 264, 3) uint8 image."""
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], np.uint8)
    return np.concatenate([grey, corners])[None]


def random_images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(1, 1, 3), (7, 13, 3), (33, 50, 3), (64, 17, 3)]]


def all_levels_one_channel():
    """Every level of each channel with the other two at every level of a coarse grid (covers both branches of
    the transfer and of the companding at every table entry)."""
    v = np.arange(256, dtype=np.uint8)
    coarse = np.arange(0, 256, 15, dtype=np.uint8)
    a, b, c = np.meshgrid(v, coarse, coarse, indexing="ij")
    return np.stack([a, b, c], -1).reshape(256, -1, 3)


@pytest.mark.parametrize("make", [special_colours, all_levels_one_channel])
def test_rgb_to_lab_equals_skimage_on_special_colours(make):
    image = make()
    for perm in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
        img = np.ascontiguousarray(image[..., perm])
        out = rgb_to_lab(img)
        assert out.dtype == np.float32 and out.shape == img.shape
        assert np.abs(out - rgb2lab(img)).max() <= TOL


def test_rgb_to_lab_equals_skimage_on_random_images():
    for img in random_images():
        assert np.abs(rgb_to_lab(img) - rgb2lab(img)).max() <= TOL


def test_rgb_to_lab_accepts_non_contiguous_views():
    img = random_images()[2]
    view = img[::2, ::-1]
    assert np.abs(rgb_to_lab(view) - rgb2lab(view)).max() <= TOL


def test_rgb_to_lab_rejects_other_dtypes():
    with pytest.raises(ValueError):
        rgb_to_lab(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        rgb_to_lab(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("channels_first", [False, True])
def test_torch_twin_equals_skimage(channels_first):
    for img in random_images() + [special_colours()]:
        ref = rgb2lab(img)
        t = torch.from_numpy(img.copy())
        if channels_first:
            t = t.permute(2, 0, 1)
        out = rgb_to_lab_torch(t, channels_first=channels_first)
        assert out.dtype == torch.float32 and out.shape == t.shape
        if channels_first:
            out = out.permute(1, 2, 0)
        assert np.abs(out.numpy() - ref).max() <= TOL


def test_torch_twin_guesses_the_layout():
    img = random_images()[2]  # 33 x 50: unambiguous
    ref = rgb2lab(img)
    chw = rgb_to_lab_torch(torch.from_numpy(img.copy()).permute(2, 0, 1))
    hwc = rgb_to_lab_torch(torch.from_numpy(img.copy()))
    assert chw.shape == (3, 33, 50) and hwc.shape == (33, 50, 3)
    assert np.abs(hwc.numpy() - ref).max() <= TOL
    assert np.abs(chw.permute(1, 2, 0).numpy() - ref).max() <= TOL


def test_scaled_features_layout():
    img = random_images()[3]
    h, w = img.shape[:2]
    k, cs, ss = 20, 0.26, 7.5
    feats = scaled_lab_yx(img, k, cs, ss)
    assert feats.dtype == torch.float32 and tuple(feats.shape) == (5, h, w) and feats.is_contiguous()
    f = feats.numpy()
    assert np.abs(f[:3] - cs * rgb2lab(img).transpose(2, 0, 1)).max() <= TOL * cs
    s = position_scale(h, w, k, ss)
    assert math.isclose(s, ss * max(math.sqrt(k) / h, math.sqrt(k) / w))
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32) * s, np.arange(w, dtype=np.float32) * s, indexing="ij")
    np.testing.assert_array_equal(f[3], yy)
    np.testing.assert_array_equal(f[4], xx)
    np.testing.assert_array_equal(lab_yx_features(img, cs, s), f)


@pytest.mark.parametrize("channels_first", [False, True])
def test_torch_feature_twin_equals_numba_features(channels_first):
    from spam_stream.color import lab_yx_features_torch

    img = random_images()[3]
    t = torch.from_numpy(img.copy())
    if channels_first:
        t = t.permute(2, 0, 1)
    ref = lab_yx_features(img, 0.26, 0.37)
    out = lab_yx_features_torch(t, 0.26, 0.37, channels_first=channels_first)
    assert out.dtype == torch.float32 and tuple(out.shape) == ref.shape
    assert np.abs(out[:3].numpy() - ref[:3]).max() <= TOL * 0.26
    np.testing.assert_array_equal(out[3:].numpy(), ref[3:])


def test_the_lab_kernel_never_compiles_on_a_frame():
    """Its versions exist from import (explicit signatures): a new array, a feature buffer's planes, a read-only
    decoded image and a crop's view all take them, so no frame of a stream loads another on first use."""
    import numpy as np

    from spam_stream import color

    before = set(color._lab_kernel.overloads)
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ro = image.copy()
    ro.flags.writeable = False
    planes = np.zeros((8, 20, 30), np.float32)
    a = color.lab_yx_features(image, 0.26, 0.5)
    color.lab_yx_features(ro, 0.26, 0.5, out=planes[:5])
    color.lab_yx_features(np.concatenate([image, image], 1)[:, ::2], 0.26, 0.5)
    color.rgb_to_lab(ro)
    assert set(color._lab_kernel.overloads) == before and len(before) == 2
    assert np.array_equal(a, planes[:5])
