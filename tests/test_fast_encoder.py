"""The fast encoder option (``--encoder fast``: the encoder run at reduced resolution, its channels upsampled back)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spam_stream import SPAM
from spam_stream.encoder import (DEFAULT_SIGMA, DEFAULT_SUPPORT, DEFAULT_UPSAMPLE, Encoder, _source_rows, _source_taps,
                                 encode_learned, fast_encoder, fold_batchnorm, guided_window, upsample_learned)
from spam_stream.features import COLOR_SCALE
from spam_stream.kernels.upsample import guided_gather_cpu, guided_gather_torch
from spam_stream.features import pixel_features
from spam_stream.model import DEFAULT_WEIGHTS, resolve_encoder

from helpers import assert_connected, assert_superpixels_respect_prior, synthetic_image, voronoi_partition


def small_encoder(resolution=None, **kw):
    torch.manual_seed(0)
    enc = fold_batchnorm(Encoder(10, 4).eval())
    return enc if resolution is None else fast_encoder(enc, resolution, **kw)


@pytest.mark.parametrize("size", [(37, 53), (64, 48)])
def test_fast_encoder_is_the_encoder_on_a_resized_image(size):
    """Half resolution = the encoder's forward on the bilinearly resized colour, upsampled back bilinearly."""
    h, w = size
    colour = torch.rand(3, h, w) * 30
    out = encode_learned(small_encoder(0.5, upsample="bilinear"), colour, tile=(16, 24))
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
    assert (fast.upsample, fast.sigma, fast.support) == (DEFAULT_UPSAMPLE, DEFAULT_SIGMA, DEFAULT_SUPPORT)
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


# --- guided (joint bilateral) upsampling ------------------------------------------------------------------------------
def guided_brute_force(src, small_guide, guide, scale, support):
    """Per-pixel loop of the formula in spam_stream.kernels.upsample, float64, for tiny maps; src (C, h, w)."""
    c, h, w = src.shape
    H, W = guide.shape[1:]
    ri, rw = _source_taps(torch.arange(H), h, H, support)
    ci, cw = _source_taps(torch.arange(W), w, W, support)
    out = np.zeros((c, H, W))
    s, g, G = src.double().numpy(), small_guide.double().numpy(), guide.double().numpy()
    for i in range(H):
        for j in range(W):
            samples = [(int(ri[p, i]), int(ci[q, j]), float(rw[p, i]) * float(cw[q, j]))
                       for p in range(ri.shape[0]) for q in range(ci.shape[0])]
            d = [((G[:, i, j] - g[:, r, q]) ** 2).sum() for r, q, _ in samples]
            dmin = min(dk for dk, (_, _, ab) in zip(d, samples) if ab > 0)
            wts = [ab * (1 + max(0.0, dk - dmin) * scale / 64) ** -64 for dk, (_, _, ab) in zip(d, samples)]
            out[:, i, j] = sum(wk * s[:, r, q] for wk, (r, q, _) in zip(wts, samples)) / sum(wts)
    return torch.from_numpy(out).float()


def random_maps(c, h, w, H, W, seed=0):
    """(C, h, w) channels (a view of a pixel-major buffer, as encode_learned makes them), (3, h, w), (3, H, W)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(h, w, c, generator=g).permute(2, 0, 1)
    return src, torch.rand(3, h, w, generator=g) * 20, torch.rand(3, H, W, generator=g) * 20


def test_source_taps_at_support_one_are_bilinear():
    for n_in, n_out in ((5, 10), (7, 17), (6, 6), (360, 720)):
        dst = torch.arange(n_out)
        (i0, i1, a0, a1), (idx, wt) = _source_rows(dst, n_in, n_out), _source_taps(dst, n_in, n_out, 1.0)
        assert idx.shape == (2, n_out)
        assert torch.equal(idx[0], i0) and torch.equal(idx[1][a1 > 0], i1[a1 > 0])
        torch.testing.assert_close(wt, torch.stack([a0, a1]), atol=1e-6, rtol=0)
    idx, wt = _source_taps(torch.arange(20), 10, 20, 2.0)
    assert idx.shape == (4, 20) and (wt >= 0).all() and (idx >= 0).all() and (idx < 10).all()


@pytest.mark.parametrize("sizes", [((5, 7), (10, 14)), ((4, 9), (11, 17)), ((6, 6), (6, 6))])
@pytest.mark.parametrize("support", [1.0, 1.5, 2.0])
def test_guided_torch_twin_is_the_formula(sizes, support):
    (h, w), (H, W) = sizes
    src, small_guide, guide = random_maps(3, h, w, H, W)
    pm = src.permute(1, 2, 0)
    out = guided_window(pm, small_guide, guide, torch.arange(H), torch.arange(W), (h, w), (H, W), 0.02, support)
    ref = guided_brute_force(src, small_guide, guide, 0.02, support)
    ri, rw = _source_taps(torch.arange(H), h, H, support)
    ci, cw = _source_taps(torch.arange(W), w, W, support)
    twin = guided_gather_torch(pm, small_guide, guide, ri, rw, ci, cw, 0.02, torch.empty(3, H, W))
    assert (twin - ref).abs().max().item() <= 1e-5
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scale", [0.0, 0.01, 0.5, 50.0])
@pytest.mark.parametrize("support", [1.0, 1.5, 2.0])
def test_guided_cpu_kernel_equals_the_torch_twin(scale, support):
    h, w, H, W = 23, 31, 45, 61
    src, small_guide, guide = random_maps(6, h, w, H, W, seed=1)
    pm = src.permute(1, 2, 0)
    ri, rw = _source_taps(torch.arange(H), h, H, support)
    ci, cw = _source_taps(torch.arange(W), w, W, support)
    ref = guided_gather_torch(pm, small_guide, guide, ri, rw, ci, cw, scale, torch.empty(6, H, W))
    buf = torch.zeros(9, H, W)  # a channel slice of a bigger buffer, as the feature tensor's learned channels
    got = guided_gather_cpu(pm, small_guide, guide, ri, rw, ci, cw, scale, buf[2:8])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(buf[:2], torch.zeros(2, H, W)) and torch.equal(buf[8:], torch.zeros(1, H, W))


def test_guided_scale_zero_support_one_is_bilinear():
    src, small_guide, guide = random_maps(4, 12, 20, 25, 39, seed=2)
    out = upsample_learned(src, (25, 39), torch.empty(4, 25, 39), "guided", small_guide, guide, 0.0, support=1.0)
    ref = F.interpolate(src[None], size=(25, 39), mode="bilinear", align_corners=False)[0]
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("support", [1.0, 2.0])
def test_guided_row_blocks_and_windows_equal_the_whole_frame(support):
    h, w, H, W = 18, 26, 37, 52
    src, small_guide, guide = random_maps(5, h, w, H, W, seed=3)
    whole = upsample_learned(src, (H, W), torch.empty(5, H, W), "guided", small_guide, guide, 0.03, support)
    blocks = upsample_learned(src, (H, W), torch.empty(5, H, W), "guided", small_guide, guide, 0.03, support,
                              block_bytes=4 * 5 * W * 3)  # 3 rows a block
    assert torch.equal(blocks, whole)
    # a window of the low-resolution maps (a tile with its margin) gives the same pixels
    rows, cols = torch.arange(10, 23), torch.arange(17, 40)
    r0, r1, c0, c1 = 3, 14, 6, 22
    pm = src.permute(1, 2, 0)
    part = guided_window(pm[r0:r1, c0:c1], small_guide[:, r0:r1, c0:c1], guide[:, 10:23, 17:40], rows, cols,
                         (h, w), (H, W), 0.03, support, offset=(r0, c0))
    torch.testing.assert_close(part, whole[:, 10:23, 17:40], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="window"):
        guided_window(pm[6:13], small_guide[:, 6:13], guide[:, 10:23], rows, torch.arange(W), (h, w), (H, W),
                      0.03, support, offset=(6, 0))


@pytest.mark.parametrize("size", [(37, 53), (64, 48)])
def test_guided_fast_encoder_is_the_encoder_on_a_resized_image_upsampled_by_the_twin(size):
    h, w = size
    colour = torch.rand(3, h, w) * 30
    enc = small_encoder(0.5, upsample="guided", sigma=5.0, support=1.5)
    enc.input_color_scale = 0.3
    out = encode_learned(enc, colour, tile=(16, 24), colour_factor=1.5)
    whole = encode_learned(enc, colour, tile=(1000, 1000), colour_factor=1.5)
    assert out.shape == (5, h, w) and out.dtype == torch.float32
    assert (out - whole).abs().max().item() <= 2e-5  # tiles of the half-resolution encoder: no seam
    hr, wr = round(h / 2), round(w / 2)
    small_colour = F.interpolate(colour[None], size=(hr, wr), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        learned = small_encoder()(torch.cat([small_colour * 1.5, torch.zeros(1, 2, hr, wr)], 1))[0, 5:]
    sigma = 5.0 * 0.3 / 1.5  # Lab units → the units of ``colour`` (Lab · input_color_scale / colour_factor)
    ri, rw = _source_taps(torch.arange(h), hr, h, 1.5)
    ci, cw = _source_taps(torch.arange(w), wr, w, 1.5)
    ref = guided_gather_torch(learned.permute(1, 2, 0), small_colour[0], colour, ri, rw, ci, cw,
                              1 / (2 * sigma ** 2), torch.empty(5, h, w))
    assert (out - ref).abs().max().item() <= 2e-5


def edge_image(h, w, edge, left, right):
    """(3, H, W) float32 colour with a vertical step between columns edge − 1 and edge."""
    colour = torch.empty(3, h, w)
    colour[:, :, :edge] = torch.tensor(left, dtype=torch.float32)[:, None, None]
    colour[:, :, edge:] = torch.tensor(right, dtype=torch.float32)[:, None, None]
    return colour


@pytest.mark.parametrize("edge", [13, 14, 15])
def test_guided_upsampling_keeps_a_colour_edge_in_channels_that_follow_colour(edge):
    """Channels that are a function of colour: guided upsampling is closer to that function at full resolution than
    bilinear upsampling (whose step is smeared over the low-resolution sample spacing)."""
    h, w = 12, 30
    left, right = (50.0, 10.0, 0.0), (20.0, -30.0, 40.0)  # Lab
    colour = edge_image(h, w, edge, [v * COLOR_SCALE for v in left], [v * COLOR_SCALE for v in right])
    small_colour = F.interpolate(colour[None], size=(6, 15), mode="bilinear", align_corners=False)[0]
    mix = torch.tensor([[1.0, 0.5, -0.2], [0.0, -1.0, 2.0]])
    feat = lambda c: torch.einsum("kc,chw->khw", mix, c)  # noqa: E731
    ideal = feat(colour)
    sigma = DEFAULT_SIGMA * COLOR_SCALE
    guided = upsample_learned(feat(small_colour), (h, w), torch.empty(2, h, w), "guided", small_colour, colour,
                              1 / (2 * sigma ** 2))
    bilinear = upsample_learned(feat(small_colour), (h, w), torch.empty(2, h, w), "bilinear")
    err_g, err_b = (guided - ideal).abs().sum().item(), (bilinear - ideal).abs().sum().item()
    assert err_b > 0 and err_g < 0.5 * err_b


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no bundled encoder weights in this checkout")
def test_guided_fast_encoder_has_a_steeper_feature_edge_than_bilinear():
    """The bundled encoder at half resolution on a sharp colour edge: the steepest column-to-column change of its
    learned channels across the edge is larger with guided upsampling than with bilinear (in most channels, and
    summed over them)."""
    h, w, edge = 24, 64, 33
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :edge] = (200, 60, 40)
    image[:, edge:] = (30, 90, 200)
    steps = {}
    for mode in ("bilinear", "guided"):
        model = SPAM(encoder="fast")
        fast_encoder(model.encoder, 0.5, upsample=mode)
        feats = pixel_features(image, 50, model.encoder)[5:, h // 4:3 * h // 4]
        steps[mode] = (feats[:, :, 1:] - feats[:, :, :-1]).abs().mean(1).max(1).values  # per channel
    moving = steps["bilinear"] > 1e-3 * steps["bilinear"].max()
    assert moving.sum() >= 3
    assert (steps["guided"][moving] > steps["bilinear"][moving]).float().mean() >= 0.75  # most channels
    assert steps["guided"][moving].sum() > 1.5 * steps["bilinear"][moving].sum()


def test_fast_encoder_rejects_bad_options():
    with pytest.raises(ValueError, match="upsample"):
        fast_encoder(small_encoder(), 0.5, upsample="nearest")
    with pytest.raises(ValueError, match="sigma"):
        fast_encoder(small_encoder(), 0.5, sigma=0.0)
    with pytest.raises(ValueError, match="support"):
        fast_encoder(small_encoder(), 0.5, support=0.5)
    with pytest.raises(ValueError, match="upsample mode"):
        upsample_learned(torch.zeros(1, 2, 2), (4, 4), torch.empty(1, 4, 4), "bicubic")


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no bundled encoder weights in this checkout")
def test_each_encoder_runs_at_its_own_default_compactness():
    """λs when none is given: the fast encoder's own (chosen on val by the same rule as the default encoder's, its
    upsampled channels being smoother), the default otherwise; an explicit λs always wins."""
    from spam_stream.cli import build_parser
    from spam_stream.features import FAST_SPATIAL_SCALE, SPATIAL_SCALE

    assert FAST_SPATIAL_SCALE < SPATIAL_SCALE
    assert SPAM(encoder="fast").compactness == FAST_SPATIAL_SCALE
    assert SPAM().compactness == SPAM(encoder=None).compactness == SPATIAL_SCALE
    assert SPAM(encoder="fast", compactness=3.0).compactness == 3.0
    args = build_parser().parse_args(["image", "x.jpg", "-o", "out", "--encoder", "fast"])
    assert args.compactness is None  # resolved by SPAM from the encoder
