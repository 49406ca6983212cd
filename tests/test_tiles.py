"""SPAM.segment on a batch: one frame of B tiles, labels equal to segmenting each image alone."""
import numpy as np
import pytest
import torch

import spam_stream
from spam_stream.model import SPAM

from helpers import assert_connected, synthetic_image


def batch(b=4, h=37, w=45, seed=0):  # 37·45 is not a multiple of 16: pixel blocks straddle two tiles
    return np.stack([synthetic_image(h, w, seed=seed + i) for i in range(b)])


def per_image(model, images, k):
    return np.stack([model.segment(im, k) for im in images])


@pytest.mark.parametrize("encoder,subsample", [(None, 1), ("default", 1), (None, 3), ("default", 2)])
def test_batch_equals_per_image(encoder, subsample):
    """Row subsampling too: 37 rows a tile is no multiple of 2 or 3, so each tile's rounds must follow its own row
    phases (Candidates.row_period), not the stacked frame's."""
    model = SPAM(encoder=encoder, subsample=subsample)
    images = batch()
    labels = model.segment(images, 30)
    assert labels.shape == images.shape[:3] and labels.dtype == np.int32
    assert np.array_equal(labels, per_image(model, images, 30))
    for lab in labels:
        assert_connected(lab)


def test_channels_first_float_tensor_and_start_label():
    images = batch(3, 32, 40, seed=5)
    model = SPAM(encoder=None)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W) in [0, 1]
    ref = per_image(model, [spam_stream.model.as_rgb(t.permute(1, 2, 0).numpy()) for t in tensor], 24)
    assert np.array_equal(model.segment(tensor, 24), ref)
    assert np.array_equal(spam_stream.segment(images, 24, encoder=None, start_label=1), per_image(model, images, 24) + 1)


def test_tiny_tiles_and_many_superpixels():
    """K close to H·W (1-pixel cells) and one tile: the edge cases of the stacked grid."""
    model = SPAM(encoder=None)
    images = batch(2, 9, 7, seed=1)
    assert np.array_equal(model.segment(images, 40), per_image(model, images, 40))
    one = batch(1, 20, 30)
    assert np.array_equal(model.segment(one, 12)[0], model.segment(one[0], 12))


@pytest.mark.parametrize("env,encoder", [({"SPAM_DEVICE_FRAME": "1"}, None), ({"SPAM_DEVICE_FRAME": "1"}, "default"),
                                         ({"SPAM_KERNELS": "triton", "SPAM_DEVICE_FRAME": "1"}, None)])
def test_device_frame_path_equals_per_image(env, encoder, monkeypatch):
    """The resident (CUDA) code path on CPU tensors, with the reference or the Triton kernels (interpreted)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    model = SPAM(encoder=encoder)
    images = batch(2, 24, 20, seed=3)
    assert np.array_equal(model.segment(images, 12), per_image(model, images, 12))


def test_batch_rejects_a_prior_and_bad_shapes():
    model = SPAM(encoder=None)
    with pytest.raises(ValueError, match="no prior"):
        model.segment(batch(2, 16, 16), 8, prior=np.zeros((2, 16, 16), int))
    with pytest.raises(ValueError, match="only"):
        model.segment(batch(2, 4, 4), 17)
    with pytest.raises(ValueError, match="batch"):
        model.segment(np.zeros((2, 5, 5, 2), np.uint8), 4)


def test_batch_cut_into_several_tile_frames(monkeypatch):
    import spam_stream.tiles as tiles

    monkeypatch.setattr(tiles, "CPU_FRAME_PIXELS", 2 * 30 * 26)  # 2 tiles per frame: 5 images in 3 frames
    model = SPAM(encoder=None)
    images = batch(5, 30, 26, seed=7)
    assert tiles.tiles_per_frame("cpu", 30, 26) == 2 and tiles.tiles_per_frame("cuda", 30, 26) > 5
    assert np.array_equal(model.segment(images, 15), per_image(model, images, 15))


def test_tile_initial_centroids_equal_those_clustering_computes():
    from spam_stream.clustering import as_pixel_rows, initial_centroids
    from spam_stream.tiles import tile_frame

    model = SPAM(encoder="default")
    frame = tile_frame(batch(3, 29, 31), 20)
    model.seed_stage(frame)
    model.feature_stage(frame)
    ref = initial_centroids(as_pixel_rows(frame.features), torch.from_numpy(frame.seeds.init_labels), len(frame.seeds))
    assert torch.equal(frame.init_centroids, ref)
