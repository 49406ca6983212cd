"""``spam-stream eval`` end to end on a tiny synthetic BSDS500-shaped folder (no real data needed)."""
import csv

import numpy as np
import scipy.io
from PIL import Image

from spam_stream.cli import main
from spam_stream.evaluation import ORACLE_LABEL, SLIC_LABEL


def _fake_bsds(root, n=2, bad=False):
    rng = np.random.default_rng(0)
    img_dir = root / "data" / "images" / "test"
    gt_dir = root / "data" / "groundTruth" / "test"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    for i in range(n):
        h, w = 40, 56
        seg = np.ones((h, w), np.uint16)
        seg[:, w // 2:] = 2
        seg[h // 2:, : w // 3] = 3
        image = (np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])[seg - 1]
                 + rng.integers(0, 20, (h, w, 3))).astype(np.uint8)
        Image.fromarray(image).save(img_dir / f"img{i}.jpg", quality=95)
        cells = np.empty((1, 2), dtype=object)
        cells[0, 0] = {"Segmentation": seg}
        cells[0, 1] = {"Segmentation": np.where(seg == 3, 1, seg).astype(np.uint16)}
        scipy.io.savemat(gt_dir / f"img{i}.mat", {"groundTruth": cells})
    if bad:  # a ground truth that does not match its image: reported, the others still evaluated
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(img_dir / "zbad.jpg")
        scipy.io.savemat(gt_dir / "zbad.mat", {"groundTruth": cells})


def _rows(out):
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_eval_writes_csv_summary_and_four_plots(tmp_path):
    _fake_bsds(tmp_path / "bsds")
    out = tmp_path / "res"
    code = main(["eval", "--root", str(tmp_path / "bsds"), "--superpixels", "6,12", "--encoder", "none",
                 "--out", str(out)])
    assert code == 0
    rows = _rows(out)
    # 2 images x 2 K x (SPAM, SLIC)
    assert len(rows) == 8
    assert {r["method"] for r in rows} == {"SPAM", SLIC_LABEL}
    for r in rows:
        assert 0.0 <= float(r["asa"]) <= 1.0 and 0.0 <= float(r["gr"]) <= 1.0
    spam = [r for r in rows if r["method"] == "SPAM"]
    assert all(float(r["asa"]) > 0.9 for r in spam)      # three flat colour regions: easy
    summary = (out / "summary.md").read_text()
    assert "| SPAM | 6 |" in summary and "| SPAM | 12 |" in summary
    for name in ("asa_vs_k.png", "gr_vs_k.png", "ev_vs_k.png", "br_vs_bp.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def test_eval_oracle_prior_is_labelled_and_bad_images_are_listed(tmp_path, capsys):
    _fake_bsds(tmp_path / "bsds", n=1, bad=True)
    out = tmp_path / "res"
    code = main(["eval", "--root", str(tmp_path / "bsds"), "--superpixels", "8", "--encoder", "none",
                 "--prior", "oracle", "--no-baselines", "--out", str(out)])
    assert code == 1                                       # one failure, the rest written
    assert "zbad" in capsys.readouterr().err
    rows = _rows(out)
    assert [r["image"] for r in rows] == ["img0"]
    assert rows[0]["method"] == f"SPAM + {ORACLE_LABEL}"
    assert float(rows[0]["asa"]) > 0.95
    summary = (out / "summary.md").read_text()
    assert "upper bound" in summary and "zbad" in summary


def test_eval_without_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
