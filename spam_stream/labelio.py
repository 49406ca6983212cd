"""The label maps of a video on disk, and reading them back.

A video's per-frame labels are written in one of two formats (:data:`LABEL_FORMATS`):

* ``ffv1`` (the default of ``spam-stream video`` and of the videos of ``spam-stream batch``): one lossless 16-bit
  video per clip, ``<stem>_labels.mkv`` — FFV1 ``gray16le`` in Matroska, one video frame per written frame, each
  pixel its superpixel id (0..65535). Any ffmpeg-based tool reads it (``ffmpeg -i x_labels.mkv -f rawvideo …``,
  PyAV's ``frame.to_ndarray()`` gives (H, W) uint16). Written by :class:`LabelVideoWriter` under a temporary name
  and renamed when complete. Frame ``i`` of the input is stored at time ``i / rate`` (the frames of a ``--start``
  range keep their input numbers; a frame that failed leaves a gap in time, not a shifted frame), and the rate is
  kept in the stream's ``SPAM_RATE`` tag, so that :func:`read_labels` returns each map with its input frame number
  (Matroska keeps times in milliseconds: exact for inputs up to 500 frames/s).
* ``png``: a folder ``<stem>_labels/`` of uint16 PNGs named by input frame number (``000000.png`` …), each written
  atomically (:func:`spam_stream.io.write_labels`).

Measured at 1920×1080 on the 2-core development machine (2026-12-05): FFV1 ≈ 22 ms and ≈ 140–170 KB per frame, a
uint16 PNG (compress level 1) ≈ 32 ms and ≈ 230 KB (see BENCHMARKS.md).

:func:`read_labels` reads either back (and a single ``_labels.png`` image); :func:`label_frame_count` counts the
frames of either without decoding them (what ``spam-stream batch --resume`` checks).
"""
from __future__ import annotations

import uuid
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import InputError
from .videoio import PartFileWriter

LABEL_FORMATS = ("ffv1", "png")
DEFAULT_LABEL_FORMAT = "ffv1"
LABELS_SUFFIX = {"ffv1": ".mkv", "png": ""}  # "" = a folder of PNGs
RATE_TAG = "SPAM_RATE"
MAX_LABEL = int(np.iinfo(np.uint16).max)


def labels_path(outdir, stem: str, fmt: str = DEFAULT_LABEL_FORMAT) -> Path:
    """Where a video's labels go: ``OUTDIR/<stem>_labels.mkv`` (ffv1) or the folder ``OUTDIR/<stem>_labels`` (png)."""
    if fmt not in LABEL_FORMATS:
        raise ValueError(f"unknown labels format {fmt!r} (expected one of {', '.join(LABEL_FORMATS)})")
    return Path(outdir) / f"{stem}_labels{LABELS_SUFFIX[fmt]}"


class LabelVideoWriter(PartFileWriter):
    """One lossless 16-bit label video (FFV1 gray16le in Matroska): ``write(index, labels)`` for each frame in
    increasing ``index`` order, then :meth:`close` (renames the finished file into place) or :meth:`abort`
    (deletes it). Until :meth:`close`, the file exists only under a temporary name (``.<stem>.<random>.part.mkv``).

    Args:
        path: the final path (``…_labels.mkv``).
        rate: the input's frame rate (frames per second; frame ``index`` is stored at time ``index / rate``).
        width, height: the label maps' size (any size: FFV1 needs no even sizes).
    """

    def __init__(self, path, rate, width: int, height: int):
        import av

        self.path = Path(path)
        self.tmp = self.path.parent / f".{self.path.stem}.{uuid.uuid4().hex[:12]}.part{self.path.suffix}"
        self.width, self.height = int(width), int(height)
        self.rate = Fraction(rate).limit_denominator(1_000_000)
        self.container = av.open(str(self.tmp), mode="w", format="matroska")
        try:
            self.stream = self.container.add_stream("ffv1", rate=self.rate)
            self.stream.width, self.stream.height = self.width, self.height
            self.stream.pix_fmt = "gray16le"
            self.stream.codec_context.thread_count = 1  # FFV1 level 1 encodes on one thread; the writer has its own
            self.stream.metadata[RATE_TAG] = str(self.rate)
        except BaseException:
            self.abort()
            raise
        self.count = 0
        self._last = None

    def write(self, index: int, labels: np.ndarray) -> None:
        """Add frame ``index``'s (H, W) integer labels (ids 0..65535; ValueError otherwise, nothing written)."""
        import av

        labels = np.asarray(labels)
        if labels.shape != (self.height, self.width):
            raise ValueError(f"labels of size {labels.shape[1]}x{labels.shape[0]} in a "
                             f"{self.width}x{self.height} label video")
        if self._last is not None and index <= self._last:
            raise ValueError(f"label frame {index} after frame {self._last}: frames must come in increasing order")
        if labels.dtype != np.uint16:
            if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
                raise ValueError(f"labels {labels.min()}..{labels.max()} do not fit a 16-bit label video "
                                 f"(0..{MAX_LABEL})")
            labels = labels.astype(np.uint16)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(labels), format="gray16le")
        frame.pts = int(index)
        frame.time_base = 1 / self.rate
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1
        self._last = index


def _stream_rate(stream) -> Fraction | None:
    for key, value in (stream.metadata or {}).items():
        if key.upper() == RATE_TAG:
            try:
                return Fraction(value)
            except (ValueError, ZeroDivisionError):
                break
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else None


def _png_frames(folder: Path) -> list[Path]:
    """The label PNGs of a folder in frame order (temporary ``.…`` names left out)."""
    pngs = [p for p in folder.glob("*.png") if not p.name.startswith(".")]
    return sorted(pngs, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name))


def read_labels(path) -> Iterator[tuple[int, np.ndarray]]:
    """The label maps a video's labels output holds: yields ``(frame_index, labels)`` in frame order, ``labels``
    (H, W) int32, ``frame_index`` the input frame's number.

    ``path``: a ``<stem>_labels.mkv`` label video (:class:`LabelVideoWriter`, or any lossless single-channel video),
    a folder of label PNGs (``000000.png`` …; a name that is not a number gets its position), or one label PNG
    (yields ``(0, labels)``). A missing or unreadable file raises :class:`~spam_stream.io.InputError` (one line).
    """
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        for position, png in enumerate(_png_frames(path)):
            yield (int(png.stem) if png.stem.isdigit() else position), np.asarray(Image.open(png)).astype(np.int32)
        return
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".png":
        from PIL import Image

        yield 0, np.asarray(Image.open(path)).astype(np.int32)
        return
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a readable label video ({' '.join(str(exc).split())[:160]})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: no video stream")
        stream = container.streams.video[0]
        rate = _stream_rate(stream)
        try:
            for position, frame in enumerate(container.decode(stream)):
                index = position
                if rate is not None and frame.pts is not None and frame.time_base is not None:
                    index = int(round(float(frame.pts * frame.time_base * rate)))
                labels = frame.to_ndarray(format="gray16le") if frame.format.name != "gray" else frame.to_ndarray()
                yield index, labels.astype(np.int32)
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: damaged label video ({' '.join(str(exc).split())[:160]})") from None


def label_frame_count(path) -> int | None:
    """How many label maps ``path`` holds, without decoding them: the PNGs of a folder, or the packets of a label
    video (a damaged or cut video: the packets before the damage). None when there is nothing readable there."""
    path = Path(path)
    if path.is_dir():
        return len(_png_frames(path))
    if not path.is_file():
        return None
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            count = 0
            try:
                for packet in container.demux(stream):
                    if packet.size and not packet.is_corrupt:  # a frame cut by a truncation does not count
                        count += 1
            except av.error.FFmpegError:
                pass
            return count
    except Exception:
        return None
