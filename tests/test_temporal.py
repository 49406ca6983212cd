"""Temporal coherence: persistent ids, retirement, warm starts, and the id-change metric."""
import numpy as np
import pytest
import torch

from spam_stream import SPAM
from spam_stream.frame import Frame
from spam_stream.metrics import id_change_fraction
from spam_stream.pipelines.temporal import IdTracker

from helpers import synthetic_image


def tracked(tracker, labels, clusters=None, reseeded=False):
    f = Frame(labels=np.asarray(labels, np.int32), cluster_labels=np.asarray(
        labels if clusters is None else clusters, np.int32))
    f.meta["reseeded"] = reseeded
    return tracker(f).labels


def test_id_change_fraction():
    a = np.array([[0, 0], [1, 1]])
    assert id_change_fraction(a, a) == 0.0
    assert id_change_fraction(a, np.array([[0, 1], [1, 1]])) == 0.25
    with pytest.raises(ValueError):
        id_change_fraction(a, np.zeros((3, 2)))


def test_ids_follow_clusters_new_ones_are_fresh_and_gone_ones_retire():
    t = IdTracker()
    first = tracked(t, [[0, 0, 1, 1], [2, 2, 3, 3]], reseeded=True)
    assert sorted(np.unique(first)) == [0, 1, 2, 3]
    # same clusters, renumbered by connectivity (labels 0..K'-1 change order): ids follow the clusters
    second = tracked(t, [[1, 1, 0, 0], [2, 2, 3, 3]], clusters=[[0, 0, 1, 1], [2, 2, 3, 3]])
    np.testing.assert_array_equal(second, first)
    # cluster 3 vanishes, cluster 4 appears: it gets a never-used id
    third = tracked(t, [[0, 0, 1, 1], [2, 2, 3, 3]], clusters=[[0, 0, 1, 1], [2, 2, 4, 4]])
    assert third[1, 3] == 4 and set(np.unique(third)) == {0, 1, 2, 4}
    # cluster 3 comes back: still a fresh id (3 was retired)
    fourth = tracked(t, [[0, 0, 1, 1], [2, 2, 3, 3]], clusters=[[0, 0, 1, 1], [2, 3, 3, 3]])
    assert fourth[1, 3] not in (3, 4, 0, 1, 2) or fourth[1, 3] == 4
    assert fourth[0, 0] == 0


def test_a_cluster_split_in_two_keeps_its_id_on_the_larger_part():
    t = IdTracker()
    tracked(t, [[0, 0, 0, 0], [1, 1, 1, 1]], reseeded=True)
    out = tracked(t, [[0, 0, 0, 2], [1, 1, 1, 1]], clusters=[[0, 0, 0, 0], [1, 1, 1, 1]])
    assert out[0, 0] == 0 and out[0, 3] not in (0, 1) and out[1, 0] == 1


def test_new_seeds_carry_ids_by_majority_overlap():
    t = IdTracker()
    tracked(t, [[0, 0, 1, 1], [0, 0, 1, 1]], reseeded=True)
    out = tracked(t, [[5, 5, 5, 7], [5, 5, 7, 7]], reseeded=True)
    assert out[0, 0] == 0  # 4 of its 5 pixels were id 0, and it holds 4 of id 0's 4
    assert out[1, 3] == 1


def test_ids_stay_within_uint16_by_reusing_retired_ones():
    t = IdTracker(max_id=9)
    ids = set()
    for step in range(10):
        clusters = np.array([[0, 1], [2, 3 + step]])
        ids |= set(np.unique(tracked(t, clusters, reseeded=step == 0)).tolist())
    assert max(ids) <= 9


def test_warm_started_frames_of_an_unchanged_image_keep_their_ids():
    from spam_stream.pipelines.temporal import PriorSchedule, WarmCluster, WarmSeeds

    model = SPAM(encoder=None)
    img = synthetic_image(60, 80)
    prior, seeds, cluster, ids = PriorSchedule(model), WarmSeeds(model), WarmCluster(model, warm_iterations=2), IdTracker()
    out = []
    for i in range(3):
        f = model.frame(img, 30, index=i)
        for step in (prior, seeds, model.feature_stage, cluster, model.connectivity_stage, ids):
            f = step(f)
        out.append(f)
    assert out[1].meta["reseeded"] is False and out[1].iterations == 2
    # the clustering goes on converging (a few boundary pixels move), but no superpixel is renamed
    for a, b in zip(out, out[1:]):
        assert id_change_fraction(a.labels, b.labels) < 0.05
        assert set(np.unique(a.labels)) == set(np.unique(b.labels))


def test_features_recomputed_only_where_the_picture_changed_equal_a_full_computation():
    from spam_stream.pipelines.temporal import WarmFeatures

    model = SPAM()  # the bundled encoder
    if model.encoder is None:
        pytest.skip("no bundled encoder")
    img = synthetic_image(150, 270, seed=4)
    warm = WarmFeatures(model, tile=64)
    first = warm(model.frame(img, 60))
    assert first.meta["tiles_recomputed"] == 1.0
    moved = img.copy()
    moved[100:120, 200:230] = 255 - moved[100:120, 200:230]  # a local change: a few tiles' windows see it
    second = warm(model.frame(moved, 60, index=1))
    assert 0 < second.meta["tiles_recomputed"] < 0.5
    full = model.feature_stage(model.frame(moved, 60)).features
    assert torch.allclose(second.features, full, atol=1e-4)
    # a frame equal to its predecessor reuses everything
    third = warm(model.frame(moved, 60, index=2))
    assert third.meta["tiles_recomputed"] == 0 and torch.allclose(third.features, full, atol=1e-4)
