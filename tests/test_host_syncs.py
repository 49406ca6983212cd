"""The device path's host round trips, counted on CPU tensors (spam_stream.hostsync): on a GPU each one drains the
device, so the seeds, the candidate table and connectivity of a frame must wait for it a small, fixed number of
times — not once per round of a search, per chunk, per object or per pixel count."""
import numpy as np
import pytest
import torch

from spam_stream import SPAM
from spam_stream.clustering import initial_centroids, initial_centroids_fixed
from spam_stream.hostsync import HostSyncCounter
from spam_stream.kernels import connectivity as device_connectivity
from spam_stream.kernels import resident_features, resident_grid_seeds
from spam_stream.kernels import labeling
from spam_stream.kernels.connectivity import enforce_connectivity_torch
from spam_stream.kernels.seeding import object_candidates_torch, object_seeds_torch

from helpers import voronoi_partition

# one frame's seeds + candidate table with a prior: the piece sizes and budgets, 5 k-means iterations of
# (grid build, block widths, two rounds' pending points), the candidate search, the starting pixels' selection
SEEDS_BUDGET = 45
CONNECTIVITY_BUDGET = 8  # components' count and checks, small fragments, their borders, one copy to the host


@pytest.fixture
def torch_labeler(monkeypatch):
    """The GPU's connected components (torch ops) on CPU tensors, where label_components would pick numba."""
    def label(values, background=None, connectivity=4):
        return labeling.label_components_torch(values, background, connectivity)

    monkeypatch.setattr(labeling, "label_components", label)
    monkeypatch.setattr(device_connectivity, "label_components", label)


def seed_stage_syncs(h, w, n_objects, k):
    part = torch.from_numpy(voronoi_partition(h, w, n_objects, seed=n_objects))
    seeds = object_seeds_torch(part, k)  # a first call fills the per-process caches (the block offsets)
    object_candidates_torch(*seeds.candidate_groups(part), 3.0)
    with HostSyncCounter() as syncs:
        seeds = object_seeds_torch(part, k)
        object_candidates_torch(*seeds.candidate_groups(part), 3.0)
    return syncs


def test_seeds_and_candidates_wait_a_fixed_number_of_times(torch_labeler):
    counts = {}
    for h, w, n_objects, k in [(64, 90, 5, 40), (120, 160, 40, 150), (200, 300, 150, 600)]:
        syncs = seed_stage_syncs(h, w, n_objects, k)
        assert syncs.total <= SEEDS_BUDGET, dict(syncs.by_place)
        counts[(h, w, n_objects)] = syncs.total
    assert max(counts.values()) - min(counts.values()) <= 4, counts  # not with the objects, seeds or pixels


def test_connectivity_waits_a_fixed_number_of_times(torch_labeler):
    rng = np.random.default_rng(0)
    for h, w, n_objects in [(60, 80, 4), (150, 200, 30)]:
        part = voronoi_partition(h, w, n_objects, seed=1)
        cells = (np.arange(h)[:, None] // 7) * 100 + np.arange(w)[None, :] // 7
        labels = np.where(rng.random((h, w)) < 0.03, rng.integers(0, 500, (h, w)), cells)  # many small fragments
        with HostSyncCounter() as syncs:
            got, _ = enforce_connectivity_torch(torch.from_numpy(labels), torch.from_numpy(part), 12,
                                                return_source=True)
        assert syncs.total <= CONNECTIVITY_BUDGET, dict(syncs.by_place)
        assert got.max() > 0


def test_initial_centroids_in_fixed_shapes_equal_the_cpu_ones():
    """The GPU's initial centroids: no host read, same means (and gradients) as the CPU's, an unseeded superpixel
    taking the mean of all features."""
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(500, 6)).astype(np.float32))
    init = torch.from_numpy(rng.integers(-1, 20, 500).astype(np.int32))
    init[init == 7] = 3  # superpixel 7 starts empty
    ref_f, got_f = features.clone().requires_grad_(), features.clone().requires_grad_()
    ref = initial_centroids(ref_f, init, 21)
    with HostSyncCounter() as syncs:
        got = initial_centroids_fixed(got_f, init, 21)
    assert syncs.total == 0
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got[7], features.mean(0))
    (ref ** 2).sum().backward()
    (got ** 2).sum().backward()
    torch.testing.assert_close(got_f.grad, ref_f.grad)


@pytest.mark.parametrize("encoder", [None, "default", "fast"])
def test_a_frames_features_upload_only_the_picture(encoder):
    """Lab + positions and the encoder (tiles, strips, bilinear or guided upsampling) on a device, the "meta" device
    standing in for a GPU: after a first frame of the size, a frame uploads its picture and nothing else — the
    colour constants, positions and every upsampling tap are made once per device (they were uploaded per strip
    and layer: 53 blocking uploads at 481×321, 645 at 1080p with the bundled encoder) — and reads nothing back."""
    model = SPAM(encoder=encoder)
    enc = None if model.encoder is None else model.encoder.to("meta")
    image = np.zeros((321, 481, 3), np.uint8)
    meta = torch.device("meta")
    resident_features(image, 400, enc, model.color_scale, model.compactness, meta)
    with HostSyncCounter() as syncs:
        features = resident_features(image, 400, enc, model.color_scale, model.compactness, meta)
    assert features.device == meta and features.shape[1:] == (321, 481)
    assert dict(syncs.by_kind) == {"upload": 1}, dict(syncs.by_place)  # the picture (pinned, non-blocking on CUDA)


def test_grid_seeds_of_a_video_frame_upload_nothing():
    """Without a prior, a frame's (H*W,) starting cells are made on the device (the "meta" device standing in for
    a GPU) and shared by the frames of a size: no frame-sized upload per frame, as the seed stage had."""
    meta = torch.device("meta")
    resident_grid_seeds(321, 481, 400, meta)
    with HostSyncCounter() as syncs:
        seeds = resident_grid_seeds(321, 481, 400, meta)
    assert syncs.total == 0 and seeds.init_labels.device == meta and seeds.init_labels.shape == (321 * 481,)
