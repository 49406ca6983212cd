"""The CPU fast path against the torch reference on random inputs."""
import numpy as np
import pytest
import torch

from spam_stream.kernels import cpu, reference
from spam_stream.kernels.candidates import Candidates

from helpers import two_soft_iterations_with_grads


def random_case(h, w, d, nh, nw, layout, seed):
    g = torch.Generator().manual_seed(seed)
    n, k = h * w, nh * nw
    f = torch.randn(n, d, generator=g)
    c = torch.randn(k, d, generator=g)
    po = torch.randint(-1, 3, (n,), generator=g, dtype=torch.int32)
    so = torch.randint(0, 3, (k,), generator=g, dtype=torch.int32)
    if layout == "grid":
        cands = Candidates(h, w, po, so, grid=(nh, nw))
    else:
        cands = Candidates(h, w, po, so, table=torch.randint(-1, k, (n, 9), generator=g, dtype=torch.int32))
    return f, c, cands


CASES = [(13, 17, 5, 3, 4), (31, 40, 20, 6, 7), (20, 25, 32, 1, 1), (50, 61, 20, 20, 25)]


@pytest.mark.parametrize("layout", ["grid", "table"])
@pytest.mark.parametrize("h,w,d,nh,nw", CASES)
def test_cpu_matches_reference(layout, h, w, d, nh, nw):
    f, c, cands = random_case(h, w, d, nh, nw, layout, seed=h * w + d)
    assert torch.equal(cpu.masked_distances(f, c, cands), reference.masked_distances(f, c, cands))
    assert torch.equal(cpu.assign(f, c, cands), reference.assign(f, c, cands))
    torch.testing.assert_close(cpu.associate(f, c, cands), reference.associate(f, c, cands), rtol=1e-5, atol=1e-7)
    q = reference.associate(f, c, cands)
    for a, b in zip(cpu.centroid_sums_soft(f, q, cands), reference.centroid_sums_soft(f, q, cands)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    labels = reference.assign(f, c, cands)
    for a, b in zip(cpu.centroid_sums_hard(f, labels, nh * nw), reference.centroid_sums_hard(f, labels, nh * nw)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    la, ca = cpu.hard_iterations(f, c, cands, 4)
    lb, cb = reference.hard_iterations(f, c, cands, 4)
    assert torch.equal(la, lb)
    torch.testing.assert_close(ca, cb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["grid", "table"])
def test_cpu_soft_iteration_gradient_matches_autograd_of_reference(layout, monkeypatch):
    f, c, cands = random_case(23, 29, 20, 4, 5, layout, seed=7)
    grads = {name: two_soft_iterations_with_grads(name, f, c, cands, monkeypatch)[2:] for name in ("reference", "cpu")}
    torch.testing.assert_close(grads["cpu"][0], grads["reference"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads["cpu"][1], grads["reference"][1], rtol=1e-4, atol=1e-5)


def test_empty_superpixel_keeps_its_centroid():
    f, c, cands = random_case(10, 10, 5, 2, 2, "table", seed=1)
    cands.table[cands.table == 3] = 0  # superpixel 3 has no member
    labels, cents = cpu.hard_iterations(f, c, cands, 3)
    assert not (labels == 3).any()
    assert torch.equal(cents[3], c[3])


def test_dispatch_uses_the_cpu_path_by_default_and_honours_the_override(monkeypatch):
    import spam_stream.kernels as K

    monkeypatch.delenv("SPAM_KERNELS", raising=False)
    assert K.backend_name("cpu") == "cpu"
    assert K.backend_name("cuda") == "triton"
    monkeypatch.setenv("SPAM_KERNELS", "reference")
    assert K.backend("cpu") is reference
    monkeypatch.setenv("SPAM_KERNELS", "bogus")
    with pytest.raises(ValueError, match="SPAM_KERNELS"):
        K.backend_name("cpu")


@pytest.mark.parametrize("layout", ["grid", "table"])
def test_soft_pass_reuses_its_candidate_plan_across_features_and_fuses_the_sums(layout):
    """Training calls the soft pass on many feature maps with one candidate set (the block plan is cached on it),
    and asks for the centroid sums of the q it just computed (returned from the same pass): both equal the
    reference, and sums for another q are recomputed."""
    f, c, cands = random_case(37, 41, 20, 5, 6, layout, seed=11)
    for scale in (1.0, 0.5):
        g = f * scale
        q = cpu.associate(g, c, cands)
        torch.testing.assert_close(q, reference.associate(g, c, cands), rtol=1e-5, atol=1e-7)
        for a, b in zip(cpu.centroid_sums_soft(g, q, cands), reference.centroid_sums_soft(g, q, cands)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        q2 = torch.rand_like(q)
        for a, b in zip(cpu.centroid_sums_soft(g, q2, cands), reference.centroid_sums_soft(g, q2, cands)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["grid", "table"])
@pytest.mark.parametrize("h,w,d,nh,nw", CASES)
def test_hard_pass_reads_channel_major_features_in_place(layout, h, w, d, nh, nw):
    """Features in ``empty_features``' layout (channel planes padded to 16 pixels; N = h·w is not a multiple of 16
    in most cases) give the same labels and centroids as pixel rows, and are read without a transposed copy."""
    f, c, cands = random_case(h, w, d, nh, nw, layout, seed=h * w + d + 1)
    planes = cpu.empty_features(h, w, d)
    planes.copy_(f.t().reshape(d, h, w))
    rows = planes.reshape(d, -1).t()  # as_pixel_rows: a view with strides (1, n_cols)
    assert rows.stride(0) == 1 and rows.stride(1) % 16 == 0 and not rows.is_contiguous()
    flat, n_cols = cpu._channel_rows(rows)
    assert n_cols >= h * w and flat.size == d * n_cols and (flat.reshape(d, n_cols)[:, h * w:] == 0).all()
    assert cpu._channel_rows(f) is None  # pixel rows: transposed once inside
    la, ca = cpu.hard_iterations(rows, c, cands, 4)
    lb, cb = cpu.hard_iterations(f, c, cands, 4)
    assert torch.equal(la, lb) and torch.equal(ca, cb)
    torch.testing.assert_close(rows, f)


@pytest.mark.parametrize("h,w,d,k,unseeded", [(37, 53, 5, 40, 0.0), (30, 41, 20, 12, 0.8), (16, 16, 3, 7, 0.3)])
def test_initial_centroids_equal_the_torch_ones(h, w, d, k, unseeded):
    """The CPU twin of clustering.initial_centroids (one numba pass over the channel planes) gives the same
    centroids bit for bit: float32 sums in pixel order, as torch's index_add; pixels with label -1 ignored."""
    from spam_stream.clustering import initial_centroids

    rng = np.random.default_rng(h * w + d)
    planes = cpu.empty_features(h, w, d)
    planes.copy_(torch.from_numpy(rng.normal(size=(d, h, w)).astype(np.float32) * 40))
    rows = planes.reshape(d, -1).t()
    init = (np.arange(h * w) * k // (h * w)).astype(np.int32)
    init = np.where(rng.random(h * w) < unseeded, -1, init).astype(np.int32)
    init[rng.permutation(h * w)[:k]] = np.arange(k)  # every seed starts with a pixel, in scattered runs
    init = torch.from_numpy(init)
    got = cpu.initial_centroids(rows, init, k)
    assert got is not None and torch.equal(got, initial_centroids(rows, init, k))
    assert cpu.initial_centroids(rows.contiguous(), init, k) is None  # pixel rows: the torch version instead
    init[init == 3] = 4  # seed 3 without a starting pixel: left to the torch version (its fallback mean)
    assert cpu.initial_centroids(rows, init, k) is None


@pytest.mark.parametrize("layout", ["grid", "table"])
def test_a_live_thread_budget_changes_no_result_and_does_not_outlive_the_call(layout):
    """The executor's live budget (kernels.threads) sets the clustering's numba threads pass by pass: the
    labels and centroids equal the reference's with any budget, and the thread's own count is back afterwards."""
    from helpers import assert_budget_free

    f, c, cands = random_case(50, 61, 20, 20, 25, layout, seed=7)
    assert_budget_free(f, c, cands, 4)


def test_grid_block_plans_are_shared_by_equal_grids_only(monkeypatch):
    """A new Candidates object on the same grid and objects (the next image of a size) reuses the block plan;
    other objects on the same grid (a prior) or another grid build their own, and the labels stay the reference's."""
    monkeypatch.setattr(cpu, "_GRID_PLANS", [])
    monkeypatch.setattr(cpu.cells, "FAST_DIMS", ())  # D=5 through the block path too
    f, c, cands = random_case(30, 41, 5, 4, 5, "grid", seed=9)
    again = Candidates(cands.height, cands.width, cands.pixel_object.clone(), cands.superpixel_object.clone(),
                       grid=cands.grid)
    other = Candidates(cands.height, cands.width, cands.pixel_object.clone(), cands.superpixel_object.clone(),
                       grid=cands.grid)
    other.pixel_object[: cands.width * 10] = 1  # a prior object over the top rows
    other.superpixel_object[:5] = 1
    plans = []
    for cc in (cands, again, other):
        la, _, _ = cpu.hard_converge(f, c, cc, 3)
        lb, _, _ = reference.hard_converge(f, c, cc, 3)
        assert torch.equal(la, lb)
        plans.append(cc.__dict__["_cpu_hard_plan"][1])
    assert plans[0] is plans[1] and plans[2] is not plans[0]
    assert len(cpu._GRID_PLANS) == 2
