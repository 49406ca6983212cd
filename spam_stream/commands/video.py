"""``spam-stream video``: superpixels of every frame of video files, pipelined, temporally coherent."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from ..io import InputError
from ..labelio import DEFAULT_LABEL_FORMAT, LABEL_FORMATS
from ..pipelines.video import VideoOptions, expected_frames, process_video
from ..pipelines.writers import DEFAULT_OVERLAY_PRESET, OVERLAY_PRESETS
from ..videoio import is_live, source_stem
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
GPU). Frames are temporally coherent: each frame starts from the previous one's superpixels, moved with the
picture when it moved (phase correlation), with fewer iterations, and
a superpixel keeps its id while its content stays in view (new superpixels get new ids); --independent segments
every frame from scratch with ids 0..K'-1. A damaged or cut file keeps the frames decoded before the damage and
is reported; the other inputs are still processed (exit code 1 when any input failed).

Live sources: IN may also be '-' (standard input: MPEG-TS, Matroska, y4m ... e.g. ffmpeg ... -f mpegts - |
spam-stream video -), a URL PyAV's ffmpeg opens (rtsp://, udp://, tcp://, http(s):// ...) or a device
(/dev/video0 with --input-format v4l2); their outputs are named stdin_..., udp_127.0.0.1_5000_... . No frame
count is assumed: the progress shows frames and frames/s. A live source ends at the end of its stream, on Ctrl-C
or on SIGTERM: the frames in flight finish and every output is closed and valid (overlay playable, CSV written;
a second Ctrl-C / SIGTERM aborts at once). SIGTERM stops a file the same way; Ctrl-C on a file aborts it (the
unfinished overlay is dropped). --realtime drops the frames that processing is too slow for, before any
expensive stage, so the latency stays bounded; the CSV and the final line count them, and the overlay keeps the
source's timestamps. --overlay-url sends the overlay live (e.g. udp://127.0.0.1:5000, MPEG-TS) instead of
writing OUTDIR/<stem>_overlay.mp4."""


def add_parser(sub) -> None:
    p = sub.add_parser("video", help="superpixels of every frame of videos (pipelined, temporally coherent)",
                       description=DESCRIPTION, formatter_class=_formatter())
    p.add_argument("inputs", nargs="+", metavar="IN",
                   help="video files, '-' for standard input, stream URLs or devices (see above)")
    add_output_arguments(p)
    add_model_arguments(p)
    add_prior_arguments(p)
    g = p.add_argument_group("video")
    add_video_arguments(g)
    g.add_argument("--sequential", action="store_true",
                   help="run the stages one frame at a time instead of pipelined (same results; for comparison)")
    g.add_argument("--input-format", default=None, metavar="FORMAT",
                   help="ffmpeg input format of a live source, e.g. v4l2 for a camera, mpegts for a pipe "
                        "(default: probed)")
    g.add_argument("--input-option", type=_key_value, action="append", default=None, metavar="KEY=VALUE",
                   help="an ffmpeg option for opening a live source, repeatable (e.g. video_size=1280x720 for a "
                        "camera, rtsp_transport=tcp; a live source is probed briefly, probesize=8192 and "
                        "analyzeduration=0, so that it starts at once: raise them for a stream that needs more)")
    g.add_argument("--realtime", action="store_true",
                   help="keep up with a live source: frames that arrive while the pipeline is busy are dropped "
                        "before any expensive stage (counted in the CSV's dropped column and the final line); "
                        "a file plays at its frame rate")
    g.add_argument("--overlay-url", default=None, metavar="URL",
                   help="send the overlay video to URL as MPEG-TS while it is made (e.g. udp://127.0.0.1:5000; "
                        "watch with ffplay URL) instead of writing <stem>_overlay.mp4")
    p.set_defaults(run=run)


def add_video_arguments(g) -> None:
    """The per-video flags (temporal coherence, frame range, outputs), shared by video and batch."""
    g.add_argument("--prior-every", type=positive_int, default=1, metavar="N",
                   help="run the prior model every N frames and reuse its partition in between (default 1)")
    g.add_argument("--independent", action="store_true",
                   help="no temporal coherence: every frame from scratch, labels 0..K'-1 per frame")
    g.add_argument("--warm-iterations", type=positive_int, default=3, metavar="N",
                   help="at most N clustering iterations of a still frame, which starts from the previous frame's "
                        "superpixels and stops once they stop changing (default 3; a frame whose picture moved "
                        "runs up to --iterations, until converged)")
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


def _key_value(text: str) -> tuple[str, str]:
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


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
                        start_label=args.start_label,
                        realtime=getattr(args, "realtime", False), overlay_url=getattr(args, "overlay_url", None),
                        input_format=getattr(args, "input_format", None),
                        input_options=tuple(getattr(args, "input_option", None) or ()) or None)


class graceful_stop:
    """While active (``with``), SIGTERM — and Ctrl-C too for a live source — sets ``event`` (the run then ends
    after the frames in flight, every output closed) instead of killing or aborting; a second one aborts
    (KeyboardInterrupt, as a plain Ctrl-C). Only in the main thread; the previous handlers come back after."""

    def __init__(self, event: threading.Event, ctrl_c: bool):
        self.event, self.ctrl_c, self.saved = event, ctrl_c, {}

    def _handler(self, signum, frame):
        from ..pipelines.executor import INTERRUPTED

        if self.event.is_set():
            INTERRUPTED.set()
            raise KeyboardInterrupt
        self.event.set()
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        tqdm.write(f"{name}: stopping after the frames in flight (again to abort)", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM,) + ((signal.SIGINT,) if self.ctrl_c else ()):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        return False


def _one_video(model, attention, path: str, args):
    """Process one video; True when complete, else the one-line error (the frames before it are written)."""
    from ..pipelines.video import open_source

    options = video_options(args)
    stop = threading.Event()
    with graceful_stop(stop, ctrl_c=is_live(path)):
        source = path if is_live(path) else Path(path)
        reader = open_source(source, args.start, args.max_frames, options.input_format,
                             input_options=dict(options.input_options or ()))
        name = Path(path).name if not is_live(path) else source_stem(path)
        bar = tqdm(total=expected_frames(reader, options), desc=name, unit="frame", dynamic_ncols=True)

        def on_frame(frame, message):
            bar.update(0 if frame.meta.get("fatal") else 1 + frame.meta.get("dropped", 0))  # drops: frames read
            if frame.meta.get("dropped"):
                bar.set_postfix(dropped=result_dropped.append(frame.meta["dropped"]) or sum(result_dropped))
            if message is not None and not frame.meta.get("fatal"):
                tqdm.write(f"error: {message}", file=sys.stderr)

        result_dropped: list[int] = []
        try:
            result = process_video(model, source, args.output, args.superpixels, options, attention=attention,
                                   attention_ratio=args.attention_ratio, focus=args.focus,
                                   pipelined=not args.sequential, color=args.boundary_color, reader=reader,
                                   on_frame=on_frame, stop=stop)
        finally:
            bar.close()
    if result.schedule:
        print(f"{name}: {result.schedule}", file=sys.stderr)
    if options.realtime or result.stopped or is_live(path):
        how = " (stopped)" if result.stopped else ""
        print(f"{name}: {result.written} frames segmented, {result.dropped} dropped{how}", file=sys.stderr)
    return True if result.error is None else result.error
