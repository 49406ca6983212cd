"""Video, frame by frame: decode (PyAV, in the source thread) → SPAM stages → write, pipelined.

:func:`video_frames` yields the finished :class:`~spam_stream.frame.Frame` of every frame in order;
:class:`~.writers.VideoOutputs` gives the writer stages of ``spam-stream video`` (overlay MP4, labels as one FFV1
video or PNGs, per-frame CSV);
:func:`process_video` is one whole video, reader to outputs: the one code path of ``spam-stream video`` and of the
videos of ``spam-stream batch`` (both engines).
"""
from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..frame import Frame
from ..io import InputError
from ..labelio import DEFAULT_LABEL_FORMAT, labels_path
from ..videoio import VideoReader, source_stem
from .executor import Pipeline, PipelineError, Stage, run_sequential, schedule_line
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


class ArrayFrames:
    """Frames given as arrays, with a :class:`~spam_stream.videoio.VideoReader`'s interface (a live source).

    ``for index, rgb in ArrayFrames(frames)``: ``frames`` is any iterable of (H, W, 3) uint8 images (a generator, a
    camera loop; grey, RGBA and float images are converted like :func:`spam_stream.io.as_rgb`), read lazily; the
    first one is read when this is made, to know the size. ``rate``: frames per second (timestamps index / rate).
    Raises :class:`InputError` when ``frames`` is empty.
    """

    live = True
    n_frames = 0
    duration = None

    def __init__(self, frames, rate=25, start: int = 0, max_frames: int | None = None, name: str = "frames"):
        from ..model import as_rgb

        self._as_rgb = as_rgb
        self._it = iter(frames)
        self.path, self.rate = name, Fraction(rate)
        self.start, self.max_frames = max(0, int(start)), max_frames
        try:
            self._first = as_rgb(next(self._it))
        except StopIteration:
            raise InputError(f"{name}: no frames") from None
        self.height, self.width = self._first.shape[:2]
        self.decoded = 0
        self.last_time = None

    def __iter__(self):
        index, image = 0, self._first
        while True:
            if index >= self.start:
                if self.max_frames is not None and index - self.start >= self.max_frames:
                    return
                if image.shape[:2] != (self.height, self.width):
                    raise InputError(f"{self.path}: frame {index} is {image.shape[1]}x{image.shape[0]}, the first "
                                     f"was {self.width}x{self.height}")
                self.last_time = index / float(self.rate)
                yield index, image
                self.decoded += 1
            index += 1
            try:
                image = self._as_rgb(next(self._it))
            except StopIteration:
                return

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class LiveFeed:
    """Reads a source in a thread of its own, so that the pipeline's source can stop at once (Ctrl-C, SIGTERM)
    even while the source waits for data, and (``latest_only``) so that frames the pipeline is too slow for are
    dropped before any expensive stage.

    ``get(stop)`` → (index, rgb, time, decode seconds, frames dropped just before it) or None at the end (end of
    stream, or ``stop`` set: frames read but not yet handed over are not processed). ``latest_only=False``: every
    frame, at most ``capacity`` read ahead (the source is slowed down, nothing is lost). ``latest_only=True``: only
    the newest frame waits; an older waiting one is dropped (counted). ``pace``: a file is read no faster than its
    timestamps (as a live source would deliver it).
    """

    def __init__(self, reader, latest_only: bool = False, pace: bool = False, capacity: int = 4):
        import threading

        self.reader, self.latest_only, self.pace, self.capacity = reader, latest_only, pace, max(1, capacity)
        self._cond = threading.Condition()
        self._items: deque = deque()
        self._done, self._closed = False, False
        self._error: BaseException | None = None
        self._dropped = 0  # dropped since the last frame handed over
        self.dropped = 0  # in all
        self._thread = threading.Thread(target=self._run, name="source-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        it, clock0, time0 = iter(self.reader), None, None
        try:
            while not self._closed:
                t = time.perf_counter()
                try:
                    index, rgb = next(it)
                except StopIteration:
                    break
                decode = time.perf_counter() - t
                stamp = getattr(self.reader, "last_time", None)
                if self.pace and stamp is not None:
                    if clock0 is None:
                        clock0, time0 = time.perf_counter(), stamp
                    wait = (stamp - time0) - (time.perf_counter() - clock0)
                    if wait > 0:
                        time.sleep(wait)
                with self._cond:
                    if self.latest_only:
                        self._dropped += len(self._items)
                        self.dropped += len(self._items)
                        self._items.clear()
                    else:
                        while len(self._items) >= self.capacity and not self._closed:
                            self._cond.wait(0.1)
                    self._items.append((index, rgb, stamp, decode))
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 — handed to the consumer, which reports it
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def get(self, stop=None):
        with self._cond:
            while not self._items and not self._done:
                if stop is not None and stop.is_set():
                    return None
                self._cond.wait(0.05)
            if stop is not None and stop.is_set():
                return None
            if self._items:
                item = self._items.popleft() + (self._dropped,)
                self._dropped = 0
                self._cond.notify_all()
                return item
            if self._error is not None:
                raise self._error
            return None

    def close(self) -> None:
        """Let the reading thread end at its next frame (a read that is blocked waiting for data is left to end
        with the process: it is a daemon thread)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def decoded_frames(reader, n_superpixels: int, key_prefix: str | None = None, prior=None, stop=None,
                   realtime: bool = False):
    """Frames of ``reader`` as :class:`Frame` records (decoding time in ``timings["decode"]``, the source's
    presentation time in seconds in ``meta["time"]``, frames dropped just before it by ``realtime`` in
    ``meta["dropped"]``).

    ``stop``: a ``threading.Event``; once set no further frame is read (the frames already handed over finish).
    A live source (``reader.live``) or ``realtime`` reads through a :class:`LiveFeed` (a thread of its own);
    ``realtime`` keeps only the newest frame waiting and drops the others (a file then plays at its frame rate).
    """
    if realtime or getattr(reader, "live", False):
        feed = LiveFeed(reader, latest_only=realtime, pace=realtime and not getattr(reader, "live", False))
        try:
            while True:
                item = feed.get(stop)
                if item is None:
                    return
                index, rgb, stamp, decode, dropped = item
                frame = Frame(index=index, key=index if key_prefix is None else f"{key_prefix}#{index}", image=rgb,
                              n_superpixels=n_superpixels, prior=prior)
                frame.timings["decode"] = decode
                frame.meta["time"], frame.meta["dropped"] = stamp, dropped
                yield frame
        finally:
            feed.close()
    it = iter(reader)
    while True:
        if stop is not None and stop.is_set():
            close = getattr(reader, "close", None)
            if close is not None:
                close()
            return
        t = time.perf_counter()
        try:
            index, rgb = next(it)
        except StopIteration:
            return
        frame = Frame(index=index, key=index if key_prefix is None else f"{key_prefix}#{index}", image=rgb,
                      n_superpixels=n_superpixels, prior=prior)
        frame.timings["decode"] = time.perf_counter() - t
        frame.meta["time"] = getattr(reader, "last_time", None)
        yield frame


def open_source(source, start: int = 0, max_frames: int | None = None, input_format: str | None = None,
                rate=None, input_options: dict | None = None):
    """A reader of ``source``: a file path, ``-`` (standard input), a URL or device (:class:`VideoReader`, opened
    with ``input_format`` and ffmpeg's ``input_options``), or an iterable of (H, W, 3) frames (:class:`ArrayFrames`
    at ``rate``, default 25)."""
    if isinstance(source, (str, Path)):
        return VideoReader(source, start=start, max_frames=max_frames, input_format=input_format,
                           options=input_options)
    return ArrayFrames(source, rate or 25, start=start, max_frames=max_frames)


WARM_UP_SIZE = (144, 208)  # frames of the warm-up clip: above the motion estimator's 128-pixel side, several tiles


def _warm_up_clip(h: int, w: int) -> list[np.ndarray]:
    """Four frames that take every path of a coherent video: a first frame, the same picture moved (warm start
    that follows the motion, moved features), still (warm start in place, reused features), a cut (another
    picture)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h // 8 + 4, w // 8 + 4, 3)).astype(np.uint8)
    big = np.repeat(np.repeat(base, 8, 0), 8, 1)  # blocks: texture the phase correlation locks on
    first = big[:h, :w]
    moved = big[3:h + 3, 5:w + 5]
    cut = 255 - big[7:h + 7, 2:w + 2][::-1]
    return [np.ascontiguousarray(f) for f in (first, moved, moved, cut)]


_WARMED: set = set()


def warm_up(model, n_superpixels: int = 400, *, coherent: bool = True, prior: bool = False,
            warm_iterations: int = 3) -> float:
    """Run the video stages once on a tiny clip (:func:`_warm_up_clip`: first frame, motion, still, cut; with
    ``prior``, also under a fixed two-object partition), so that every compiled function the stream uses is
    compiled or loaded from numba's cache, and every lazy import done, before the first real frame: the second
    frame of a fresh process then costs a steady frame. Once per model and kind of run; returns the seconds spent."""
    key = (id(model), coherent, prior)
    if key in _WARMED:
        return 0.0
    t = time.perf_counter()
    h, w = WARM_UP_SIZE
    k = max(8, min(int(n_superpixels), h * w // 300))
    partition = np.zeros((h, w), np.int32)
    partition[:, w // 2:] = 1
    for fixed in ((None, partition) if prior else (None,)):
        if fixed is None and model.prior is not None:
            continue  # the model's provider wants the real frames (a mask file of their size): the fixed one does
        stages = spam_stages(model, video=True, coherent=coherent, warm_iterations=warm_iterations)
        source = (Frame(index=i, key=i, image=img, n_superpixels=k, prior=fixed)
                  for i, img in enumerate(_warm_up_clip(h, w)))
        for frame in run_sequential(stages, source):
            if frame.error is not None:  # never in the way of the real run: its own frames will say what is wrong
                break
    _WARMED.add(key)
    return time.perf_counter() - t


def video_frames(model, path, n_superpixels: int = 400, *, prior_every: int = 1, coherent: bool = True,
                 warm_iterations: int = 3, attention=None, attention_ratio: float = 2.5, focus=None,
                 start: int = 0, max_frames: int | None = None, pipelined: bool = True, queue_size: int | None = None,
                 extra_stages: list[Stage] | tuple = (), reader: VideoReader | None = None, fixed_prior=None,
                 stop=None, realtime: bool = False, input_format: str | None = None, report: dict | None = None):
    """Segment every frame of the video at ``path``: yields finished frames in order.

    ``path``: a video file, ``-`` (standard input), a URL or device PyAV opens (``input_format`` e.g. ``v4l2``), or
    an iterable of (H, W, 3) frames (see :func:`open_source`). ``stop``: a ``threading.Event`` that ends the input
    (the frames in flight finish). ``realtime``: frames the stages are too slow for are dropped before the
    first stage (``frame.meta["dropped"]``: how many just before this one; ``meta["time"]`` keeps the source's
    timestamps) and one frame at most waits between stages, so the latency stays bounded.

    A frame that fails carries ``frame.error`` (one line) and no labels; a decoding failure (damaged or cut file)
    ends the stream with one last error frame after the frames decoded before it. ``extra_stages`` run after the
    SPAM stages (e.g. a writer). ``pipelined=False`` runs the same stages one frame at a time (the baseline).
    ``queue_size``: capacity of each queue between stages; default from the frame size
    (:func:`~spam_stream.pipelines.stages.queue_size_for`: the frames in flight stay within about 2 GB).
    ``fixed_prior``: one (H, W) partition for every frame (else the model's provider, if any). ``report``: a dict
    that gets ``"policy"`` (how the stages ran, :meth:`~.executor.Pipeline.policy`), ``"warm_up"`` (seconds
    :func:`warm_up` took before the first frame) and ``"start"`` (wall and process CPU clocks after it).
    """
    reader = reader or open_source(path, start, max_frames, input_format)
    path = reader.path
    try:  # K against the frame size, the frame against the memory: once, before any frame
        model.check_request(reader.height, reader.width, n_superpixels)
    except (ValueError, InputError) as exc:
        raise InputError(f"{path}: {exc}") from None
    key = source_stem(path)

    def make_error(index, exc):
        frame = Frame(index=reader.start + reader.decoded, key=f"{key}", n_superpixels=n_superpixels)
        frame.error = str(exc) if isinstance(exc, InputError) else f"{path}: {exc}"
        frame.meta["fatal"] = True
        return frame

    report = {} if report is None else report
    report["warm_up"] = 0.0
    if model.device.type == "cpu":  # compile / load every kernel the stream uses before its first frame
        report["warm_up"] = warm_up(model, n_superpixels, coherent=coherent, warm_iterations=warm_iterations,
                                    prior=fixed_prior is not None or model.prior is not None)
    report["start"] = time.perf_counter(), time.process_time()
    with thread_budget(model, pipelined) as threads:
        stages = spam_stages(model, attention=attention, attention_ratio=attention_ratio, focus=focus, video=True,
                             coherent=coherent, prior_every=prior_every, warm_iterations=warm_iterations,
                             threads=threads)
        stages += list(extra_stages)
        source = decoded_frames(reader, n_superpixels, prior=fixed_prior, stop=stop, realtime=realtime)
        if realtime:  # bounded latency: no frame waits long between stages (stale ones were dropped before)
            queue_size = 1
        if queue_size is None:  # sized from the frame's memory (4K frames: one waiting per queue)
            queue_size = queue_size_for(model, reader.height, reader.width, len(stages) + 1)
        if pipelined:
            pipeline = Pipeline(stages, queue_size=queue_size, device=model.device)
            report["policy"] = pipeline.policy()
            yield from pipeline.run(source, make_error)
        else:
            report["policy"] = "sequential (one frame at a time, every stage on every core)"
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
    realtime: bool = False
    overlay_url: str | None = None
    input_format: str | None = None
    input_options: tuple[tuple[str, str], ...] | None = None


def video_output_paths(outdir, stem: str, options: VideoOptions = VideoOptions()) -> dict[str, Path]:
    """What :class:`VideoOutputs` writes for ``options``: ``overlay`` (MP4), ``labels`` (``<stem>_labels.mkv``, or
    the folder of PNGs ``<stem>_labels``), ``graph`` (.npz, with ``options.graph``) and ``frames_csv`` (written last,
    by :meth:`VideoOutputs.close`)."""
    outdir = Path(outdir)
    paths = {"overlay": outdir / f"{stem}_overlay.mp4", "labels": labels_path(outdir, stem, options.labels_format),
             "frames_csv": outdir / f"{stem}_frames.csv"}
    if not options.overlay_video or options.overlay_url:
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
    outputs were dropped), ``timings`` (seconds per stage, summed over the frames) and the ``outputs`` written;
    ``dropped``: frames ``realtime`` dropped; ``stopped``: asked to stop (``stop``) before the source ended."""

    path: Path
    rate: Fraction
    written: int = 0
    errors: list[str] = field(default_factory=list)
    fatal: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    dropped: int = 0
    stopped: bool = False
    schedule: str = ""  # one line: how the stages ran and each stage's busy fraction (executor.schedule_line)

    @property
    def error(self) -> str | None:
        """One line for the whole video (None when every frame went through), as ``spam-stream video`` prints it."""
        if self.fatal is not None:
            return self.fatal
        if not self.errors:
            return None
        stem = source_stem(self.path)
        more = f" (and {len(self.errors) - 1} more frame error(s), see {stem}_frames.csv)" if len(self.errors) > 1 \
            else ""
        return self.errors[-1] + more


def process_video(model, path, outdir, n_superpixels: int = 400, options: VideoOptions = VideoOptions(), *,
                  stem: str | None = None, attention=None, attention_ratio: float = 2.5, focus=None,
                  pipelined: bool = True, color="auto", reader: VideoReader | None = None,
                  on_frame=None, stop=None) -> VideoResult:
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
    ``path`` may be a live source or an iterable of frames (:func:`open_source`). ``stop``: a ``threading.Event``
    that ends the input early (a live source's Ctrl-C or SIGTERM): the frames in flight finish and every output is
    closed as at the end of the stream.
    """
    reader = reader or open_source(path, options.start, options.max_frames, options.input_format,
                                   input_options=dict(options.input_options or ()))
    path = reader.path
    stem = stem or source_stem(path)
    Path(outdir).mkdir(parents=True, exist_ok=True)
    outputs = VideoOutputs(outdir, stem, reader.rate, reader.width, reader.height,
                           overlay_video=options.overlay_video, labels=options.labels, color=color,
                           preset=options.overlay_preset, labels_format=options.labels_format,
                           graph=options.graph, start_label=options.start_label, overlay_url=options.overlay_url)
    result = VideoResult(path, Fraction(reader.rate))
    report: dict = {}
    try:
        frames = video_frames(model, path, n_superpixels, prior_every=options.prior_every,
                              coherent=options.coherent, warm_iterations=options.warm_iterations,
                              attention=attention, attention_ratio=attention_ratio, focus=focus,
                              pipelined=pipelined, reader=reader, stop=stop, realtime=options.realtime,
                              extra_stages=outputs.stages(), report=report)
        for frame in frames:
            message = None
            if frame.error is not None:
                # a frame's own error names its index ("4: ..."); the input's name goes in front
                message = frame.error if frame.meta.get("fatal") else f"{path}: frame {frame.error}"
                result.errors.append(message)
            for name, seconds in frame.timings.items():
                result.timings[name] = result.timings.get(name, 0.0) + seconds
            result.dropped += int(frame.meta.get("dropped", 0))
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
    if "start" in report:  # from the end of the warm-up on (reported on its own)
        t, cpu = report["start"]
        wall = time.perf_counter() - t
        busy = {name: seconds for name, seconds in result.timings.items() if name != "decode"}
        result.schedule = (schedule_line(report.get("policy", "?"), {"decode": result.timings.get("decode", 0.0),
                                                                    **busy}, wall, time.process_time() - cpu)
                           + f" | warm-up {report.get('warm_up', 0.0):.2f} s")
    result.written = outputs.written
    result.stopped = stop is not None and stop.is_set()
    result.outputs = {name: p for name, p in video_output_paths(outdir, stem, options).items() if p.exists()}
    return result
