"""Live sources: standard input, a TCP stream on loopback, frames given as arrays, a graceful SIGTERM, --realtime.

Network traffic stays on 127.0.0.1 and every wait is bounded."""
import csv
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from spam_stream import SPAM, read_labels
from spam_stream.pipelines.executor import Stage
from spam_stream.pipelines.video import VideoOptions, process_video, video_frames

from video_helpers import index_frame, read_index, write_index_video

ROOT = Path(__file__).resolve().parent.parent
H, W = 67, 99


def csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def overlay_indices(path):
    """Index drawn in every frame of a finished overlay video (it must decode to the end)."""
    import av

    with av.open(str(path)) as c:
        return [read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def mpegts_writer(fileobj, rate=25):
    """(container, stream) of an MPEG-TS stream written to ``fileobj`` (H.264, even size)."""
    import av

    container = av.open(fileobj, "w", format="mpegts")
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = W + 1, H + 1, "yuv420p"
    stream.options = {"crf": "12", "preset": "ultrafast", "tune": "zerolatency"}
    return container, stream


def send_frames(container, stream, frames, delay=0.0, until=None):
    """Encode ``frames`` (indices) into the stream, ``delay`` seconds apart, stopping early once ``until`` is set."""
    import av

    try:
        for i in frames:
            if until is not None and until.is_set():
                break
            img = np.pad(index_frame(i, H, W), ((0, 1), (0, 1), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
            if delay:
                time.sleep(delay)
        for packet in stream.encode():
            container.mux(packet)
        container.close()
    except (BrokenPipeError, ConnectionError, OSError, ValueError):
        pass  # the reader went away: a live source just stops


def test_stdin_pipe_is_segmented_frame_by_frame(tmp_path):
    clip = write_index_video(tmp_path / "clip.ts", 24, Fraction(25), codec="libx264", fmt="mpegts")
    out = tmp_path / "out"
    with open(clip, "rb") as fh:
        proc = subprocess.run([sys.executable, "-m", "spam_stream.cli", "video", "-", "-o", str(out), "-k", "24",
                               "--encoder", "none", "--input-option", "probesize=65536"], stdin=fh,
                              capture_output=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode()[-800:]
    rows = csv_rows(out / "stdin_frames.csv")
    assert [int(r["frame"]) for r in rows] == list(range(24))
    assert [i for i, _ in read_labels(out / "stdin_labels.mkv")] == list(range(24))  # the default label video
    assert overlay_indices(out / "stdin_overlay.mp4") == list(range(24))
    assert b"24 frames segmented" in proc.stderr


def test_live_mpegts_over_loopback_tcp(tmp_path):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(30)
    port = server.getsockname()[1]
    n = 30

    def serve():
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn, conn.makefile("wb") as fh:
            send_frames(*mpegts_writer(fh), range(n), delay=0.005)

    sender = threading.Thread(target=serve, daemon=True)
    sender.start()
    seen = []
    result = process_video(SPAM(encoder=None), f"tcp://127.0.0.1:{port}", tmp_path / "out", 24, VideoOptions(),
                           on_frame=lambda f, msg: seen.append(f.index))
    sender.join(timeout=30)
    server.close()
    assert result.error is None and result.written == n
    assert seen == list(range(n))  # frame by frame, in order
    stem = "tcp_127.0.0.1_" + str(port)
    assert overlay_indices(tmp_path / "out" / f"{stem}_overlay.mp4") == list(range(n))
    assert len(csv_rows(tmp_path / "out" / f"{stem}_frames.csv")) == n


def test_frames_given_as_arrays():
    frames = (index_frame(i, H, W) for i in range(12))  # a generator: no length known
    out = list(video_frames(SPAM(encoder=None), frames, 24, pipelined=True))
    assert [f.index for f in out] == list(range(12))
    assert all(f.error is None and f.labels.shape == (H, W) for f in out)
    assert [read_index(f.image) for f in out] == list(range(12))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stop_mid_stream_leaves_a_playable_overlay_matching_the_csv(tmp_path, sig):
    out = tmp_path / "out"
    # label PNGs (one file per frame as it is written) show the progress: stop once 8 frames are done
    proc = subprocess.Popen([sys.executable, "-m", "spam_stream.cli", "video", "-", "-o", str(out), "-k", "24",
                             "--encoder", "none", "--input-format", "mpegts", "--labels-format", "png"],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    done = threading.Event()
    feeder = threading.Thread(target=send_frames, args=(*mpegts_writer(proc.stdin), range(400), 0.01, done),
                              daemon=True)  # a live source: goes on until the reader leaves
    feeder.start()
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("stdin_labels/*.png"))) < 8:
        time.sleep(0.05)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        done.set()
        proc.kill()
    feeder.join(timeout=10)
    assert proc.returncode == 0, err.decode()[-800:]
    rows = csv_rows(out / "stdin_frames.csv")
    frames = overlay_indices(out / "stdin_overlay.mp4")
    assert 8 <= len(rows) < 400
    assert len(frames) == len(rows) == len(list(read_labels(out / "stdin_labels")))  # closed and valid
    assert frames == [int(r["frame"]) for r in rows] == list(range(len(rows)))
    assert b"stopped" in err


def test_realtime_drops_stale_frames_before_the_stages_keeps_order_and_counts(tmp_path):
    n = 80
    seen = []

    def slow(frame):
        time.sleep(0.02)  # processing far slower than the source
        seen.append(frame.index)
        return frame

    def source():
        for i in range(n):
            time.sleep(0.002)
            yield index_frame(i, H, W)

    out = list(video_frames(SPAM(encoder=None), source(), 24, realtime=True, extra_stages=[Stage("slow", slow)]))
    indices = [f.index for f in out]
    dropped = sum(f.meta["dropped"] for f in out)
    assert dropped > 0 and len(out) + dropped == n
    assert indices == sorted(set(indices)) == seen  # order kept; a dropped frame never reached a stage
    assert [read_index(f.image) for f in out] == indices
    times = [f.meta["time"] for f in out]
    assert times == [i / 25 for i in indices]  # the source's timestamps are kept


def test_realtime_csv_and_overlay_count_the_drops(tmp_path):
    frames = (index_frame(i, H, W) for i in range(150))  # produced far faster than they are processed
    result = process_video(SPAM(encoder=None), frames, tmp_path, 24, VideoOptions(realtime=True), stem="rt")
    rows = csv_rows(tmp_path / "rt_frames.csv")
    assert result.dropped > 0 and result.written == len(rows)
    assert sum(int(r["dropped"]) for r in rows) == result.dropped
    assert len(rows) + result.dropped == 150
    kept = [int(r["frame"]) for r in rows]
    assert kept == sorted(kept) and overlay_indices(tmp_path / "rt_overlay.mp4") == kept


def test_overlay_sent_to_a_udp_url(tmp_path):
    """The overlay goes out as MPEG-TS datagrams on loopback while it is made (nothing written locally)."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    port = receiver.getsockname()[1]
    got = bytearray()

    def listen():
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                got.extend(receiver.recv(65536))
            except socket.timeout:
                if got:
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    frames = (index_frame(i, H, W) for i in range(10))
    result = process_video(SPAM(encoder=None), frames, tmp_path, 24,
                           VideoOptions(overlay_url=f"udp://127.0.0.1:{port}"), stem="net")
    t.join(timeout=70)
    receiver.close()
    assert result.written == 10 and not (tmp_path / "net_overlay.mp4").exists()
    assert len(got) >= 188 and got[0] == 0x47  # MPEG-TS packets (sync byte 0x47)


@pytest.mark.parametrize("source", ["tcp://127.0.0.1:1", "-"])
def test_unreachable_stream_is_one_line(tmp_path, source):
    from spam_stream.io import InputError
    from spam_stream.videoio import VideoReader

    if source == "-":
        proc = subprocess.run([sys.executable, "-m", "spam_stream.cli", "video", "-", "-o", str(tmp_path),
                               "--encoder", "none"], stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                              cwd=ROOT)
        assert proc.returncode != 0 and b"Traceback" not in proc.stderr
        assert proc.stderr.decode().count("error:") >= 1
        return
    with pytest.raises(InputError, match="cannot open the stream"):
        VideoReader(source, timeout=5)


def test_segment_video_takes_an_iterator_of_frames():
    import spam_stream

    frames = (index_frame(i, H, W) for i in range(6))
    out = list(spam_stream.segment_video(frames, 24, encoder=None, iterations="auto"))
    assert [i for i, _, _ in out] == list(range(6))
    assert all(labels.shape == (H, W) and read_index(img) == i for i, img, labels in out)


def test_realtime_reads_a_file_at_its_frame_rate(tmp_path):
    """--realtime on a file: frames are delivered as a live source would (by their timestamps), not all at once."""
    from spam_stream.pipelines.video import decoded_frames
    from spam_stream.videoio import VideoReader

    clip = write_index_video(tmp_path / "clip.mkv", 10, Fraction(20), codec="ffv1")
    t = time.perf_counter()
    frames = list(decoded_frames(VideoReader(clip), 24, realtime=True))
    elapsed = time.perf_counter() - t
    assert elapsed >= 0.9 * 9 / 20  # the 10th frame is due 0.45 s after the first
    assert [f.meta["time"] for f in frames] == sorted(f.meta["time"] for f in frames)
    assert len(frames) + sum(f.meta["dropped"] for f in frames) == 10


def test_sigterm_while_the_source_waits_for_data_still_closes_everything(tmp_path):
    """The source sends a few frames and then nothing (pipe left open): SIGTERM must not wait for more data."""
    out = tmp_path / "out"
    # label PNGs (one file per frame as it is written) show the progress: stop once 8 frames are done
    proc = subprocess.Popen([sys.executable, "-m", "spam_stream.cli", "video", "-", "-o", str(out), "-k", "24",
                             "--encoder", "none", "--input-format", "mpegts", "--labels-format", "png"],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    import io

    data = io.BytesIO()
    send_frames(*mpegts_writer(data), range(12))  # a complete stream of 12 frames ...
    proc.stdin.write(data.getvalue())  # ... sent, then nothing more with the pipe still open
    proc.stdin.flush()
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("stdin_labels/*.png"))) < 3:
        time.sleep(0.05)
    time.sleep(1.0)  # whatever was decodable is processed; the reader now waits for data
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()[-800:]
    rows = csv_rows(out / "stdin_frames.csv")
    assert 3 <= len(rows) <= 12
    assert overlay_indices(out / "stdin_overlay.mp4") == [int(r["frame"]) for r in rows]
