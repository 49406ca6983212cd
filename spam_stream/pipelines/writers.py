"""The write end of ``spam-stream video`` (and of the videos of ``spam-stream batch``): overlay video, label maps and
the per-frame CSV of one input video.

At video rate the write side is CPU work the size of a SPAM stage (1920×1080 on the 2-core development machine:
drawing the overlay ≈ 10 ms, x264 ``ultrafast`` ≈ 15 ms of CPU, ``veryfast`` ≈ 30 ms; labels as FFV1 ≈ 22 ms, as
a uint16 PNG ≈ 32 ms). One writer thread doing all of it caps a stream at ≈ 12 frames/s, so
:meth:`VideoOutputs.stages` gives the executor three stages, each its own thread: ``overlay`` (draw the
boundaries), ``encode`` (x264, the overlay MP4) and ``write`` (the label map, then the frame's CSV row). numpy,
PyAV and Pillow release the GIL while they work, so the three run in parallel on consecutive frames.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

from ..frame import Frame
from ..io import atomic_path, overlay, write_labels
from ..labelio import DEFAULT_LABEL_FORMAT, LABEL_FORMATS, LabelVideoWriter, labels_path
from ..videoio import VideoWriter
from .executor import Stage

STAGE_NAMES = ("decode", "prior", "seeds", "features", "cluster", "connectivity", "ids", "overlay", "encode",
               "write")
OVERLAY_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
DEFAULT_OVERLAY_PRESET = "ultrafast"  # 1080p: ≈ 15 ms of CPU a frame (veryfast ≈ 30 ms), files ≈ 2–3× larger


class VideoOutputs:
    """The outputs of one input video: call :meth:`stages` for the executor's writer stages (or use the object
    itself as one stage, which does all of it in turn), then :meth:`close` (or :meth:`abort` when interrupted).

    Writes ``OUTDIR/<stem>_overlay.mp4`` (boundaries drawn on every frame; same frame count and rate as the input,
    the source's timestamps; x264 at ``preset``; or sent to ``overlay_url`` as MPEG-TS instead), the labels as ``OUTDIR/<stem>_labels.mkv`` (``labels_format="ffv1"``: one lossless 16-bit
    video) or ``OUTDIR/<stem>_labels/000000.png …`` (``"png"``: uint16 ids, one file per frame, each written
    atomically), and ``OUTDIR/<stem>_frames.csv`` (frame, K', ms per stage, error) at :meth:`close`. The two videos
    are written under temporary names and renamed by :meth:`close`. Frames that failed are recorded in the CSV and
    skipped in the outputs. The CSV also has each frame's source time in seconds, the frames ``--realtime`` dropped
    just before it, and the clustering rounds it ran. See :mod:`spam_stream.labelio` for the label formats and reading them back.
    With ``graph``, also ``OUTDIR/<stem>_graph.npz`` at :meth:`close` (before the CSV): every frame's region graph
    stacked (:func:`spam_stream.graph.graph_arrays`; node ``ids`` are the ids of the label maps, ``frame`` columns).
    ``start_label`` is added to every id written.
    """

    def __init__(self, outdir, stem: str, rate, width: int, height: int, overlay_video: bool = True,
                 labels: bool = True, color="auto", preset: str = DEFAULT_OVERLAY_PRESET,
                 labels_format: str = DEFAULT_LABEL_FORMAT, graph: bool = False, start_label: int = 0,
                 overlay_url: str | None = None):
        if labels_format not in LABEL_FORMATS:
            raise ValueError(f"unknown labels format {labels_format!r}")
        self.outdir = Path(outdir)
        self.start_label = int(start_label)
        self.graphs: list | None = [] if graph else None
        self.graph_frames: list[int] = []
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.stem, self.color, self.labels_format = stem, color, labels_format
        self.labels_dir = self.labels_video = None
        if labels and labels_format == "png":
            self.labels_dir = labels_path(self.outdir, stem, "png")
            self.labels_dir.mkdir(parents=True, exist_ok=True)
        elif labels:
            self.labels_video = LabelVideoWriter(labels_path(self.outdir, stem, "ffv1"), rate, width, height)
        try:
            target = overlay_url or self.outdir / f"{stem}_overlay.mp4"  # a URL: MPEG-TS sent live
            self.writer = VideoWriter(target, rate, width, height, preset) if overlay_video else None
        except BaseException:
            if self.labels_video is not None:
                self.labels_video.abort()
            raise
        self.rows: list[dict] = []
        self.errors: list[str] = []
        self.written = 0

    def stages(self) -> list[Stage]:
        """The executor stages that write a frame: ``overlay`` (draw), ``encode`` (x264), ``write`` (labels and the
        CSV row), all fatal (a full disk concerns every later frame) and run on failed frames too (recorded in the
        CSV)."""
        return [Stage("overlay", self.draw_overlay, fatal=True, run_on_error=True, io=True),
                Stage("encode", self.write_overlay, fatal=True, run_on_error=True, io=True),
                Stage("write", self, fatal=True, run_on_error=True, io=True)]

    def draw_overlay(self, frame: Frame) -> Frame:
        """The frame's overlay image into ``frame.meta["overlay"]`` (nothing for a failed frame or without an
        overlay video)."""
        if frame.error is None and self.writer is not None and "overlay" not in frame.meta:
            t = time.perf_counter()
            frame.meta["overlay"] = overlay(frame.image, frame.labels, self.color)
            frame.timings["overlay"] = frame.timings.get("overlay", 0.0) + time.perf_counter() - t
        return frame

    def write_overlay(self, frame: Frame) -> Frame:
        """Encode the frame's overlay (drawn here when :meth:`draw_overlay` did not run as a stage of its own)."""
        if frame.error is None and self.writer is not None and not frame.meta.get("overlay_written"):
            self.draw_overlay(frame)
            t = time.perf_counter()
            self.writer.write(frame.meta.pop("overlay"), frame.meta.get("time"))  # the source's timestamps
            frame.meta["overlay_written"] = True
            frame.timings["encode"] = frame.timings.get("encode", 0.0) + time.perf_counter() - t
        return frame

    def __call__(self, frame: Frame) -> Frame:
        """The ``write`` stage: the frame's label map and CSV row (and its overlay, when :meth:`write_overlay` did
        not run as a stage of its own)."""
        self.write_overlay(frame)
        t = time.perf_counter()
        row = {"frame": frame.index, "superpixels": frame.meta.get("n_superpixels", "")}
        if frame.error is None:
            labels = frame.labels + self.start_label if self.start_label else frame.labels
            if self.labels_dir is not None:
                write_labels(self.labels_dir / f"{frame.index:06d}.png", labels)
            elif self.labels_video is not None:
                self.labels_video.write(frame.index, labels)
            if self.graphs is not None:
                from ..graph import region_graph

                self.graphs.append(region_graph(labels, frame.image, prior=frame.partition))
                self.graph_frames.append(frame.index)
            self.written += 1
            if row["superpixels"] == "":
                row["superpixels"] = int(frame.labels.max()) + 1
        else:
            self.errors.append(frame.error)
        frame.timings["write"] = frame.timings.get("write", 0.0) + time.perf_counter() - t
        row.update({f"ms_{name}": round(1e3 * frame.timings[name], 3) for name in STAGE_NAMES
                    if name in frame.timings})
        stamp = frame.meta.get("time")
        row["time"] = "" if stamp is None else round(stamp, 6)
        row["dropped"] = frame.meta.get("dropped", 0)
        row["iterations"] = frame.meta.get("iterations", "")
        row["error"] = frame.error or ""
        self.rows.append(row)
        return frame

    def close(self) -> None:
        """Finish the overlay and label videos and write the CSV (each atomically; the CSV last)."""
        for writer in (self.writer, self.labels_video):
            if writer is not None:
                if self.written:
                    writer.close()
                else:
                    writer.abort()
        if self.graphs:
            from ..graph import save_graph

            save_graph(self.outdir / f"{self.stem}_graph.npz", self.graphs, self.graph_frames)
        fields = ["frame", "superpixels"] + [f"ms_{n}" for n in STAGE_NAMES] + ["time", "dropped", "iterations",
                                                                                 "error"]
        with atomic_path(self.outdir / f"{self.stem}_frames.csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields, restval="")
                w.writeheader()
                w.writerows(self.rows)

    def abort(self) -> None:
        """Interrupted: drop the unfinished overlay and label videos (label PNGs already written are complete
        files)."""
        for writer in (self.writer, self.labels_video):
            if writer is not None:
                writer.abort()
