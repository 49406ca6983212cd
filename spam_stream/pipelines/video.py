"""Video, frame by frame: decode (PyAV, in the source thread) → SPAM stages → write, pipelined.

:func:`video_frames` yields the finished :class:`~spam_stream.frame.Frame` of every frame in order;
:class:`~.writers.VideoOutputs` gives the writer stages of ``spam-stream video`` (overlay MP4, labels as one FFV1
video or PNGs, per-frame CSV);
:func:`process_video` is one whole video, reader to outputs: the one code path of ``spam-stream video`` and of the
videos of ``spam-stream batch`` (both engines).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from ..frame import Frame
from ..io import InputError
from ..labelio import DEFAULT_LABEL_FORMAT, labels_path
from ..videoio import VideoReader
from .executor import Pipeline, PipelineError, Stage, run_sequential
from .stages import configure_threads, queue_size_for, spam_stages
from .writers import DEFAULT_OVERLAY_PRESET, STAGE_NAMES, VideoOutputs  # noqa: F401 (STAGE_NAMES: re-exported)


@contextmanager
def thread_budget(model, pipelined: bool):
    """Split the CPU between the pipeline's busy stages for the duration of a run (torch's pool restored after)."""
    before = torch.get_num_threads()
    try:
        yield configure_threads(model, pipelined)
    finally:
        torch.set_num_threads(before)


def decoded_frames(reader: VideoReader, n_superpixels: int, key_prefix: str | None = None, prior=None):
    """Frames of ``reader`` as :class:`Frame` records (decoding time in ``timings["decode"]``)."""
    it = iter(reader)
    while True:
        t = time.perf_counter()
        try:
            index, rgb = next(it)
        except StopIteration:
            return
        frame = Frame(index=index, key=index if key_prefix is None else f"{key_prefix}#{index}", image=rgb,
                      n_superpixels=n_superpixels, prior=prior)
        frame.timings["decode"] = time.perf_counter() - t
        yield frame


def video_frames(model, path, n_superpixels: int = 400, *, prior_every: int = 1, coherent: bool = True,
                 warm_iterations: int = 3, attention=None, attention_ratio: float = 2.5, focus=None,
                 start: int = 0, max_frames: int | None = None, pipelined: bool = True, queue_size: int | None = None,
                 extra_stages: list[Stage] | tuple = (), reader: VideoReader | None = None, fixed_prior=None):
    """Segment every frame of the video at ``path``: yields finished frames in order.

    A frame that fails carries ``frame.error`` (one line) and no labels; a decoding failure (damaged or cut file)
    ends the stream with one last error frame after the frames decoded before it. ``extra_stages`` run after the
    SPAM stages (e.g. a writer). ``pipelined=False`` runs the same stages one frame at a time (the baseline).
    ``queue_size``: capacity of each queue between stages; default from the frame size
    (:func:`~spam_stream.pipelines.stages.queue_size_for`: the frames in flight stay within about 2 GB).
    ``fixed_prior``: one (H, W) partition for every frame (else the model's provider, if any).
    """
    reader = reader or VideoReader(path, start=start, max_frames=max_frames)
    try:  # K against the frame size, the frame against the memory: once, before any frame
        model.check_request(reader.height, reader.width, n_superpixels)
    except (ValueError, InputError) as exc:
        raise InputError(f"{path}: {exc}") from None
    key = Path(path).stem

    def make_error(index, exc):
        frame = Frame(index=reader.start + reader.decoded, key=f"{key}", n_superpixels=n_superpixels)
        frame.error = str(exc) if isinstance(exc, InputError) else f"{path}: {exc}"
        frame.meta["fatal"] = True
        return frame

    with thread_budget(model, pipelined) as threads:
        stages = spam_stages(model, attention=attention, attention_ratio=attention_ratio, focus=focus, video=True,
                             coherent=coherent, prior_every=prior_every, warm_iterations=warm_iterations,
                             threads=threads)
        stages += list(extra_stages)
        source = decoded_frames(reader, n_superpixels, prior=fixed_prior)
        if queue_size is None:  # sized from the frame's memory (4K frames: one waiting per queue)
            queue_size = queue_size_for(model, reader.height, reader.width, len(stages) + 1)
        if pipelined:
            yield from Pipeline(stages, queue_size=queue_size, device=model.device).run(source, make_error)
        else:
            yield from run_sequential(stages, source, make_error)


@dataclass(frozen=True)
class VideoOptions:
    """The per-video options of ``spam-stream video`` (and of the videos of ``spam-stream batch``): temporal
    coherence (``prior_every``, ``coherent``, ``warm_iterations``), the frame range (``start``, ``max_frames``) and
    which outputs to write (``overlay_video``, ``labels``, ``graph``; the frames CSV is always written), the labels'
    format (``labels_format``: "ffv1" one lossless video, or "png" one file per frame), the overlay's x264 preset and
    the first id written (``start_label``)."""

    prior_every: int = 1
    coherent: bool = True
    warm_iterations: int = 3
    start: int = 0
    max_frames: int | None = None
    overlay_video: bool = True
    labels: bool = True
    labels_format: str = DEFAULT_LABEL_FORMAT
    overlay_preset: str = DEFAULT_OVERLAY_PRESET
    graph: bool = False
    start_label: int = 0


def video_output_paths(outdir, stem: str, options: VideoOptions = VideoOptions()) -> dict[str, Path]:
    """What :class:`VideoOutputs` writes for ``options``: ``overlay`` (MP4), ``labels`` (``<stem>_labels.mkv``, or
    the folder of PNGs ``<stem>_labels``), ``graph`` (.npz, with ``options.graph``) and ``frames_csv`` (written last,
    by :meth:`VideoOutputs.close`)."""
    outdir = Path(outdir)
    paths = {"overlay": outdir / f"{stem}_overlay.mp4", "labels": labels_path(outdir, stem, options.labels_format),
             "frames_csv": outdir / f"{stem}_frames.csv"}
    if not options.overlay_video:
        del paths["overlay"]
    if not options.labels:
        del paths["labels"]
    if options.graph:
        paths = {**{k: v for k, v in paths.items() if k != "frames_csv"}, "graph": outdir / f"{stem}_graph.npz",
                 "frames_csv": paths["frames_csv"]}
    return paths


def expected_frames(reader: VideoReader, options: VideoOptions = VideoOptions()) -> int | None:
    """How many frames a run will process, from the container's count or duration (None when unknown)."""
    total = reader.n_frames or (round(reader.duration * float(reader.rate)) if reader.duration else None)
    if total is None:
        return None
    total = max(0, total - options.start)
    return total if options.max_frames is None else min(total, options.max_frames)


@dataclass
class VideoResult:
    """What :func:`process_video` did: ``written`` frames (in the outputs), the input's frame ``rate``, the error
    line of each failed frame (``errors``; a damaged or cut file: the last one), ``fatal`` (a writer failure: the
    outputs were dropped), ``timings`` (seconds per stage, summed over the frames) and the ``outputs`` written."""

    path: Path
    rate: Fraction
    written: int = 0
    errors: list[str] = field(default_factory=list)
    fatal: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        """One line for the whole video (None when every frame went through), as ``spam-stream video`` prints it."""
        if self.fatal is not None:
            return self.fatal
        if not self.errors:
            return None
        stem = Path(self.path).stem
        more = f" (and {len(self.errors) - 1} more frame error(s), see {stem}_frames.csv)" if len(self.errors) > 1 \
            else ""
        return self.errors[-1] + more


def process_video(model, path, outdir, n_superpixels: int = 400, options: VideoOptions = VideoOptions(), *,
                  stem: str | None = None, attention=None, attention_ratio: float = 2.5, focus=None,
                  pipelined: bool = True, color="auto", reader: VideoReader | None = None,
                  on_frame=None) -> VideoResult:
    """One video, reader to outputs: :func:`video_frames` with :class:`VideoOutputs`' writer stages, writing
    ``OUTDIR/<stem>_overlay.mp4``, ``OUTDIR/<stem>_labels.mkv`` (or ``OUTDIR/<stem>_labels/NNNNNN.png``) and
    ``OUTDIR/<stem>_frames.csv``.

    A frame that fails, or a damaged / cut file (the frames before the damage are written), is reported in the
    result (``result.error``), never raised. A file that cannot be opened raises :class:`InputError` (nothing
    written); so does a request the frames cannot satisfy, after the outputs are dropped. A writer failure drops the
    unfinished overlay and label videos and is ``result.fatal``. An interruption (Ctrl-C) drops the unfinished
    overlay and label videos and propagates: label PNGs written are complete files, the frames CSV (written last)
    is not there.

    ``on_frame(frame, message)``: called with every finished frame and its error line (None when it went through);
    ``reader``: an opened :class:`VideoReader` of ``path`` (default: opened here with ``options``' frame range).
    """
    path = Path(path)
    reader = reader or VideoReader(path, start=options.start, max_frames=options.max_frames)
    stem = stem or path.stem
    Path(outdir).mkdir(parents=True, exist_ok=True)
    outputs = VideoOutputs(outdir, stem, reader.rate, reader.width, reader.height,
                           overlay_video=options.overlay_video, labels=options.labels, color=color,
                           preset=options.overlay_preset, labels_format=options.labels_format,
                           graph=options.graph, start_label=options.start_label)
    result = VideoResult(path, Fraction(reader.rate))
    try:
        frames = video_frames(model, path, n_superpixels, prior_every=options.prior_every,
                              coherent=options.coherent, warm_iterations=options.warm_iterations,
                              attention=attention, attention_ratio=attention_ratio, focus=focus,
                              pipelined=pipelined, reader=reader,
                              extra_stages=outputs.stages())
        for frame in frames:
            message = None
            if frame.error is not None:
                # a frame's own error names its index ("4: ..."); the input's name goes in front
                message = frame.error if frame.meta.get("fatal") else f"{path}: frame {frame.error}"
                result.errors.append(message)
            for name, seconds in frame.timings.items():
                result.timings[name] = result.timings.get(name, 0.0) + seconds
            if on_frame is not None:
                on_frame(frame, message)
    except PipelineError as exc:
        outputs.abort()
        result.written, result.fatal = outputs.written, f"{path}: {exc}"
        return result
    except BaseException:
        outputs.abort()  # Ctrl-C: drop the unfinished videos; label PNGs written are complete
        raise
    outputs.close()
    result.written = outputs.written
    result.outputs = {name: p for name, p in video_output_paths(outdir, stem, options).items() if p.exists()}
    return result
