"""A mask: no superpixel outside it, none missing inside, each 4-connected and inside one prior object, K held."""
import numpy as np
import pytest
from PIL import Image
from skimage.measure import label as cc_label

import spam_stream
from spam_stream.masking import check_mask


def _image(h=160, w=220, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 64) * 4], -1).astype(np.uint8)
    return np.clip(img.astype(int) + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)


def _disc_mask(h, w):
    yy, xx = np.mgrid[:h, :w]
    m = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2) < (0.4 * h) ** 2
    m[:, int(0.8 * w):] = True  # and a separate band: a mask of two pieces
    return m


def _check_superpixels(labels, mask, prior=None):
    assert (labels[~mask] == 0).all(), "a superpixel outside the mask"
    assert (labels[mask] > 0).all(), "a mask pixel without a superpixel"
    ids = np.unique(labels[mask])
    assert ids[0] == 1 and ids[-1] == len(ids), "superpixels not numbered 1..K'"
    for i in ids:
        region = labels == i
        assert cc_label(region, connectivity=1).max() == 1, f"superpixel {i} is not 4-connected"
        if prior is not None:
            assert len(np.unique(prior[region])) == 1, f"superpixel {i} crosses the prior"
    return len(ids)


@pytest.mark.parametrize("encoder", [None, "default"])
def test_mask_superpixels_inside_only(encoder):
    img = _image()
    mask = _disc_mask(*img.shape[:2])
    labels = spam_stream.SPAM(encoder=encoder).segment(img, 150, mask=mask)
    k = _check_superpixels(labels, mask)
    assert abs(k - 150) <= 0.1 * 150  # K held over the mask alone


def test_mask_with_prior():
    img = _image()
    h, w = img.shape[:2]
    prior = np.zeros((h, w), np.int32)
    prior[:, w // 2:] = 1
    prior[h // 2:, :] += 2
    mask = _disc_mask(h, w)
    labels = spam_stream.segment(img, 120, prior=prior, mask=mask, encoder=None)
    k = _check_superpixels(labels, mask, prior)
    assert abs(k - 120) <= 0.15 * 120


def test_mask_from_lower_level_and_wrong_size():
    img = _image(161, 221)
    mask = _disc_mask(161, 221)
    small = mask[::2, ::2]  # a pyramid level: ceil(161 / 2) x ceil(221 / 2)
    up = check_mask(small, (161, 221))
    assert up.shape == (161, 221) and (up[::2, ::2] == small).all()
    labels = spam_stream.segment(img, 100, mask=small, encoder=None)
    _check_superpixels(labels, up)
    with pytest.raises(ValueError, match="mask is 221x100"):
        spam_stream.segment(img, 100, mask=mask[:100], encoder=None)


def test_start_label_with_mask():
    img = _image()
    mask = _disc_mask(*img.shape[:2])
    a = spam_stream.segment(img, 80, mask=mask, encoder=None)
    b = spam_stream.segment(img, 80, mask=mask, encoder=None, start_label=5)
    assert (b[~mask] == 0).all() and b[mask].min() == 5 and (b[mask] - 4 == a[mask]).all()


def test_cli_mask(tmp_path):
    from spam_stream.cli import main

    img = _image()
    mask = _disc_mask(*img.shape[:2])
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "m.png")
    Image.fromarray((mask[:50] * 255).astype(np.uint8)).save(tmp_path / "bad.png")
    assert main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--mask", str(tmp_path / "m.png"),
                 "--encoder", "none", "-k", "100"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "a_labels.png")).astype(np.int64)
    _check_superpixels(labels, mask)
    assert main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "out2"), "--mask",
                 str(tmp_path / "bad.png"), "--encoder", "none"]) == 1
