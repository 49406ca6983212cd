"""The cell layout (grid candidates whose cells each hold one prior object) against the torch reference."""
import pytest
import torch

from spam_stream.kernels import cells, cpu, reference
from spam_stream.kernels.candidates import Candidates


@pytest.fixture(autouse=True)
def every_d_through_the_cell_layout(monkeypatch):
    """cpu.hard_converge takes the cell layout only for the D it is fastest at; here every D goes through it, so
    that its generic loop is held to the reference too."""
    monkeypatch.setattr(cells, "FAST_DIMS", tuple(range(1, 65)))


def cell_case(h, w, d, nh, nw, objects, seed):
    """Random features and centroids; pixels take the object of their cell row band (``objects`` bands, -1 for
    the first band when objects > 1: free pixels), superpixels the object of their cell."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(h * w, d, generator=g) * 3
    c = torch.randn(nh * nw, d, generator=g) * 3
    cy = torch.arange(h) * nh // h
    band = (cy * objects // nh).to(torch.int32)
    po = band[:, None].expand(h, w).reshape(-1).clone()
    so = (torch.arange(nh) * objects // nh).to(torch.int32)[:, None].expand(nh, nw).reshape(-1).clone()
    if objects > 1:
        po[po == 0] = -1
    return f, c, Candidates(h, w, po, so, grid=(nh, nw))


CASES = [(13, 17, 5, 3, 4, 1), (31, 40, 20, 6, 7, 2), (20, 25, 32, 1, 1, 1), (50, 300, 5, 9, 20, 3),
         (64, 257, 5, 8, 13, 1), (40, 130, 7, 5, 6, 2)]


@pytest.mark.parametrize("h,w,d,nh,nw,objects", CASES)
@pytest.mark.parametrize("layout", ["planes", "rows"])
def test_cell_layout_matches_reference(h, w, d, nh, nw, objects, layout):
    f, c, cands = cell_case(h, w, d, nh, nw, objects, seed=h * w + d)
    assert cells.plan(cands) is not None  # the cell path is the one under test
    if layout == "planes":  # the channel-major buffer pixel_features gives on the CPU (read in place)
        buf = cpu.empty_features(h, w, d)
        buf.copy_(f.t().reshape(d, h, w))
        f = buf.reshape(d, -1).t()
    for rounds in (0, 1, 4, 12):
        la, ca, ra = cpu.hard_converge(f, c, cands, rounds)
        lb, cb, rb = reference.hard_converge(f, c, cands, rounds)
        assert torch.equal(la, lb)
        torch.testing.assert_close(ca, cb, rtol=1e-6, atol=1e-6)
        assert ra == rb


def test_cell_layout_convergence_and_warm_start_match_reference():
    f, c, cands = cell_case(60, 90, 5, 6, 9, 1, seed=3)
    for tol in (0.0, 0.01, 0.2):
        la, ca, ra = cpu.hard_converge(f, c, cands, 30, tol)
        lb, cb, rb = reference.hard_converge(f, c, cands, 30, tol)
        assert torch.equal(la, lb) and ra == rb
    prev = lb
    la, _, ra = cpu.hard_converge(f, cb, cands, 5, 0.0, prev_labels=prev)
    lb, _, rb = reference.hard_converge(f, cb, cands, 5, 0.0, prev_labels=prev)
    assert torch.equal(la, lb) and ra == rb == 1  # converged centroids: the first round changes nothing


def test_mixed_cells_take_the_block_path():
    f, c, cands = cell_case(20, 20, 5, 2, 2, 1, seed=1)
    cands.pixel_object[0] = 1  # one cell now holds pixels of two objects
    assert cells.plan(cands) is None
    la, _ = cpu.hard_iterations(f, c, cands, 3)
    lb, _ = reference.hard_iterations(f, c, cands, 3)
    assert torch.equal(la, lb)


def test_results_do_not_depend_on_the_thread_count():
    import numba

    f, c, cands = cell_case(120, 200, 5, 10, 16, 1, seed=5)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        la, ca = cpu.hard_iterations(f, c, cands, 6)
    finally:
        numba.set_num_threads(before)
    lb, cb = cpu.hard_iterations(f, c, cands, 6)
    assert torch.equal(la, lb) and torch.equal(ca, cb)


def object_case(h, w, k, seed, uncertain=True):
    """Object seeds and their compact candidates on a blobby partition (with an uncertain band when asked)."""
    import numpy as np

    from spam_stream.candidates import object_candidates
    from spam_stream.seeding import object_seeds

    rng = np.random.default_rng(seed)
    pts = rng.random((6, 2)) * (h, w)
    yy, xx = np.mgrid[:h, :w]
    part = np.argmin(((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2), -1).astype(np.int32)
    if uncertain:
        part[h // 3:h // 3 + 3] = -1
    seeds = object_seeds(part, k)
    cands = object_candidates(*seeds.candidate_groups(part))
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(h * w, 5, generator=g)
    f[:, 3] = torch.arange(h).repeat_interleave(w) * 0.2
    f[:, 4] = torch.arange(w).repeat(h) * 0.2
    c = torch.randn(cands.n_superpixels, 5, generator=g)
    return f, c, cands


@pytest.mark.parametrize("h,w,k,uncertain", [(60, 80, 30, True), (97, 203, 120, False), (150, 140, 60, True)])
def test_object_seed_blocks_match_reference(h, w, k, uncertain):
    f, c, cands = object_case(h, w, k, seed=h + w, uncertain=uncertain)
    p = cells.plan(cands)
    assert p is not None and len(p[3][1]) > 0  # the block layout, with exceptions where objects meet
    for rounds in (0, 3, 10):
        la, ca, ra = cpu.hard_converge(f, c, cands, rounds)
        lb, cb, rb = reference.hard_converge(f, c, cands, rounds)
        assert torch.equal(la, lb)
        torch.testing.assert_close(ca, cb, rtol=1e-6, atol=1e-6)
        assert ra == rb


def test_object_seed_blocks_match_reference_for_learned_channels():
    f, c, cands = object_case(70, 90, 40, seed=9)
    g = torch.Generator().manual_seed(1)
    f = torch.cat([f, torch.randn(f.shape[0], 15, generator=g)], 1)
    c = torch.cat([c, torch.randn(c.shape[0], 15, generator=g)], 1)
    la, ca = cpu.hard_iterations(f, c, cands, 5)
    lb, cb = reference.hard_iterations(f, c, cands, 5)
    assert torch.equal(la, lb)
    torch.testing.assert_close(ca, cb, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("d", [5, 20])
@pytest.mark.parametrize("cols", [(100, 140), (cells.XC, 2 * cells.XC)])
def test_unassigned_runs_add_nothing(d, cols):
    """Pixels with no valid candidate (label -1, e.g. outside a mask) in rows wider than one run of XC pixels;
    (XC, 2 XC): a whole run without a candidate, which skips the distances."""
    f, c, cands = object_case(40, 3 * cells.XC + 17, 60, seed=4)
    g = torch.Generator().manual_seed(2)
    if d > 5:
        f = torch.cat([f, torch.randn(f.shape[0], d - 5, generator=g)], 1)
        c = torch.cat([c, torch.randn(c.shape[0], d - 5, generator=g)], 1)
    cands.rows[cands.pixel_row.reshape(40, -1)[:, cols[0]:cols[1]].unique().long()] = -1  # rows with no candidate
    cands.table = cands.rows[cands.pixel_row.long()]
    cands.__dict__.pop("_cell_plan", None)
    la, ca = cpu.hard_iterations(f, c, cands, 4)
    lb, cb = reference.hard_iterations(f, c, cands, 4)
    assert (lb == -1).any()
    assert torch.equal(la, lb)
    torch.testing.assert_close(ca, cb, rtol=1e-6, atol=1e-6)


def test_a_live_thread_budget_changes_no_result_and_does_not_outlive_the_call():
    """The cell loop follows the executor's live budget (kernels.threads) pass by pass: same labels and centroids
    as the reference with any budget, and the thread's own numba count is back afterwards."""
    from helpers import assert_budget_free

    f, c, cands = cell_case(120, 200, 5, 10, 16, 1, seed=5)
    assert cells.plan(cands) is not None
    assert_budget_free(f, c, cands, 6, budgets=(2, 1, 0))


def test_the_clustering_loops_stay_cachable():
    """The loops that read the live budget stay in numba's on-disk cache (a thread switch written in nopython code
    makes a function uncachable: it would compile in every fresh process, seconds on a video's first frame)."""
    from test_kernels_cpu import random_case

    f, c, cands = cell_case(120, 200, 5, 10, 16, 1, seed=5)
    cpu.hard_iterations(f, c, cands, 2)
    f, c, cands = random_case(50, 61, 20, 20, 25, "grid", 7)
    cpu.hard_iterations(f, c, cands, 2)
    for kernel in (cells._cell_loop, cpu._hard_loop):
        assert kernel.overloads
        for overload in kernel.overloads.values():
            assert not overload.library.has_dynamic_globals, kernel.py_func.__name__


SUBSAMPLE_ROUNDS = [(0, 0.0), (1, 0.0), (4, 0.0), (12, 0.0), (30, 0.05), (30, 0.2)]


@pytest.mark.parametrize("h,w,d,nh,nw,objects", [CASES[0], CASES[1], CASES[3], CASES[5]])
@pytest.mark.parametrize("stride", [2, 3])
def test_row_subsampling_matches_reference(h, w, d, nh, nw, objects, stride):
    """Rounds on every stride-th row (rotating), a full final assignment: labels, centroids and rounds equal to the
    reference's, cold and warm (previous labels), with and without a tolerance."""
    f, c, cands = cell_case(h, w, d, nh, nw, objects, seed=h * w + d)
    for rounds, tol in SUBSAMPLE_ROUNDS:
        la, ca, ra = cpu.hard_converge(f, c, cands, rounds, tol, subsample=stride)
        lb, cb, rb = reference.hard_converge(f, c, cands, rounds, tol, subsample=stride)
        assert torch.equal(la, lb) and ra == rb
        torch.testing.assert_close(ca, cb, rtol=1e-6, atol=1e-6)
    la, _, ra = cpu.hard_converge(f, cb, cands, 5, 0.1, prev_labels=lb, subsample=stride)
    lb2, _, rb = reference.hard_converge(f, cb, cands, 5, 0.1, prev_labels=lb, subsample=stride)
    assert torch.equal(la, lb2) and ra == rb


@pytest.mark.parametrize("h,w,d,nh,nw,objects", [CASES[0], CASES[1], CASES[3]])
def test_row_subsampling_on_the_block_path_matches_reference(h, w, d, nh, nw, objects, monkeypatch):
    """The block layout (16-pixel blocks that may straddle two rows: lanes of the other row masked)."""
    monkeypatch.setattr(cells, "FAST_DIMS", ())
    f, c, cands = cell_case(h, w, d, nh, nw, objects, seed=h * w + d)
    assert w % 16  # blocks straddle rows
    for rounds, tol in SUBSAMPLE_ROUNDS[1:]:
        la, ca, ra = cpu.hard_converge(f, c, cands, rounds, tol, subsample=3)
        lb, cb, rb = reference.hard_converge(f, c, cands, rounds, tol, subsample=3)
        assert torch.equal(la, lb) and ra == rb
        torch.testing.assert_close(ca, cb, rtol=1e-6, atol=1e-6)


def test_row_subsampling_with_object_seeds_matches_reference():
    f, c, cands = object_case(97, 203, 120, seed=300, uncertain=True)
    for rounds, tol in ((3, 0.0), (10, 0.0), (30, 0.05)):
        la, ca, ra = cpu.hard_converge(f, c, cands, rounds, tol, subsample=2)
        lb, cb, rb = reference.hard_converge(f, c, cands, rounds, tol, subsample=2)
        assert torch.equal(la, lb) and ra == rb
        torch.testing.assert_close(ca, cb, rtol=1e-6, atol=1e-6)
