"""Reading and writing video files with PyAV (the decode and write ends of the video pipeline).

:class:`VideoReader` decodes any container/codec the bundled ffmpeg reads into (H, W, 3) uint8 RGB frames and
reports damage as a one-line :class:`~spam_stream.io.InputError` after the frames that could be decoded;
:class:`VideoWriter` encodes H.264 MP4 at a given frame rate, padding odd frame sizes to even ones (H.264's 4:2:0
needs even sizes) and writing under a temporary name that is renamed when the file is complete.
"""
from __future__ import annotations

import os
import uuid
from fractions import Fraction
from pathlib import Path

import numpy as np

from .io import VIDEO_SUFFIXES, InputError  # noqa: F401  (VIDEO_SUFFIXES: defined with the image suffixes)


def is_live(source) -> bool:
    """True for a source that is not a file: ``-`` (standard input), a URL (``rtsp://``, ``udp://``, ``tcp://``,
    ``http(s)://`` …, anything ffmpeg opens) or a device (``/dev/video0``). Such a source has no known length."""
    text = str(source)
    return text == "-" or "://" in text or text.startswith("/dev/")


def source_stem(source) -> str:
    """The name the outputs of ``source`` are called by: a file's stem, ``stdin`` for ``-``, else the URL or device
    with every character outside [A-Za-z0-9._-] replaced by ``_`` (``udp://127.0.0.1:5000`` → ``udp_127.0.0.1_5000``)."""
    import re

    text = str(source)
    if not is_live(text):
        return Path(text).stem
    if text == "-":
        return "stdin"
    text = text.split("?", 1)[0].replace("://", "_").replace("/dev/", "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "stream"


def _av():
    import av

    return av


class VideoReader:
    """Frames of a video file or live source, decoded in order.

    ``for index, rgb in VideoReader(path)``: index counts decoded frames from 0 (``start`` frames are skipped but
    still counted), rgb is (H, W, 3) uint8. Opening a file that is missing, not a video or has no video stream
    raises :class:`InputError` naming it. Damage raises :class:`InputError` after the last good frame, which is
    always yielded; what counts as damage:

    * a decoding error, or a frame the decoder marks corrupt (its data was cut or damaged: the decoder conceals the
      missing part, and the concealed frame is *not* yielded);
    * a file that ends before its declared duration or frame count (MP4, MKV …: a cut download);
    * an MPEG transport stream that ends inside a 188-byte (192 for M2TS) packet.

    An MPEG-TS (or any headerless stream) cut exactly between two frames is a complete, shorter stream: nothing in
    the file tells it apart from one that was meant to end there, so it is read to its end without error.
    A ``start`` beyond the last frame raises :class:`InputError` (nothing to process), as does a file with no frame.

    Attributes (after opening): ``rate`` (Fraction, frames per second), ``width``, ``height``, ``n_frames`` (the
    container's count, 0 when unknown), ``duration`` (seconds, or None), ``live`` (:func:`is_live`: no length is
    assumed, no end is checked), ``last_time`` (presentation time in seconds of the frame last yielded, or None).

    Live sources: ``path`` is ``-`` (standard input: MPEG-TS, Matroska, y4m …), a URL or a device, opened by PyAV
    with ``input_format`` (e.g. ``v4l2``, ``mpegts``; None lets ffmpeg probe) and ``options`` (ffmpeg's, as
    strings); ``timeout`` seconds for opening it.
    """

    def __init__(self, path, start: int = 0, max_frames: int | None = None, threads: bool = True,
                 input_format: str | None = None, options: dict | None = None, timeout: float | None = 30.0):
        av = _av()
        self.live = is_live(path)
        self.path = str(path) if self.live else Path(path)
        self.start, self.max_frames = max(0, int(start)), max_frames
        if not self.live and not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if not self.live and self.path.is_dir():
            raise InputError(f"{self.path}: is a directory, not a video")
        if not self.live and self.path.stat().st_size == 0:
            raise InputError(f"{self.path}: empty file (0 bytes)")
        try:
            if self.live:
                import sys

                target = sys.stdin.buffer if self.path == "-" else self.path
                # start as soon as the first frames tell the stream's size, not after seconds of probing
                opts = {"probesize": "8192", "analyzeduration": "0", **dict(options or {})}
                self.container = av.open(target, format=input_format, options=opts,
                                         timeout=None if timeout is None else (timeout, None))
            else:
                self.container = av.open(str(self.path), format=input_format, options=dict(options or {}))
        except Exception as exc:
            what = "not a readable video" if not self.live else "cannot open the stream"
            raise InputError(f"{self.path}: {what} ({_short(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise InputError(f"{self.path}: no video stream")
        self.stream = self.container.streams.video[0]
        if threads:
            if self.live:  # frame threads hold frames back: a live source decodes with slice threads only
                self.stream.thread_type = "SLICE"
            else:
                # frame threading (at least 2 threads, whatever the core count): ffmpeg's frame-threaded decoders
                # flag a frame whose data ends early as corrupt, which is how a file cut inside a frame is recognised
                self.stream.thread_type = "AUTO"
                self.stream.codec_context.thread_count = max(2, os.cpu_count() or 1)
        ctx = self.stream.codec_context
        self.width, self.height = int(ctx.width), int(ctx.height)
        if self.width <= 0 or self.height <= 0:  # ffmpeg probed something (random bytes as a JPEG) with no frame size
            self.container.close()
            raise InputError(f"{self.path}: not a readable video (no frame size in its stream)")
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.rate = Fraction(rate) if rate else Fraction(25)
        self.n_frames = int(self.stream.frames or 0)
        self.duration = None
        if self.stream.duration is not None and self.stream.time_base is not None:
            self.duration = float(self.stream.duration * self.stream.time_base)
        elif self.container.duration is not None:
            self.duration = self.container.duration / 1_000_000
        if self.n_frames and self.start >= self.n_frames:
            self.container.close()
            raise InputError(f"{self.path}: --start {self.start} is past the last frame (the video has "
                             f"{self.n_frames} frames, numbered from 0)")
        # read now: PyAV 18 refuses to read a closed container's attributes, and _check_complete runs after close
        self._format = self.container.format.name if self.container.format is not None else ""
        self._start_time = 0.0
        if self.stream.start_time is not None and self.stream.time_base is not None:
            self._start_time = float(self.stream.start_time * self.stream.time_base)
        self.decoded = 0
        self._last_time = None

    @property
    def last_time(self) -> float | None:
        """Presentation time (seconds) of the frame last yielded, from the stream's timestamps (None if it has
        none)."""
        return self._last_time

    def __iter__(self):
        av = _av()
        index = 0
        try:
            for frame in self.container.decode(self.stream):
                if frame.is_corrupt:
                    if self.live:  # a stream joined mid-way: frames before the first complete picture are skipped
                        continue
                    raise InputError(f"{self.path}: damaged or cut video: frame {index} is incomplete or corrupt "
                                     f"(its data ends early or is damaged); the frames before it are kept")
                if frame.pts is not None and frame.time_base is not None:
                    self._last_time = float(frame.pts * frame.time_base)
                if index >= self.start:
                    if self.max_frames is not None and index - self.start >= self.max_frames:
                        return
                    yield index, frame.to_ndarray(format="rgb24")
                    self.decoded += 1
                index += 1
        except av.error.FFmpegError as exc:
            raise InputError(f"{self.path}: damaged video after frame {index - 1} ({_short(exc)})") from None
        finally:
            self.close()
        if not self.live:
            self._check_complete(index)
            if index == 0:
                raise InputError(f"{self.path}: the video has no frame")
            if self.decoded == 0:
                raise InputError(f"{self.path}: --start {self.start} is past the last frame (the video has {index} "
                                 f"frames, numbered from 0)")

    def _check_complete(self, n: int) -> None:
        """Raise when the file ends clearly before what its header promises (a cut download, a truncated copy).

        Containers with an index or a duration in their header (MP4, MKV, …) are checked against it; an MPEG
        transport stream carries no duration, but it is a whole number of 188-byte packets (192 for M2TS) unless it
        was cut."""
        if self._format == "mpegts":
            size = self.path.stat().st_size
            if size % _ts_packet_size(self.path):
                raise InputError(f"{self.path}: video ends early (truncated transport stream: ends inside a "
                                 f"packet) after {n} frames")
            return
        expected = self.n_frames
        if not expected and self.duration:
            expected = int(round(self.duration * float(self.rate)))
        if self.duration and self._last_time is not None:
            missing = self.duration - (self._last_time - self._start_time) - 1.0 / float(self.rate)
            if missing > 2.0 / float(self.rate) and n < expected:
                raise InputError(f"{self.path}: video ends early (truncated or damaged): decoded {n} of about "
                                 f"{expected} frames")
        elif expected and n < expected - 1:
            raise InputError(f"{self.path}: video ends early (truncated or damaged): decoded {n} of {expected} frames")

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass


def _ts_packet_size(path: Path) -> int:
    """188 for an MPEG transport stream, 192 for M2TS (a 4-byte time code before each packet), from the position
    of the 0x47 sync bytes at the file's start."""
    with open(path, "rb") as fh:
        head = fh.read(2 * 192 + 8)
    if len(head) > 192 + 4 and head[4] == 0x47 and head[196] == 0x47 and not (head[0] == 0x47 and head[188] == 0x47):
        return 192
    return 188


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


class PartFileWriter:
    """What the PyAV writers share: an open ``container`` with one encoded ``stream``, written under the temporary
    name ``tmp`` (None: straight to ``path``, a live URL) and moved to ``path`` when complete, so that a crash never
    leaves a half-written file under the final name."""

    container = stream = tmp = path = None

    def close(self) -> None:
        """Flush the encoder and move the finished file to its final name."""
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
        if self.tmp is not None:
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Stop without keeping anything."""
        try:
            self.container.close()
        except Exception:
            pass
        if self.tmp is None:
            return
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class VideoWriter(PartFileWriter):
    """H.264 MP4 writer: ``write(rgb)`` frames of one size, then ``close()`` (renames the finished file into place)
    or ``abort()`` (deletes it).

    Frames get consecutive presentation times at ``rate`` frames per second, so the frame count and rate survive
    (``write(rgb, time)``: the source's time in seconds instead, so that a video with dropped frames keeps its
    timing). Odd sizes are padded by repeating the last row / column (the picture is never cropped); ``preset``
    trades encoding speed for size (libx264's "veryfast" by default: the writer must not be the slowest stage).

    ``path`` may be a URL (:func:`is_live`, e.g. ``udp://127.0.0.1:5000``): the video is sent there as it is made,
    in ``format`` (default MPEG-TS), with no temporary file.
    """

    def __init__(self, path, rate, width: int, height: int, preset: str = "veryfast", crf: int = 20,
                 format: str | None = None):
        av = _av()
        self.live = is_live(path)
        self.path = str(path) if self.live else Path(path)
        self.width, self.height = int(width), int(height)
        if self.live:
            self.tmp = None
            try:
                self.container = av.open(self.path, mode="w", format=format or "mpegts")
            except Exception as exc:
                raise InputError(f"{self.path}: cannot send the video there ({_short(exc)})") from None
        else:
            self.tmp = self.path.parent / f".{self.path.stem}.{uuid.uuid4().hex[:12]}.part{self.path.suffix}"
            self.container = av.open(str(self.tmp), mode="w", format=format or "mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(rate))
        self.stream.width, self.stream.height = self.width + self.width % 2, self.height + self.height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": preset, "crf": str(crf)}
        self.count = 0
        self.rate = Fraction(rate)
        self._pts, self._t0 = -1, None

    def write(self, rgb: np.ndarray, time: float | None = None) -> None:
        av = _av()
        if rgb.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame of size {rgb.shape[1]}x{rgb.shape[0]} in a {self.width}x{self.height} video")
        if self.width % 2 or self.height % 2:
            rgb = np.pad(rgb, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        pts = self._pts + 1
        if time is not None:
            self._t0 = time if self._t0 is None else self._t0
            pts = max(pts, int(round((time - self._t0) * self.rate)))
        frame.pts = self._pts = pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1



def video_info(path) -> dict:
    """Frame count (by decoding), frame rate and size of a video file: {"frames", "rate", "width", "height"}."""
    reader = VideoReader(path)
    rate, width, height = reader.rate, reader.width, reader.height
    count = sum(1 for _ in reader)
    return {"frames": count, "rate": rate, "width": width, "height": height}
