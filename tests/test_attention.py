"""Visual-attention (saliency) and user-driven (focus) density modes: more superpixels where asked, K kept."""
import numpy as np
import pytest

import spam_stream
from spam_stream.attention import (DinoSaliency, attention_density, focus_density, object_means,
                                   spectral_residual_saliency)
from spam_stream.seeding import object_seeds

from helpers import assert_connected, assert_superpixels_respect_prior, synthetic_image


def superpixels_per_pixel(labels, partition):
    """(n_objects,) superpixels per pixel of each object (each superpixel counted in its majority object)."""
    known = partition >= 0
    n_obj = partition.max() + 1
    pairs = np.zeros((labels.max() + 1, n_obj), np.int64)
    np.add.at(pairs, (labels[known], partition[known]), 1)
    counts = np.bincount(pairs.argmax(1)[pairs.sum(1) > 0], minlength=n_obj)
    return counts / np.bincount(partition[known], minlength=n_obj)


def disc_scene(h=120, w=160):
    """A grey image with one saturated disc; the partition: disc = object 0, the rest = object 1."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 60) ** 2 + (xx - 50) ** 2 < 30 ** 2
    img = np.full((h, w, 3), 120, np.uint8)
    img[disc] = (230, 30, 30)
    return img, np.where(disc, 0, 1).astype(np.int32)


def test_spectral_residual_saliency_is_a_normalised_map_that_finds_the_odd_region():
    img, part = disc_scene()
    sal = spectral_residual_saliency(img)
    assert sal.shape == part.shape and sal.dtype == np.float32
    assert sal.min() == 0 and sal.max() == pytest.approx(1)
    inside, outside = object_means(part, sal)
    assert inside > 2 * outside
    assert attention_density(part, sal).tolist() == [2.5, 1.0]


def test_attention_density_threshold_and_ratio():
    part = np.array([[0, 0, 1, 1, -1, 2]], np.int32)
    sal = np.array([[1.0, 0.8, 0.05, 0.0, 1.0, 0.2]])
    assert attention_density(part, sal, r=3.0, threshold=0.1).tolist() == [3.0, 1.0, 3.0]


@pytest.mark.parametrize("k", [100, 300])
def test_salient_objects_get_r_times_the_seeds_per_pixel(k):
    part = np.ones((100, 150), np.int32)
    part[:, :60] = 0  # 6000 vs 9000 pixels
    sal = np.where(part == 0, 1.0, 0.0)
    seeds = object_seeds(part, k, density=attention_density(part, sal, r=2.5))
    assert len(seeds) == k
    per_pixel = np.bincount(seeds.obj) / np.bincount(part.ravel())
    assert per_pixel[0] / per_pixel[1] == pytest.approx(2.5, rel=0.1)


def test_attention_mode_end_to_end_keeps_k_and_densifies_the_salient_object():
    img, part = disc_scene()
    k = 150
    plain = spam_stream.segment(img, k, prior=part, encoder=None)
    labels = spam_stream.segment(img, k, prior=part, encoder=None, attention="saliency")
    assert_superpixels_respect_prior(labels, part)
    assert_connected(labels)
    assert abs(labels.max() + 1 - k) / k <= 0.1
    ratio = superpixels_per_pixel(labels, part)
    assert ratio[0] / ratio[1] == pytest.approx(2.5, rel=0.15)
    base = superpixels_per_pixel(plain, part)
    assert base[0] / base[1] == pytest.approx(1.0, rel=0.25)


def test_focus_point_triples_the_density_of_its_object():
    h, w = 90, 150
    part = np.repeat(np.repeat(np.arange(3, dtype=np.int32)[None], h, 0), w // 3, 1)  # three 50-px-wide bands
    part[:, 49:51] = -1
    assert focus_density(part, [(75, 10, 3.0)]).tolist() == [1.0, 3.0, 1.0]
    assert focus_density(part, [(49, 10, 2.0)]).tolist() == [2.0, 1.0, 1.0]  # uncertain pixel → nearest object
    k = 120
    labels = spam_stream.segment(synthetic_image(h, w), k, prior=part, encoder=None, focus=[(75, 10, 3.0)])
    assert_superpixels_respect_prior(labels, part)
    assert abs(labels.max() + 1 - k) / k <= 0.1
    ratio = superpixels_per_pixel(labels, part)
    assert ratio[1] / ratio[0] == pytest.approx(3, rel=0.15) and ratio[1] / ratio[2] == pytest.approx(3, rel=0.15)


def test_focus_errors_and_base():
    part = np.zeros((10, 10), np.int32)
    part[:, 5:] = 1
    assert focus_density(part, [(7, 1, 0.5)], base=[2.0, 2.0]).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="outside"):
        focus_density(part, [(10, 0, 2)])
    with pytest.raises(ValueError, match="prior"):
        spam_stream.segment(synthetic_image(), 20, encoder=None, focus=[(1, 1, 2)])


def test_dino_saliency_needs_timm_and_a_weights_file(tmp_path):
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="timm"):
            DinoSaliency(tmp_path / "dino.pth")
    else:
        with pytest.raises(FileNotFoundError, match="dino.pth"):
            DinoSaliency(tmp_path / "dino.pth")
