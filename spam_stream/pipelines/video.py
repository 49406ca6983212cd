"""Video, frame by frame: decode (PyAV, in the source thread) → SPAM stages → write, pipelined.

:func:`video_frames` yields the finished :class:`~spam_stream.frame.Frame` of every frame in order;
:class:`VideoOutputs` is the writer stage of ``spam-stream video`` (labels PNGs, overlay MP4, per-frame CSV).
"""
from __future__ import annotations

import csv
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..frame import Frame
from ..io import InputError, atomic_path, overlay, write_labels
from ..videoio import VideoReader, VideoWriter
from .executor import Pipeline, Stage, run_sequential
from .stages import configure_threads, queue_size_for, spam_stages

STAGE_NAMES = ("decode", "prior", "seeds", "features", "cluster", "connectivity", "ids", "write")


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
    if n_superpixels > reader.width * reader.height:
        raise InputError(f"{path}: {n_superpixels} superpixels requested but a frame has only "
                         f"{reader.width * reader.height} pixels")
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


class VideoOutputs:
    """The writer stage of ``spam-stream video`` for one input video.

    Writes ``OUTDIR/<stem>_labels/000000.png …`` (uint16 ids, one per frame, each written atomically),
    ``OUTDIR/<stem>_overlay.mp4`` (boundaries drawn on every frame; same frame count and rate as the input; written
    under a temporary name and renamed by :meth:`close`) and ``OUTDIR/<stem>_frames.csv`` (frame, K', ms per stage,
    error) at :meth:`close`. Frames that failed are recorded in the CSV and skipped in the outputs.
    """

    def __init__(self, outdir, stem: str, rate, width: int, height: int, overlay_video: bool = True,
                 labels: bool = True, color="auto", preset: str = "veryfast"):
        self.outdir = Path(outdir)
        self.stem, self.color = stem, color
        self.labels_dir = self.outdir / f"{stem}_labels" if labels else None
        if self.labels_dir is not None:
            self.labels_dir.mkdir(parents=True, exist_ok=True)
        self.writer = VideoWriter(self.outdir / f"{stem}_overlay.mp4", rate, width, height, preset) \
            if overlay_video else None
        self.rows: list[dict] = []
        self.errors: list[str] = []
        self.written = 0

    def __call__(self, frame: Frame) -> Frame:
        t = time.perf_counter()
        row = {"frame": frame.index, "superpixels": frame.meta.get("n_superpixels", "")}
        if frame.error is None:
            if self.labels_dir is not None:
                write_labels(self.labels_dir / f"{frame.index:06d}.png", frame.labels)
            if self.writer is not None:
                self.writer.write(overlay(frame.image, frame.labels, self.color))
            self.written += 1
            if row["superpixels"] == "":
                row["superpixels"] = int(frame.labels.max()) + 1
        else:
            self.errors.append(frame.error)
        row.update({f"ms_{name}": round(1e3 * frame.timings[name], 3) for name in STAGE_NAMES
                    if name in frame.timings})
        row["ms_write"] = round(1e3 * (time.perf_counter() - t), 3)
        row["error"] = frame.error or ""
        self.rows.append(row)
        return frame

    def close(self) -> None:
        """Finish the overlay video and write the CSV (both atomically)."""
        if self.writer is not None:
            if self.written:
                self.writer.close()
            else:
                self.writer.abort()
        fields = ["frame", "superpixels"] + [f"ms_{n}" for n in STAGE_NAMES] + ["error"]
        with atomic_path(self.outdir / f"{self.stem}_frames.csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields, restval="")
                w.writeheader()
                w.writerows(self.rows)

    def abort(self) -> None:
        """Interrupted: drop the unfinished overlay video (label PNGs already written are complete files)."""
        if self.writer is not None:
            self.writer.abort()
