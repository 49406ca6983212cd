"""spam-stream batch: inputs of every kind, failures in the manifest, resume after a kill, shards."""
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
from spam_stream.pipelines.batch import collect_inputs, shard

from helpers import assert_connected, synthetic_image


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
