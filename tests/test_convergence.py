"""Convergence-driven hard iterations (``hard_converge``): every backend stops after the same round as the torch
reference, a tolerance of 0 changes nothing, and ``iterations="auto"`` reaches the model."""
import numpy as np
import pytest
import torch

from spam_stream import SPAM
from spam_stream.kernels import cpu, reference
from spam_stream.kernels.candidates import Candidates
from spam_stream.model import AUTO_ITERATIONS, AUTO_TOL, resolve_iterations


def smooth_case(h=48, w=64, grid=(4, 5), seed=0):
    """Features of a blocky picture (position + noisy colour) on a grid: clustering converges in a few rounds."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    blocks = torch.rand(6, 7, 3, generator=g)[(yy * 6 // h).long(), (xx * 7 // w).long()]
    colour = 4 * blocks + 0.05 * torch.randn(h, w, 3, generator=g)
    f = torch.cat([colour, (yy / (h / grid[0]))[..., None], (xx / (w / grid[1]))[..., None]], -1).reshape(-1, 5)
    n = h * w
    cands = Candidates(h, w, torch.zeros(n, dtype=torch.int32), torch.zeros(grid[0] * grid[1], dtype=torch.int32),
                       grid=grid)
    cells = (yy * grid[0] // h).long() * grid[1] + (xx * grid[1] // w).long()
    from spam_stream.clustering import initial_centroids

    return f.contiguous(), initial_centroids(f, cells.reshape(-1).int(), grid[0] * grid[1]), cands


def test_tol_zero_stops_only_at_a_fixed_point():
    f, c, cands = smooth_case()
    labels, cents, run = reference.hard_converge(f, c, cands, 40, 0.0)
    assert 1 <= run < 40  # converged before the cap
    full_l, full_c, full_run = reference.hard_converge(f, c, cands, 40, -1.0)
    assert full_run == 40  # a negative tolerance runs every round
    assert torch.equal(labels, full_l) and torch.equal(cents, full_c)  # the fixed point is the result of all rounds


def test_a_loose_tolerance_stops_earlier():
    f, c, cands = smooth_case(seed=3)
    _, _, strict = reference.hard_converge(f, c, cands, 40, 0.0)
    _, _, loose = reference.hard_converge(f, c, cands, 40, 0.2)
    assert 2 <= loose <= strict  # the first round has nothing to compare with: never the last one
    _, _, capped = reference.hard_converge(f, c, cands, 1, 0.0)
    assert capped == 1


def test_previous_labels_let_a_converged_start_stop_after_one_round():
    f, c, cands = smooth_case(seed=1)
    labels, cents, _ = reference.hard_converge(f, c, cands, 50, 0.0)
    again_l, _, run = reference.hard_converge(f, cents, cands, 10, 0.0, prev_labels=labels)
    assert run == 1 and torch.equal(again_l, labels)
    _, _, without = reference.hard_converge(f, cents, cands, 10, 0.0)
    assert without == 2  # without the previous labels, a second round is needed to see nothing changed


@pytest.mark.parametrize("tol", [0.0, 0.01, 0.1])
@pytest.mark.parametrize("prev", [False, True])
def test_cpu_backend_matches_reference_rounds(tol, prev):
    f, c, cands = smooth_case(seed=2)
    prev_labels = reference.assign(f, c, cands) if prev else None
    got = cpu.hard_converge(f, c, cands, 30, tol, prev_labels)
    ref = reference.hard_converge(f, c, cands, 30, tol, prev_labels)
    assert got[2] == ref[2]
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)


def triton_backend():
    """(the Triton kernels module, the device its tensors go to), or skip: Triton runs on a CUDA device or under
    TRITON_INTERPRET=1 on CPU tensors."""
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not torch.cuda.is_available():
        pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1")
    from spam_stream.kernels import triton_kernels as tk

    return tk, "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("tol,prev", [(0.0, False), (0.0, True), (0.05, False), (0.05, True)])
def test_triton_backend_matches_reference_rounds(tol, prev):
    tk, device = triton_backend()
    f, c, cands = smooth_case(seed=4)
    prev_labels = reference.assign(f, c, cands) if prev else None
    got = tk.hard_converge(f.to(device), c.to(device), cands.to(device), 30, tol,
                           None if prev_labels is None else prev_labels.to(device))
    ref = reference.hard_converge(f, c, cands, 30, tol, prev_labels)
    assert torch.equal(got[0].cpu(), ref[0])
    if tol > 0 or prev:
        assert got[2] == ref[2]
    else:  # tol = 0: no per-pass count on the GPU, every pass runs (a fixed point changes nothing)
        assert got[2] == 30 and ref[2] < 30


def test_resolve_iterations():
    assert resolve_iterations(10) == (10, 0.0)
    assert resolve_iterations("auto") == (AUTO_ITERATIONS, AUTO_TOL)
    assert resolve_iterations("auto", 0.01) == (AUTO_ITERATIONS, 0.01)
    assert resolve_iterations(7, 0.05) == (7, 0.05)
    for bad in [("often", None), (-1, None), (5, 1.5)]:
        with pytest.raises(ValueError):
            resolve_iterations(*bad)


def test_model_reports_rounds_and_auto_segments_images():
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((12, 12, 1))).astype(np.uint8)
    fixed = SPAM(encoder=None, iterations=10)
    auto = SPAM(encoder=None, iterations="auto")
    frame_f = fixed.run_stages(fixed.frame(image, 40))
    frame_a = auto.run_stages(auto.frame(image, 40))
    assert 1 <= frame_f.meta["iterations"] <= 10
    assert 2 <= frame_a.meta["iterations"] <= AUTO_ITERATIONS
    assert frame_a.labels.shape == image.shape[:2] and frame_a.labels.min() == 0


def test_cli_iterations_auto_and_tol(tmp_path):
    from PIL import Image

    from spam_stream.cli import main

    rng = np.random.default_rng(1)
    path = tmp_path / "img.png"
    Image.fromarray(np.kron(rng.integers(0, 255, (5, 6, 3)), np.ones((10, 10, 1))).astype(np.uint8)).save(path)
    assert main(["image", str(path), "-o", str(tmp_path / "a"), "-k", "20", "--encoder", "none",
                 "--iterations", "auto"]) == 0
    assert main(["image", str(path), "-o", str(tmp_path / "b"), "-k", "20", "--encoder", "none",
                 "--iterations", "30", "--tol", "0.01"]) == 0
    assert main(["image", str(path), "-o", str(tmp_path / "s"), "-k", "20", "--encoder", "none",
                 "--subsample", "1"]) == 0
    for bad in (["--iterations", "often"], ["--tol", "1.5"], ["--tol", "x"], ["--subsample", "0"],
                ["--subsample", "two"]):
        with pytest.raises(SystemExit):
            main(["image", str(path), "-o", str(tmp_path / "c"), *bad])


def test_row_subsampling_rounds_visit_their_rows_only():
    """Round r sums only the rows y ≡ r (mod s): one round from the same centroids gives the means of those rows'
    members; tol = 0 never stops early (a quiet subsample is no fixed point); a converged start ends with the
    full assignment of its centroids."""
    f, c, cands = smooth_case(seed=5)
    labels_all = reference.assign(f, c, cands)
    _, c1, run = reference.hard_converge(f, c, cands, 1, 0.0, subsample=2)
    rows = torch.arange(f.shape[0]) // cands.width
    sel = rows % 2 == 0
    sums, counts = reference.centroid_sums_hard(f[sel], labels_all[sel], cands.n_superpixels)
    assert run == 1 and torch.equal(c1, reference.new_centroids(sums, counts, c))
    assert reference.hard_converge(f, c, cands, 25, 0.0, subsample=3)[2] == 25
    labels, cents, _ = reference.hard_converge(f, c, cands, 50, 0.0)  # a fixed point
    again, _, run = reference.hard_converge(f, cents, cands, 10, 0.01, prev_labels=labels, subsample=3)
    assert run == 1 and torch.equal(again, labels)
    ten_rows = Candidates(10, 7, torch.zeros(70, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), grid=(1, 1))
    phases = ten_rows.row_phases(3)
    assert phases.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert reference.round_limits(0.1, phases, 7, 3) == [int(0.1 * 4 * 7), int(0.1 * 3 * 7), int(0.1 * 3 * 7)]
    assert reference.round_limits(0.0, phases, 7, 3) == [-1, -1, -1]
    ten_rows.row_period, ten_rows.row_origin = 4, 1  # tiles of 4 rows, each a region starting at its row 1
    assert ten_rows.row_phases(3).tolist() == [1, 2, 0, 1, 1, 2, 0, 1, 1, 2]
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            reference.subsample_rows(bad)


@pytest.mark.parametrize("tol,prev", [(0.0, False), (0.05, True)])
def test_triton_backend_row_subsampling_matches_reference(tol, prev):
    tk, device = triton_backend()
    f, c, cands = smooth_case(seed=6)
    prev_labels = reference.assign(f, c, cands) if prev else None
    got = tk.hard_converge(f.to(device), c.to(device), cands.to(device), 12, tol,
                           None if prev_labels is None else prev_labels.to(device), subsample=3)
    ref = reference.hard_converge(f, c, cands, 12, tol, prev_labels, subsample=3)
    assert torch.equal(got[0].cpu(), ref[0]) and got[2] == ref[2]
