"""Every command x every bad input: one clear line, the right exit code, no traceback, and the good inputs of the
same call still written (issue 21's matrix; README "Bad inputs")."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spam_stream.cli import main

from helpers import synthetic_image
from video_helpers import write_index_video

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

ENC = ["--encoder", "none", "-k", "12"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    Image.fromarray(synthetic_image(48, 64, seed=1)).save(d / "good.png")
    Image.fromarray(synthetic_image(48, 64, seed=2)).save(d / "good2.png")
    Image.fromarray(synthetic_image(240, 320, seed=3)).save(d / "big.png")  # ~8 MB at its peak (memory model)
    (d / "empty.png").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 40)
    data = (d / "good2.png").read_bytes()
    (d / "truncated.png").write_bytes(data[:len(data) // 2])
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(d / "bomb.png")  # a bomb once the limit is 50000 px
    ids = np.arange(300 * 300).reshape(300, 300)  # a "photo": 90000 distinct colours, not a label image
    Image.fromarray(np.stack([ids >> 16, (ids >> 8) & 255, ids & 255], -1).astype(np.uint8)).save(d / "photo.png")
    np.save(d / "small_prior.npy", np.zeros((5, 5), np.int32))
    (d / "weights.pt").write_text("not a checkpoint")
    torch.save({"something": torch.zeros(3)}, d / "other.pt")  # a checkpoint of the wrong kind
    write_index_video(d / "clip.mp4", 8, h=120, w=160)  # ~2 MB a frame at its peak
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 300)
    (d / "a_file").write_text("x")
    (d / "emptydir").mkdir()
    return d


def _image(f, out, *extra):
    return ["image", str(f / "good.png"), *extra, "-o", str(out), *ENC]


def _video(f, out, *extra):
    return ["video", str(f / "clip.mp4"), *extra, "-o", str(out), *ENC, "--max-frames", "3"]


def _batch(f, out, *extra):
    return ["batch", str(f / "good.png"), *extra, "-o", str(out), *ENC]


# (case id, argv builder, exit code, words stderr must contain, outputs of the good inputs that must exist)
CASES = [
    # --- image ---
    ("image-device-unknown", lambda f, o: _image(f, o, "--device", "foo"), 2, ["--device foo"], []),
    ("image-missing", lambda f, o: _image(f, o, str(f / "missing.png")), 1, ["missing.png", "no such file"],
     ["good_labels.png"]),
    ("image-empty", lambda f, o: _image(f, o, str(f / "empty.png")), 1, ["empty.png", "empty"],
     ["good_labels.png"]),
    ("image-corrupt", lambda f, o: _image(f, o, str(f / "corrupt.png")), 1, ["corrupt.png"], ["good_labels.png"]),
    ("image-truncated", lambda f, o: _image(f, o, str(f / "truncated.png")), 1, ["truncated.png"],
     ["good_labels.png"]),
    ("image-bomb", lambda f, o: _image(f, o, str(f / "bomb.png")), 1, ["bomb.png", "too large"],
     ["good_labels.png"]),
    ("image-video", lambda f, o: _image(f, o, str(f / "clip.mp4")), 1, ["clip.mp4", "spam-stream video"],
     ["good_labels.png"]),
    ("image-folder", lambda f, o: _image(f, o, str(f / "emptydir")), 1, ["emptydir", "directory"],
     ["good_labels.png"]),
    ("image-photo-as-mask", lambda f, o: _image(f, o, "--prior-mask", str(f / "photo.png")), 1,
     ["photo.png", "distinct values"], []),
    ("image-prior-wrong-size", lambda f, o: _image(f, o, "--prior-mask", str(f / "small_prior.npy")), 1,
     ["good.png", "5x5"], []),
    ("image-prior-mask-missing", lambda f, o: _image(f, o, "--prior-mask", str(f / "nope.png")), 2,
     ["nope.png"], []),
    ("image-k-too-large", lambda f, o: ["image", str(f / "good.png"), "-o", str(o), "--encoder", "none", "-k",
                                        "100000"], 1, ["good.png", "100000"], []),
    ("image-k-zero", lambda f, o: ["image", str(f / "good.png"), "-o", str(o), "-k", "0"], 2, ["at least 1"], []),
    ("image-compactness-negative", lambda f, o: _image(f, o, "--compactness", "-1"), 2, ["--compactness", "> 0"],
     []),
    ("image-color-scale-zero", lambda f, o: _image(f, o, "--color-scale", "0"), 2, ["--color-scale", "> 0"], []),
    ("image-iterations-zero", lambda f, o: _image(f, o, "--iterations", "0"), 2, ["--iterations"], []),
    ("image-max-memory-negative", lambda f, o: _image(f, o, "--max-memory", "-5"), 2, ["--max-memory"], []),
    ("image-memory-limit", lambda f, o: _image(f, o, str(f / "big.png"), "--memory-limit", "1"), 1,
     ["big.png", "MB", "--memory-limit", "downscale"], ["good_labels.png"]),
    ("image-encoder-missing", lambda f, o: ["image", str(f / "good.png"), "-o", str(o), "--encoder",
                                            str(f / "missing.pt")], 2, ["missing.pt"], []),
    ("image-encoder-not-a-checkpoint", lambda f, o: ["image", str(f / "good.png"), "-o", str(o), "--encoder",
                                                     str(f / "weights.pt")], 2, ["weights.pt"], []),
    ("image-encoder-wrong-kind", lambda f, o: ["image", str(f / "good.png"), "-o", str(o), "--encoder",
                                               str(f / "other.pt")], 2, ["other.pt"], []),
    ("image-prior-checkpoint-missing", lambda f, o: _image(f, o, "--prior", "fastsam", "--prior-checkpoint",
                                                           str(f / "FastSAM-s.pt")), 2, ["FastSAM-s.pt"], []),
    ("image-output-is-a-file", lambda f, o: ["image", str(f / "good.png"), "-o", str(f / "a_file"), *ENC], 2,
     ["a_file", "not a folder"], []),
    ("image-output-under-a-file", lambda f, o: ["image", str(f / "good.png"), "-o", str(f / "a_file" / "sub"),
                                                *ENC], 2, ["a_file", "cannot write"], []),
    # --- video ---
    ("video-device-unknown", lambda f, o: _video(f, o, "--device", "foo"), 2, ["--device foo"], []),
    ("video-corrupt", lambda f, o: _video(f, o, str(f / "broken.mp4")), 1, ["broken.mp4"],
     ["clip_overlay.mp4", "clip_frames.csv"]),
    ("video-missing", lambda f, o: _video(f, o, str(f / "missing.mp4")), 1, ["missing.mp4", "no such file"],
     ["clip_overlay.mp4"]),
    ("video-empty", lambda f, o: _video(f, o, str(f / "empty.png")), 1, ["empty.png", "empty file"],
     ["clip_overlay.mp4"]),
    ("video-start-past-end", lambda f, o: ["video", str(f / "clip.mp4"), "-o", str(o), *ENC, "--start", "50"], 1,
     ["clip.mp4", "past the last frame"], []),
    ("video-start-negative", lambda f, o: _video(f, o, "--start", "-2"), 2, ["--start"], []),
    ("video-max-frames-zero", lambda f, o: ["video", str(f / "clip.mp4"), "-o", str(o), *ENC, "--max-frames", "0"],
     2, ["--max-frames"], []),
    ("video-k-too-large", lambda f, o: ["video", str(f / "clip.mp4"), "-o", str(o), "--encoder", "none", "-k",
                                        "100000"], 1, ["clip.mp4", "100000"], []),
    ("video-memory-limit", lambda f, o: _video(f, o, "--memory-limit", "1"), 1, ["clip.mp4", "MB"], []),
    ("video-compactness-negative", lambda f, o: _video(f, o, "--compactness", "-1"), 2, ["> 0"], []),
    ("video-prior-wrong-size", lambda f, o: _video(f, o, "--prior-mask", str(f / "small_prior.npy")), 1,
     ["clip.mp4", "5x5"], []),
    ("video-output-is-a-file", lambda f, o: ["video", str(f / "clip.mp4"), "-o", str(f / "a_file"), *ENC], 2,
     ["a_file", "not a folder"], []),
    # --- batch ---
    ("batch-device-unknown", lambda f, o: _batch(f, o, "--device", "foo"), 2, ["--device foo"], []),
    ("batch-bomb", lambda f, o: _batch(f, o, str(f / "bomb.png")), 1, ["bomb.png", "too large"],
     ["good_labels.png", "manifest.jsonl"]),
    ("batch-empty-and-corrupt", lambda f, o: _batch(f, o, str(f / "empty.png"), str(f / "corrupt.png"),
                                                    str(f / "truncated.png")), 1,
     ["empty.png", "corrupt.png", "truncated.png"], ["good_labels.png", "manifest.jsonl"]),
    ("batch-corrupt-video", lambda f, o: _batch(f, o, str(f / "broken.mp4")), 1, ["broken.mp4"],
     ["good_labels.png", "manifest.jsonl"]),
    ("batch-memory-limit", lambda f, o: _batch(f, o, str(f / "big.png"), "--memory-limit", "1"), 1,
     ["big.png", "MB"], ["good_labels.png", "manifest.jsonl"]),
    ("batch-shard-past-last", lambda f, o: _batch(f, o, "--shard", "2/2"), 2, ["count from 0", "1/2"], []),
    ("batch-empty-folder", lambda f, o: _batch(f, o, str(f / "emptydir")), 2, ["emptydir", "no image files"], []),
    ("batch-glob-matches-nothing", lambda f, o: _batch(f, o, str(f / "*.nothing")), 2, ["matches no file"], []),
    ("batch-output-is-a-file", lambda f, o: ["batch", str(f / "good.png"), "-o", str(f / "a_file"), *ENC], 2,
     ["a_file", "not a folder"], []),
    ("batch-k-too-large", lambda f, o: ["batch", str(f / "good.png"), "-o", str(o), "--encoder", "none", "-k",
                                        "100000"], 1, ["good.png", "100000"], ["manifest.jsonl"]),
    # --- eval / train ---
    ("eval-no-dataset", lambda f, o: ["eval", "--root", str(f / "emptydir"), "--out", str(o)], 2, ["emptydir"], []),
    ("eval-output-is-a-file", lambda f, o: ["eval", "--root", str(_fake_bsds(f)), "--out", str(f / "a_file"),
                                            "--limit", "1", "--superpixels", "12", "--encoder", "none",
                                            "--no-baselines"], 2, ["a_file", "not a folder"], []),
    ("eval-k-zero", lambda f, o: ["eval", "--superpixels", "0"], 2, ["positive"], []),
    ("train-device-unknown", lambda f, o: ["train", "--device", "gpu", "--out", str(o)], 2, ["--device gpu"], []),
    ("train-negative-minutes", lambda f, o: ["train", "--minutes", "-1", "--out", str(o)], 2, ["--minutes"], []),
    ("train-no-dataset", lambda f, o: ["train", "--root", str(f / "emptydir" / "none"), "--out", str(o)], 2,
     ["BSDS500"], []),
]
if not torch.cuda.is_available():
    for command in ("image", "video", "batch"):
        build = {"image": _image, "video": _video, "batch": _batch}[command]
        CASES.append((f"{command}-device-cuda-absent", lambda f, o, b=build: b(f, o, "--device", "cuda"), 2,
                      ["--device cuda", "no CUDA device"], []))


def _fake_bsds(f: Path) -> Path:
    """A one-image BSDS500-shaped tree (image + ground truth .mat), for eval's argument checks."""
    from scipy.io import savemat

    root = f / "bsds"
    if not root.is_dir():
        (root / "data" / "images" / "test").mkdir(parents=True)
        (root / "data" / "groundTruth" / "test").mkdir(parents=True)
        Image.fromarray(synthetic_image(48, 64)).save(root / "data" / "images" / "test" / "1.jpg")
        gt = np.empty((1, 1), dtype=object)
        seg = np.ones((48, 64), np.uint16)
        seg[:, 32:] = 2
        gt[0, 0] = {"Segmentation": seg, "Boundaries": np.zeros((48, 64), np.uint8)}
        savemat(root / "data" / "groundTruth" / "test" / "1.mat", {"groundTruth": gt})
    return root


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing_else(case, files, tmp_path, capsys, monkeypatch):
    name, build, code, words, written = case
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50000)  # bomb.png (160000 px) is over 2x; the others are not
    out = tmp_path / "out"
    argv = build(files, out)
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse's own errors: usage + one "error:" line, exit 2
        got = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert got == code, err
    error_lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert error_lines, err
    for word in words:
        assert word in err, (word, err)
    if code == 2:  # refused before any work: the error alone, no progress bar drawn first
        assert "/s]" not in err and "%|" not in err, err
    for output in written:
        assert (out / output).exists(), (output, sorted(p.name for p in out.rglob("*")))


def test_batch_outputs_never_leave_outdir(files, tmp_path):
    """A list entry ../x, an absolute path outside the list's folder and a symlink in a folder that points outside
    it are mirrored under OUTDIR by safe relative names (README): no output path or manifest key holds '..'."""
    import json
    import os
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(files / "good.png", other / "a.jpg.png")
    lists = tmp_path / "lists"
    lists.mkdir()
    shutil.copy(files / "good2.png", lists / "inside.png")
    (lists / "list.txt").write_text(f"../other/a.jpg.png\n{files / 'good2.png'}\n{lists / 'inside.png'}\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(files / "good.png", linked / "link.png")
    out = tmp_path / "out"
    assert main(["batch", str(lists / "list.txt"), str(linked), "-o", str(out), *ENC]) == 0
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 4
    root = out.resolve()
    for entry in entries:
        for path in entry["outputs"].values():
            assert ".." not in Path(path).parts
            assert Path(path).resolve().is_relative_to(root) and Path(path).is_file()
    assert (out / "inside_labels.png").is_file() and (out / "link_labels.png").is_file()  # inside: kept relative
    outside = sorted(p.relative_to(out).as_posix() for p in (out / "_outside").rglob("*_labels.png"))
    assert outside == sorted(f"_outside{p.parent.resolve()}/{p.name.rsplit('.', 1)[0]}_labels.png"
                             for p in (other / "a.jpg.png", files / "good2.png"))
    assert not list(tmp_path.glob("other/*_labels.png")) and not list(files.glob("*_labels.png"))


def test_memory_limit_zero_turns_the_guard_off(files, tmp_path):
    out = tmp_path / "out"
    assert main(["image", str(files / "big.png"), "-o", str(out), *ENC, "--memory-limit", "0"]) == 0
    assert (out / "big_labels.png").is_file()
