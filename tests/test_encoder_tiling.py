"""The tiled encoder (spam_stream.encoder.encode_tiled) against the whole-frame forward, and its pieces: the bilinear
window resampling against F.interpolate, the numba gather against its torch twin, tile sizes from a memory budget."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spam_stream.encoder import (ALIGN, HALO, STRIP, Encoder, encode_tiled, fold_batchnorm, resize_window,
                                 tile_bytes, tile_bytes_per_pixel, tile_for_budget)
from spam_stream.features import pixel_features
from spam_stream.kernels.resize import bilinear_gather_cpu, bilinear_gather_torch

from helpers import bsds_test_split, synthetic_image

TOL = 2e-5  # observed ≤ 1e-6; a halo of 20 instead of 24 already gives 6e-5 on 101×67


def random_encoder(width=4, out_dim=9, seed=0, fold=True):
    torch.manual_seed(seed)
    enc = Encoder(out_dim, width)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    enc.eval()
    return fold_batchnorm(enc) if fold else enc


def whole_frame(enc, colour):
    x = torch.cat([colour, torch.zeros((2,) + colour.shape[1:])])[None]
    with torch.inference_mode():
        return enc(x.contiguous(memory_format=torch.channels_last))[0, 5:]


# (size, tiles): tiles smaller than HALO in one or both directions, tiles not dividing the size, one tile
CASES = [((37, 53), [(8, 56), (12, 20), (40, 4)]),
         ((101, 67), [(16, 36), (48, 12)]),
         ((250, 333), [(64, 100), (124, 336), (248, 200)])]  # 248 core rows: output strips of STRIP rows


@pytest.mark.parametrize("size,tiles", CASES)
def test_tiled_equals_whole_frame_on_odd_sizes(size, tiles):
    assert STRIP < 248
    enc = random_encoder()
    colour = torch.randn((3,) + size, generator=torch.Generator().manual_seed(size[0]))
    ref = whole_frame(enc, colour)
    for tile in tiles:
        out = encode_tiled(enc, colour, tile=tile)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert (out - ref).abs().max().item() <= TOL, tile


def test_tiled_equals_whole_frame_unfolded_encoder_and_colour_factor():
    enc = random_encoder(width=6, out_dim=8, fold=False)
    colour = torch.rand(3, 45, 31) * 20
    ref = whole_frame(enc, colour * 0.5)
    out = torch.full((3, 45, 31), float("nan"))
    encode_tiled(enc, colour, out, tile=(20, 8), colour_factor=0.5)
    assert (out - ref).abs().max().item() <= TOL


def test_halo_is_needed():
    """A halo below the receptive field makes tiles differ: the test above can fail."""
    import spam_stream.encoder as E

    enc = random_encoder()
    colour = torch.randn(3, 64, 64)
    ref = whole_frame(enc, colour)
    saved = E.HALO
    try:
        E.HALO = 8
        assert (encode_tiled(enc, colour, tile=16) - ref).abs().max().item() > 1e-3
    finally:
        E.HALO = saved


@pytest.mark.parametrize("n_in,n_out", [(19, 37), (10, 37), (5, 17), (32, 64), (7, 7)])
def test_resize_window_equals_interpolate(n_in, n_out):
    src = torch.randn(1, 5, n_in, n_in + 3).contiguous(memory_format=torch.channels_last)
    full = F.interpolate(src, size=(n_out, n_out + 5), mode="bilinear", align_corners=False)
    rows, cols = torch.arange(2, n_out - 1), torch.arange(0, n_out + 5)
    got = resize_window(src, rows, cols, (n_in, n_in + 3), (n_out, n_out + 5))
    torch.testing.assert_close(got, full[:, :, 2:n_out - 1], rtol=0, atol=1e-5)
    # a window of the source, addressed by its offset
    off = 1
    win = src[:, :, off:].contiguous(memory_format=torch.channels_last)
    rows = torch.arange(n_out // 2, n_out)
    got = resize_window(win, rows, cols, (n_in, n_in + 3), (n_out, n_out + 5), (off, 0))
    torch.testing.assert_close(got, full[:, :, n_out // 2:], rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        resize_window(win, torch.arange(0, n_out), cols, (n_in, n_in + 3), (n_out, n_out + 5), (off, 0))


def test_numba_gather_equals_torch_twin():
    g = torch.Generator().manual_seed(1)
    src = torch.randn(9, 11, 6, generator=g)
    r0 = torch.randint(0, 9, (7,), generator=g)
    c0 = torch.randint(0, 11, (13,), generator=g)
    r1, c1 = (r0 + 1).clamp(max=8), (c0 + 1).clamp(max=10)
    a1, b1 = torch.rand(7, generator=g), torch.rand(13, generator=g)
    out_cpu = torch.empty(7, 13, 10)[:, :, 2:8]  # a strided view, as the tiles write into their buffer
    out_ref = torch.empty(7, 13, 6)
    bilinear_gather_cpu(src, r0, r1, 1 - a1, a1, c0, c1, 1 - b1, b1, out_cpu)
    bilinear_gather_torch(src, r0, r1, 1 - a1, a1, c0, c1, 1 - b1, b1, out_ref)
    torch.testing.assert_close(out_cpu, out_ref, rtol=0, atol=1e-6)


def test_tile_for_budget():
    enc = random_encoder(width=32, out_dim=20)
    per_in, per_core = tile_bytes_per_pixel(enc)
    assert tile_for_budget(321, 481, enc, 10**12) == (321, 481)  # fits: one tile, no halo
    for h, w, budget in [(2160, 3840, 256 * 2**20), (1080, 1920, 64 * 2**20), (300, 5000, 32 * 2**20)]:
        th, tw = tile_for_budget(h, w, enc, budget)
        assert th % ALIGN == 0 or th == h
        assert tw % ALIGN == 0 or tw == w
        assert tile_bytes(h, w, (th, tw), (per_in, per_core)) <= budget
        assert tile_bytes(h, w, (2 * th, 2 * tw), (per_in, per_core)) > budget  # not needlessly small
    # the default budget bounds a 4K frame's tiles
    th, tw = tile_for_budget(2160, 3840, enc)
    assert th < 2160 and tw < 3840


def test_pixel_features_tiled_equals_untiled():
    enc = random_encoder(width=8, out_dim=12)
    enc.input_color_scale = 0.3
    image = synthetic_image(70, 90)
    one = pixel_features(image, 50, enc, 0.26, 7.5, tile=1000)
    tiled = pixel_features(image, 50, enc, 0.26, 7.5, tile=(28, 36))
    base = pixel_features(image, 50, None, 0.26, 7.5)
    assert one.shape == (12, 70, 90) and one.dtype == torch.float32
    torch.testing.assert_close(one[:5], base)  # the hand-made channels untouched
    assert (one - tiled).abs().max().item() <= TOL
    # equal to the encoder's own forward on [colour at its training scale, yx]
    x = base.clone()
    x[:3] *= 0.3 / 0.26
    with torch.inference_mode():
        ref = enc(x[None].contiguous(memory_format=torch.channels_last))[0, 5:]
    assert (one[5:] - ref).abs().max().item() <= TOL
    # the (N, D) rows the kernels take are a view, no copy: on the CPU the kernels' channel-major lanes
    from spam_stream.clustering import as_pixel_rows
    from spam_stream.kernels import cpu

    rows = as_pixel_rows(one)
    lanes = cpu._channel_rows(rows)
    assert lanes is not None and np.shares_memory(lanes[0], one.numpy())
    np.testing.assert_array_equal(rows[:, 0].numpy(), base[0].ravel().numpy())


@pytest.mark.skipif(not __import__("spam_stream.model", fromlist=["x"]).DEFAULT_WEIGHTS.is_file(),
                    reason="no bundled encoder weights in this checkout")
def test_segment_labels_unchanged_by_tiling_on_bsds(monkeypatch):
    """The bundled encoder's float32 path on BSDS500 test images, one tile vs 16 MB tiles: equal labels, or ASA
    within 0.0005. (The int8 twin's tiles run their own bilinear mapping, which on an odd-sized frame is not the
    frame's: tests/test_encoder_int8.py holds them to the float32 channels instead.)"""
    import spam_stream.encoder as E
    from spam_stream import SPAM
    from spam_stream.metrics import asa

    ds = bsds_test_split()
    model = SPAM()
    model.encoder = E.float32_twin(model.encoder)
    assert tile_for_budget(321, 481, model.encoder, 16 * 2**20)[0] < 321  # several tiles
    for i in (0, 57, 123):
        s = ds[i]
        monkeypatch.setattr(E, "DEFAULT_MEMORY_BUDGET", 2**40)
        whole = model.segment(s.image, 400)
        monkeypatch.setattr(E, "DEFAULT_MEMORY_BUDGET", 16 * 2**20)
        tiled = model.segment(s.image, 400)
        if not np.array_equal(whole, tiled):
            assert abs(asa(whole, s.gts[0]) - asa(tiled, s.gts[0])) <= 5e-4
