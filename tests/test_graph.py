"""spam_stream.graph: every array of the region graph against a plain numpy / scikit-image computation; tokens
against a per-image loop and gradcheck; the .npz writer; PyG round trip and its one-line error."""
import builtins
import os
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from skimage.measure import regionprops
from skimage.transform import resize

from helpers import bsds_test_split, synthetic_image, voronoi_partition
from spam_stream.graph import PYG_MISSING, graph_arrays, region_graph, save_graph, tokens


def reference_graph(labels, image=None, features=None, prior=None):
    """The same arrays the slow way: regionprops per node, numpy pairs for edges, a loop for objects."""
    ids = np.unique(labels)
    lab1 = np.searchsorted(ids, labels) + 1  # regionprops skips 0: nodes 1..K
    props = sorted(regionprops(lab1), key=lambda r: r.label)
    out = {"ids": ids, "area": np.array([p.area for p in props]),
           "centroid": np.array([p.centroid for p in props]), "bbox": np.array([p.bbox for p in props])}
    if image is not None:
        out["mean_rgb"] = np.array([image[p.coords[:, 0], p.coords[:, 1]].mean(0) for p in props])
    if features is not None:
        f = np.asarray(features, np.float64)
        if f.shape[1:] != labels.shape:
            f = np.stack([resize(c, labels.shape, order=1, mode="edge", anti_aliasing=False) for c in f])
        out["mean_features"] = np.array([f[:, p.coords[:, 0], p.coords[:, 1]].mean(1) for p in props])
    obj = np.full(len(ids), -1)
    if prior is not None:
        for i, p in enumerate(props):
            values = set(prior[p.coords[:, 0], p.coords[:, 1]].tolist()) - {-1}
            obj[i] = values.pop() if len(values) == 1 else -1
    out["object"] = obj
    node = lab1 - 1
    pairs = np.concatenate([np.stack([node[:, :-1].ravel(), node[:, 1:].ravel()], 1),
                            np.stack([node[:-1].ravel(), node[1:].ravel()], 1)])
    pairs = np.sort(pairs[pairs[:, 0] != pairs[:, 1]], 1)
    edges, counts = np.unique(pairs, axis=0, return_counts=True)
    out["edges"] = edges.reshape(-1, 2)
    out["boundary"] = counts
    out["same_object"] = (obj[edges[:, 0]] == obj[edges[:, 1]]) & (obj[edges[:, 0]] >= 0) if len(edges) else \
        np.zeros(0, bool)
    return out


@contextmanager
def kernels_env(name):
    old = os.environ.get("SPAM_KERNELS")
    os.environ["SPAM_KERNELS"] = name
    try:
        yield
    finally:
        os.environ.pop("SPAM_KERNELS") if old is None else os.environ.__setitem__("SPAM_KERNELS", old)


def assert_graph_equal(labels, image=None, features=None, prior=None):
    """Both implementations (numba scan, torch reference) against :func:`reference_graph`."""
    ref = reference_graph(labels, image, features, prior)
    for name in ("reference", "cpu"):
        with kernels_env(name):
            g = assert_one_graph_equal(region_graph(labels, image, features, prior).to_numpy(), ref, labels)
    return g


def assert_one_graph_equal(g, ref, labels):
    for name in ("ids", "area", "bbox", "object", "edges", "boundary", "same_object"):
        np.testing.assert_array_equal(g[name], ref[name], err_msg=name)
    np.testing.assert_allclose(g["centroid"], ref["centroid"], rtol=1e-6, atol=1e-4)
    for name in ("mean_rgb", "mean_features"):
        assert (name in g) == (name in ref)
        if name in ref:
            np.testing.assert_allclose(g[name], ref[name], rtol=1e-5, atol=1e-4, err_msg=name)
    assert g["edges"].dtype == np.int64 and g["boundary"].dtype == np.int64 and g["bbox"].dtype == np.int64
    assert g["centroid"].dtype == np.float32 and g["same_object"].dtype == bool
    assert (g["edges"][:, 0] < g["edges"][:, 1]).all()
    assert tuple(g["shape"]) == labels.shape
    return g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 60, 2)
    coarse = rng.integers(0, 30, (h // 4 + 1, w // 4 + 1))
    labels = np.kron(coarse, np.ones((4, 4), np.int64))[:h, :w]
    labels[rng.random((h, w)) < 0.1] = rng.integers(0, 40)  # scattered pixels: many small pieces, 1-px regions
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    features = rng.normal(size=(7, h, w)).astype(np.float32)
    prior = rng.integers(-1, 3, (h, w))
    assert_graph_equal(labels, image, features, prior)


def test_holes_gaps_and_one_pixel_superpixels():
    labels = np.full((20, 24), 5, np.int64)   # ids with gaps: 5, 9, 1000, 70000 (sparse: the unique path), -3
    labels[5:15, 6:18] = 9                     # a ring around a hole
    labels[8:12, 9:14] = 1000                  # the hole
    labels[0, 0] = 70000                       # 1-pixel superpixels: a corner and the middle of another region
    labels[10, 11] = -3
    labels[19, 23] = 77
    prior = np.zeros_like(labels)
    prior[:, 12:] = 1
    prior[8:12, 9:14] = -1
    image = synthetic_image(20, 24)
    g = assert_graph_equal(labels, image, np.random.default_rng(0).normal(size=(3, 5, 6)), prior)
    assert g["area"][list(g["ids"]).index(-3)] == 1
    assert np.isin([5, 9, 1000, 70000, -3, 77], g["ids"]).all()


def test_uniform_map_has_no_edges_and_dense_labels_take_the_bincount_path():
    g = region_graph(np.zeros((7, 9), np.int32))
    assert g.n_nodes == 1 and g.n_edges == 0 and g.to_numpy()["edges"].shape == (0, 2)
    labels = np.arange(12 * 13).reshape(12, 13) % 37  # every pixel its own neighbour's rival
    assert_graph_equal(labels, prior=voronoi_partition(12, 13, 3))


def test_spam_labels_with_their_prior():
    import spam_stream

    image = synthetic_image(64, 80)
    prior = voronoi_partition(64, 80, 5)
    labels = spam_stream.segment(image, 60, prior=prior, encoder=None)
    g = assert_graph_equal(labels, image, prior=prior)
    assert (g["ids"] == np.arange(labels.max() + 1)).all()
    assert (g["object"] >= 0).mean() > 0.9  # a superpixel made only of uncertain band pixels has no object


def test_bsds_ground_truth_labels():
    ds = bsds_test_split()
    for i in range(2):
        sample = ds[i]
        gt = sample.gts[0]
        feats = np.random.default_rng(i).normal(size=(4, 81, 121)).astype(np.float32)
        assert_graph_equal(gt, sample.image, feats, sample.gts[1])


def test_tensor_input_stays_on_its_device_and_resized_features():
    labels = torch.from_numpy(np.kron(np.arange(12).reshape(3, 4), np.ones((5, 5), np.int64)))
    g = region_graph(labels, features=torch.ones(2, 3, 4))
    assert g.area.device == labels.device and torch.allclose(g.mean_features, torch.ones(12, 2))
    assert g.n_edges == 3 * 3 + 2 * 4 and (g.boundary == 5).all()


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="integers"):
        region_graph(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="does not match"):
        region_graph(np.zeros((3, 3), int), image=np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match="does not match"):
        region_graph(np.zeros((3, 3), int), prior=np.zeros((3, 4), int))


def test_networkx_matches_arrays():
    labels = np.kron(np.arange(6).reshape(2, 3), np.ones((4, 4), np.int64)) + 1
    g = region_graph(labels, synthetic_image(8, 12))
    nxg = g.to_networkx()
    assert sorted(nxg.nodes) == [1, 2, 3, 4, 5, 6]
    assert nxg.number_of_edges() == g.n_edges == 7
    assert nxg.edges[1, 2]["boundary"] == 4 and nxg.nodes[1]["area"] == 16


def test_to_pyg_round_trip():
    pytest.importorskip("torch_geometric", reason="PyTorch Geometric is not installed (the 'graph' extra)")
    rng = np.random.default_rng(3)
    labels = np.kron(rng.integers(0, 9, (6, 7)), np.ones((3, 3), np.int64))
    image = rng.integers(0, 256, (18, 21, 3), dtype=np.uint8)
    feats = rng.normal(size=(4, 18, 21)).astype(np.float32)
    g = region_graph(labels, image, feats, rng.integers(0, 2, (18, 21)))
    data = g.to_pyg()
    assert data.num_nodes == g.n_nodes and data.num_edges == 2 * g.n_edges
    assert torch.equal(data.x, torch.cat([g.mean_rgb, g.mean_features], 1)) and torch.equal(data.pos, g.centroid)
    assert data.is_undirected()
    und = data.edge_index[:, data.edge_index[0] < data.edge_index[1]].t()
    assert torch.equal(und, g.edges)
    assert torch.equal(data.edge_attr[: g.n_edges, 0].long(), g.boundary)
    assert torch.equal(data.edge_attr[: g.n_edges, 1].bool(), g.same_object)
    assert torch.equal(data.area, g.area) and torch.equal(data.ids, g.ids)


def test_to_pyg_without_pyg_is_one_line(monkeypatch):
    real_import = builtins.__import__

    def no_pyg(name, *args, **kwargs):
        if name.startswith("torch_geometric"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyg)
    with pytest.raises(ImportError) as info:
        region_graph(np.zeros((3, 3), int)).to_pyg()
    assert str(info.value) == PYG_MISSING and "\n" not in PYG_MISSING and "pip install" in PYG_MISSING
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_graph_arrays_of_frames_and_npz(tmp_path):
    a = np.kron(np.array([[3, 4], [7, 7]]), np.ones((4, 4), np.int64))
    b = a.copy()
    b[:, :2] = 9
    ga, gb = region_graph(a), region_graph(b)
    arrays = graph_arrays([ga, gb], frames=[10, 11])
    assert arrays["frame"].tolist() == [10] * ga.n_nodes + [11] * gb.n_nodes
    assert arrays["edge_frame"].tolist() == [10] * ga.n_edges + [11] * gb.n_edges
    rows = arrays["edges"]
    assert (arrays["frame"][rows[:, 0]] == arrays["edge_frame"]).all()  # edges join rows of their own frame
    for f, lab in ((10, a), (11, b)):
        sel = arrays["edge_frame"] == f
        pairs = arrays["ids"][rows[sel]]
        ref = reference_graph(lab)
        assert (pairs == ref["ids"][ref["edges"]]).all()
    save_graph(tmp_path / "x_graph.npz", [ga, gb], [10, 11])
    with np.load(tmp_path / "x_graph.npz") as z:
        assert set(z.files) == set(arrays) and (z["ids"] == arrays["ids"]).all()
    assert [p.name for p in tmp_path.iterdir()] == ["x_graph.npz"]


# ---- tokens -------------------------------------------------------------------------------------------------------

def token_loop(features, labels, reduce):
    """Per image, per label: the plain way."""
    b, c = features.shape[:2]
    h, w = labels.shape[1:]
    up = torch.nn.functional.interpolate(features, size=(h, w), mode="bilinear", align_corners=False) \
        if features.shape[2:] != (h, w) else features
    out = []
    for i in range(b):
        rows = []
        for k in torch.unique(labels[i]):
            m = labels[i] == k
            v = up[i][:, m]
            rows.append(v.mean(1) if reduce == "mean" else v.max(1).values)
        out.append(torch.stack(rows))
    return out


@pytest.mark.parametrize("impl", ["cpu", "reference"])
@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("size", [(12, 10), (6, 5)])
def test_tokens_equal_a_loop_and_padding(reduce, size, impl, monkeypatch):
    monkeypatch.setenv("SPAM_KERNELS", impl)
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 6, (3, 12, 10)))
    labels[1] = labels[1] % 2 + 40                       # fewer superpixels, other ids: padding
    feats = torch.randn(3, 4, *size, dtype=torch.float64)
    t = tokens(feats, labels, reduce)
    ref = token_loop(feats, labels, reduce)
    k_max = max(len(r) for r in ref)
    assert t.tokens.shape == (3, k_max, 4) and t.mask.shape == (3, k_max) and t.centroids.shape == (3, k_max, 2)
    for i, r in enumerate(ref):
        n = len(r)
        assert t.mask[i, :n].all() and not t.mask[i, n:].any()
        torch.testing.assert_close(t.tokens[i, :n], r)
        assert (t.tokens[i, n:] == 0).all() and (t.ids[i, n:] == -1).all()
        assert torch.equal(t.ids[i, :n], torch.unique(labels[i]))
        g = region_graph(labels[i])
        torch.testing.assert_close(t.centroids[i, :n], g.centroid)


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_tokens_gradcheck(reduce):
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 5, 4))
    feats = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: tokens(f, labels, reduce).tokens, (feats,))
    small = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)  # resized inside
    assert torch.autograd.gradcheck(lambda f: tokens(f, labels, reduce).tokens, (small,))


def test_token_layout_twins_agree_with_sparse_ids():
    from spam_stream.kernels import regions

    labels = torch.tensor([[[5, 5, 9], [1000, 9, 5]], [[7, 7, 7], [7, 7, 7]]])
    for impl in (regions.token_layout_cpu, regions.token_layout_torch):
        slot, k_max, ids, area, sums = impl(labels)
        assert k_max == 3 and ids.tolist() == [5, 9, 1000, 7, -1, -1]
        assert area.tolist() == [3, 2, 1, 6, 0, 0] and slot.tolist() == [0, 0, 1, 2, 1, 0] + [3] * 6
    sparse = torch.tensor([[[0, 10**9]]])
    assert regions.token_layout_cpu(sparse)[2].tolist() == [0, 10**9]


def test_tokens_bad_arguments():
    with pytest.raises(ValueError, match="reduce"):
        tokens(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), "sum")
    with pytest.raises(ValueError, match="B = 2"):
        tokens(torch.zeros(2, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long))


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_low_resolution_mean_tokens_use_the_weight_matrix_and_equal_upsampling(impl, monkeypatch):
    """Patch-level features (B, C, 14, 14) for (B, 224, 224) labels: equal to pooling the upsampled map."""
    import spam_stream.graph as graph

    monkeypatch.setenv("SPAM_KERNELS", impl)
    rng = np.random.default_rng(1)
    labels = torch.from_numpy(np.kron(rng.integers(0, 30, (2, 16, 16)), np.ones((1, 14, 14), np.int64)))
    feats = torch.randn(2, 8, 14, 14, dtype=torch.float64, requires_grad=True)
    fast = tokens(feats, labels)
    monkeypatch.setattr(graph, "POOL_MATRIX_LIMIT", 0)  # force the upsampling path
    slow = tokens(feats, labels)
    torch.testing.assert_close(fast.tokens, slow.tokens)
    g1 = torch.autograd.grad(fast.tokens.sum(), feats)[0]
    g2 = torch.autograd.grad((slow.tokens * 1).sum(), feats)[0]
    torch.testing.assert_close(g1, g2)
    odd = torch.randn(2, 3, 5, 7, dtype=torch.float64)   # non-integer ratios, edge clamping
    monkeypatch.setattr(graph, "POOL_MATRIX_LIMIT", 2**26)
    a = tokens(odd, labels[:, :37, :41])
    monkeypatch.setattr(graph, "POOL_MATRIX_LIMIT", 0)
    torch.testing.assert_close(a.tokens, tokens(odd, labels[:, :37, :41]).tokens)
