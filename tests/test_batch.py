"""spam-stream batch: inputs of every kind (images and videos), failures in the manifest, resume after a kill,
shards."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spam_stream.cli import main
from spam_stream.pipelines.batch import collect_inputs, read_manifest, shard

from helpers import assert_connected, synthetic_image
from video_helpers import VIDEO_BATCH, decode_all, label_frames, make_video_batch, read_index, write_index_video


def make_images(folder: Path, n: int, size=(48, 64)):
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i:03d}.png"
        Image.fromarray(synthetic_image(*size, seed=i)).save(p)
        paths.append(p)
    return paths


def manifest(out: Path, name="manifest.jsonl"):
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def test_folder_with_corrupt_image_and_list_with_missing_file(tmp_path, capsys):
    src = tmp_path / "src"
    make_images(src, 6)
    (src / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 30)
    listing = tmp_path / "list.txt"
    listing.write_text("src/a/img001.png\n# a comment\nsrc/missing.jpg\n")
    out = tmp_path / "out"
    assert main(["batch", str(src), str(listing), "-o", str(out), "-k", "20", "--encoder", "none"]) == 1
    entries = manifest(out)
    by_status = {e["input"]: e["status"] for e in entries}
    assert len(entries) == 8  # 6 images + corrupt + missing (the listed img001 is the folder's img001)
    failed = sorted(Path(e["input"]).name for e in entries if e["status"] == "failed")
    assert failed == ["corrupt.png", "missing.jpg"]
    for e in entries:
        if e["status"] == "ok":
            labels = np.asarray(Image.open(e["outputs"]["labels"]))
            assert labels.dtype == np.uint16
            assert_connected(labels.astype(np.int64))
            assert Path(e["outputs"]["overlay"]).is_file() and e["superpixels"] == labels.max() + 1
            assert set(e["ms"]) >= {"decode", "features", "cluster", "connectivity", "write"}
    # mirrored by relative path
    assert (out / "a" / "img001_labels.png").is_file() and (out / "b" / "deep" / "img000_labels.png").is_file()
    err = capsys.readouterr().err
    assert "2 input(s) failed" in err and "corrupt.png" in err and "missing.jpg" in err
    assert len(by_status) == 8


def test_globs_and_shards_cover_every_input_exactly_once(tmp_path):
    src = tmp_path / "src"
    make_images(src, 13)
    items = collect_inputs([str(src / "**" / "*.png")])
    assert len(items) == 13
    parts = [shard(items, i, 3) for i in range(3)]
    names = sorted(str(it.rel) for part in parts for it in part)
    assert names == sorted(str(it.rel) for it in items)  # no gap, no overlap
    assert all(parts)  # 13 items: each shard gets some
    out = tmp_path / "out"
    for i in range(3):
        assert main(["batch", str(src / "**" / "*.png"), "-o", str(out), "-k", "12", "--encoder", "none",
                     "--shard", f"{i}/3"]) == 0
    done = [e["input"] for i in range(3) for e in manifest(out, f"manifest-{i}-of-3.jsonl")]
    assert sorted(done) == sorted(str(it.path) for it in items)


def test_resume_after_a_kill_redoes_only_what_was_not_finished(tmp_path):
    src = tmp_path / "src"
    make_images(src, 40, size=(96, 128))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "spam_stream.cli", "batch", str(src), "-o", str(out), "-k", "60", "--encoder", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once a few items are done, well before the end
        if (out / "manifest.jsonl").is_file() and len((out / "manifest.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = {p for p in out.rglob("*_labels.png")}
    overlays = {p for p in out.rglob("*_overlay.png")}
    assert 0 < len(complete) < 40, "the kill should land mid-run"
    stamps = {p: p.stat().st_mtime_ns for p in complete | overlays}
    finished = {p.name[:-len("_labels.png")] for p in complete} & {p.name[:-len("_overlay.png")] for p in overlays}
    time.sleep(0.05)
    assert main(["batch", str(src), "-o", str(out), "-k", "60", "--encoder", "none", "--resume"]) == 0
    entries = manifest(out)
    assert sorted(Path(e["input"]).stem for e in entries) == sorted(f"img{i:03d}" for i in range(40))
    for p, t in stamps.items():  # complete items were not redone
        stem = p.name.rsplit("_", 1)[0]
        if stem in finished:
            assert p.stat().st_mtime_ns == t
    # every output is a complete, readable image; temporary files are never taken for outputs
    for e in entries:
        assert e["status"] == "ok"
        np.asarray(Image.open(e["outputs"]["labels"])).max()
    # a second resume does nothing
    assert main(["batch", str(src), "-o", str(out), "-k", "60", "--encoder", "none", "--resume"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name.rsplit("_", 1)[0] in finished)


def test_pipelined_equals_sequential(tmp_path):
    src = tmp_path / "src"
    make_images(src, 5)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["batch", str(src), "-o", str(a), "-k", "20", "--encoder", "none"]) == 0
    assert main(["batch", str(src), "-o", str(b), "-k", "20", "--encoder", "none", "--sequential"]) == 0
    for p in a.rglob("*_labels.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(b / p.relative_to(a))))


def test_bad_specs_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["batch", str(empty), "-o", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "*.jpg"), "-o", str(tmp_path / "o")]) == 2
    assert "matches no file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["batch", str(empty), "-o", str(tmp_path / "o"), "--shard", "3/3"])


VIDEO_ARGS = ["-k", "16", "--encoder", "none", "--labels-format", "png"]  # label PNGs: per-frame checks


def _stamps(folder: Path):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != "manifest.jsonl"}


def test_videos_in_a_batch_match_the_video_command_and_resume(tmp_path, capsys):
    src = make_video_batch(tmp_path / "src")
    make_images(src, 3)
    out = tmp_path / "out"
    assert main(["batch", str(src), "-o", str(out), *VIDEO_ARGS]) == 1
    err = capsys.readouterr().err
    assert "processed 3 image(s) and 4 video(s)" in err and "2 input(s) failed" in err

    entries = manifest(out)
    assert [e["input"] for e in entries] == [str(it.path) for it in collect_inputs([str(src)])]  # input order
    by_name = {Path(e["input"]).name: e for e in entries}
    assert len(entries) == 7 and sum(e.get("kind") == "video" for e in entries) == 4

    # the good videos: every frame, in order, at the input's rate; labels identical to 'spam-stream video'
    ref = tmp_path / "ref"
    assert main(["video", str(src / "v" / "clip.mkv"), str(src / "v" / "other.mp4"), "-o", str(ref),
                 *VIDEO_ARGS]) == 0
    for rel, (n, rate) in VIDEO_BATCH.items():
        stem = Path(rel).stem
        folder = out / "v" / stem  # OUTDIR/<relative path without suffix>/
        e = by_name[Path(rel).name]
        assert (e["status"], e["frames"], e["rate"], e["error"]) == ("ok", n, str(rate), None)
        assert e["fps"] == pytest.approx(float(rate)) and e["ms"]["total"] > 0
        assert e["outputs"] == {"overlay": str(folder / f"{stem}_overlay.mp4"),
                                "labels": str(folder / f"{stem}_labels"),
                                "frames_csv": str(folder / f"{stem}_frames.csv")}
        frames, got_rate = decode_all(folder / f"{stem}_overlay.mp4")
        assert got_rate == rate and [read_index(f) for f in frames] == list(range(n))
        ours, theirs = label_frames(folder / f"{stem}_labels"), label_frames(ref / f"{stem}_labels")
        assert list(ours) == [f"{i:06d}.png" for i in range(n)] == list(theirs)
        for name in ours:
            assert ours[name].dtype == np.uint16
            np.testing.assert_array_equal(ours[name], theirs[name])
        assert len((folder / f"{stem}_frames.csv").read_text().splitlines()) == n + 1

    # a file that is not a video: one failed line, nothing written
    broken = by_name["broken.mp4"]
    assert (broken["status"], broken["frames"], broken["outputs"]) == ("failed", 0, {})
    assert broken["error"].startswith(str(src / "v" / "broken.mp4")) and "\n" not in broken["error"]
    # a cut video: the frames before the cut are written, and it is reported as 'spam-stream video' reports it
    cut = by_name["cut.mkv"]
    assert cut["status"] == "failed" and 5 < cut["frames"] < 40
    assert len(label_frames(out / "cut" / "cut_labels")) == cut["frames"]
    assert len(decode_all(out / "cut" / "cut_overlay.mp4")[0]) == cut["frames"]
    assert main(["video", str(src / "cut.mkv"), "-o", str(tmp_path / "ref_cut"), *VIDEO_ARGS]) == 1
    assert f"  {cut['error']}" in capsys.readouterr().err.splitlines()
    assert not [p for p in out.rglob("*") if ".part" in p.name]

    # --resume: only the two failed inputs are tried again; the complete images and videos are not touched
    good = {p: t for p, t in _stamps(out).items() if not p.is_relative_to(out / "cut")}
    time.sleep(0.05)
    assert main(["batch", str(src), "-o", str(out), *VIDEO_ARGS, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "resumed: 3 image(s) and 2 video(s) already complete" in err
    assert "processed 0 image(s) and 2 video(s) in this run" in err
    assert {p: t for p, t in _stamps(out).items() if p in good} == good
    assert sorted(e["input"] for e in manifest(out)) == sorted(e["input"] for e in entries)  # one line each

    # an ok line is not enough: a video whose outputs are incomplete is redone (one label PNG gone; then the
    # state a kill mid-video leaves: no frames CSV, some label PNGs, a temporary overlay)
    clip = out / "v" / "clip"
    before = label_frames(clip / "clip_labels")
    (src / "v" / "broken.mp4").unlink()
    (src / "cut.mkv").unlink()
    for damage in ("one png", "killed"):
        if damage == "one png":
            (clip / "clip_labels" / "000007.png").unlink()
        else:
            (clip / "clip_frames.csv").unlink()
            for i in range(10, 24):
                (clip / "clip_labels" / f"{i:06d}.png").unlink()
            (clip / ".clip_overlay.0123456789ab.part.mp4").write_bytes(b"half an mp4")
        others = {p: t for p, t in _stamps(out).items() if not p.is_relative_to(clip)}
        time.sleep(0.05)
        assert main(["batch", str(src), "-o", str(out), *VIDEO_ARGS, "--resume"]) == 0
        assert "processed 0 image(s) and 1 video(s) in this run" in capsys.readouterr().err
        assert {p: t for p, t in _stamps(out).items() if p in others} == others
        after = label_frames(clip / "clip_labels")
        assert list(after) == list(before)
        for name in before:
            np.testing.assert_array_equal(after[name], before[name])
        assert (clip / "clip_frames.csv").is_file() and not list(clip.glob(".*part*"))
        assert len(decode_all(clip / "clip_overlay.mp4")[0]) == 24
    assert [e["status"] for e in manifest(out)] == ["ok"] * 5


def test_a_video_killed_mid_way_is_redone_on_resume_although_its_old_line_says_ok(tmp_path):
    """Run 1 completes a video; run 2 (no --resume) is SIGKILLed while redoing it, so the manifest still holds run
    1's ok line while the outputs are half rewritten; run 3 (--resume) must redo the video, not trust the line."""
    n = 150
    src = tmp_path / "src"
    src.mkdir()
    write_index_video(src / "long.mkv", n, codec="ffv1")
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), "-k", "24", "--encoder", "none", "--labels-format", "png"]
    assert main(args) == 0
    labels, csv = out / "long" / "long_labels", out / "long" / "long_frames.csv"
    first = label_frames(labels)
    assert len(first) == n

    proc = subprocess.Popen([sys.executable, "-m", "spam_stream.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, killed_at = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:  # kill it once it is rewriting the video
        count = len(list(labels.glob("*.png")))
        if not csv.exists() and 5 <= count < n - 20:
            proc.send_signal(signal.SIGKILL)
            killed_at = count
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None, "the kill should land mid-video"
    assert read_manifest(out / "manifest.jsonl")[str(src / "long.mkv")]["status"] == "ok"  # the stale line
    assert not csv.exists() and len(list(labels.glob("*.png"))) < n

    assert main([*args, "--resume"]) == 0
    entry, = manifest(out)
    assert (entry["status"], entry["frames"]) == ("ok", n)
    again = label_frames(labels)
    assert list(again) == list(first)
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])
    assert [read_index(f) for f in decode_all(out / "long" / "long_overlay.mp4")[0]] == list(range(n))
    assert csv.is_file() and not [p for p in out.rglob("*") if ".part" in p.name]


def test_videos_by_suffix_and_clashing_video_folders(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.mp4", "b.MKV", "c.gif", "d.ts", "e.png"):
        (src / name).write_bytes(b"x")
    kinds = {it.path.name: it.is_video for it in collect_inputs([str(src)])}
    assert kinds == {"a.mp4": True, "b.MKV": True, "c.gif": False, "d.ts": True, "e.png": False}
    (src / "a.mkv").write_bytes(b"x")  # a.mp4 and a.mkv would share OUTDIR/a/
    assert main(["batch", str(src), "-o", str(tmp_path / "out"), "--encoder", "none"]) == 2
    assert "would both write to OUTDIR/a/" in capsys.readouterr().err


def test_video_options_reach_batch_videos_as_in_the_video_command(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_index_video(src / "clip.mkv", 12, codec="ffv1")
    options = ["--independent", "--start", "2", "--max-frames", "6", "--no-overlay", "--warm-iterations", "2"]
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(["batch", str(src), "-o", str(out), *VIDEO_ARGS, *options]) == 0
    assert main(["video", str(src / "clip.mkv"), "-o", str(ref), *VIDEO_ARGS, *options]) == 0
    ours, theirs = label_frames(out / "clip" / "clip_labels"), label_frames(ref / "clip_labels")
    assert list(ours) == [f"{i:06d}.png" for i in range(2, 8)] == list(theirs)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name])
    entry, = manifest(out)
    assert entry["frames"] == 6 and "overlay" not in entry["outputs"]
    assert not (out / "clip" / "clip_overlay.mp4").exists()
    # complete without an overlay: --resume with the same options skips it
    stamps = _stamps(out)
    time.sleep(0.05)
    assert main(["batch", str(src), "-o", str(out), *VIDEO_ARGS, *options, "--resume"]) == 0
    assert _stamps(out) == stamps


# --- OUTDIR as a URI (pyarrow.fs): file:// goes through pyarrow's LocalFileSystem, the same API as S3 ---

def _labels_and_files(folder: Path):
    """Every output file under a local folder (relative path → bytes), the manifest and frames CSVs aside."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != "manifest.jsonl" and not p.name.endswith("_frames.csv")}


def _same_outputs(ours: Path, theirs: Path):
    """Same files; labels (images and video frames) bit for bit, image overlays pixel for pixel, video overlays
    frame count, frames CSVs row for row (timings aside)."""
    a, b = _labels_and_files(ours), _labels_and_files(theirs)
    assert sorted(a) == sorted(b) and a
    for rel in b:
        if rel.suffix == ".png" and ("_labels" in rel.name or rel.parent.name.endswith("_labels")):
            assert a[rel] == b[rel], rel
        elif rel.suffix == ".png":
            np.testing.assert_array_equal(np.asarray(Image.open(ours / rel)), np.asarray(Image.open(theirs / rel)))
        else:
            assert len(decode_all(ours / rel)[0]) == len(decode_all(theirs / rel)[0])
    for csv in theirs.rglob("*_frames.csv"):
        rows = [[r.split(",")[i] for i in (0, 1, -1)] for r in csv.read_text().splitlines()]
        mine = ours / csv.relative_to(theirs)
        assert [[r.split(",")[i] for i in (0, 1, -1)] for r in mine.read_text().splitlines()] == rows


def _same_manifest(ours: list[dict], theirs: list[dict], prefix_ours: str, prefix_theirs: str):
    assert [e["input"] for e in ours] == [e["input"] for e in theirs]
    for a, b in zip(ours, theirs):
        keys = ("status", "error", "kind", "frames", "rate", "superpixels")
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}
        assert a["outputs"] == {k: v.replace(prefix_theirs, prefix_ours) for k, v in b["outputs"].items()}


def test_a_uri_outdir_writes_what_a_local_one_does_and_resumes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pyarrow.fs", reason="a URI OUTDIR needs pyarrow")
    import tempfile

    src = tmp_path / "src"
    make_images(src, 5)
    (src / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 30)
    (src / "v").mkdir()
    write_index_video(src / "v" / "clip.mkv", 10, codec="ffv1")
    scratch = tmp_path / "scratch"  # where the staging folders go
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    local, remote = tmp_path / "local", tmp_path / "remote"
    uri = remote.as_uri()  # file:///…/remote
    args = ["batch", str(src), *VIDEO_ARGS]
    assert main([*args, "-o", str(local)]) == 1
    capsys.readouterr()
    assert main([*args, "-o", uri]) == 1
    err = capsys.readouterr().err
    assert "processed 6 image(s) and 1 video(s)" in err and f"to {uri}" in err and "corrupt.png" in err

    _same_outputs(remote, local)
    _same_manifest(manifest(remote), manifest(local), uri, str(local))
    failed = [e for e in manifest(remote) if e["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["input"] == str(src / "b" / "corrupt.png") and failed[0]["outputs"] == {}
    assert not list(scratch.iterdir()), "the staging folders are removed"
    assert not [p for p in remote.rglob("*") if ".part" in p.name]

    # --resume through the URI: the bad input gone, nothing is left to do and nothing is touched
    (src / "b" / "corrupt.png").unlink()
    stamps = _stamps(remote)
    time.sleep(0.05)
    assert main([*args, "-o", uri, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resumed: 5 image(s) and 1 video(s) already complete" in err and "processed 0 image(s) in this run" in err
    assert _stamps(remote) == stamps
    assert [e["status"] for e in manifest(remote)] == ["ok"] * 6

    # a missing output and a half-uploaded one (a temporary name, never taken for an output) are redone: an image
    # without its overlay, a video without one label PNG; nothing else is touched
    img = remote / "a" / "img001_overlay.png"
    img.unlink()
    (img.parent / ".img001_overlay.0123456789ab.part.png").write_bytes(b"half a png")
    labels = remote / "v" / "clip" / "clip_labels"
    (labels / "000004.png").unlink()
    (labels / ".000004.0123456789ab.part.png").write_bytes(b"half a png")
    others = {p: t for p, t in _stamps(remote).items()
              if not p.is_relative_to(remote / "v") and "img001" not in p.name}
    time.sleep(0.05)
    assert main([*args, "-o", uri, "--resume"]) == 0
    assert "processed 1 image(s) and 1 video(s) in this run" in capsys.readouterr().err
    assert {p: t for p, t in _stamps(remote).items() if p in others} == others
    (img.parent / ".img001_overlay.0123456789ab.part.png").unlink()  # a kill's leftover, as with a local OUTDIR
    _same_outputs(remote, local)
    assert not [p for p in remote.rglob("*") if ".part" in p.name]  # the video's folder was cleared first
    assert [e["status"] for e in manifest(remote)] == ["ok"] * 6
    assert not list(scratch.iterdir())


def test_a_uri_outdir_errors_are_one_line(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    make_images(src, 1)
    assert main(["batch", str(src), "-o", "nosuchscheme://bucket/x", "--encoder", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: OUTDIR nosuchscheme://bucket/x: pyarrow.fs cannot open it")
    monkeypatch.setitem(sys.modules, "pyarrow.fs", None)  # the core install, without pyarrow
    assert main(["batch", str(src), "-o", "s3://bucket/prefix?region=x", "--encoder", "none"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: OUTDIR s3://bucket/prefix needs pyarrow: pip install pyarrow (or 'spam-stream[ray]', which has it)"


def test_an_outdir_on_a_non_local_filesystem(tmp_path):
    """An in-memory fsspec filesystem through pyarrow.fs.PyFileSystem(FSSpecHandler): outputs, manifest and resume
    go through a filesystem that is not a local folder (temporary names, moves, listings)."""
    pytest.importorskip("fsspec", reason="fsspec is not installed")
    pafs = pytest.importorskip("pyarrow.fs", reason="a URI OUTDIR needs pyarrow")
    from fsspec.implementations.memory import MemoryFileSystem

    from spam_stream.model import SPAM
    from spam_stream.pipelines.batch import run_batch
    from spam_stream.pipelines.outputs import RemoteOutputs

    src = tmp_path / "src"
    make_images(src, 4)
    (src / "missing.txt").write_text("nothing.png\n")
    mem = MemoryFileSystem()  # its store is shared by the process: a root of our own
    root = f"spam-test-{os.getpid()}-{time.time_ns()}"
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(mem))
    out = RemoteOutputs(filesystem=fs, root=root, name="memory://out")
    model = SPAM(encoder=None)
    inputs = [str(src), str(src / "missing.txt")]
    try:
        entries, carried, total = run_batch(model, inputs, tmp_path / "local", 16)
        theirs = [e for e in entries]
        entries, carried, total = run_batch(model, inputs, out, 16)
        assert (len(entries), carried, total) == (5, [], 5)
        ours = [json.loads(line) for line in out.read_text("manifest.jsonl").splitlines()]
        _same_manifest(ours, theirs, "memory://out", str(tmp_path / "local"))
        assert [e["status"] for e in ours].count("failed") == 1
        stored = {p.lstrip("/")[len(root) + 1:] for p in mem.find(root)}
        assert stored == {str(p.relative_to(tmp_path / "local")) for p in (tmp_path / "local").rglob("*.png")} | \
            {"manifest.jsonl"}  # no temporary name left
        for rel in stored - {"manifest.jsonl"}:
            assert mem.cat_file(f"{root}/{rel}") == (tmp_path / "local" / rel).read_bytes()
        # resume: nothing done; then one label file gone: that image alone
        assert run_batch(model, [str(src)], out, 16, resume=True)[0] == []
        mem.rm(f"{root}/a/img001_labels.png")
        entries, carried, _ = run_batch(model, [str(src)], out, 16, resume=True)
        assert [Path(e["input"]).name for e in entries] == ["img001.png"] and len(carried) == 3
        assert mem.cat_file(f"{root}/a/img001_labels.png") == (tmp_path / "local" / "a" / "img001_labels.png") \
            .read_bytes()
    finally:
        if mem.exists(root):
            mem.rm(root, recursive=True)


def test_the_manifest_of_a_uri_outdir_is_rewritten_after_each_video_and_at_the_end(tmp_path):
    """Object stores cannot append: the lines so far (after the old ones) are written after a video, a killed run
    keeps them; images wait for the next rewrite; the end leaves one line per entry given."""
    pytest.importorskip("pyarrow.fs", reason="a URI OUTDIR needs pyarrow")
    from spam_stream.pipelines.outputs import RemoteManifest, RemoteOutputs

    (tmp_path / "manifest.jsonl").write_text('{"input": "old.png", "status": "ok"}\n')
    log = RemoteManifest(RemoteOutputs(tmp_path.as_uri()), "manifest.jsonl")
    log.record({"input": "a.png", "status": "ok"})
    assert [e["input"] for e in manifest(tmp_path)] == ["old.png"]
    log.record({"input": "v.mp4", "kind": "video", "status": "ok"})
    assert [e["input"] for e in manifest(tmp_path)] == ["old.png", "a.png", "v.mp4"]
    log.close([{"input": "v.mp4"}, {"input": "a.png"}])
    assert [e["input"] for e in manifest(tmp_path)] == ["v.mp4", "a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]  # written by a move, no leftovers


@pytest.mark.skipif(not os.environ.get("SPAM_STREAM_S3_TEST_URI"),
                    reason="set SPAM_STREAM_S3_TEST_URI=s3://bucket/prefix?... (an S3 store to write to, e.g. a MinIO "
                           "or moto server: ?endpoint_override=127.0.0.1:PORT&scheme=http&region=us-east-1; "
                           "credentials in AWS_* variables)")
def test_an_s3_outdir(tmp_path, capsys):
    """A real S3 API (objects written straight to their final names): the local outputs, resume, a missing output
    redone."""
    pafs = pytest.importorskip("pyarrow.fs", reason="a URI OUTDIR needs pyarrow")
    base, _, query = os.environ["SPAM_STREAM_S3_TEST_URI"].partition("?")
    uri = f"{base.rstrip('/')}/spam-test-{os.getpid()}-{time.time_ns()}" + (f"?{query}" if query else "")
    fs, root = pafs.FileSystem.from_uri(uri)
    assert fs.type_name == "s3"
    src = tmp_path / "src"
    make_images(src, 3)
    (src / "v").mkdir()
    write_index_video(src / "v" / "clip.mkv", 6, codec="ffv1")
    local = tmp_path / "local"
    args = ["batch", str(src), *VIDEO_ARGS]
    assert main([*args, "-o", str(local)]) == 0
    assert main([*args, "-o", uri]) == 0

    def stored():
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        return {i.path[len(root) + 1:]: i.mtime for i in infos if i.type == pafs.FileType.File}

    try:
        files = stored()
        assert set(files) == {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
        for rel in files:
            if "labels" in rel:
                assert fs.open_input_stream(f"{root}/{rel}").read() == (local / rel).read_bytes(), rel
        lines = [json.loads(x) for x in fs.open_input_stream(f"{root}/manifest.jsonl").read().decode().splitlines()]
        _same_manifest(lines, manifest(local), uri.partition("?")[0], str(local))
        capsys.readouterr()
        assert main([*args, "-o", uri, "--resume"]) == 0
        assert "processed 0 image(s) in this run" in capsys.readouterr().err
        fs.delete_file(f"{root}/v/clip/clip_labels/000002.png")
        assert main([*args, "-o", uri, "--resume"]) == 0
        assert "processed 0 image(s) and 1 video(s) in this run" in capsys.readouterr().err
        assert set(stored()) == set(files)
    finally:
        fs.delete_dir_contents(root, missing_dir_ok=True)
