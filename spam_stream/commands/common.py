"""Flags and builders shared by the commands that segment (image, video, batch) and by eval/train.

Sits below the CLI: commands and other modules import from here, never from :mod:`spam_stream.cli`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..features import FAST_SPATIAL_SCALE, SPATIAL_SCALE
from ..io import InputError, prepare_outdir  # noqa: F401  (commands import it from here)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def iterations_argument(text: str):
    """argparse type for --iterations: a positive integer or 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of iterations or 'auto', got {text!r}") from None


def fraction_argument(text: str) -> float:
    """argparse type for --tol: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {value:g}")
    return value


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs SPAM."""
    from ..model import DEFAULT_SUBSAMPLE

    p.add_argument("-k", "--superpixels", type=positive_int, default=400, metavar="K",
                   help="number of superpixels requested (default: 400)")
    p.add_argument("--compactness", type=positive_float, default=None, metavar="LAMBDA_S",
                   help="λs, the regularity knob: higher = more regular, lower = closer to colour edges "
                        f"(default {SPATIAL_SCALE}; {FAST_SPATIAL_SCALE} with --encoder fast)")
    p.add_argument("--color-scale", type=positive_float, default=0.26, metavar="LAMBDA_C", help="λc, colour weight (default 0.26)")
    p.add_argument("--iterations", type=iterations_argument, default=10, metavar="N|auto",
                   help="clustering iterations, at most: they stop early once converged (see --tol). 'auto' = up to "
                        "50, stopping once at most 1.5%% of the pixels change superpixel in a round (default 10)")
    p.add_argument("--tol", type=fraction_argument, default=None, metavar="FRACTION",
                   help="convergence tolerance: stop the iterations after a round that changes the superpixel of at "
                        "most this fraction of the pixels (default 0 = only when nothing changes, which gives the same "
                        "result as all the iterations; 0.015 with --iterations auto)")
    p.add_argument("--subsample", type=subsample_argument, default=None, metavar="ROWS",
                   help="row subsampling of the clustering rounds: each round assigns and averages every ROWS-th "
                        "image row (rotating), then one full assignment gives the labels, as fast SLIC "
                        "implementations do; 1 = every row in every round (slower, the same quality on BSDS500; "
                        f"default {DEFAULT_SUBSAMPLE})")
    p.add_argument("--encoder", default="default", metavar="PATH|default|fast|none",
                   help="encoder weights: 'default' = the bundled encoder, 'fast' = the bundled encoder at half "
                        "resolution, its channels upsampled guided by the full-resolution colour (about 3x faster "
                        "on a CPU, ASA -0.0025 on BSDS500), 'none' = no CNN (D=5), or a weights file")
    p.add_argument("--max-memory", type=positive_int, default=None, metavar="MB",
                   help="memory for the encoder's activations in MB (default 128): it runs tile by tile within it, "
                        "with the same results; see the README's memory model")
    p.add_argument("--memory-limit", type=non_negative_int, default=None, metavar="MB",
                   help="refuse (one line, nothing else lost) a frame whose estimated peak memory exceeds MB "
                        "(default: half of this machine's memory, or what is free when the frame arrives if less: a "
                        "huge image fails in seconds instead of taking the machine; 0 = no limit)")
    p.add_argument("--device", default="cpu",
                   help="torch device: cpu, cuda, cuda:N or auto (cuda when there is one; default cpu)")


def _focus_point(text: str) -> tuple[float, float, float]:
    try:
        x, y, factor = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,FACTOR (e.g. 120,80,3), got {text!r}") from None
    if factor <= 0:
        raise argparse.ArgumentTypeError(f"the focus factor must be > 0, got {factor:g}")
    return x, y, factor


def add_prior_arguments(p: argparse.ArgumentParser) -> None:
    """Prior flags shared by image, video and batch."""
    g = p.add_argument_group(
        "prior object partition",
        "Superpixels never cross a prior object. Model checkpoints are never downloaded: SAM's come from "
        "https://github.com/facebookresearch/segment-anything#model-checkpoints (e.g. sam_vit_b_01ec64.pth), "
        "FastSAM's from https://github.com/CASIA-IVA-Lab/FastSAM or the ultralytics assets (FastSAM-s.pt, "
        "FastSAM-x.pt).")
    g.add_argument("--prior", choices=["none", "sam", "fastsam", "masks"], default=None,
                   help="none (default); sam = segment-anything automatic masks (slow on a CPU); fastsam = ultralytics "
                        "FastSAM (fast); masks = your own label image / .npy file(s) given by --prior-masks")
    g.add_argument("--prior-checkpoint", type=Path, metavar="PATH",
                   help="checkpoint of the sam or fastsam model (required by both)")
    g.add_argument("--prior-masks", type=Path, metavar="PATH",
                   help="label image (each value one object), .npy partition (-1 = uncertain) or .npy stack of binary "
                        "masks (M, H, W) (aggregated like SAM's); or a folder of them, matched to the inputs by file "
                        "stem")
    g.add_argument("--prior-mask", type=Path, metavar="PATH",
                   help="shorthand for --prior masks --prior-masks PATH")
    g.add_argument("--sam-model", choices=["vit_h", "vit_l", "vit_b"], default="vit_h",
                   help="SAM architecture matching --prior-checkpoint (default vit_h, the paper's)")
    g.add_argument("--points-per-side", type=positive_int, default=32, metavar="N",
                   help="sam: N×N grid of point prompts (default 32, the paper's; 8-16 is much faster)")
    g.add_argument("--imgsz", type=positive_int, default=1024, metavar="N",
                   help="fastsam: inference size in pixels (default 1024; 640 is faster)")
    g = p.add_argument_group("adaptive density (needs a prior)")
    g.add_argument("--attention", choices=["none", "saliency"], default="none",
                   help="saliency = visual-attention mode: objects with mean saliency > 0.1 (spectral residual, no "
                        "weights needed) get --attention-ratio times the superpixels per pixel, the rest fewer; the "
                        "total stays K")
    g.add_argument("--attention-ratio", type=positive_float, default=2.5, metavar="R",
                   help="superpixel density of salient objects relative to the others (default 2.5)")
    g.add_argument("--saliency-weights", type=Path, metavar="PATH",
                   help="use DINO attention (the paper's saliency) from this ViT-S/16 state_dict instead of the "
                        "spectral residual; needs timm installed")
    g.add_argument("--focus", type=_focus_point, action="append", metavar="X,Y,FACTOR",
                   help="user-driven mode: the object under pixel (X, Y) gets FACTOR times the superpixel density "
                        "(repeatable: --focus 120,80,3 --focus 10,10,0.5)")


def resolve_prior_arguments(args) -> None:
    """Fold the shorthand into the canonical flags (one code path); one-line errors for missing or contradictory
    flags."""
    if args.prior_mask is not None:
        if args.prior not in (None, "masks") or (args.prior_masks is not None and args.prior_masks != args.prior_mask):
            raise InputError("--prior-mask is shorthand for --prior masks --prior-masks PATH: do not combine it with another prior")
        args.prior, args.prior_masks = "masks", args.prior_mask
    if args.prior is None:
        args.prior = "masks" if args.prior_masks is not None else "none"
    if args.prior == "masks" and args.prior_masks is None:
        raise InputError("--prior masks needs --prior-masks PATH")
    if args.prior in ("sam", "fastsam") and args.prior_checkpoint is None:
        example = "sam_vit_h_4b8939.pth" if args.prior == "sam" else "FastSAM-s.pt"
        raise InputError(f"--prior {args.prior} needs --prior-checkpoint PATH (e.g. {example}; nothing is downloaded)")
    if args.prior_checkpoint is not None and args.prior not in ("sam", "fastsam"):
        raise InputError("--prior-checkpoint is for --prior sam or --prior fastsam")
    if args.prior_masks is not None and args.prior != "masks":
        raise InputError(f"--prior-masks is for --prior masks, not --prior {args.prior}")
    if args.prior == "none" and (args.attention != "none" or args.focus):
        raise InputError("--attention and --focus weight prior objects: they need a --prior")
    if args.saliency_weights is not None and args.attention == "none":
        raise InputError("--saliency-weights is for --attention saliency")


def build_prior(args):
    """The prior provider the flags ask for (loaded once), or None."""
    from ..priors import make_provider

    options = {}
    if args.prior == "sam":
        options = {"points_per_side": args.points_per_side, "device": args.device}
    elif args.prior == "fastsam":
        options = {"imgsz": args.imgsz, "device": args.device}
    try:
        return make_provider(args.prior, checkpoint=args.prior_checkpoint, sam_model=args.sam_model,
                             masks=args.prior_masks, **options)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def build_attention(args):
    """The ``attention`` argument of SPAM.segment for the flags: None, "saliency" or a DINO saliency callable."""
    if args.attention == "none":
        return None
    if args.saliency_weights is None:
        return "saliency"
    from ..attention import DinoSaliency

    try:
        return DinoSaliency(args.saliency_weights)
    except (ImportError, OSError, RuntimeError) as exc:
        raise InputError(f"{args.saliency_weights}: {exc}") from None


def build_model(args):
    """SPAM with the model flags and, when the command has prior flags, the prior provider (each loaded once)."""
    from ..kernels import resolve_device
    from ..model import SPAM

    try:  # before any model loads: an unknown or absent device is one line
        args.device = str(resolve_device(args.device))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    prior = build_prior(args) if hasattr(args, "prior") else None
    budget = None if getattr(args, "max_memory", None) is None else args.max_memory * 2**20
    limit = None if getattr(args, "memory_limit", None) is None else args.memory_limit * 2**20
    return SPAM(encoder=args.encoder, compactness=args.compactness, color_scale=args.color_scale,
                iterations=args.iterations, device=args.device, prior=prior, memory_budget=budget,
                memory_limit=limit, tol=getattr(args, "tol", None), subsample=getattr(args, "subsample", None))


def subsample_argument(text: str) -> int:
    """argparse type for --subsample: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (1 = every row in every round), got {value}")
    return value


def color_argument(text: str):
    """argparse type for --boundary-color."""
    from ..io import parse_color

    try:
        return parse_color(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_output_arguments(p: argparse.ArgumentParser, outdir_type=Path, outdir_help: str = "output folder (created)"
                         ) -> None:
    """-o OUTDIR and the look of the overlays, shared by image, video and batch (batch passes a type that keeps
    URIs such as s3://bucket/prefix as given: Path would fold them into s3:/bucket)."""
    p.add_argument("-o", "--output", type=outdir_type, required=True, metavar="OUTDIR", help=outdir_help)
    p.add_argument("--boundary-color", type=color_argument, default="auto", metavar="COLOR",
                   help="colour of the superpixel boundaries in overlays: auto (yellow on dark pixels, dark blue on "
                        "bright ones: shows on any image; the default), a name (red, green, blue, yellow, magenta, "
                        "cyan, white, black), R,G,B or #RRGGBB")
    p.add_argument("--start-label", type=non_negative_int, default=0, metavar="N",
                   help="first label written (default 0: labels 0..K'-1). scikit-image's regionprops skips label 0, "
                        "so use --start-label 1 for label PNGs that go to regionprops")
    p.add_argument("--graph", action="store_true",
                   help="also write <stem>_graph.npz: the superpixels' region adjacency graph (per node: ids, area, "
                        "centroid, bbox, mean_rgb, object; per edge: edges, boundary, same_object; for a video one "
                        "file per clip with 'frame' / 'edge_frame' columns, node ids = the label PNGs' ids)")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def report_failures(failures: list[str], done: int, total: int, what: str, where) -> int:
    """Print the summary line and the failures (one line each) to stderr; the exit code: 1 if any failed."""
    import sys

    print(f"wrote {done} of {total} {what} to {where}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
