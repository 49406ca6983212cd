"""The int8 CPU encoder (spam_stream.encoder.attach_int8) against its float32 reference twin.

Tolerance: the learned channels' relative RMS error (‖int8 − float32‖ / ‖float32‖ over all pixels and channels) at
most INT8_REL_RMS; observed 0.009–0.018 on BSDS test images with the bundled weights and calibration (50-image
ASA/GR within the issue's contract, benchmarks/bench_encoder.py --part quality)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from spam_stream import SPAM
from spam_stream.encoder import (INT8_CALIBRATION_SUFFIX, Encoder, Int8LearnedChannels, attach_int8, calibrate_int8,
                                 encode_learned, encode_tiled, fold_batchnorm, float32_twin, int8_supported,
                                 make_int8_companion, quantize_encoder)
from spam_stream.features import COLOR_SCALE, pixel_features
from spam_stream.model import DEFAULT_WEIGHTS

from helpers import synthetic_image

INT8_REL_RMS = 0.04
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "samples", "coffee.jpg")
HAVE_INT8 = int8_supported() and os.path.isfile(str(DEFAULT_WEIGHTS) + INT8_CALIBRATION_SUFFIX)
needs_int8 = pytest.mark.skipif(not HAVE_INT8, reason="no int8 engine on this CPU or no bundled calibration")


def rel_rms(a, b):
    return ((a - b).pow(2).mean() / b.pow(2).mean()).sqrt().item()


def images():
    """Natural images (the sample frame, two crops): within the calibrated colour range."""
    im = np.asarray(Image.open(SAMPLE).convert("RGB"))
    return [np.ascontiguousarray(im[:321, :481]), np.ascontiguousarray(im[-200:, -300:])]


@needs_int8
@pytest.mark.parametrize("encoder", ["default", "fast"])
def test_int8_learned_channels_close_to_float32(encoder):
    new = SPAM(encoder=encoder).encoder
    assert isinstance(new.__dict__.get("int8"), Int8LearnedChannels)  # the saved int8 weights, no FX at load
    ref = float32_twin(new)
    assert "int8" not in ref.__dict__ and "int8" in new.__dict__  # the twin leaves the default as it is
    for image in images():
        a, b = pixel_features(image, 400, new), pixel_features(image, 400, ref)
        assert a.shape == b.shape and torch.equal(a[:5], b[:5])  # Lab and yx untouched
        assert rel_rms(a[5:], b[5:]) <= INT8_REL_RMS
        assert not torch.equal(a[5:], b[5:])  # it did run the int8 path


@needs_int8
def test_saturated_colours_take_the_float32_path():
    """The synthetic test image's saturated colours lie beyond the natural-image calibration: float32, exactly."""
    new = SPAM().encoder
    image = synthetic_image(96, 128)
    torch.testing.assert_close(pixel_features(image, 100, new), pixel_features(image, 100, float32_twin(new)),
                               rtol=0, atol=0)


@needs_int8
def test_int8_tiles_equal_the_whole_frame():
    """Tiles (origins on the pooling grid, even sizes) give the whole frame's int8 channels: no seams."""
    enc = SPAM().encoder
    colour = pixel_features(images()[1], 200)[:3].clone() * (enc.input_color_scale / COLOR_SCALE)
    whole = encode_tiled(enc, colour, tile=(200, 300))
    tiled = encode_tiled(enc, colour, tile=(48, 64))
    assert (whole - tiled).abs().max().item() <= 1e-4


@needs_int8
def test_int8_tiles_on_an_odd_frame_stay_close_to_float32():
    """On an odd-sized frame a tile's own bilinear mapping differs from the frame's by a fraction of a pixel: the
    tiled int8 channels stay within the int8 tolerance of the float32 ones."""
    enc = SPAM().encoder
    image = np.ascontiguousarray(images()[0][:201, :301])
    colour = pixel_features(image, 200)[:3].clone()
    factor = enc.input_color_scale / COLOR_SCALE
    tiled = encode_tiled(enc, colour, tile=(48, 64), colour_factor=factor)
    ref = encode_tiled(float32_twin(enc), colour, tile=(48, 64), colour_factor=factor)
    assert rel_rms(tiled, ref) <= INT8_REL_RMS


def test_float32_path_forced_and_on_cpus_without_int8(monkeypatch):
    monkeypatch.setenv("SPAM_ENCODER_PRECISION", "float32")
    forced = SPAM().encoder
    monkeypatch.delenv("SPAM_ENCODER_PRECISION")
    monkeypatch.setattr("spam_stream.encoder.int8_supported", lambda: False)
    no_int8 = SPAM().encoder
    if forced is None:
        pytest.skip("no bundled encoder weights")
    assert "int8" not in forced.__dict__ and "int8" not in no_int8.__dict__
    image = images()[1]
    ref = pixel_features(image, 100, float32_twin(forced))
    torch.testing.assert_close(pixel_features(image, 100, forced), ref, rtol=0, atol=0)
    torch.testing.assert_close(pixel_features(image, 100, no_int8), ref, rtol=0, atol=0)


@pytest.mark.skipif(not int8_supported(), reason="no int8 engine on this CPU")
def test_calibrate_and_quantize_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(12, 8).eval()
    colours = [torch.rand(3, 40, 56) * 30 for _ in range(4)]
    q = quantize_encoder(enc, calibrate_int8(enc, colours))
    inference = fold_batchnorm(enc)
    for c in colours[:2]:
        ref = encode_learned(inference, c)
        with torch.inference_mode():
            got = q(c[None].contiguous(memory_format=torch.channels_last))[0]
        # random weights on uniform noise (no structure for the ranges to fit): a looser bound than the bundled one
        assert got.shape == ref.shape and rel_rms(got, ref) <= 2.5 * INT8_REL_RMS
    # attach_int8 reads <weights>.int8.pt next to a checkpoint; without it the float32 path stays
    weights = tmp_path / "enc.pt"
    assert not attach_int8(inference, enc, weights) and "int8" not in inference.__dict__
    torch.save(calibrate_int8(enc, colours), str(weights) + INT8_CALIBRATION_SUFFIX)
    assert attach_int8(inference, enc, weights) and "int8" in inference.__dict__
    with pytest.raises(ValueError, match="calibration"):
        quantize_encoder(Encoder(12, 8).eval(), {})


def _random_encoder(seed):
    torch.manual_seed(seed)
    enc = Encoder(12, 8)
    for m in enc.modules():  # non-trivial BatchNorm statistics, folded by the conversion
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


@pytest.mark.skipif(not int8_supported(), reason="no int8 engine on this CPU")
def test_companion_loads_without_fx_and_equals_the_fx_conversion(tmp_path, monkeypatch):
    """make_int8_companion saves the converted weights: attach_int8 builds Int8LearnedChannels from them without
    FX (quantize_encoder made to fail), and its channels are the FX-converted module's, exactly (with torch's
    concatenation; the numba one: test_qconcat_kernel_equals_the_torch_twin)."""
    enc = _random_encoder(0)
    colours = [torch.rand(3, 40, 56) * 30 for _ in range(3)]
    weights = tmp_path / "enc.pt"
    blob = make_int8_companion(enc, colours, str(weights) + INT8_CALIBRATION_SUFFIX)
    fx = quantize_encoder(enc, blob["calibration"])

    def no_fx(*args, **kwargs):
        raise AssertionError("FX conversion at load")

    monkeypatch.setattr("spam_stream.encoder.quantize_encoder", no_fx)
    inference = fold_batchnorm(enc)
    assert attach_int8(inference, enc, weights)
    assert isinstance(inference.__dict__["int8"], Int8LearnedChannels)
    twin = float32_twin(inference)
    twin.__dict__["int8"] = fx
    c = colours[0] * 0.8  # inside the calibrated range
    inference.__dict__["int8"].fused_concat = False  # torch's ops, as FX's graph has them: the same channels exactly
    torch.testing.assert_close(encode_learned(inference, c), encode_learned(twin, c), rtol=0, atol=0)
    inference.__dict__["int8"].fused_concat = True
    assert rel_rms(encode_learned(inference, c), encode_learned(float32_twin(inference), c)) <= 2.5 * INT8_REL_RMS


@pytest.mark.skipif(not int8_supported(), reason="no int8 engine on this CPU")
def test_companion_of_other_weights_is_not_used(tmp_path):
    """A companion left beside retrained weights (its fingerprint differs) leaves the float32 path, with a warning."""
    weights = tmp_path / "enc.pt"
    make_int8_companion(_random_encoder(0), [torch.rand(3, 40, 56) * 30], str(weights) + INT8_CALIBRATION_SUFFIX)
    other = _random_encoder(1)
    inference = fold_batchnorm(other)
    with pytest.warns(UserWarning, match="other weights"):
        assert not attach_int8(inference, other, weights)
    assert "int8" not in inference.__dict__


@pytest.mark.skipif(not int8_supported(), reason="no int8 engine on this CPU")
@pytest.mark.parametrize("same", [True, False])
def test_qconcat_kernel_equals_the_torch_twin(same):
    """kernels/qconcat: the numba pass == quantized upsampling + quantized::cat, within one uint8 level (it rounds
    once, torch twice), on odd sizes; colour and s1 in the result's quantization (copied) or not (requantized)."""
    import warnings

    from spam_stream.encoder import _qconcat_taps
    from spam_stream.kernels.qconcat import qconcat_cpu, qconcat_torch

    torch.manual_seed(0)
    h, w = 37, 53
    sizes = [(h, w), (h, w), ((h + 1) // 2, (w + 1) // 2), ((h + 3) // 4, (w + 3) // 4)]
    qparams = [(0.14, 68), (0.14, 68) if same else (0.05, 0), (0.02, 0), (0.016, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parts = [torch.quantize_per_tensor(torch.rand(1, c, *hw).contiguous(memory_format=torch.channels_last) * 6,
                                           s, z, torch.quint8) for c, hw, (s, z) in zip((3, 8, 8, 8), sizes, qparams)]
        taps = _qconcat_taps(sizes[2], sizes[3], (h, w))
        got = qconcat_cpu(parts, (h, w), 0.14, 68, taps)
        ref = qconcat_torch(parts, (h, w), 0.14, 68)
    assert got.shape == ref.shape == (1, 27, h, w) and (got.q_scale(), got.q_zero_point()) == (0.14, 68)
    diff = (got.int_repr().int() - ref.int_repr().int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.1
    assert torch.equal(got.int_repr()[:, :3], ref.int_repr()[:, :3])  # colour: copied or requantized alike


@needs_int8
def test_fused_concat_stays_close_to_the_torch_ops():
    """The bundled int8 encoder with the numba concatenation vs torch's ops: the same learned channels within a
    fraction of the int8 tolerance, both within it of float32."""
    enc = SPAM().encoder
    colour = pixel_features(images()[0], 400)[:3].clone() * (enc.input_color_scale / COLOR_SCALE)
    assert enc.int8.fused_concat
    fused = encode_tiled(enc, colour)
    enc.int8.fused_concat = False
    try:
        plain = encode_tiled(enc, colour)
    finally:
        enc.int8.fused_concat = True
    ref = encode_tiled(float32_twin(enc), colour)
    assert rel_rms(fused, plain) <= INT8_REL_RMS / 4
    assert rel_rms(fused, ref) <= INT8_REL_RMS and rel_rms(plain, ref) <= INT8_REL_RMS


@pytest.mark.skipif(not int8_supported(), reason="no int8 engine on this CPU")
@pytest.mark.parametrize("factor", [1.0, 0.7])
def test_quantize_planes_equals_the_torch_twin(factor):
    """kernels/qconcat.quantize_planes: strided colour planes × factor → channels-last quint8 in one pass, the levels
    of torch's copy, scaling and quantize_per_tensor (values beyond the range clamp alike)."""
    from spam_stream.kernels.qconcat import quantize_planes, quantize_planes_torch

    torch.manual_seed(0)
    planes = (torch.rand(5, 45, 70) * 90 - 10)[:3, 2:43, 1:68]  # a window of feature planes: strided
    got, ref = quantize_planes(planes, factor, 0.21, 17), quantize_planes_torch(planes, factor, 0.21, 17)
    assert got.shape == ref.shape == (1, 3, 41, 67) and got.is_contiguous(memory_format=torch.channels_last)
    assert (got.q_scale(), got.q_zero_point()) == (0.21, 17)
    assert torch.equal(got.int_repr(), ref.int_repr())
    assert got.int_repr().min() == 0 and got.int_repr().max() == 255  # both clamps exercised


@pytest.mark.skipif(not int8_supported(), reason="no int8 engine on this CPU")
def test_dequantize_planes_equals_the_torch_twin():
    """kernels/qconcat.dequantize_planes: a window of a channels-last quint8 map into a window of feature planes,
    exactly torch's dequantize and copy; nothing outside the window written."""
    from spam_stream.kernels.qconcat import dequantize_planes, dequantize_planes_torch, quantize_planes_torch

    torch.manual_seed(1)
    q = quantize_planes_torch(torch.rand(15, 41, 67) * 9, 1.0, 0.05, 3)
    got, ref = torch.full((20, 60, 90), -1.0), torch.full((20, 60, 90), -1.0)
    dequantize_planes(q, 5, 7, got[5:, 10:40, 20:70])
    dequantize_planes_torch(q, 5, 7, ref[5:, 10:40, 20:70])
    assert torch.equal(got, ref) and (got[5:, 10:40, 20:70] >= 0).all() and (got[:5] == -1).all()
    with pytest.raises(ValueError):
        dequantize_planes(q, 20, 7, got[5:, 10:40, 20:70])  # the window reaches beyond the map


@needs_int8
def test_fused_tile_io_equals_the_torch_ops():
    """The bundled int8 encoder with the one-pass quantize/dequantize around each tile (fused_io) gives the learned
    channels of torch's copies, quantize and dequantize, exactly, whole frame and tiled."""
    enc = SPAM().encoder
    module = enc.__dict__["int8"]
    for image in images():
        got = [pixel_features(image, 400, enc), pixel_features(image, 400, enc, tile=96)]
        module.fused_io = False
        try:
            ref = [pixel_features(image, 400, enc), pixel_features(image, 400, enc, tile=96)]
        finally:
            module.fused_io = True
        for a, b in zip(got, ref):
            assert torch.equal(a, b)
