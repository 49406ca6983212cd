"""The write side of a video: labels as one lossless 16-bit video (FFV1 in Matroska) read back exactly, the
overlay's boundaries, and batch --resume with label videos (a cut or half-written one is never trusted)."""
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from skimage.segmentation import find_boundaries

import spam_stream
from spam_stream.cli import main
from spam_stream.io import AUTO_COLORS, InputError, boundaries, overlay, write_labels
from spam_stream.labelio import LabelVideoWriter, label_frame_count, read_labels

from video_helpers import decode_all, read_index, write_index_video

ARGS = ["-k", "16", "--encoder", "none"]


@pytest.mark.parametrize("rate", [Fraction(30000, 1001), Fraction(25), Fraction(240)])
def test_label_video_round_trip_is_exact_up_to_65535(tmp_path, rate):
    """Every value 0..65535 survives, at any size (odd here), and each map comes back with its frame number (a
    --start range and a failed frame's gap included)."""
    rng = np.random.default_rng(0)
    h, w = 67, 99
    maps = {i: rng.integers(0, 65536, (h, w)).astype(np.int32) for i in (5, 6, 7, 9, 10)}
    maps[5][0, 0], maps[5][0, 1] = 65535, 0
    maps[6][:] = 0
    maps[7] = (np.arange(h * w).reshape(h, w) * 9) % 65536  # every high byte, smooth and not
    path = tmp_path / "x_labels.mkv"
    writer = LabelVideoWriter(path, rate, w, h)
    assert not path.exists()  # only under a temporary name until closed
    for i, m in maps.items():
        writer.write(i, m)
    writer.close()
    got = list(read_labels(path))
    assert [i for i, _ in got] == list(maps)
    for i, labels in got:
        assert labels.dtype == np.int32 and labels.shape == (h, w)
        np.testing.assert_array_equal(labels, maps[i])
    assert label_frame_count(path) == len(maps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_labels.mkv"]


def test_label_video_refuses_what_it_cannot_hold(tmp_path):
    writer = LabelVideoWriter(tmp_path / "x_labels.mkv", 25, 8, 6)
    with pytest.raises(ValueError, match="16-bit"):
        writer.write(0, np.full((6, 8), 65536))
    with pytest.raises(ValueError, match="16-bit"):
        writer.write(0, np.full((6, 8), -1))
    with pytest.raises(ValueError, match="size"):
        writer.write(0, np.zeros((8, 6), np.int32))
    writer.write(3, np.zeros((6, 8), np.int32))
    with pytest.raises(ValueError, match="increasing"):
        writer.write(3, np.zeros((6, 8), np.int32))
    writer.abort()
    assert not list(tmp_path.iterdir())


def test_read_labels_reads_png_folders_and_files(tmp_path):
    folder = tmp_path / "clip_labels"
    folder.mkdir()
    rng = np.random.default_rng(1)
    maps = {i: rng.integers(0, 65536, (5, 7)).astype(np.int32) for i in (2, 3, 11)}
    for i, m in maps.items():
        write_labels(folder / f"{i:06d}.png", m)
    (folder / ".000004.0123456789ab.part.png").write_bytes(b"half a png")  # a temporary name: not a frame
    got = list(read_labels(folder))
    assert [i for i, _ in got] == [2, 3, 11] and label_frame_count(folder) == 3
    for i, labels in got:
        np.testing.assert_array_equal(labels, maps[i])
    (index, single), = read_labels(folder / "000003.png")
    assert index == 0 and np.array_equal(single, maps[3])
    with pytest.raises(InputError, match="no such file"):
        list(read_labels(tmp_path / "missing_labels.mkv"))
    (tmp_path / "junk_labels.mkv").write_bytes(b"not a video" * 10)
    with pytest.raises(InputError, match="junk_labels.mkv"):
        list(read_labels(tmp_path / "junk_labels.mkv"))
    assert label_frame_count(tmp_path / "junk_labels.mkv") is None


def test_a_cut_label_video_counts_fewer_frames(tmp_path):
    path = tmp_path / "x_labels.mkv"
    writer = LabelVideoWriter(path, 25, 64, 48)
    rng = np.random.default_rng(2)
    for i in range(12):
        writer.write(i, rng.integers(0, 3000, (48, 64)))
    writer.close()
    data = path.read_bytes()
    for fraction in (0.3, 0.7, 0.97):
        path.write_bytes(data[:int(len(data) * fraction)])
        assert label_frame_count(path) < 12


def test_video_labels_default_to_one_label_video_equal_to_the_pngs(tmp_path):
    """The default output (<stem>_labels.mkv) holds, frame for frame, what --labels-format png writes; as many
    frames as the CSV has rows and the overlay has frames; no temporary file left."""
    clip = write_index_video(tmp_path / "clip.mkv", 14, codec="ffv1")
    mkv, png = tmp_path / "mkv", tmp_path / "png"
    assert main(["video", str(clip), "-o", str(mkv), *ARGS, "--start", "3"]) == 0
    assert main(["video", str(clip), "-o", str(png), *ARGS, "--start", "3", "--labels-format", "png"]) == 0
    assert not (mkv / "clip_labels").exists() and not (png / "clip_labels.mkv").exists()
    ours, theirs = list(spam_stream.read_labels(mkv / "clip_labels.mkv")), list(read_labels(png / "clip_labels"))
    assert [i for i, _ in ours] == [i for i, _ in theirs] == list(range(3, 14))
    for (_, a), (_, b) in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    rows = (mkv / "clip_frames.csv").read_text().splitlines()
    assert len(rows) - 1 == len(ours) and "ms_overlay" in rows[0]
    frames, _ = decode_all(mkv / "clip_overlay.mp4")
    assert [read_index(f) for f in frames] == list(range(3, 14))
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]


def test_overlay_preset_and_labels_format_are_checked(tmp_path, capsys):
    clip = write_index_video(tmp_path / "clip.mkv", 4, codec="ffv1")
    out = tmp_path / "out"
    assert main(["video", str(clip), "-o", str(out), *ARGS, "--overlay-preset", "veryfast"]) == 0
    assert len(decode_all(out / "clip_overlay.mp4")[0]) == 4
    for bad in (["--overlay-preset", "warp"], ["--labels-format", "tiff"]):
        with pytest.raises(SystemExit):
            main(["video", str(clip), "-o", str(out), *ARGS, *bad])
        assert "invalid choice" in capsys.readouterr().err


def test_boundaries_are_find_boundaries_inner():
    rng = np.random.default_rng(3)
    for _ in range(40):
        h, w = rng.integers(1, 30, 2)
        labels = rng.integers(0, rng.integers(1, 6), (h, w))
        np.testing.assert_array_equal(boundaries(labels), find_boundaries(labels, mode="inner"))


def test_auto_overlay_colours_boundaries_by_luma():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (40, 50))
    out = overlay(image, labels, "auto")
    edges = find_boundaries(labels, mode="inner")
    np.testing.assert_array_equal(out[~edges], image[~edges])
    dark = image.astype(np.int64) @ np.array([299, 587, 114]) < 128_000  # luma < 128
    assert (out[edges & dark] == AUTO_COLORS[0]).all() and (out[edges & ~dark] == AUTO_COLORS[1]).all()
    assert (edges & dark).any() and (edges & ~dark).any()
    red = overlay(image, labels, (255, 0, 0))
    assert (red[edges] == (255, 0, 0)).all() and np.array_equal(red[~edges], image[~edges])


def _stamps(folder: Path):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != "manifest.jsonl"}


def test_batch_resume_trusts_a_label_video_only_when_complete(tmp_path, capsys):
    """A complete video (label video with the manifest's frame count) is skipped; a label video cut short under its
    final name, or the state a kill leaves (no CSV, a temporary label video), is redone identically."""
    src = tmp_path / "src"
    src.mkdir()
    write_index_video(src / "clip.mkv", 12, codec="ffv1")
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), *ARGS]
    assert main(args) == 0
    folder = out / "clip"
    mkv = folder / "clip_labels.mkv"
    first = list(read_labels(mkv))
    assert len(first) == 12 and not (folder / "clip_labels").exists()
    stamps = _stamps(out)
    time.sleep(0.05)
    assert main([*args, "--resume"]) == 0
    assert "resumed: 0 image(s) and 1 video(s) already complete" in capsys.readouterr().err
    assert _stamps(out) == stamps

    data = mkv.read_bytes()
    for damage in ("cut", "killed"):
        if damage == "cut":
            mkv.write_bytes(data[:len(data) * 2 // 3])
        else:
            (folder / "clip_frames.csv").unlink()
            mkv.unlink()
            (folder / ".clip_labels.0123456789ab.part.mkv").write_bytes(data[:len(data) // 2])
        time.sleep(0.05)
        assert main([*args, "--resume"]) == 0
        assert "processed 0 image(s) and 1 video(s) in this run" in capsys.readouterr().err
        again = list(read_labels(mkv))
        assert [i for i, _ in again] == [i for i, _ in first]
        for (_, a), (_, b) in zip(again, first):
            np.testing.assert_array_equal(a, b)
        assert not [p for p in out.rglob("*") if ".part" in p.name]
    # the labels asked for in the other format: the video is redone, and the old format's outputs are cleared
    assert main([*args, "--resume", "--labels-format", "png"]) == 0
    assert "processed 0 image(s) and 1 video(s) in this run" in capsys.readouterr().err
    assert not mkv.exists() and len(list(read_labels(folder / "clip_labels"))) == 12


def _same_labels(a, b):
    ours, theirs = list(read_labels(a)), list(read_labels(b))
    assert [i for i, _ in ours] == [i for i, _ in theirs] and ours
    for (_, x), (_, y) in zip(ours, theirs):
        np.testing.assert_array_equal(x, y)


def test_a_label_video_goes_through_a_uri_outdir(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pyarrow.fs", reason="a URI OUTDIR needs pyarrow")
    import tempfile

    src = tmp_path / "src"
    src.mkdir()
    write_index_video(src / "clip.mkv", 8, codec="ffv1")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["batch", str(src), "-o", str(local), *ARGS]) == 0
    assert main(["batch", str(src), "-o", remote.as_uri(), *ARGS]) == 0
    _same_labels(remote / "clip" / "clip_labels.mkv", local / "clip" / "clip_labels.mkv")
    capsys.readouterr()
    assert main(["batch", str(src), "-o", remote.as_uri(), *ARGS, "--resume"]) == 0
    assert "resumed: 0 image(s) and 1 video(s) already complete" in capsys.readouterr().err
    (remote / "clip" / "clip_labels.mkv").unlink()
    (remote / "clip" / ".clip_labels.0123456789ab.part.mkv").write_bytes(b"half an upload")
    assert main(["batch", str(src), "-o", remote.as_uri(), *ARGS, "--resume"]) == 0
    assert "processed 0 image(s) and 1 video(s) in this run" in capsys.readouterr().err
    _same_labels(remote / "clip" / "clip_labels.mkv", local / "clip" / "clip_labels.mkv")
    assert not [p for p in remote.rglob("*") if ".part" in p.name] and not list(scratch.iterdir())
