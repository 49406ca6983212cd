"""BSDS500 loader (skipped without the data set) and the oracle partition (synthetic arrays, always run)."""
import numpy as np
import pytest
import scipy.io

from spam_stream.datasets import BSDS500, Sample, default_bsds_root, load_ground_truth, oracle_partition


def _bsds_root():
    root = default_bsds_root()
    if root is None or not (root / "data" / "images").is_dir():
        pytest.skip(f"BSDS500 not found at {root or '../shared/datasets/bsds500'}; set SPAM_BSDS_ROOT")
    return root


def test_bsds500_test_split_loads():
    ds = BSDS500(_bsds_root(), "test")
    assert len(ds) == 200
    assert ds.names == sorted(ds.names)
    s = ds[0]
    assert isinstance(s, Sample) and s.name == ds.names[0]
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
    assert s.image.shape[:2] in ((321, 481), (481, 321))
    assert 4 <= len(s.gts) <= 9
    for g in s.gts:
        assert g.dtype == np.int32 and g.shape == s.image.shape[:2]
        assert g.min() == 0                      # 1-based MATLAB labels became 0-based


def test_bsds500_splits_and_errors(tmp_path):
    root = _bsds_root()
    assert len(BSDS500(root, "train")) == 200 and len(BSDS500(root, "val")) == 100
    with pytest.raises(ValueError):
        BSDS500(root, "validation")
    with pytest.raises(FileNotFoundError):
        BSDS500(tmp_path, "test")


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPAM_BSDS_ROOT", str(tmp_path))
    assert default_bsds_root() == tmp_path


def test_load_ground_truth_from_a_matlab_cell_array(tmp_path):
    # same structure as the BSDS .mat files: 1xM cell of structs with a 1-based 'Segmentation'
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0] = {"Segmentation": np.array([[1, 1, 2], [1, 3, 3]], np.uint16)}
    cells[0, 1] = {"Segmentation": np.array([[1, 1, 1], [2, 2, 2]], np.uint16)}
    scipy.io.savemat(tmp_path / "x.mat", {"groundTruth": cells})
    gts = load_ground_truth(tmp_path / "x.mat")
    assert len(gts) == 2 and all(g.dtype == np.int32 for g in gts)
    np.testing.assert_array_equal(gts[0], [[0, 0, 1], [0, 2, 2]])
    np.testing.assert_array_equal(gts[1], [[0, 0, 0], [1, 1, 1]])


def test_oracle_partition_band_1_by_hand():
    gt = np.array([[5, 5, 5, 5, 9, 9],
                   [5, 5, 5, 5, 9, 9],
                   [5, 5, 5, 5, 9, 9],
                   [7, 7, 7, 7, 7, 7]])
    # pixels with a 4-neighbour of another label become -1. Segment 7 (one row) is all band, so the surviving
    # ids 5, 9 become 0, 1
    expected = np.array([[0, 0, 0, -1, -1, 1],
                         [0, 0, 0, -1, -1, 1],
                         [-1, -1, -1, -1, -1, -1],
                         [-1, -1, -1, -1, -1, -1]])
    out = oracle_partition(gt, band=1)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)


def test_oracle_partition_band_width_and_ids():
    gt = np.zeros((9, 12), int)
    gt[:, 6:] = 3                                   # one vertical boundary between columns 5 and 6
    out0 = oracle_partition(gt, band=0)
    np.testing.assert_array_equal(out0, (gt > 0).astype(np.int32))   # consecutive ids, nothing uncertain
    for band in (1, 2, 3):
        out = oracle_partition(gt, band=band)
        cols = np.flatnonzero((out == -1).all(axis=0))
        # band px on each side of the boundary
        np.testing.assert_array_equal(cols, np.arange(6 - band, 6 + band))
        assert set(np.unique(out[out >= 0])) == {0, 1}
        assert ((out == 0) == ((gt == 0) & (out >= 0))).all()


def test_oracle_partition_ids_stay_consecutive_when_a_segment_vanishes():
    gt = np.zeros((6, 6), int)
    gt[:, 3:] = 2
    gt[2, 1] = 1                                    # a one-pixel segment swallowed by the band
    out = oracle_partition(gt, band=1)
    assert set(np.unique(out)) == {-1, 0, 1}
