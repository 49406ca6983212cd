"""The GPU-resident frame's stages (spam_stream.kernels.features / seeding / connectivity) against today's CPU
functions, on CPU tensors here and on CUDA tensors too when a GPU is present (``device`` fixture).

Lab + positions equal the numba features within float32 rounding; grid candidates and starting labels are equal;
with a prior, the object seeds and the candidate table made on the device equal the CPU's (seed_stage's two paths);
connectivity gives the same labels as ``enforce_connectivity`` (random labels, clustering output with a prior, BSDS
images when present), with both connected-components implementations (numba for CPU tensors, torch ops for CUDA);
and ``SPAM.segment`` through the device path (``SPAM_DEVICE_FRAME=1`` on a CPU) keeps every invariant and matches
the CPU path.
"""
import os

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from spam_stream import SPAM
from spam_stream.candidates import grid_candidates
from spam_stream.color import lab_yx_features
from spam_stream.connectivity import enforce_connectivity
from spam_stream.datasets import oracle_partition
from spam_stream.encoder import Encoder, fold_batchnorm
from spam_stream.features import pixel_features
from spam_stream.kernels import resident_connectivity, resident_frame, resident_grid_seeds
from spam_stream.kernels.connectivity import enforce_connectivity_torch
from spam_stream.kernels.features import lab_yx_torch, pixel_features_torch, upload_image
from spam_stream.kernels.labeling import label_components, label_components_torch
from spam_stream.kernels.seeding import grid_candidates_torch, grid_init_labels_torch
from spam_stream.metrics import asa
from spam_stream.seeding import grid_seeds

from helpers import (assert_connected, assert_superpixels_respect_prior, bsds_test_split, dotted_line_case,
                     synthetic_image, voronoi_partition)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- features -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image", [random_image(37, 53), synthetic_image(61, 90)], ids=["random", "synthetic"])
def test_lab_yx_torch_equals_the_cpu_features(image, device):
    got = lab_yx_torch(upload_image(image, device), 0.26, 0.37).cpu()
    ref = torch.from_numpy(lab_yx_features(image, 0.26, 0.37))
    assert got.shape == (5,) + image.shape[:2] and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    assert torch.equal(got[3:], ref[3:])  # positions: the same float32 products
    np.testing.assert_allclose(got[:3].numpy().transpose(1, 2, 0) / 0.26, rgb2lab(image), atol=1e-3)


def test_every_uint8_colour_matches_skimage(device):
    """Every level of every channel (R = row, G = column, B = their sum mod 256, so the diagonal is grey-free and
    the grey axis R = G = B appears too), through the torch path."""
    r, g = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    image = np.stack([r, g, np.where(r == g, r, (r + g) % 256)], -1).astype(np.uint8)
    got = lab_yx_torch(upload_image(image, device), 1.0, 1.0)[:3].cpu().numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got, rgb2lab(image), atol=1e-3)


@pytest.mark.parametrize("with_encoder", [False, True], ids=["D5", "encoder"])
def test_pixel_features_torch_equals_pixel_features(with_encoder, device):
    torch.manual_seed(0)
    image = synthetic_image(48, 64, seed=1)
    enc = fold_batchnorm(Encoder(12, 8).eval()) if with_encoder else None
    ref = pixel_features(image, 50, enc, 0.26, 7.5)
    enc_d = None if enc is None else enc.to(device)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # float32 convolutions: the same numbers
        got = pixel_features_torch(image, 50, enc_d, 0.26, 7.5, device=device)
    assert got.device.type == device.type and got.shape == ref.shape
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-4)
    # as SPAM runs it on a GPU: cuDNN's default TF32 convolutions (10-bit mantissa products), near 3e-4 relative
    fast = pixel_features_torch(image, 50, enc_d, 0.26, 7.5, device=device).cpu()
    learned = slice(5, None)  # the encoder's channels (the first 5, Lab + positions, are computed alike)
    assert fast.shape == ref.shape and (fast - ref)[learned].norm() <= 2e-3 * ref[learned].norm()


def test_upload_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        upload_image(np.zeros((4, 4, 3), np.float32), "cpu")


# --- seeds and candidates -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(37, 53, 1), (61, 79, 40), (321, 481, 400)])
def test_grid_layout_on_the_device_equals_the_cpu_one(shape, device):
    h, w, k = shape
    seeds = grid_seeds(h, w, k)
    init = grid_init_labels_torch(h, w, seeds.grid, device)
    assert init.dtype == torch.int32 and np.array_equal(init.cpu().numpy(), seeds.init_labels)
    got, ref = grid_candidates_torch(h, w, seeds.grid, device), grid_candidates(h, w, seeds)
    assert got.device.type == device.type and got.grid == ref.grid
    assert torch.equal(got.pixel_object.cpu(), ref.pixel_object)
    assert torch.equal(got.superpixel_object.cpu(), ref.superpixel_object)
    resident = resident_grid_seeds(h, w, k, device)  # the seed stage's: starting cells made on the device
    assert resident.init_labels.device.type == device.type
    assert np.array_equal(resident.init_labels.cpu().numpy(), seeds.init_labels)
    assert np.array_equal(resident.yx, seeds.yx) and resident.grid == seeds.grid


def _seed_stage(monkeypatch, resident, device, image, k, prior):
    monkeypatch.setenv("SPAM_DEVICE_FRAME", "1" if resident else "0")
    model = SPAM(encoder=None, device=device if resident else "cpu")
    frame = model.frame(image, k, prior)
    model.prior_stage(frame)
    return model.seed_stage(frame)


@pytest.mark.parametrize("k", [20, 150])
def test_seed_stage_with_a_prior_builds_seeds_and_table_on_the_device(k, device, monkeypatch):
    """With a resident frame the object seeds and the candidate table are made on the device (tensors there, no
    host table uploaded) and equal the CPU path's: objects in pieces (band + random uncertain pixels), a 1-px object."""
    image = synthetic_image(64, 90, seed=7)
    prior = voronoi_partition(64, 90, 7, seed=7)
    prior[np.random.default_rng(7).random(prior.shape) < 0.05] = -1
    prior[0, 0] = 12  # a one-pixel object
    ref = _seed_stage(monkeypatch, False, device, image, k, prior)
    got = _seed_stage(monkeypatch, True, device, image, k, prior)
    for field in ("yx", "obj", "init_labels", "component", "component_map"):
        value = getattr(got.seeds, field)
        assert isinstance(value, torch.Tensor) and value.device.type == device.type, field
        np.testing.assert_array_equal(value.cpu().numpy(), getattr(ref.seeds, field), err_msg=field)
    assert got.cands.table.device.type == device.type
    for field in ("table", "pixel_object", "superpixel_object"):
        np.testing.assert_array_equal(getattr(got.cands, field).cpu().numpy(), getattr(ref.cands, field).numpy(),
                                      err_msg=field)


def test_seed_stage_on_the_device_equals_the_cpu_on_bsds(bsds_samples, device, monkeypatch):
    s = bsds_samples[1]
    prior = oracle_partition(s.gts[0], band=1)
    ref = _seed_stage(monkeypatch, False, device, s.image, 400, prior)
    got = _seed_stage(monkeypatch, True, device, s.image, 400, prior)
    np.testing.assert_array_equal(got.seeds.yx.cpu().numpy(), ref.seeds.yx)
    np.testing.assert_array_equal(got.seeds.init_labels.cpu().numpy(), ref.seeds.init_labels)
    np.testing.assert_array_equal(got.cands.table.cpu().numpy(), ref.cands.table.numpy())


# --- connectivity ---------------------------------------------------------------------------------------------------

LABELERS = {"numba-or-torch": label_components, "torch": label_components_torch}


def check_connectivity(labels, partition, min_size, device, labeler):
    ref, ref_src = enforce_connectivity(labels, partition, min_size, return_source=True)
    got, src = enforce_connectivity_torch(
        torch.from_numpy(labels).to(device), None if partition is None else torch.from_numpy(partition).to(device),
        min_size, return_source=True, labeler=labeler)
    assert got.device.type == device.type and got.dtype == torch.int32
    np.testing.assert_array_equal(got.cpu().numpy(), ref)
    np.testing.assert_array_equal(src, ref_src)
    return ref


@pytest.mark.parametrize("labeler", LABELERS.values(), ids=LABELERS.keys())
@pytest.mark.parametrize("seed", range(6))
def test_connectivity_equals_enforce_connectivity_on_random_labels(seed, labeler, device):
    """Random small-alphabet labels: many fragments of every size, ties in fragment size and border length, -1
    labels, uncertain pixels and objects whose fragments cannot merge."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(8, 70, 2)
    labels = rng.integers(-1, 2 + seed, (h, w)).astype(np.int32)
    partition = voronoi_partition(h, w, 3 + seed, seed=seed) if seed % 3 else None
    for min_size in (1, 3, 12):
        check_connectivity(labels, partition, min_size, device, labeler)


@pytest.mark.parametrize("labeler", LABELERS.values(), ids=LABELERS.keys())
def test_connectivity_equals_enforce_connectivity_after_clustering(labeler, device):
    """Labels as the clustering leaves them (stray fragments along boundaries), with and without a prior."""
    image = synthetic_image(96, 128, seed=3)
    prior = voronoi_partition(96, 128, 6, seed=3)
    model = SPAM(encoder=None)
    for part in (None, prior):
        frame = model.frame(image, 150, part)
        model.prior_stage(frame)
        model.seed_stage(frame)
        model.feature_stage(frame)
        model.cluster_stage(frame)
        min_size = max(1, int(model.min_size_factor * 96 * 128 / 150))
        out = check_connectivity(frame.cluster_labels, frame.partition, min_size, device, labeler)
        assert_connected(out)
        if part is not None:
            assert_superpixels_respect_prior(out, prior)


@pytest.mark.parametrize("labeler", LABELERS.values(), ids=LABELERS.keys())
def test_connectivity_bridges_stranded_fragments_like_the_cpu(labeler, device):
    """A thin object cut into dots by the band: the device twin bridges them (on the host) exactly as the CPU
    function does, and the bridging did happen."""
    labels, prior, dots = dotted_line_case()
    out = check_connectivity(labels.astype(np.int32), prior, 20, device, labeler)
    assert out.max() + 1 == 2 < enforce_connectivity(labels, prior, 20, max_gap=0).max() + 1


def test_connectivity_without_small_fragments_is_the_component_map(device):
    labels = np.repeat(np.arange(4, dtype=np.int32), 16).reshape(8, 8)
    labels[0, 0] = 7  # a second component of no other label: kept as its own superpixel
    check_connectivity(labels, None, 1, device, label_components)


def test_resident_connectivity_returns_numpy_labels(device):
    labels = np.random.default_rng(1).integers(0, 3, (20, 30)).astype(np.int32)
    got = resident_connectivity(labels, None, 5, device)
    assert isinstance(got, np.ndarray) and got.dtype == np.int32
    np.testing.assert_array_equal(got, enforce_connectivity(labels, None, 5))


@pytest.fixture(scope="module")
def bsds_samples():
    ds = bsds_test_split()
    return [ds[i] for i in (0, 57)]


def test_connectivity_equals_enforce_connectivity_on_bsds(bsds_samples, device):
    model = SPAM(encoder=None)
    for s, labeler in zip(bsds_samples, (label_components_torch, label_components)):
        prior = oracle_partition(s.gts[0], band=1)
        for part in (None, prior):
            frame = model.frame(s.image, 400, part)
            for stage in (model.prior_stage, model.seed_stage, model.feature_stage, model.cluster_stage):
                stage(frame)
            h, w = frame.cluster_labels.shape
            min_size = max(1, int(model.min_size_factor * h * w / 400))
            check_connectivity(frame.cluster_labels, frame.partition, min_size, device, labeler)


# --- the whole frame through the device path ------------------------------------------------------------------------

def test_resident_frame_dispatch(monkeypatch):
    monkeypatch.delenv("SPAM_DEVICE_FRAME", raising=False)
    assert resident_frame("cuda") and not resident_frame("cpu")
    monkeypatch.setenv("SPAM_DEVICE_FRAME", "1")
    assert resident_frame("cpu")
    monkeypatch.setenv("SPAM_DEVICE_FRAME", "0")
    assert not resident_frame("cuda")


def segment_both_paths(monkeypatch, device, image, k, prior, encoder=None):
    """(labels of today's CPU path, labels of the device-resident path on ``device``)."""
    monkeypatch.setenv("SPAM_DEVICE_FRAME", "0")
    ref = SPAM(encoder=encoder).segment(image, k, prior)
    monkeypatch.setenv("SPAM_DEVICE_FRAME", "1")
    got = SPAM(encoder=encoder, device=device).segment(image, k, prior)
    return ref, got


@pytest.mark.parametrize("with_prior", [False, True], ids=["no-prior", "prior"])
def test_segment_through_the_device_path_keeps_the_invariants(with_prior, device, monkeypatch):
    """Same invariants as the CPU path and the same superpixels up to float32 rounding of the features (on CPU
    tensors: equal labels observed; a GPU may flip a near-tie: ASA against the CPU labels ≥ 0.999, ΔK ≤ 2%)."""
    image = synthetic_image(96, 128, seed=4)
    prior = voronoi_partition(96, 128, 5, seed=4) if with_prior else None
    ref, got = segment_both_paths(monkeypatch, device, image, 120, prior)
    assert got.shape == ref.shape and got.dtype == np.int32
    assert_connected(got)
    if prior is not None:
        assert_superpixels_respect_prior(got, prior)
    assert abs(int(got.max()) - int(ref.max())) <= 0.02 * ref.max()
    assert asa(got, ref) >= 0.999


def test_segment_through_the_device_path_on_bsds(bsds_samples, device, monkeypatch):
    s = bsds_samples[0]
    prior = oracle_partition(s.gts[0], band=1)
    ref, got = segment_both_paths(monkeypatch, device, s.image, 400, prior)
    assert_connected(got)
    assert_superpixels_respect_prior(got, prior)
    assert abs(asa(got, s.gts[0]) - asa(ref, s.gts[0])) <= 0.001


def test_segment_through_the_whole_gpu_code_path(device, monkeypatch):
    """Device-resident stages with the Triton clustering kernels (the GPU's code path; the interpreter on a CPU):
    the invariants hold and the superpixels match the CPU path's (float32 atomics may flip a near-tie)."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    image = synthetic_image(32, 44, seed=6)
    prior = voronoi_partition(32, 44, 3, seed=6)
    for part in (None, prior):
        monkeypatch.delenv("SPAM_KERNELS", raising=False)
        monkeypatch.setenv("SPAM_DEVICE_FRAME", "0")
        ref = SPAM(encoder=None).segment(image, 16, part)
        monkeypatch.setenv("SPAM_KERNELS", "triton")
        monkeypatch.setenv("SPAM_DEVICE_FRAME", "1")
        got = SPAM(encoder=None, device=device).segment(image, 16, part)
        assert_connected(got)
        if part is not None:
            assert_superpixels_respect_prior(got, prior)
        assert asa(got, ref) >= 0.99 and abs(int(got.max()) - int(ref.max())) <= 2
