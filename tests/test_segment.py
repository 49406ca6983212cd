import numpy as np
import pytest
import torch

import spam_stream
from spam_stream import SPAM
from spam_stream.encoder import Encoder, EncoderLoadError, fold_batchnorm, load_encoder

from helpers import assert_connected, assert_superpixels_respect_prior, synthetic_image, voronoi_partition


@pytest.mark.parametrize("k", [200, 400, 800])
def test_no_prior_gives_connected_superpixels_near_k(k):
    img = synthetic_image(120, 160)
    labels = spam_stream.segment(img, k, encoder=None)
    assert labels.shape == img.shape[:2] and labels.dtype == np.int32
    assert_connected(labels)
    assert abs(labels.max() + 1 - k) / k <= 0.1


@pytest.mark.parametrize("k", [200, 400, 800])
def test_prior_is_never_crossed_and_superpixels_are_connected(k):
    img = synthetic_image(120, 160, seed=1)
    prior = voronoi_partition(120, 160, 12, seed=k)
    labels = spam_stream.segment(img, k, prior=prior, encoder=None)
    assert_superpixels_respect_prior(labels, prior)
    assert_connected(labels)
    assert abs(labels.max() + 1 - k) / k <= 0.1


def test_same_input_same_output():
    img = synthetic_image(seed=3)
    prior = voronoi_partition(96, 128, 5, seed=3)
    a = SPAM(encoder=None).segment(img, 150, prior)
    b = SPAM(encoder=None).segment(img, 150, prior)
    assert np.array_equal(a, b)


def test_compactness_controls_regularity():
    """Higher λs → superpixels closer to the grid: smaller spread of superpixel areas."""
    img = synthetic_image(seed=4)
    loose = spam_stream.segment(img, 100, encoder=None, compactness=0.5)
    tight = spam_stream.segment(img, 100, encoder=None, compactness=30)
    assert np.bincount(tight.ravel()).std() < np.bincount(loose.ravel()).std()


def test_colour_edges_are_followed():
    """A two-colour image split at a column that is not a grid line: superpixels do not straddle the edge."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, 27:] = (250, 250, 250)
    labels = spam_stream.segment(img, 16, encoder=None, compactness=2.0)
    left, right = set(np.unique(labels[:, :27])), set(np.unique(labels[:, 27:]))
    assert not left & right


def test_random_weight_encoder_from_file(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(out_dim=12, width=8)
    path = tmp_path / "enc.pt"
    enc.save(path, color_scale=0.26)
    img = synthetic_image(seed=5)
    model = SPAM(encoder=path)
    assert model.n_features == 12
    prior = voronoi_partition(96, 128, 4, seed=5)
    labels = model.segment(img, 120, prior)
    assert_superpixels_respect_prior(labels, prior)
    assert_connected(labels)


def test_folded_encoder_equals_batchnorm_encoder():
    torch.manual_seed(0)
    enc = Encoder(out_dim=20, width=8)
    for m in enc.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    enc.eval()
    x = torch.randn(1, 5, 33, 47)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(enc)(x), enc(x), rtol=1e-4, atol=1e-5)


def test_missing_or_corrupt_encoder_file_names_the_file(tmp_path):
    with pytest.raises(EncoderLoadError, match="nope.pt"):
        load_encoder(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderLoadError, match="bad.pt"):
        load_encoder(bad)


def test_grayscale_rgba_and_float_images_are_converted():
    img = synthetic_image(seed=6)
    gray = img[:, :, 0]
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], -1)
    assert spam_stream.segment(gray, 50, encoder=None).shape == gray.shape
    assert np.array_equal(spam_stream.segment(rgba, 50, encoder=None), spam_stream.segment(img, 50, encoder=None))
    assert spam_stream.segment(img / 255.0, 50, encoder=None).shape == gray.shape


@pytest.mark.parametrize("k,match", [(0, "at least 1"), (-3, "at least 1"), (96 * 128 + 1, "only")])
def test_bad_k_is_a_clear_error(k, match):
    with pytest.raises(ValueError, match=match):
        spam_stream.segment(synthetic_image(), k, encoder=None)


def test_k_equal_to_pixel_count_works():
    img = synthetic_image(8, 10)
    labels = spam_stream.segment(img, 80, encoder=None)
    assert labels.max() + 1 == 80


def test_prior_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        spam_stream.segment(synthetic_image(), 50, prior=np.zeros((10, 10), np.int32), encoder=None)


def test_more_objects_than_k_gives_one_superpixel_per_object():
    img = synthetic_image(seed=7)
    prior = voronoi_partition(96, 128, 30, seed=7, band=False)
    labels = spam_stream.segment(img, 10, prior=prior, encoder=None)
    assert_superpixels_respect_prior(labels, prior)
    assert labels.max() + 1 >= 30


def test_segment_takes_an_image_path_like_segment_batch(tmp_path):
    from PIL import Image

    from spam_stream.io import InputError

    img = synthetic_image(40, 56, seed=4)
    Image.fromarray(img).save(tmp_path / "photo.png")
    by_path = spam_stream.segment(tmp_path / "photo.png", 20, encoder=None)
    np.testing.assert_array_equal(by_path, spam_stream.segment(img, 20, encoder=None))
    np.testing.assert_array_equal(spam_stream.segment(str(tmp_path / "photo.png"), 20, encoder=None), by_path)
    with pytest.raises(InputError, match="missing.png"):
        spam_stream.segment(tmp_path / "missing.png", 20, encoder=None)


def test_memory_guard_refuses_a_frame_above_the_limit_before_any_work():
    from spam_stream.model import MemoryLimitError

    img = synthetic_image(120, 160)
    model = SPAM(encoder=None, memory_limit=2**20)  # 1 MB: the memory model says ~2 MB for this frame
    need = model.frame_bytes(120, 160, 50)
    assert 2**20 < need < 2**23
    with pytest.raises(MemoryLimitError, match="needs about") as info:
        model.segment(img, 50)
    assert "\n" not in str(info.value)
    assert SPAM(encoder=None, memory_limit=2 * need).segment(img, 50).shape == (120, 160)


def test_default_memory_limit_is_at_most_half_the_machine():
    from spam_stream.model import _meminfo, default_memory_limit

    limit, total = default_memory_limit(), _meminfo().get("MemTotal")
    if total is None:
        pytest.skip("no /proc/meminfo on this system")
    assert 0 < limit <= total // 2 + 1
