"""The fast encoder option (``--encoder fast``: the encoder run at reduced resolution, its channels upsampled back)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spam_stream import SPAM
from spam_stream.encoder import Encoder, encode_learned, fast_encoder, fold_batchnorm
from spam_stream.features import pixel_features
from spam_stream.model import DEFAULT_WEIGHTS, resolve_encoder

from helpers import assert_connected, assert_superpixels_respect_prior, synthetic_image, voronoi_partition


def small_encoder(resolution=None):
    torch.manual_seed(0)
    enc = fold_batchnorm(Encoder(10, 4).eval())
    return enc if resolution is None else fast_encoder(enc, resolution)


@pytest.mark.parametrize("size", [(37, 53), (64, 48)])
def test_fast_encoder_is_the_encoder_on_a_resized_image(size):
    """Half resolution = the encoder's forward on the bilinearly resized colour, upsampled back bilinearly."""
    h, w = size
    colour = torch.rand(3, h, w) * 30
    out = encode_learned(small_encoder(0.5), colour, tile=(16, 24))
    assert out.shape == (5, h, w) and out.dtype == torch.float32
    enc = small_encoder()
    hr, wr = round(h / 2), round(w / 2)
    small = F.interpolate(colour[None], size=(hr, wr), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        learned = enc(torch.cat([small, torch.zeros(1, 2, hr, wr)], 1))[:, 5:]
    ref = F.interpolate(learned, size=(h, w), mode="bilinear", align_corners=False)[0]
    assert (out - ref).abs().max().item() <= 2e-5


def test_fast_pixel_features_shape_dtype_and_hand_made_channels():
    image = synthetic_image(45, 61)
    fast = pixel_features(image, 30, small_encoder(0.5))
    full = pixel_features(image, 30, small_encoder())
    assert fast.shape == full.shape == (10, 45, 61) and fast.dtype == torch.float32
    torch.testing.assert_close(fast[:5], full[:5])  # Lab and yx stay at full resolution
    assert torch.isfinite(fast).all() and not torch.equal(fast[5:], full[5:])


def test_resolution_one_is_the_default_encoder():
    image = synthetic_image(40, 40)
    torch.testing.assert_close(pixel_features(image, 20, small_encoder(1.0)), pixel_features(image, 20, small_encoder()))
    with pytest.raises(ValueError):
        fast_encoder(small_encoder(), 0.0)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no bundled encoder weights in this checkout")
def test_resolve_fast_is_the_bundled_encoder_at_half_resolution():
    fast, meta = resolve_encoder("fast")
    default, meta_default = resolve_encoder("default")
    assert fast.resolution == 0.5 and default.resolution == 1.0 and meta == meta_default
    for a, b in zip(fast.state_dict().values(), default.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no bundled encoder weights in this checkout")
def test_segment_with_fast_encoder_holds_the_invariants():
    model = SPAM(encoder="fast")
    assert model.n_features == 20
    image = synthetic_image(96, 128)
    labels = model.segment(image, 60)
    assert labels.shape == (96, 128) and labels.dtype == np.int32
    assert_connected(labels)
    assert abs(labels.max() + 1 - 60) <= 0.2 * 60
    prior = voronoi_partition(96, 128, 5)
    labels = model.segment(image, 60, prior)
    assert_connected(labels)
    assert_superpixels_respect_prior(labels, prior)
