"""`spam-stream train` end to end on a tiny synthetic BSDS500 tree (always runs): steps, validation, the kept
checkpoint, resuming where it stopped; the same on a CUDA device (Triton soft iterations) when torch sees one."""
import csv
import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pathlib import Path

from spam_stream import SPAM
import spam_stream.encoder
from spam_stream.encoder import (INT8_CALIBRATION_SUFFIX, INT8_MAX_REL_RMS, Int8LearnedChannels, int8_error,
                                 int8_supported, load_encoder, load_int8)
from spam_stream.model import DEFAULT_WEIGHTS
from spam_stream.features import pixel_features
from spam_stream.training import FIT_STEPS, FIT_WARMUP, TrainConfig, batch_loss, fit_schedule, resolve_device, train
from spam_stream.encoder import Encoder


def _fake_bsds(root, n=3, h=48, w=64, levels=(0, 256)):
    """n images per split: coloured quadrants (channel values in ``levels``) with noise, their quadrant segmentation
    as the only annotator."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "data" / "images" / split).mkdir(parents=True)
        (root / "data" / "groundTruth" / split).mkdir(parents=True)
        for i in range(n):
            cy, cx = rng.integers(12, h - 12), rng.integers(12, w - 12)
            seg = 1 + (np.arange(h)[:, None] >= cy) * 2 + (np.arange(w)[None, :] >= cx)
            colours = rng.integers(*levels, (5, 3))
            img = np.clip(colours[seg] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "data" / "images" / split / f"{i}.jpg", quality=95)
            cells = np.empty((1, 1), dtype=object)
            cells[0, 0] = {"Segmentation": seg.astype(np.uint16)}
            scipy.io.savemat(root / "data" / "groundTruth" / split / f"{i}.mat", {"groundTruth": cells})
    return root


def _config(tmp_path, levels=(0, 256), **kw):
    cfg = dict(root=str(_fake_bsds(tmp_path / "bsds", levels=levels)), out=str(tmp_path / "run"), iterations=4, batch=2, crop=33,
               crop_superpixels=9, soft_iterations=2, width=8, val_every=2, val_images=2, val_superpixels=12,
               checkpoint_every=1)
    cfg.update(kw)
    return TrainConfig(**cfg)


def _steps(run):
    with open(run / "log.csv") as f:
        return [int(row[0]) for row in csv.reader(f)]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="--device gpu"):  # a name torch does not know
        resolve_device("gpu")


def test_train_validates_keeps_the_best_and_resumes(tmp_path):
    cfg = _config(tmp_path, iterations=2, device="cpu")
    best = train(cfg)
    run = tmp_path / "run"
    assert _steps(run) == [1, 2]
    history = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in history] == [2] and 0.0 < history[0]["val_asa"] <= 1.0
    enc, meta = load_encoder(best)
    assert (enc.width, enc.out_dim, meta["step"]) == (8, 20, 2)
    # the same run folder, a longer schedule: it goes on from step 2 (nothing redone) and validates again at 4
    cfg.iterations = 4
    train(cfg)
    assert _steps(run) == [1, 2, 3, 4]
    assert [h["step"] for h in json.loads((run / "history.json").read_text())] == [2, 4]
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the Triton soft iterations)")
def test_train_on_cuda_matches_the_cpu_loss_and_runs(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(20, 8)
    cfg = _config(tmp_path, device="cuda")
    feats = torch.randn(2, 5, cfg.crop, cfg.crop) * 3
    gts = torch.randint(0, 4, (2, cfg.crop, cfg.crop))
    enc.eval()  # batch statistics aside, the loss is a function of the weights: equal on both devices
    cpu = batch_loss(enc, feats, gts, cfg)[0]
    gpu = batch_loss(enc.to("cuda"), feats.cuda(), gts.cuda(), cfg)[0]
    assert abs(cpu.item() - gpu.item()) <= 1e-3 * abs(cpu.item())
    train(cfg)
    assert _steps(tmp_path / "run") == [1, 2, 3, 4]
    assert next(load_encoder(tmp_path / "run" / "best.pt")[0].parameters()).device.type == "cpu"


def test_fit_schedule_counts_steps_and_validations():
    # 100 s left, 0.1 s/step, 2 s per validation every 50 steps: 0.14 s per step all in; 93 s spare after the final one
    assert fit_schedule(23, 0.1, 2.0, 100.0, 50) == 23 + int((0.95 * 100 - 2) / 0.14)
    assert fit_schedule(23, 0.1, 2.0, 1.0, 50) == 23          # no time left: stop where it is


def test_minutes_fits_the_schedule_and_a_resume_keeps_it(tmp_path):
    cfg = _config(tmp_path, iterations=10_000, val_every=1_000, minutes=0.25, device="cpu")
    train(cfg)
    run = tmp_path / "run"
    fitted = json.loads((run / "config.json").read_text())["iterations"]
    assert FIT_WARMUP + FIT_STEPS <= fitted < 10_000    # measured: 15 s hold far fewer than the CLI's 10 000 steps
    assert _steps(run)[-1] == fitted
    history = json.loads((run / "history.json").read_text())
    assert history[0]["step"] == FIT_WARMUP + FIT_STEPS and history[-1]["step"] == fitted
    cfg2 = _config(tmp_path / "again", out=str(run), iterations=10_000, val_every=1_000, minutes=0.25, device="cpu")
    train(cfg2)                                          # resumes a finished run: nothing more to do
    assert cfg2.iterations == fitted and _steps(run)[-1] == fitted


def _per_crop_loss(encoder, feats, gts, cfg):
    """The loss crop by crop, each crop its own grid-layout frame (how batch_loss computed it before batching)."""
    from spam_stream.candidates import grid_candidates
    from spam_stream.clustering import as_pixel_rows, cluster_soft
    from spam_stream.kernels.candidates import candidate_table
    from spam_stream.seeding import grid_seeds
    from spam_stream.training import reconstruct, reconstruct_true_label

    c = cfg.crop
    seeds = grid_seeds(c, c, cfg.crop_superpixels)
    cands = grid_candidates(c, c, seeds).to(feats.device)
    table, k = candidate_table(cands), len(seeds)
    init = torch.from_numpy(seeds.init_labels).to(feats.device)
    out = encoder(feats)
    ce = compact = 0.0
    for b in range(feats.shape[0]):
        f = as_pixel_rows(out[b]).contiguous()
        q, _ = cluster_soft(f, cands, init, cfg.soft_iterations)
        labels = gts[b].reshape(-1)
        ce = ce - torch.log(reconstruct_true_label(q, table, labels, int(labels.max()) + 1, k).clamp(min=1e-8)).mean()
        compact = compact + torch.nn.functional.mse_loss(reconstruct(q, table, f[:, 3:5], k), f[:, 3:5].detach(),
                                                         reduction="sum") / f.shape[0]
    n = feats.shape[0]
    return ce / n + cfg.compactness_weight * compact / n, ce / n, compact / n


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_batched_loss_equals_the_per_crop_loss_and_its_gradients(tmp_path, device):
    cfg = TrainConfig(root="", crop=45, crop_superpixels=9, soft_iterations=3, batch=3, compactness_weight=1e-3)
    torch.manual_seed(0)
    enc = Encoder(20, 8).eval().to(device)
    g = torch.Generator().manual_seed(1)
    feats = (torch.randn(3, 5, 45, 45, generator=g) * 4).to(device)
    blocks = torch.randint(0, 5, (3, 5, 5), generator=g) * 3  # 9x9-pixel blocks; ids with gaps, as crops have them
    gts = blocks.repeat_interleave(9, 1).repeat_interleave(9, 2).to(device)
    results = []
    for fn in (batch_loss, _per_crop_loss):
        enc.zero_grad()
        total, ce, compact = fn(enc, feats, gts, cfg)
        total.backward()
        results.append((total.item(), ce.item(), compact.item(),
                        torch.cat([p.grad.reshape(-1) for p in enc.parameters()]).cpu()))
    (t1, ce1, c1, g1), (t2, ce2, c2, g2) = results
    assert ce1 == pytest.approx(ce2, rel=1e-5) and c1 == pytest.approx(c2, rel=1e-5) and t1 == pytest.approx(t2, rel=1e-5)
    assert (g1 - g2).norm() <= 1e-4 * g2.norm()


def test_minutes_shortens_the_schedule_when_steps_slow_down(tmp_path, monkeypatch):
    """After step 40 every step takes 2 s more on training's clock (a virtual slow-down, so the test's own speed
    does not matter): the next validation re-fits a shorter schedule, and the run ends on it."""
    import time as real_time

    import spam_stream.training as training

    class Clock:  # training's ``time``: real time plus the virtual slow-down
        offset = 0.0

        def time(self):
            return real_time.time() + self.offset

    clock, fits, calls = Clock(), [], [0]
    real_fit, real_loss = training.fit_schedule, training.batch_loss
    monkeypatch.setattr(training, "time", clock)
    monkeypatch.setattr(training, "fit_schedule", lambda *a: fits.append(real_fit(*a)) or fits[-1])

    def slower_after_40(*args):
        calls[0] += 1
        if calls[0] > 40:
            clock.offset += 2.0
        return real_loss(*args)

    monkeypatch.setattr(training, "batch_loss", slower_after_40)
    cfg = _config(tmp_path, iterations=10_000, val_every=20, minutes=2, device="cpu")
    train(cfg)
    assert len(fits) >= 2 and min(fits[1:]) < fits[0]    # re-fitted at a later validation: a shorter schedule
    assert cfg.iterations == min(fits) and _steps(tmp_path / "run")[-1] == cfg.iterations
    assert json.loads((tmp_path / "run" / "config.json").read_text())["iterations"] == cfg.iterations


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "--device gpu"),
    (["--minutes", "-1"], "--minutes -1"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]))
def test_train_cli_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    from spam_stream.cli import main

    assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.skipif(not int8_supported(), reason="no int8 engine on this CPU")
def test_train_writes_the_int8_companion_of_its_checkpoint(tmp_path, capsys, monkeypatch):
    """best.pt gets its int8 companion, calibrated on the training images, when its int8 channels stay close to
    float32 (fine-tuned from the bundled encoder): SPAM(encoder=best.pt) runs int8 on the CPU; a resumed run with a
    new best writes one for the new weights. A checkpoint whose int8 channels are farther from float32 than the gate:
    no companion (float32 path); --int8-images 0: none."""
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("no bundled encoder weights")
    # natural-image colours (not saturated ones: those lie beyond what int8 holds well, as for the bundled encoder)
    cfg = _config(tmp_path, levels=(60, 190), iterations=2, device="cpu", int8_images=3, width=32,
                  init=str(DEFAULT_WEIGHTS), lr=1e-5)
    best = train(cfg)
    companion = Path(str(best) + INT8_CALIBRATION_SUFFIX)
    assert companion.is_file()
    model = SPAM(encoder=str(best))
    assert isinstance(model.encoder.__dict__.get("int8"), Int8LearnedChannels)
    enc, _ = load_encoder(best)
    colours = [pixel_features(np.asarray(Image.open(tmp_path / "bsds" / "data" / "images" / "train" / f"{i}.jpg")),
                              12)[:3].clone() for i in range(3)]
    assert int8_error(enc, model.encoder.int8, colours) <= INT8_MAX_REL_RMS
    cfg.iterations = 4  # resumed: a new best replaces the companion by one for the new weights
    train(cfg)
    enc, meta = load_encoder(best)
    assert meta["step"] == 4 and load_int8(enc, torch.load(companion, weights_only=True)) is not None
    capsys.readouterr()
    rough = _config(tmp_path / "rough", iterations=2, device="cpu", int8_images=2)
    # how far a barely trained network's int8 channels land depends on the CPU's int8 engine (0.012 with AVX-512,
    # above 0.05 with AVX2): a gate below any int8 error makes this checkpoint one that fails it on every CPU
    monkeypatch.setattr(spam_stream.encoder, "INT8_MAX_REL_RMS", 1e-9)
    assert not Path(str(train(rough)) + INT8_CALIBRATION_SUFFIX).exists()
    monkeypatch.undo()
    assert "float32" in capsys.readouterr().err
    assert "int8" not in SPAM(encoder=str(Path(rough.out) / "best.pt")).encoder.__dict__
    off = _config(tmp_path / "off", iterations=2, device="cpu", int8_images=0, width=32, init=str(DEFAULT_WEIGHTS))
    assert not Path(str(train(off)) + INT8_CALIBRATION_SUFFIX).exists()
