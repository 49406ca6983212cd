"""``spam-stream eval``: SPAM and the classical baselines on BSDS500, with the metrics of ``metrics.py``.

Baselines, measured in the same run: scikit-image SLIC; OpenCV SLICO, LSC and SEEDS (``cv2.ximgproc``, from
``opencv-contrib-python-headless``; skipped with a note in ``summary.md`` when it is not installed); SPAM with D=5
when SPAM runs with an encoder.

Outputs in ``--out``:

* ``per_image.csv``  one row per (method, K, image): the metrics (ground-truth metrics averaged over the
  annotators) and the segmentation time in seconds;
* ``summary.md``     a markdown table of the means per (method, K), the settings, and the failures if any;
* ``asa_vs_k.png``, ``gr_vs_k.png``, ``ev_vs_k.png`` (metric vs superpixels produced) and ``br_vs_bp.png``.

The CLI (``spam-stream eval``) wires it as ``add_eval_arguments(subparser)`` + ``run_eval(args)``.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .commands.common import iterations_argument, positive_int
from .datasets import BSDS500, default_bsds_root, oracle_partition
from .features import FAST_SPATIAL_SCALE, SPATIAL_SCALE, default_spatial_scale
from .metrics import asa, evaluate

__all__ = ["add_eval_arguments", "run_eval", "ORACLE_LABEL", "SLIC_LABEL", "SLICO_LABEL", "LSC_LABEL", "SEEDS_LABEL",
           "NO_CNN_LABEL", "METRIC_KEYS", "opencv_available"]

ORACLE_LABEL = "oracle (upper bound for a perfect SAM)"
SLIC_LABEL = "SLIC (scikit-image)"
SLICO_LABEL = "SLICO (OpenCV)"
LSC_LABEL = "LSC (OpenCV)"
SEEDS_LABEL = "SEEDS (OpenCV)"
NO_CNN_LABEL = "SPAM D=5 (no CNN, no prior)"
METRIC_KEYS = ("k_produced", "asa", "asa_first", "ue", "br", "bp", "ev", "src", "smf", "gr", "delta_k")
CSV_FIELDS = ("method", "k", "image") + METRIC_KEYS + ("seconds",)
OPENCV_MISSING_NOTE = ("OpenCV SLICO, LSC and SEEDS are not run: they need cv2.ximgproc "
                       "(pip install opencv-contrib-python-headless), which is not installed here.")
OPENCV_SETTINGS = ("OpenCV on CIELAB (cv2.COLOR_RGB2LAB): SLICO and LSC with region size √(HW/K), 10 iterations, "
                   "label connectivity enforced (min element 25%); LSC ratio 0.075; SEEDS with K superpixels, "
                   "4 levels, prior 2, 5 histogram bins, 10 iterations (the OpenCV defaults otherwise).")

# labels = method(image (H, W, 3) uint8, k, prior (H, W) int32 | None) -> (H, W) integer labels
Method = Callable[[np.ndarray, int, "np.ndarray | None"], np.ndarray]


def _k_list(text: str) -> list[int]:
    try:
        ks = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return ks


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``spam-stream eval``."""
    parser.add_argument("--root", type=Path, default=None, metavar="DIR",
                        help="BSDS500 root holding data/images and data/groundTruth (default: $SPAM_BSDS_ROOT, "
                             "else ../shared/datasets/bsds500)")
    parser.add_argument("--split", choices=["train", "val", "test"], default="test", help="BSDS500 split (default test)")
    parser.add_argument("--superpixels", type=_k_list, default=[200, 400, 600, 800, 1000], metavar="K1,K2,...",
                        help="numbers of superpixels requested (default 200,400,600,800,1000)")
    parser.add_argument("--prior", choices=["none", "oracle"], default="none",
                        help="prior for SPAM: none, or oracle = the first annotator's segmentation with a 1-px "
                             f"uncertain band, i.e. an {ORACLE_LABEL}")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images")
    parser.add_argument("--out", type=Path, default=Path("eval-results"), metavar="DIR",
                        help="output folder (default ./eval-results)")
    parser.add_argument("--compactness", type=float, default=None, metavar="LAMBDA_S",
                        help=f"SPAM λs, regularity (default {SPATIAL_SCALE}; {FAST_SPATIAL_SCALE} with --encoder fast)")
    parser.add_argument("--iterations", type=iterations_argument, default=10, metavar="N|auto",
                        help="SPAM clustering iterations (default 10; 'auto': until converged, see spam-stream image "
                             "--help)")
    parser.add_argument("--subsample", type=positive_int, default=None, metavar="ROWS",
                        help="SPAM's row subsampling of the clustering rounds (default: SPAM's, see spam-stream "
                             "image --help)")
    parser.add_argument("--encoder", default="default", metavar="PATH|none|default",
                        help="SPAM encoder: 'default' (bundled weights), 'none' (D=5, no CNN) or a weights file")
    parser.add_argument("--no-baselines", action="store_true",
                        help="do not run the baselines (scikit-image SLIC, and SPAM with D=5 when an encoder is used)")


# --------------------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------------------
def _spam_method(compactness: float, iterations: int, encoder, subsample: int | None = None) -> Method:
    def run(image, k, prior):
        import spam_stream  # looked up at call time (tests monkeypatch spam_stream.segment)

        extra = {} if subsample is None else {"subsample": subsample}
        return spam_stream.segment(image, n_superpixels=k, prior=prior, compactness=compactness,
                                   iterations=iterations, encoder=encoder, **extra)
    return run


def _slic(image, k, prior):
    from skimage.segmentation import slic

    return slic(image, n_segments=k, compactness=10, start_label=0)


def opencv_available() -> bool:
    """True when OpenCV's contrib module ``cv2.ximgproc`` (SLICO, LSC, SEEDS) can be imported."""
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "ximgproc")


def _opencv_lab(image):
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)


def _region_size(image, k) -> int:
    return max(2, int(round(np.sqrt(image.shape[0] * image.shape[1] / k))))


def _slico(image, k, prior):
    import cv2

    sp = cv2.ximgproc.createSuperpixelSLIC(_opencv_lab(image), algorithm=cv2.ximgproc.SLICO,
                                           region_size=_region_size(image, k))
    sp.iterate(10)
    sp.enforceLabelConnectivity(25)
    return sp.getLabels().astype(np.int32)


def _lsc(image, k, prior):
    import cv2

    sp = cv2.ximgproc.createSuperpixelLSC(_opencv_lab(image), region_size=_region_size(image, k), ratio=0.075)
    sp.iterate(10)
    sp.enforceLabelConnectivity(25)
    return sp.getLabels().astype(np.int32)


def _seeds(image, k, prior):
    import cv2

    h, w = image.shape[:2]
    sp = cv2.ximgproc.createSuperpixelSEEDS(w, h, 3, int(k), 4, 2, 5, False)
    sp.iterate(_opencv_lab(image), 10)
    return sp.getLabels().astype(np.int32)


def _compactness(args) -> float:
    """The λs SPAM runs with: --compactness, else the encoder's default."""
    return default_spatial_scale(args.encoder) if args.compactness is None else args.compactness


def _subsample(args) -> int:
    """The row subsampling SPAM runs with: --subsample, else SPAM's default."""
    from .model import DEFAULT_SUBSAMPLE

    return DEFAULT_SUBSAMPLE if getattr(args, "subsample", None) is None else args.subsample


def _build_methods(args) -> list[tuple[str, Method, bool]]:
    """[(name, method, uses_prior)]."""
    encoder = None if str(args.encoder).lower() == "none" else args.encoder
    spam_name = "SPAM" if args.prior == "none" else f"SPAM + {ORACLE_LABEL}"
    methods = [(spam_name, _spam_method(args.compactness, args.iterations, encoder, args.subsample),
                args.prior == "oracle")]
    if not args.no_baselines:
        from .model import DEFAULT_WEIGHTS

        uses_cnn = encoder is not None and not (encoder == "default" and not DEFAULT_WEIGHTS.is_file())
        if uses_cnn:  # what the CNN adds, measured in the same run
            methods.append((NO_CNN_LABEL, _spam_method(args.compactness, args.iterations, None, args.subsample), False))
        methods.append((SLIC_LABEL, _slic, False))
        if opencv_available():
            methods += [(SLICO_LABEL, _slico, False), (LSC_LABEL, _lsc, False), (SEEDS_LABEL, _seeds, False)]
    return methods


def _warm_up(methods) -> None:
    """One call per method on a small image, so that model loading is not timed on the first real image."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    prior = np.zeros((48, 64), np.int32)
    for _, method, uses_prior in methods:
        try:
            method(image, 12, prior if uses_prior else None)
        except Exception:  # a real failure is reported on the real images
            pass


# --------------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> list[dict]:
    """Means per (method, k), in first-seen method order and increasing k."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], int(r["k"])), []).append(r)
    order = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for (method, k), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        s = {"method": method, "k": k, "n": len(rs)}
        for key in METRIC_KEYS + ("seconds",):
            s[key] = float(np.mean([float(r[key]) for r in rs]))
        out.append(s)
    return out


def write_summary(path: Path, summary: list[dict], failures: list[tuple], header: list[str]) -> None:
    cols = ["method", "K", "K'", "ASA", "ASA₁", "UE", "BR", "BP", "EV", "GR", "SRC", "SMF", "ΔK", "mean seconds", "images"]
    lines = ["# spam-stream eval", "", *header, "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summary:
        vals = [s["method"], str(s["k"]), f"{s['k_produced']:.1f}"]
        vals += [f"{s[key]:.4f}" for key in ("asa", "asa_first", "ue", "br", "bp", "ev", "gr", "src", "smf")]
        vals += [f"{s['delta_k']:.3f}", f"{s['seconds']:.3f}", str(s["n"])]
        lines.append("| " + " | ".join(vals) + " |")
    lines += ["", "ASA, BR, BP, EV, GR, SRC, SMF: higher is better; UE, ΔK: lower is better. "
              "BR/BP with a 2-px Chebyshev tolerance. Ground-truth metrics are averaged over the annotators, then "
              "over the images. ASA₁: ASA against the first annotator only (the one the oracle prior is built from). "
              "K' = superpixels produced (mean)."]
    if failures:
        lines += ["", f"## Failures ({len(failures)})", ""]
        lines += [f"- {name} / {method} / K={k}: {err}" for name, method, k, err in failures]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plots(out: Path, summary: list[dict], title_suffix: str = "") -> list[Path]:
    """asa_vs_k.png, gr_vs_k.png, ev_vs_k.png (metric vs mean K' produced) and br_vs_bp.png."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas for PNG

    methods = list(dict.fromkeys(s["method"] for s in summary))
    paths = []

    def series(method, key):
        rs = [s for s in summary if s["method"] == method]
        return [s["k_produced"] for s in rs], [s[key] for s in rs], [s["k"] for s in rs]

    for key, name, fname in (("asa", "ASA (achievable segmentation accuracy)", "asa_vs_k.png"),
                             ("gr", "GR (global regularity = SRC × SMF)", "gr_vs_k.png"),
                             ("ev", "EV (explained variation)", "ev_vs_k.png")):
        fig = Figure(figsize=(6.4, 4.6))
        ax = fig.add_subplot()
        for m in methods:
            x, y, _ = series(m, key)
            ax.plot(x, y, marker="o", label=m)
        ax.set_xlabel("superpixels produced K' (mean over images)")
        ax.set_ylabel(name)
        ax.set_title(f"{key.upper()} vs number of superpixels{title_suffix}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        paths.append(out / fname)

    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    for m in methods:
        _, bp, ks = series(m, "bp")
        _, br, _ = series(m, "br")
        line, = ax.plot(bp, br, marker="o", label=m)
        for x, y, k in zip(bp, br, ks):
            ax.annotate(f"K={k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line.get_color())
    ax.set_xlabel("boundary precision BP (r = 2 px)")
    ax.set_ylabel("boundary recall BR (r = 2 px)")
    ax.set_title(f"Boundary recall vs precision{title_suffix}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "br_vs_bp.png", dpi=110)
    paths.append(out / "br_vs_bp.png")
    return paths


# --------------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------------
def run_eval(args) -> int:
    """Run ``spam-stream eval``. Exit code: 0 = all went well, 1 = some (image, method, K) failed (they are listed
    in summary.md and on stderr; the rest is written), 2 = nothing to evaluate (no data set / all failed)."""
    root = args.root if args.root is not None else default_bsds_root()
    if root is None:
        print("error: BSDS500 not found; pass --root DIR or set SPAM_BSDS_ROOT", file=sys.stderr)
        return 2
    try:
        ds = BSDS500(root, args.split)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_images = len(ds) if args.limit is None else min(args.limit, len(ds))
    if n_images == 0:
        print(f"error: no images in {ds.image_dir}", file=sys.stderr)
        return 2
    ks = list(args.superpixels)
    methods = _build_methods(args)
    from .io import InputError, prepare_outdir

    try:
        out = prepare_outdir(args.out)
    except InputError as exc:
        print(f"error: --out {exc}", file=sys.stderr)
        return 2
    _warm_up(methods)

    rows: list[dict] = []
    failures: list[tuple] = []  # (image, method, k, error)

    def fail(name, method, k, exc):
        failures.append((name, method, k, f"{type(exc).__name__}: {exc}"))
        tqdm.write(f"FAILED {name} / {method} / K={k}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if getattr(args, "verbose", False):
            tqdm.write(traceback.format_exc(), file=sys.stderr)

    with open(out / "per_image.csv", "w", newline="", encoding="utf-8") as f, \
            tqdm(total=n_images * len(ks), desc=f"eval {args.split}", unit="img×K", file=sys.stderr) as bar:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for i in range(n_images):
            name = ds.names[i]
            try:
                sample = ds[i]
                prior = oracle_partition(sample.gts[0], band=1) if args.prior == "oracle" else None
            except Exception as e:  # unreadable image / ground truth: skip the image, keep going
                fail(name, "*", "*", e)
                bar.update(len(ks))
                continue
            for k in ks:
                for method_name, method, uses_prior in methods:
                    try:
                        t0 = time.perf_counter()
                        labels = method(sample.image, k, prior if uses_prior else None)
                        seconds = time.perf_counter() - t0
                        labels = np.asarray(labels)
                        if labels.shape != sample.image.shape[:2]:
                            raise ValueError(f"labels have shape {labels.shape}, image {sample.image.shape[:2]}")
                        row = {"method": method_name, "k": k, "image": name,
                               **evaluate(labels, sample.gts, sample.image, k),
                               "asa_first": asa(labels, sample.gts[0]), "seconds": seconds}
                    except Exception as e:
                        fail(name, method_name, k, e)
                        continue
                    rows.append(row)
                    writer.writerow({key: (f"{v:.6g}" if isinstance(v, float) else v) for key, v in row.items()})
                    f.flush()
                bar.update(1)

    summary = summarize(rows)
    encoder = "none (D=5, no CNN)" if str(args.encoder).lower() == "none" else str(args.encoder)
    header = [f"BSDS500 `{args.split}` split, {n_images} images, K = {', '.join(map(str, ks))}.",
              f"SPAM: compactness {_compactness(args)}, iterations {args.iterations}, "
              f"subsample {_subsample(args)}, encoder {encoder}, prior "
              + (f"{ORACLE_LABEL}: first annotator's segmentation, 1-px uncertain band" if args.prior == "oracle"
                 else "none") + ".",
              "Baselines, same run: " + ("none (--no-baselines)." if args.no_baselines
                                         else ", ".join(m[0] for m in methods[1:]) + " (SLIC compactness 10). "
                                         + (OPENCV_SETTINGS if opencv_available() else OPENCV_MISSING_NOTE)),
              "Seconds: segmentation only (metrics excluded), after one warm-up call per method."]
    write_summary(out / "summary.md", summary, failures, header)
    if summary:
        suffix = f" — BSDS500 {args.split}, {n_images} images"
        write_plots(out, summary, suffix)

    if failures:
        print(f"{len(failures)} failure(s):", file=sys.stderr)
        for name, method, k, err in failures:
            print(f"  {name} / {method} / K={k}: {err}", file=sys.stderr)
    print(f"wrote {out / 'per_image.csv'}, {out / 'summary.md'}" + (" and 4 plots" if summary else ""),
          file=sys.stderr)
    if not rows:
        return 2
    return 1 if failures else 0


