"""`spam-stream train` end to end on a tiny synthetic BSDS500 tree (always runs): steps, validation, the kept
checkpoint, resuming where it stopped; the same on a CUDA device (Triton soft iterations) when torch sees one."""
import csv
import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from spam_stream.encoder import load_encoder
from spam_stream.training import FIT_STEPS, FIT_WARMUP, TrainConfig, batch_loss, fit_schedule, resolve_device, train
from spam_stream.encoder import Encoder


def _fake_bsds(root, n=3, h=48, w=64):
    """n images per split: coloured quadrants with noise, their quadrant segmentation as the only annotator."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "data" / "images" / split).mkdir(parents=True)
        (root / "data" / "groundTruth" / split).mkdir(parents=True)
        for i in range(n):
            cy, cx = rng.integers(12, h - 12), rng.integers(12, w - 12)
            seg = 1 + (np.arange(h)[:, None] >= cy) * 2 + (np.arange(w)[None, :] >= cx)
            colours = rng.integers(0, 256, (5, 3))
            img = np.clip(colours[seg] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "data" / "images" / split / f"{i}.jpg", quality=95)
            cells = np.empty((1, 1), dtype=object)
            cells[0, 0] = {"Segmentation": seg.astype(np.uint16)}
            scipy.io.savemat(root / "data" / "groundTruth" / split / f"{i}.mat", {"groundTruth": cells})
    return root


def _config(tmp_path, **kw):
    cfg = dict(root=str(_fake_bsds(tmp_path / "bsds")), out=str(tmp_path / "run"), iterations=4, batch=2, crop=33,
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
