"""spam-stream video and segment_video: frame count, order and rate survive; damage is reported, nothing
half-written remains; coherent ids."""
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

import spam_stream
from spam_stream.cli import main
from spam_stream.io import InputError
from spam_stream.labelio import label_frame_count

from helpers import assert_connected
from video_helpers import TS_PACKET, decode_all, index_frame, read_index, write_index_video, write_ts_video

N = 300
RATE = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory):
    """300 lossless frames of 99x67 (odd sizes) at 29.97 fps, each carrying its index."""
    return write_index_video(tmp_path_factory.mktemp("video") / "clip.mkv", N, RATE, codec="ffv1")


def _leftovers(folder):
    return [p for p in folder.rglob("*") if ".part" in p.name]


def test_video_command_keeps_every_frame_in_order_at_the_input_rate(odd_video, tmp_path):
    out = tmp_path / "out"
    assert main(["video", str(odd_video), "-o", str(out), "-k", "24", "--encoder", "none"]) == 0
    labels = list(spam_stream.read_labels(out / "clip_labels.mkv"))  # the default: one lossless label video
    assert [i for i, _ in labels] == list(range(N))
    assert labels[0][1].shape == (67, 99)  # labels never padded nor cropped
    frames, rate = decode_all(out / "clip_overlay.mp4")
    assert len(frames) == N and rate == RATE
    assert frames[0].shape[:2] == (68, 100)  # padded to even for H.264
    assert [read_index(f) for f in frames] == list(range(N))
    rows = (out / "clip_frames.csv").read_text().splitlines()
    assert len(rows) == N + 1 and rows[0].startswith("frame,superpixels,ms_decode")
    assert not _leftovers(out)


def test_independent_labels_equal_segment_of_each_decoded_frame(odd_video, tmp_path):
    out = tmp_path / "out"
    assert main(["video", str(odd_video), "-o", str(out), "-k", "24", "--encoder", "none", "--independent",
                 "--max-frames", "12", "--start", "5", "--no-overlay", "--labels-format", "png"]) == 0
    assert not (out / "clip_overlay.mp4").exists()
    model = spam_stream.SPAM(encoder=None)
    frames, _ = decode_all(odd_video)
    pngs = sorted((out / "clip_labels").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(5, 17)]
    for p in pngs[::4]:
        i = int(p.stem)
        assert read_index(frames[i]) == i
        np.testing.assert_array_equal(np.asarray(Image.open(p)), model.segment(frames[i], 24))


def test_segment_video_yields_every_frame_in_order(odd_video):
    seen = []
    for index, frame, labels in spam_stream.segment_video(odd_video, 24, encoder=None):
        assert read_index(frame) == index and labels.shape == frame.shape[:2]
        seen.append(index)
    assert seen == list(range(N))
    assert_connected(np.unique(labels, return_inverse=True)[1].reshape(labels.shape))


def test_corrupt_video_is_one_line_error_and_other_inputs_still_run(odd_video, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    out = tmp_path / "out"
    assert main(["video", str(bad), str(odd_video), "-o", str(out), "-k", "16", "--encoder", "none",
                 "--max-frames", "10"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "broken.mp4" in line]
    assert lines and all("\n" not in line for line in lines)
    assert label_frame_count(out / "clip_labels.mkv") == 10
    assert not (out / "broken_overlay.mp4").exists() and not _leftovers(out)


def test_mkv_cut_in_the_middle_keeps_the_frames_before_the_damage(tmp_path, capsys):
    """A Matroska file declares its duration: one cut to its first half is known to be short."""
    full = write_index_video(tmp_path / "full.mkv", 120, fmt="matroska")
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) // 2])
    out = tmp_path / "out"
    assert main(["video", str(cut), "-o", str(out), "-k", "16", "--encoder", "none"]) == 1
    err = capsys.readouterr().err
    assert "cut.mkv" in err and "Traceback" not in err
    written = list(spam_stream.read_labels(out / "cut_labels.mkv"))
    assert 10 < len(written) < 120
    frames, _ = decode_all(out / "cut_overlay.mp4")  # a complete, playable file with the good frames
    assert len(frames) == len(written)
    # the last few frames before the cut may be concealed differently by threaded and single-threaded decoding
    good = len(frames) - 3
    assert [read_index(f) for f in frames[:good]] == list(range(good))
    assert (out / "cut_frames.csv").is_file() and not _leftovers(out)
    with pytest.raises(InputError, match="cut"):
        list(spam_stream.segment_video(cut, 16, encoder=None))


TS_FRAMES, TS_CUT_AT = 24, 15


@pytest.fixture(scope="module")
def ts_video(tmp_path_factory):
    return write_ts_video(tmp_path_factory.mktemp("ts") / "full.ts", TS_FRAMES)


def _ts_cut(ts_video, kind):
    """The bytes of the transport stream cut at a place whose kind is known by construction (frame TS_CUT_AT)."""
    path, starts = ts_video
    data = path.read_bytes()
    first, nxt = starts[TS_CUT_AT], starts[TS_CUT_AT + 1]
    assert nxt - first >= 2  # the frame spans several packets
    if kind == "inside-packet":  # a partial packet: inside frame TS_CUT_AT's second packet
        return data[:(first + 1) * TS_PACKET + TS_PACKET // 2]
    if kind == "inside-frame":  # whole packets, but frame TS_CUT_AT's data stops after its first packet
        return data[:(first + 1) * TS_PACKET]
    assert kind == "between-frames"  # whole packets up to the first one of frame TS_CUT_AT: a shorter stream
    return data[:first * TS_PACKET]


@pytest.mark.parametrize("kind", ["inside-packet", "inside-frame", "between-frames"])
def test_transport_stream_cut_keeps_every_complete_frame_and_reports_known_damage(ts_video, tmp_path, kind, capsys):
    """The README's contract for cut MPEG-TS files: every complete frame before the cut is written; a cut inside a
    packet or inside a frame's data fails the video in one line; a cut between two frames is a shorter stream."""
    cut = tmp_path / "cut.ts"
    cut.write_bytes(_ts_cut(ts_video, kind))
    out = tmp_path / "out"
    code = main(["video", str(cut), "-o", str(out), "-k", "16", "--encoder", "none"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if kind == "between-frames":
        assert code == 0 and "wrote 1 of 1" in err
    else:
        assert code == 1
        lines = [line for line in err.splitlines() if "cut.ts" in line and "error" in line]
        assert lines and ("damaged" in lines[0] or "ends" in lines[0])
    written = [index for index, _ in spam_stream.read_labels(out / "cut_labels.mkv")]
    assert written == list(range(TS_CUT_AT))
    frames, _ = decode_all(out / "cut_overlay.mp4")
    assert [read_index(f) for f in frames] == list(range(TS_CUT_AT))
    rows = (out / "cut_frames.csv").read_text().splitlines()
    assert len([r for r in rows[1:] if not r.endswith(",")]) <= 1  # at most the one error row
    assert not _leftovers(out)


def test_start_past_the_last_frame_is_one_line_error(odd_video, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["video", str(odd_video), "-o", str(out), "-k", "16", "--encoder", "none", "--start",
                 str(N + 5)]) == 1
    err = capsys.readouterr().err
    assert "past the last frame" in err and "clip.mkv" in err and "Traceback" not in err
    assert not (out / "clip_overlay.mp4").exists() and not _leftovers(out)


def test_coherent_ids_persist_on_static_content(tmp_path):
    clip = write_index_video(tmp_path / "static.mp4", 12, static=True, codec="libx264")
    coherent = [lab for _, _, lab in spam_stream.segment_video(clip, 30, encoder=None)]
    independent = [lab for _, _, lab in spam_stream.segment_video(clip, 30, encoder=None, independent=True)]
    change = [np.mean(a != b) for a, b in zip(coherent, coherent[1:])]
    change_ind = [np.mean(a != b) for a, b in zip(independent, independent[1:])]
    assert np.mean(change) < 0.05
    assert np.mean(change) <= np.mean(change_ind)
    # ids are superpixels of the frame: each one connected
    for lab in coherent[::4]:
        assert_connected(np.unique(lab, return_inverse=True)[1].reshape(lab.shape))


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["video", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o"), "--encoder", "none"]) == 1
    assert "missing.mp4: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["video", "x.mp4", "-o", str(tmp_path), "--boundary-color", "purple-ish"])


LONG = 1500  # frames: at ≈ 125 frames/s the interrupt must land while frames are still being made


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """1500 lossless 99x67 index frames (≈ 12 s of work for the Ctrl-C test: a 300-frame clip could finish between
    two polls of a loaded machine)."""
    return write_index_video(tmp_path_factory.mktemp("video") / "clip.mkv", LONG, RATE, codec="ffv1")


def test_ctrl_c_stops_within_a_second_and_leaves_only_complete_files(long_video, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "spam_stream.cli", "video", str(long_video), "-o", str(out), "-k",
                             "24", "--encoder", "none", "--labels-format", "png"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("clip_labels/*.png"))) < 20:
        time.sleep(0.02)
    t = time.time()
    proc.send_signal(signal.SIGINT)
    stopped, err = None, b""
    for chunk in iter(lambda: proc.stderr.read1(4096), b""):  # "interrupted" is printed once every stage stopped
        err += chunk
        if stopped is None and b"interrupted" in err:
            stopped = time.time() - t
    proc.wait(timeout=60)
    assert stopped is not None and stopped < 1.5, (stopped, err[-500:])
    assert proc.returncode == 130
    pngs = sorted((out / "clip_labels").glob("*.png"))
    assert 0 < len(pngs) < LONG
    for p in pngs:  # every label file present is complete and readable
        assert np.asarray(Image.open(p)).shape == (67, 99)
    assert not (out / "clip_overlay.mp4").exists() and not _leftovers(out)


def test_random_bytes_are_not_a_readable_video(tmp_path):
    """ffmpeg probes random bytes named .jpg as an image stream with no frame size: one line saying so, not a
    complaint about the number of superpixels."""
    from spam_stream.videoio import VideoReader

    junk = tmp_path / "junk.jpg"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="not a readable video"):
        VideoReader(junk)


REAL_N, REAL_CUT = 24, 14


@pytest.fixture(scope="module")
def real_clip(tmp_path_factory):
    """24 lossless 256x144 frames that move like footage (pan, rotation, zoom, a moving object, a cut at frame
    14), each carrying its index; and a static two-object prior mask of that size."""
    from video_helpers import write_real_clip

    folder = tmp_path_factory.mktemp("real")
    clip = write_real_clip(folder / "real.mkv", REAL_N, 144, 256, rate=RATE, cut=REAL_CUT, mark=True, codec="ffv1")
    mask = np.zeros((144, 256), np.uint8)
    mask[:, 100:] = 1
    mask[90:, 100:] = 2
    Image.fromarray(mask).save(folder / "mask.png")
    return clip, folder / "mask.png"


@pytest.mark.parametrize("config", ["none", "bundled", "mask"])
def test_real_motion_pipelined_equals_sequential(real_clip, tmp_path, config, capsys):
    """On a clip with camera motion, zoom, local motion and a scene cut, the default (pipelined) run keeps every
    frame, in order, at the input rate, with the labels and ids of --sequential; the run ends with its schedule
    line."""
    clip, mask = real_clip
    extra = {"none": ["--encoder", "none"], "bundled": [], "mask": ["--encoder", "none", "--prior-mask", str(mask)]}
    labels = {}
    for mode in ("pipelined", "sequential"):
        out = tmp_path / mode
        args = ["video", str(clip), "-o", str(out), "-k", "60", *extra[config]]
        assert main(args + (["--sequential"] if mode == "sequential" else [])) == 0
        err = capsys.readouterr().err
        line = [x for x in err.splitlines() if "schedule:" in x]
        assert len(line) == 1 and "busy:" in line[0] and ("pool of" in line[0]) == (mode == "pipelined")
        labels[mode] = list(spam_stream.read_labels(out / "real_labels.mkv"))
        assert [i for i, _ in labels[mode]] == list(range(REAL_N))
        frames, rate = decode_all(out / "real_overlay.mp4")
        assert rate == RATE and [read_index(f) for f in frames] == list(range(REAL_N))
    for (_, a), (_, b) in zip(labels["pipelined"], labels["sequential"]):
        if config == "bundled":  # the encoder may run on one thread in a worker: float sums in another order
            assert np.mean(a == b) >= 0.99
        else:
            np.testing.assert_array_equal(a, b)
    if config == "mask":  # the prior holds in every frame: no superpixel crosses the mask's objects
        part = np.asarray(Image.open(mask))
        for _, lab in labels["pipelined"][::5]:
            for sp in np.unique(lab):
                assert len(np.unique(part[lab == sp])) == 1
