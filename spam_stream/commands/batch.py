"""``spam-stream batch``: many images and videos, pipelined, resumable, shardable, with a manifest."""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from ..io import InputError
from ..pipelines.batch import parse_shard, run_batch
from ..pipelines.executor import PipelineError
from ..pipelines.outputs import outdir_argument
from .common import (add_model_arguments, add_output_arguments, add_prior_arguments, build_attention, build_model,
                     positive_int, prepare_outdir, report_failures, resolve_prior_arguments)
from .video import add_video_arguments, video_options

DESCRIPTION = """\
Segment many images and videos. INPUTS are image or video files, folders (searched recursively), glob patterns
('photos/**/*.jpg', quoted) or text files (.txt/.lst) listing one path per line. Outputs are mirrored under OUTDIR
by each input's path relative to the folder / pattern / list it came from; outputs never leave OUTDIR: a list
entry outside the list's folder (../x.jpg, /elsewhere/x.jpg) goes to OUTDIR/_outside/<its absolute path>. An image
gets <stem>_labels.png (uint16 labels) and <stem>_overlay.png (and <stem>_graph.npz with --graph). A video (.mp4
.mkv .avi .mov .webm .ts ...) is one unit of work and gets a folder <stem>/ holding what 'spam-stream video' writes:
<stem>_overlay.mp4, <stem>_labels.mkv (or, with --labels-format png, <stem>_labels/000000.png ...) and
<stem>_frames.csv (the video options below apply to every video). OUTDIR/manifest.jsonl has one JSON line per
image (input, outputs, K', ms per stage, status, error) and one per video (input, kind, outputs, frames, fps, ms,
status, error). OUTDIR may also be a URI that pyarrow.fs opens (s3://bucket/prefix, gs://..., file:///...;
needs pyarrow, which the ray extra has; credentials from the environment, as pyarrow reads them): each item is
written to a local temporary folder, then uploaded file by file.

Decoding, the prior, the encoder, clustering and writing run as a pipeline. Every output is written under a
temporary name and renamed, so after a crash or Ctrl-C, --resume skips exactly the images whose outputs are
complete, and the videos whose manifest line is ok and whose outputs are complete (a video cut short by a crash is
redone). --shard I/N processes a deterministic 1/N of the inputs (N machines, no overlap, no gap; manifest
manifest-I-of-N.jsonl). A bad input is reported and the rest go on; the exit code is 1 when any input failed (a
damaged or cut video keeps the frames before the damage and counts as failed, as with 'spam-stream video')."""


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="superpixels of many images and videos (folders, globs, lists; resumable, shardable)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUTS",
                   help="image or video files, folders, glob patterns or list files")
    add_output_arguments(p, outdir_argument, "output folder (created), or a URI that pyarrow.fs opens: "
                                             "s3://bucket/prefix, gs://...")
    add_model_arguments(p)
    add_prior_arguments(p)
    g = p.add_argument_group("batch")
    g.add_argument("--resume", action="store_true",
                   help="skip images whose outputs already exist (complete), and videos whose manifest line is ok "
                        "and whose outputs are complete")
    g.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="process only shard I of N, counted from 0 (0/2 and 1/2 are the two halves), by a hash of "
                        "each input's relative path; the manifest is then manifest-I-of-N.jsonl")
    g.add_argument("--superpixel-size", type=positive_int, default=None, metavar="PIXELS",
                   help="one superpixel per PIXELS pixels of each image (K = H*W / PIXELS), instead of -k; the "
                        "natural knob for slides and satellite images. A TIFF or slide too large for one frame is "
                        "one unit, segmented in tiles (as 'spam-stream image' does): <stem>_labels.tif and "
                        "<stem>_overlay.png, its manifest line 'large' (status 'incomplete' when a tile cannot be "
                        "read: the rows before it are kept, --resume does it again)")
    g.add_argument("--sequential", action="store_true",
                   help="run the stages one image (video frame) at a time instead of pipelined (same results)")
    add_video_arguments(p.add_argument_group("videos (each video in INPUTS, as for 'spam-stream video')"))
    g = p.add_argument_group(
        "engine",
        "--engine ray runs the same per-item work on Ray Data (pip install 'spam-stream[ray]'): a pool of\n"
        "actors, each loading the model once, one Ray task per image and one per video; same outputs and\n"
        "manifest (plus the Ray node of each item).\n"
        "OUTDIR must be reachable by every worker: a shared filesystem on a cluster, or a URI such as\n"
        "s3://bucket/prefix (each worker needs the credentials in its environment). The actors never take\n"
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
                     iterations=args.iterations, tol=args.tol, subsample=args.subsample, device=args.device,
                     prior=args.prior,
                     prior_options=prior_options,
                     attention=attention, attention_ratio=args.attention_ratio, focus=args.focus,
                     memory_budget=None if args.max_memory is None else args.max_memory * 2**20,
                     memory_limit=None if args.memory_limit is None else args.memory_limit * 2**20)


def run_ray(args) -> int:
    from ..pipelines.ray_engine import run_batch_ray

    if args.sequential:
        raise InputError("--sequential is for --engine local (Ray workers already run one image at a time)")
    if args.num_gpus_per_worker < 0:
        raise InputError("--num-gpus-per-worker must be >= 0")
    if not isinstance(args.output, str):
        prepare_outdir(args.output)

    def progress(entry):
        if entry["status"] != "ok":
            print(f"error: {entry['error']}", file=sys.stderr)

    entries, carried, total = run_batch_ray(worker_spec(args), args.inputs, args.output, args.superpixels,
                                            resume=args.resume, shard_spec=args.shard, color=args.boundary_color,
                                            workers=args.workers, num_gpus_per_worker=args.num_gpus_per_worker,
                                            address=args.address, progress=progress,
                                            video_options=_video_options(args), superpixel_size=args.superpixel_size)
    return _report(entries, carried, total, args)


def _video_options(args):
    if args.start < 0:
        raise InputError("--start must be >= 0")
    return video_options(args)


def _count(entries) -> str:
    """'N image(s)', or 'N image(s) and M video(s)' when there are videos."""
    videos = sum(e.get("kind") == "video" for e in entries)
    return f"{len(entries) - videos} image(s)" + (f" and {videos} video(s)" if videos else "")


def _report(entries, carried, total, args) -> int:
    failures = [e["error"] for e in entries if e["status"] != "ok"]
    if carried:
        print(f"resumed: {_count(carried)} already complete, skipped", file=sys.stderr)
    print(f"processed {_count(entries)} in this run", file=sys.stderr)
    done = len(carried) + sum(e["status"] == "ok" for e in entries)
    videos = any(e.get("kind") == "video" for e in entries + carried)
    where = args.output.split("?", 1)[0] if isinstance(args.output, str) else args.output  # no URI query
    return report_failures(failures, done, total, "input(s)" if videos else "image(s)", where)


def run(args) -> int:
    resolve_prior_arguments(args)
    if args.engine == "ray":
        return run_ray(args)
    if _ray_arguments_used(args):
        raise InputError("--address, --workers and --num-gpus-per-worker are for --engine ray")
    options = _video_options(args)
    if not isinstance(args.output, str):  # a local folder (a URI stays a string)
        prepare_outdir(args.output)
    model = build_model(args)
    attention = build_attention(args)
    bars = []  # the progress bar, drawn once the inputs are listed (a bad input's error comes alone)
    schedule: list[str] = []  # the images' schedule line (policy, busy fractions), printed at the end

    def on_start(total):
        bars.append(tqdm(desc="items", unit="item", total=total, dynamic_ncols=True))

    def progress(frame):
        bars[0].update(1)
        if frame.error:
            tqdm.write(f"error: {frame.error}", file=sys.stderr)

    def on_video_frame(item, frame):
        bars[0].set_postfix_str(f"{item.rel} frame {frame.index}", refresh=False)

    def on_video(entry):
        bars[0].update(1)
        bars[0].set_postfix_str("", refresh=False)
        if entry["error"]:
            tqdm.write(f"error: {entry['error']}", file=sys.stderr)

    try:
        entries, carried, total = run_batch(model, args.inputs, args.output, args.superpixels, resume=args.resume,
                                            shard_spec=args.shard, color=args.boundary_color,
                                            pipelined=not args.sequential, progress=progress, attention=attention,
                                            attention_ratio=args.attention_ratio, focus=args.focus,
                                            video_options=options, on_video_frame=on_video_frame,
                                            on_video=on_video, on_start=on_start, schedule=schedule,
                                            superpixel_size=args.superpixel_size)
    except PipelineError as exc:
        raise InputError(str(exc)) from None
    finally:
        for bar in bars:
            bar.close()
    for line in schedule:
        print(f"images: {line}", file=sys.stderr)
    return _report(entries, carried, total, args)
