"""Training the SPAM encoder, SSN-style, on BSDS500 (``spam-stream train``).

Loss (only the encoder learns): the ground-truth segmentation is reconstructed through the soft association —
superpixel label histograms ``L = Qᵀ Y / Qᵀ 1``, pixel labels ``Ŷ = Q L`` — and scored by cross-entropy, plus a
compactness term: the pixel positions reconstructed the same way, mean squared error, weight 1e-5 (paper).
Random crops and flips of the train split; the checkpoint with the best validation ASA (hard SPAM inference on
val images) is kept; ``last.pt`` holds everything needed to resume.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import rgb2lab
from tqdm import tqdm

from .candidates import grid_candidates
from .clustering import cluster_soft
from .encoder import INT8_CALIBRATION_SUFFIX, Encoder, fold_batchnorm
from .features import COLOR_SCALE, position_scale
from .kernels import resolve_device
from .kernels.candidates import Candidates, candidate_table
from .seeding import grid_seeds


@dataclass
class TrainConfig:
    root: str
    out: str = "runs/train"
    iterations: int = 5000
    batch: int = 4
    crop: int = 201
    crop_superpixels: int = 100      # 20 px cells: the cell size of K=400 on a 481x321 image
    soft_iterations: int = 5
    lr: float = 6e-4
    width: int = 32
    out_dim: int = 20
    color_scale: float = COLOR_SCALE
    spatial_scale: float = 7.5       # the bundled encoder's training scale (inference default: SPATIAL_SCALE)
    compactness_weight: float = 1e-5
    val_every: int = 250
    val_images: int = 20
    val_superpixels: int = 400
    checkpoint_every: int = 25
    seed: int = 0
    min_gr: float = 0.0              # selection: best val ASA among checkpoints with val GR >= min_gr
    init: str = ""                   # encoder weights to start from (ignored when resuming)
    threads: int = 0                 # torch/numba threads (0: library default)
    device: str = "auto"             # "auto": cuda when torch sees one (Triton soft iterations), else cpu (numba)
    minutes: float = 0.0             # > 0: a fresh run fits its schedule (iterations) to this wall time (fit_schedule)
    int8_images: int = 32            # train images the int8 companion of best.pt is calibrated on (0: none)


class CropSampler:
    """Random crops and flips of the train split: (B, 5, c, c) scaled features and (B, c, c) int64 GT labels (one
    random annotator's segment ids, not renumbered: a crop's ids may have gaps)."""

    def __init__(self, dataset, cfg: TrainConfig):
        self.cfg = cfg
        self.items = []
        for sample in tqdm(dataset, desc="loading train split", unit="img", leave=False):
            lab = rgb2lab(sample.image).astype(np.float32)
            self.items.append((lab, [g.astype(np.int64) for g in sample.gts]))
        c = cfg.crop
        s = position_scale(c, c, cfg.crop_superpixels, cfg.spatial_scale)
        yy, xx = np.meshgrid(np.arange(c, dtype=np.float32) * s, np.arange(c, dtype=np.float32) * s, indexing="ij")
        self.yx = np.stack([yy, xx])

    def sample(self, rng: np.random.Generator):
        c, feats, gts = self.cfg.crop, [], []
        for _ in range(self.cfg.batch):
            lab, annot = self.items[rng.integers(len(self.items))]
            gt = annot[rng.integers(len(annot))]
            y0 = rng.integers(lab.shape[0] - c + 1)
            x0 = rng.integers(lab.shape[1] - c + 1)
            lab_c, gt_c = lab[y0:y0 + c, x0:x0 + c], gt[y0:y0 + c, x0:x0 + c]
            if rng.random() < 0.5:
                lab_c, gt_c = lab_c[:, ::-1], gt_c[:, ::-1]
            if rng.random() < 0.5:
                lab_c, gt_c = lab_c[::-1], gt_c[::-1]
            feats.append(np.concatenate([lab_c.transpose(2, 0, 1) * self.cfg.color_scale, self.yx]))
            gts.append(gt_c)  # the annotator's ids as they are: batch_loss only needs each crop's ids below its max + 1
        return torch.from_numpy(np.stack(feats)), torch.from_numpy(np.stack(gts))


def reconstruct(q: torch.Tensor, table: torch.Tensor, values: torch.Tensor, n_superpixels: int) -> torch.Tensor:
    """Map per-pixel values (N, C) to superpixels and back through the soft association q (N, 9): (N, C)."""
    idx = table.clamp(min=0).long()
    w = q * (table >= 0)
    sp = torch.zeros(n_superpixels, values.shape[1], dtype=values.dtype, device=q.device).index_add(
        0, idx.reshape(-1), (w[:, :, None] * values[:, None, :]).reshape(-1, values.shape[1]))
    mass = torch.zeros(n_superpixels, dtype=values.dtype, device=q.device).index_add(0, idx.reshape(-1), w.reshape(-1))
    sp = sp / mass.clamp(min=1e-8)[:, None]
    return (w[:, :, None] * sp[idx]).sum(1)


def reconstruct_true_label(q: torch.Tensor, table: torch.Tensor, labels: torch.Tensor, n_labels: int,
                           n_superpixels: int) -> torch.Tensor:
    """``reconstruct(q, table, one_hot(labels), K)[p, labels[p]]`` without the (N, 9, n_labels) intermediate: (N,).

    The superpixel label histograms are one index_add into (K·n_labels) bins; each pixel then gathers the share of
    its own label from its ≤9 superpixels. labels: (N,) int64 in [0, n_labels).
    """
    idx = table.clamp(min=0).long()
    w = q * (table >= 0)
    hist = torch.zeros(n_superpixels * n_labels, dtype=q.dtype, device=q.device).index_add(
        0, (idx * n_labels + labels[:, None]).reshape(-1), w.reshape(-1))
    mass = torch.zeros(n_superpixels, dtype=q.dtype, device=q.device).index_add(0, idx.reshape(-1), w.reshape(-1))
    share = hist.reshape(n_superpixels, n_labels) / mass.clamp(min=1e-8)[:, None]
    return (w * share[idx, labels[:, None]]).sum(1)


@functools.lru_cache(maxsize=8)
def batch_candidates(batch: int, crop: int, crop_superpixels: int, device: str) -> tuple[Candidates, torch.Tensor]:
    """The ``batch`` crops of a training step as one frame: crop b's pixels are rows ``b·c²…(b+1)·c² - 1`` and its
    grid superpixels ``b·K…(b+1)·K - 1`` (K = the grid's seeds), written as a table layout so that a pixel's
    candidates stay inside its own crop. Returns (candidates, (B·c²,) int32 initial labels), cached per shape."""
    seeds = grid_seeds(crop, crop, crop_superpixels)
    one = candidate_table(grid_candidates(crop, crop, seeds))
    k = len(seeds)
    shift = (torch.arange(batch, dtype=torch.int32) * k)[:, None, None]
    table = torch.where(one[None] >= 0, one[None] + shift, -1).reshape(-1, one.shape[1])
    init = (torch.from_numpy(seeds.init_labels)[None] + shift[:, :, 0]).reshape(-1)
    n = table.shape[0]
    cands = Candidates(crop * batch, crop, torch.full((n,), -1, dtype=torch.int32),
                       torch.full((batch * k,), -1, dtype=torch.int32), table=table.contiguous())
    return cands.to(device), init.to(device)


def batch_loss(encoder: Encoder, feats: torch.Tensor, gts: torch.Tensor, cfg: TrainConfig):
    """Mean (total, cross-entropy, compactness) over the batch, computed on ``feats``' device (the encoder's).

    The B crops go through the soft iterations and the reconstruction as one frame (:func:`batch_candidates`): one
    kernel launch per step for the whole batch instead of one per crop; every crop has c² pixels, so the means over
    the frame are the means over the crops of their per-crop means. feats (B, 5, c, c); gts (B, c, c) int64."""
    b, c = feats.shape[0], cfg.crop
    cands, init = batch_candidates(b, c, cfg.crop_superpixels, str(feats.device))
    out = encoder(feats)
    f = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])  # (B·c², D): one copy, crop after crop
    q, _ = cluster_soft(f, cands, init, cfg.soft_iterations)
    labels = gts.reshape(b, -1)
    n_labels = labels.amax(1) + 1                         # each crop's ids are below its max + 1: offset them apart
    labels = (labels + (torch.cumsum(n_labels, 0) - n_labels)[:, None]).reshape(-1)
    recon = reconstruct_true_label(q, cands.table, labels, int(n_labels.sum()), cands.n_superpixels)
    ce = -torch.log(recon.clamp(min=1e-8)).mean()
    pos = f[:, 3:5].detach()
    compact = F.mse_loss(reconstruct(q, cands.table, f[:, 3:5], cands.n_superpixels), pos, reduction="sum") / (b * c * c)
    return ce + cfg.compactness_weight * compact, ce, compact


def validate(encoder: Encoder, val_samples, cfg: TrainConfig) -> tuple[float, float]:
    """(mean ASA over annotators then images, mean GR) of hard SPAM inference at ``val_superpixels`` with the
    training scales (λs = ``spatial_scale``, λc = ``color_scale``), on the encoder's device."""
    from .metrics import asa, global_regularity
    from .model import SPAM

    encoder.eval()
    device = next(encoder.parameters()).device
    model = SPAM(encoder=encoder, compactness=cfg.spatial_scale, color_scale=cfg.color_scale, device=device)
    model.encoder.input_color_scale = cfg.color_scale
    scores, grs = [], []
    for sample in val_samples:
        labels = model.segment(sample.image, cfg.val_superpixels)
        scores.append(np.mean([asa(labels, g) for g in sample.gts]))
        grs.append(global_regularity(labels)["gr"])
    encoder.train()
    return float(np.mean(scores)), float(np.mean(grs))


def selection_score(val_asa: float, val_gr: float, min_gr: float) -> float:
    """Checkpoint ranking: val ASA, any checkpoint with GR >= min_gr ranked above every one below it."""
    return val_asa if val_gr >= min_gr else val_asa - 1.0


FIT_WARMUP, FIT_STEPS = 3, 20  # --minutes: steps skipped (compilation, cuDNN autotuning), then steps timed


def fit_schedule(step: int, seconds_per_step: float, seconds_per_validation: float, seconds_left: float,
                 val_every: int) -> int:
    """The schedule length (total iterations) that ends a run now at ``step`` within ``seconds_left``: the steps
    and the validations every ``val_every`` steps that fit, the final validation reserved, 5% kept spare."""
    per_step = seconds_per_step + seconds_per_validation / val_every
    spare = 0.95 * seconds_left - seconds_per_validation
    return step + max(0, int(spare / per_step))


def train(cfg: TrainConfig, resume: bool = True) -> Path:
    """Run (or resume) training; returns the path of the best encoder weights.

    With ``cfg.minutes > 0`` a fresh run times FIT_STEPS steps and one validation, then sets ``cfg.iterations``
    (the cosine schedule's length) so that it ends within ``minutes`` of the call, and fits it again at every
    validation from the speed since the last one (only ever shorter); a resumed run keeps the schedule saved in last.pt.
    """
    from .datasets import BSDS500

    from .encoder import load_encoder

    deadline = time.time() + cfg.minutes * 60
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
        import numba
        numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = Encoder(cfg.out_dim, cfg.width)
    if cfg.init:
        start, _ = load_encoder(cfg.init)
        if (start.out_dim, start.width) != (cfg.out_dim, cfg.width):
            raise ValueError(f"--init {cfg.init}: D={start.out_dim} width={start.width}, "
                             f"but training D={cfg.out_dim} width={cfg.width}")
        encoder.load_state_dict(start.state_dict())
    encoder.to(device)
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg.lr)
    step, best, history = 0, -1.0, []
    last = out / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        encoder.load_state_dict(state["encoder"])
        opt.load_state_dict(state["optimizer"])
        step, best, history = state["step"], state["best"], state["history"]
        print(f"resumed from {last} at step {step} (best val ASA {best:.4f})", file=sys.stderr)
        if state["config"].get("minutes", 0) > 0:  # a schedule fitted to a time limit: finish that schedule
            cfg.iterations = state["config"]["iterations"]
    fitting = cfg.minutes > 0 and step == 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop and batch: cuDNN may pick its fastest convolutions
    print(f"training on {device}", file=sys.stderr)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    sampler = CropSampler(BSDS500(cfg.root, "train"), cfg)
    val = BSDS500(cfg.root, "val")
    val_samples = [val[i] for i in range(min(cfg.val_images, len(val)))]
    rng = np.random.default_rng(cfg.seed + step)
    meta = dict(color_scale=cfg.color_scale, spatial_scale=cfg.spatial_scale, crop=cfg.crop,
                crop_superpixels=cfg.crop_superpixels)
    log = open(out / "log.csv", "a", newline="")
    writer = csv.writer(log)
    encoder.train()
    bar = tqdm(total=cfg.iterations, initial=step, desc="training", unit="step")
    t0 = time.time()

    def validation(loss: float) -> None:
        nonlocal best
        val_asa, val_gr = validate(encoder, val_samples, cfg)
        score = selection_score(val_asa, val_gr, cfg.min_gr)
        history.append({"step": step, "val_asa": val_asa, "val_gr": val_gr, "loss": loss,
                        "seconds": time.time() - t0})
        if score > best:
            best = score
            encoder.save(out / "best.pt", **meta, step=step, val_asa=val_asa, val_gr=val_gr)
            # the int8 companion of the former best would be refused (other weights): made for the final one below
            Path(str(out / "best.pt") + INT8_CALIBRATION_SUFFIX).unlink(missing_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=2))
        tqdm.write(f"step {step}: val ASA {val_asa:.4f} GR {val_gr:.3f} (best score {best:.4f})", file=sys.stderr)

    while step < cfg.iterations:
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.iterations))  # cosine decay
        for group in opt.param_groups:
            group["lr"] = lr
        feats, gts = sampler.sample(rng)
        feats, gts = feats.to(device, non_blocking=True), gts.to(device, non_blocking=True)
        loss, ce, compact = batch_loss(encoder, feats, gts, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        writer.writerow([step, f"{loss.item():.5f}", f"{ce.item():.5f}", f"{compact.item():.3f}", f"{lr:.2e}",
                         f"{time.time() - t0:.1f}"])
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", best_asa=f"{best:.4f}")
        if fitting and step == FIT_WARMUP:
            mark = (time.time(), step)  # speed is measured from here (compilation and autotuning behind)
        if fitting and step > FIT_WARMUP and (step == FIT_WARMUP + FIT_STEPS or step % cfg.val_every == 0):
            # fit the schedule to the time left: steps timed since the mark, this validation timed; re-fitted at
            # every validation, so a machine that slows down (or speeds up) still ends the run in time
            per_step = (time.time() - mark[0]) / (step - mark[1])
            tick = time.time()
            validation(loss.item())
            seconds = time.time() - tick
            fitted = fit_schedule(step, per_step, seconds, deadline - time.time(), cfg.val_every)
            # the first fit sets the schedule; later ones only shorten it (a longer one would raise the decayed lr)
            cfg.iterations = fitted if step == FIT_WARMUP + FIT_STEPS else min(cfg.iterations, fitted)
            bar.total, mark = cfg.iterations, (time.time(), step)
            tqdm.write(f"--minutes {cfg.minutes:g}: {per_step:.3f} s/step, {seconds:.1f} s/validation: "
                       f"{cfg.iterations} iterations", file=sys.stderr)
            (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        elif step % cfg.val_every == 0 or step == cfg.iterations:
            validation(loss.item())
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
            log.flush()
            torch.save({"encoder": encoder.state_dict(), "optimizer": opt.state_dict(), "step": step, "best": best,
                        "history": history, "config": asdict(cfg)}, out / "last.tmp")
            (out / "last.tmp").replace(last)
    bar.close()
    log.close()
    (out / "history.json").write_text(json.dumps(history, indent=2))
    write_int8_companion(out / "best.pt", sampler, cfg)
    return out / "best.pt"


def write_int8_companion(weights: Path, sampler: CropSampler, cfg: TrainConfig) -> Path | None:
    """The int8 companion ``<weights>.int8.pt`` of a checkpoint (:func:`~spam_stream.encoder.make_int8_companion`),
    calibrated on the first ``cfg.int8_images`` training images (whole images, colour as the encoder sees it), so
    that ``SPAM(encoder=weights)`` runs the int8 encoder on the CPU. Written only when its learned channels on those
    images are within :data:`~spam_stream.encoder.INT8_MAX_REL_RMS` of the float32 ones (else that checkpoint runs
    in float32; a note says so); kept when it is already there for these weights. None when none is written, or
    ``int8_images`` is 0, there is no checkpoint or this CPU has no int8 engine."""
    from .encoder import INT8_MAX_REL_RMS, int8_error, int8_supported, load_encoder, load_int8, make_int8_companion

    path = Path(str(weights) + INT8_CALIBRATION_SUFFIX)
    if cfg.int8_images <= 0 or not weights.is_file() or not int8_supported():
        return None
    enc, _ = load_encoder(weights)
    if path.is_file():
        try:
            if load_int8(enc, torch.load(path, map_location="cpu", weights_only=True)) is not None:
                return path  # made for these weights already (a resumed run with no better checkpoint)
        except Exception:
            pass  # unreadable or another network: made again
    colours = [torch.from_numpy(np.ascontiguousarray(lab.transpose(2, 0, 1)) * cfg.color_scale)
               for lab, _ in sampler.items[:cfg.int8_images]]
    blob = make_int8_companion(enc, tqdm(colours, desc="int8 calibration", unit="img", leave=False))
    error = int8_error(enc, load_int8(enc, blob), colours)
    if error > INT8_MAX_REL_RMS:
        print(f"int8: {weights.name}'s int8 channels are {error:.3f} (relative RMS) from float32 on the calibration "
              f"images, above {INT8_MAX_REL_RMS}: no {path.name}, it runs in float32", file=sys.stderr)
        return None
    torch.save(blob, path)
    print(f"int8: wrote {path} ({error:.3f} relative RMS from float32 on {len(colours)} train images)",
          file=sys.stderr)
    return path


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(root="")
    p.add_argument("--root", default=None, help="BSDS500 folder (default: ../shared/datasets/bsds500 or $SPAM_BSDS_ROOT)")
    p.add_argument("--out", default=d.out, help=f"run folder: log.csv, last.pt (resume), best.pt and its int8 companion (default {d.out})")
    for name in ("iterations", "batch", "crop", "crop_superpixels", "soft_iterations", "width", "out_dim",
                 "val_every", "val_images", "val_superpixels", "checkpoint_every", "seed", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                       help=f"(default {getattr(d, name)})")
    for name in ("lr", "color_scale", "spatial_scale", "compactness_weight", "min_gr"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name),
                       help=f"(default {getattr(d, name)})")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help="end within this wall time: a fresh run times its first steps and one validation, then sets "
                        "--iterations (the cosine schedule) to what fits, shortened at validations if steps slow down; a resumed run "
                        "keeps that schedule (default 0: off)")
    p.add_argument("--int8-images", type=int, default=d.int8_images,
                   help="at the end, calibrate the int8 CPU encoder of best.pt on this many train images and write "
                        f"best.pt{INT8_CALIBRATION_SUFFIX} beside it (SPAM then runs it in int8 on CPUs with AVX2; "
                        f"0: none, float32 only; default {d.int8_images})")
    p.add_argument("--device", default=d.device,
                   help="auto (default: cuda when available, with the Triton soft iterations), cpu or cuda[:N]")
    p.add_argument("--init", default=d.init, help="encoder weights to start from (fine-tuning); ignored on resume")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if OUT/last.pt exists")


def run_train(args) -> int:
    from .datasets import default_bsds_root
    from .io import InputError

    try:
        resolve_device(args.device)  # checked before the dataset loads: a one-line error, nothing started
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.minutes < 0:
        raise InputError(f"--minutes {args.minutes:g}: must be >= 0 (0: no time limit)")
    root = args.root or default_bsds_root()
    if root is None or not Path(root).is_dir():
        raise InputError("BSDS500 not found: pass --root DIR or set SPAM_BSDS_ROOT")
    from .io import prepare_outdir

    prepare_outdir(args.out)  # a file or an unwritable place: one line before the data loads
    fields = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if k != "root"}
    cfg = TrainConfig(root=str(root), **fields)
    best = train(cfg, resume=not args.no_resume)
    print(f"best encoder: {best}")
    return 0
