"""``spam-stream batch``: many images, pipelined, resumable, shardable, with a manifest."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..io import InputError
from ..pipelines.batch import parse_shard, run_batch
from ..pipelines.executor import PipelineError
from .common import (add_model_arguments, add_output_arguments, add_prior_arguments, build_attention, build_model,
                     positive_int, report_failures, resolve_prior_arguments)

DESCRIPTION = """\
Segment many images. INPUTS are image files, folders (searched recursively), glob patterns ('photos/**/*.jpg',
quoted) or text files (.txt/.lst) listing one path per line. For each image writes, mirrored under OUTDIR by its
path relative to the folder / pattern / list it came from: <stem>_labels.png (uint16 labels) and
<stem>_overlay.png; and OUTDIR/manifest.jsonl, one JSON line per image (input, outputs, K', ms per stage, status,
error).

Decoding, the prior, the encoder, clustering and writing run as a pipeline. Every output is written under a
temporary name and renamed, so after a crash or Ctrl-C, --resume skips exactly the images whose outputs are
complete. --shard I/N processes a deterministic 1/N of the inputs (N machines, no overlap, no gap; manifest
manifest-I-of-N.jsonl). A bad image is reported and the rest go on; the exit code is 1 when any image failed."""


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="superpixels of many images (folders, globs, lists; resumable, shardable)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files, folders, glob patterns or list files")
    add_output_arguments(p)
    add_model_arguments(p)
    add_prior_arguments(p)
    g = p.add_argument_group("batch")
    g.add_argument("--resume", action="store_true", help="skip images whose outputs already exist (complete)")
    g.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="process only shard I of N (0 <= I < N), by a hash of each image's relative path")
    g.add_argument("--sequential", action="store_true",
                   help="run the stages one image at a time instead of pipelined (same results)")
    g = p.add_argument_group(
        "engine",
        "--engine ray runs the same per-image work on Ray Data (pip install 'spam-stream[ray]'): a pool of\n"
        "actors, each loading the model once; same outputs and manifest (plus the Ray node of each image).\n"
        "OUTDIR must be reachable by every worker (a shared filesystem on a cluster). The actors never take\n"
        "all the CPUs: one is kept for Ray Data's own tasks (a pool holding every CPU stalls).")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local = this process (default); ray = Ray Data, on a local Ray or a cluster")
    g.add_argument("--address", metavar="auto|ray://HOST:PORT",
                   help="ray: the cluster to join (auto = the one 'ray start' runs on this machine; an explicit "
                        "address needs the cluster's auth token, ~/.ray/auth_token or RAY_AUTH_TOKEN); default: start "
                        "a new local Ray with this machine's CPUs")
    g.add_argument("--workers", type=positive_int, metavar="N",
                   help="ray: number of actors (default: one per spare CPU, or one per GPU group with "
                        "--num-gpus-per-worker)")
    g.add_argument("--num-gpus-per-worker", type=float, default=0, metavar="G",
                   help="ray: GPUs per actor (e.g. 1, or 0.5 to share a GPU); the model runs on cuda")
    p.set_defaults(run=run)


def _shard(text: str):
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ray_arguments_used(args) -> bool:
    return args.address is not None or args.workers is not None or args.num_gpus_per_worker != 0


def worker_spec(args) -> dict:
    """The picklable model description a Ray worker builds SPAM, the prior and the attention from (the flags that
    :func:`build_model`, :func:`build_prior` and :func:`build_attention` read)."""
    from ..pipelines.ray_engine import make_spec

    prior_options = {}
    if args.prior == "sam":
        prior_options = {"points_per_side": args.points_per_side, "device": args.device}
    elif args.prior == "fastsam":
        prior_options = {"imgsz": args.imgsz, "device": args.device}
    prior_options.update(checkpoint=args.prior_checkpoint, sam_model=args.sam_model, masks=args.prior_masks)
    attention = None
    if args.attention != "none":
        attention = "saliency" if args.saliency_weights is None else {"dino_weights": str(args.saliency_weights)}
    return make_spec(encoder=args.encoder, compactness=args.compactness, color_scale=args.color_scale,
                     iterations=args.iterations, device=args.device, prior=args.prior, prior_options=prior_options,
                     attention=attention, attention_ratio=args.attention_ratio, focus=args.focus,
                     memory_budget=None if args.max_memory is None else args.max_memory * 2**20)


def run_ray(args) -> int:
    from ..pipelines.ray_engine import run_batch_ray

    if args.sequential:
        raise InputError("--sequential is for --engine local (Ray workers already run one image at a time)")
    if args.num_gpus_per_worker < 0:
        raise InputError("--num-gpus-per-worker must be >= 0")

    def progress(entry):
        if entry["status"] != "ok":
            print(f"error: {entry['error']}", file=sys.stderr)

    entries, carried, total = run_batch_ray(worker_spec(args), args.inputs, args.output, args.superpixels,
                                            resume=args.resume, shard_spec=args.shard, color=args.boundary_color,
                                            workers=args.workers, num_gpus_per_worker=args.num_gpus_per_worker,
                                            address=args.address, progress=progress)
    return _report(entries, carried, total, args)


def _report(entries, carried, total, args) -> int:
    failures = [e["error"] for e in entries if e["status"] != "ok"]
    if carried:
        print(f"resumed: {len(carried)} image(s) already complete, skipped", file=sys.stderr)
    print(f"processed {len(entries)} image(s) in this run", file=sys.stderr)
    done = len(carried) + sum(e["status"] == "ok" for e in entries)
    return report_failures(failures, done, total, "image(s)", Path(args.output))


def run(args) -> int:
    resolve_prior_arguments(args)
    if args.engine == "ray":
        return run_ray(args)
    if _ray_arguments_used(args):
        raise InputError("--address, --workers and --num-gpus-per-worker are for --engine ray")
    model = build_model(args)
    attention = build_attention(args)
    bar = tqdm(desc="images", unit="img", dynamic_ncols=True)

    def progress(frame):
        bar.update(1)
        if frame.error:
            tqdm.write(f"error: {frame.error}", file=sys.stderr)

    try:
        entries, carried, total = run_batch(model, args.inputs, args.output, args.superpixels, resume=args.resume,
                                            shard_spec=args.shard, color=args.boundary_color,
                                            pipelined=not args.sequential, progress=progress, attention=attention,
                                            attention_ratio=args.attention_ratio, focus=args.focus)
    except PipelineError as exc:
        raise InputError(str(exc)) from None
    finally:
        bar.close()
    return _report(entries, carried, total, args)
