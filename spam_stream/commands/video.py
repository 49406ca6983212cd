"""``spam-stream video``: superpixels of every frame of video files, pipelined, temporally coherent."""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from ..io import InputError
from ..labelio import DEFAULT_LABEL_FORMAT, LABEL_FORMATS
from ..pipelines.video import VideoOptions, expected_frames, process_video
from ..pipelines.writers import DEFAULT_OVERLAY_PRESET, OVERLAY_PRESETS
from ..videoio import VideoReader
from .common import (add_model_arguments, add_output_arguments, add_prior_arguments, build_attention, build_model,
                     positive_int, prepare_outdir, report_failures, resolve_prior_arguments)

DESCRIPTION = """\
Segment every frame of one or more videos (any container/codec PyAV's ffmpeg reads). For each IN writes
OUTDIR/<stem>_overlay.mp4 (H.264, boundaries drawn, same frame count and frame rate as IN; odd sizes are padded
to even, never cropped), OUTDIR/<stem>_labels.mkv (superpixel ids 0..65535 as one lossless 16-bit video: FFV1
gray16le in Matroska, frame i of IN at time i/rate; --labels-format png writes OUTDIR/<stem>_labels/000000.png ...
instead, one uint16 PNG per frame; spam_stream.read_labels(path) reads either back) and OUTDIR/<stem>_frames.csv
(frame, K', milliseconds per stage); with --graph also OUTDIR/<stem>_graph.npz (every frame's superpixel graph,
node ids = the label maps' ids). Audio is not copied.

Decoding, the prior, the encoder, clustering and writing run as a pipeline (threads on a CPU, CUDA streams on a
GPU). Frames are temporally coherent: each frame starts from the previous one's superpixels (fewer iterations) and
a superpixel keeps its id while its content stays in view (new superpixels get new ids); --independent segments
every frame from scratch with ids 0..K'-1. A damaged or cut file keeps the frames decoded before the damage and
is reported; the other inputs are still processed (exit code 1 when any input failed)."""


def add_parser(sub) -> None:
    p = sub.add_parser("video", help="superpixels of every frame of videos (pipelined, temporally coherent)",
                       description=DESCRIPTION, formatter_class=_formatter())
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="video files")
    add_output_arguments(p)
    add_model_arguments(p)
    add_prior_arguments(p)
    g = p.add_argument_group("video")
    add_video_arguments(g)
    g.add_argument("--sequential", action="store_true",
                   help="run the stages one frame at a time instead of pipelined (same results; for comparison)")
    p.set_defaults(run=run)


def add_video_arguments(g) -> None:
    """The per-video flags (temporal coherence, frame range, outputs), shared by video and batch."""
    g.add_argument("--prior-every", type=positive_int, default=1, metavar="N",
                   help="run the prior model every N frames and reuse its partition in between (default 1)")
    g.add_argument("--independent", action="store_true",
                   help="no temporal coherence: every frame from scratch, labels 0..K'-1 per frame")
    g.add_argument("--warm-iterations", type=positive_int, default=3, metavar="N",
                   help="clustering iterations of a frame that starts from the previous frame (default 3)")
    g.add_argument("--start", type=int, default=0, metavar="FRAME", help="first frame to process (default 0)")
    g.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="process at most N frames")
    g.add_argument("--no-overlay", action="store_true", help="do not write the overlay video")
    g.add_argument("--no-labels", action="store_true", help="do not write the label maps")
    g.add_argument("--labels-format", choices=LABEL_FORMATS, default=DEFAULT_LABEL_FORMAT,
                   help="ffv1 = one lossless 16-bit video per input, <stem>_labels.mkv (FFV1 gray16le in Matroska; "
                        "the default: faster to write and smaller than PNGs); png = <stem>_labels/000000.png ... "
                        "(uint16, one per frame). spam_stream.read_labels(path) reads either back")
    g.add_argument("--overlay-preset", choices=OVERLAY_PRESETS, default=DEFAULT_OVERLAY_PRESET, metavar="PRESET",
                   help=f"x264 speed preset of the overlay video: {', '.join(OVERLAY_PRESETS)} (default "
                        f"{DEFAULT_OVERLAY_PRESET}: the fastest to encode, larger files)")


def _formatter():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def run(args) -> int:
    resolve_prior_arguments(args)
    if args.start < 0:
        raise InputError("--start must be >= 0")
    prepare_outdir(args.output)
    model = build_model(args)
    attention = build_attention(args)
    failures, done = [], 0
    for path in args.inputs:
        try:
            ok = _one_video(model, attention, path, args)
        except InputError as exc:
            ok = str(exc)
        if ok is True:
            done += 1
        else:
            failures.append(ok)
            tqdm.write(f"error: {ok}", file=sys.stderr)
    return report_failures(failures, done, len(args.inputs), "video(s)", args.output)


def video_options(args) -> VideoOptions:
    """The per-video options the flags ask for (shared with ``spam-stream batch``)."""
    return VideoOptions(prior_every=args.prior_every, coherent=not args.independent,
                        warm_iterations=args.warm_iterations, start=args.start, max_frames=args.max_frames,
                        overlay_video=not args.no_overlay, labels=not args.no_labels,
                        labels_format=args.labels_format, overlay_preset=args.overlay_preset, graph=args.graph,
                        start_label=args.start_label)


def _one_video(model, attention, path: Path, args):
    """Process one video; True when complete, else the one-line error (the frames before it are written)."""
    options = video_options(args)
    reader = VideoReader(path, start=args.start, max_frames=args.max_frames)
    bar = tqdm(total=expected_frames(reader, options), desc=path.name, unit="frame", dynamic_ncols=True)

    def on_frame(frame, message):
        bar.update(0 if frame.meta.get("fatal") else 1)
        if message is not None and not frame.meta.get("fatal"):
            tqdm.write(f"error: {message}", file=sys.stderr)

    try:
        result = process_video(model, path, args.output, args.superpixels, options, attention=attention,
                               attention_ratio=args.attention_ratio, focus=args.focus, pipelined=not args.sequential,
                               color=args.boundary_color, reader=reader, on_frame=on_frame)
    finally:
        bar.close()
    return True if result.error is None else result.error
