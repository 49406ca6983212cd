"""Metrics on tiny label maps whose values are computed by hand (see the comments)."""
import numpy as np
import pytest

from spam_stream import metrics as M

# S: four 2x2 squares             G: three columns | one column
#   0 0 1 1                          0 0 0 1
#   0 0 1 1                          0 0 0 1
#   2 2 3 3                          0 0 0 1
#   2 2 3 3                          0 0 0 1
S4 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
G4 = np.array([[0, 0, 0, 1]] * 4)


def test_asa_by_hand():
    # S0 ⊂ G0 (4), S1 splits 2/2 (best 2), S2 ⊂ G0 (4), S3 splits 2/2 (best 2): (4+2+4+2)/16
    assert M.asa(S4, G4) == pytest.approx(12 / 16)
    assert M.asa(G4, G4) == 1.0
    # a single superpixel can only get the largest gt segment right: 12/16
    assert M.asa(np.zeros((4, 4), int), G4) == pytest.approx(12 / 16)


def test_ue_by_hand():
    # G0: S0 min(4,0)=0, S1 min(2,2)=2, S2 0, S3 2;  G1: S1 min(2,2)=2, S3 2  -> 8/16
    assert M.undersegmentation_error(S4, G4) == pytest.approx(8 / 16)
    assert M.undersegmentation_error(G4, G4) == 0.0
    # superpixels that refine the gt never leak
    assert M.undersegmentation_error(np.arange(16).reshape(4, 4), G4) == 0.0


def test_ids_need_not_be_consecutive():
    s = S4 * 10 + 7           # ids 7, 17, 27, 37
    g = G4 * 1000 + 3          # ids 3, 1003
    assert M.asa(s, g) == pytest.approx(M.asa(S4, G4))
    assert M.undersegmentation_error(s, g) == pytest.approx(M.undersegmentation_error(S4, G4))
    assert M.global_regularity(s) == pytest.approx(M.global_regularity(S4))
    assert M.boundary_recall_precision(s.astype(np.uint16), g) == M.boundary_recall_precision(S4, G4)


def _brute_force_asa_ue(s, g):
    n = s.size
    asa_sum, ue_sum = 0, 0
    for k in np.unique(s):
        sk = s == k
        inter = [int((sk & (g == j)).sum()) for j in np.unique(g)]
        asa_sum += max(inter)
        ue_sum += sum(min(i, int(sk.sum()) - i) for i in inter if i > 0)
    return asa_sum / n, ue_sum / n


def test_asa_ue_match_a_brute_force_loop():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 7, (9, 11)) * 3
    g = rng.integers(0, 4, (9, 11)) + 5
    a, u = _brute_force_asa_ue(s, g)
    assert M.asa(s, g) == pytest.approx(a)
    assert M.undersegmentation_error(s, g) == pytest.approx(u)


def test_boundary_recall_precision_by_hand():
    # boundary pixel = right or lower neighbour differs.
    # S4 boundary: (0,1) (1,0) (1,1) (1,2) (1,3) (2,1) (3,1)  -> 7 pixels
    # G4 boundary: (0,2) (1,2) (2,2) (3,2)                    -> 4 pixels
    # r=0: only (1,2) is shared -> recall 1/4, precision 1/7
    br, bp = M.boundary_recall_precision(S4, G4, r=0)
    assert (br, bp) == (pytest.approx(1 / 4), pytest.approx(1 / 7))
    # r=1: every (y,2) has (y,1) next to it -> recall 1; all S pixels but (1,0) (2 columns away) -> 6/7
    br, bp = M.boundary_recall_precision(S4, G4, r=1)
    assert (br, bp) == (pytest.approx(1.0), pytest.approx(6 / 7))


def test_boundary_tolerance_is_chebyshev():
    # gt: only (0,0) is a boundary pixel (it differs from (0,1) and (1,0)).
    g = np.ones((5, 5), int)
    g[0, 0] = 0
    assert M.boundary_map(g).sum() == 1
    # s: block [2:, 2:]; its boundary pixels are (1,2..4) and (2..4,1). Nearest to (0,0): (1,2) and (2,1),
    # Chebyshev distance 2 (Euclidean sqrt(5) > 2): found with r=2, not with r=1.
    s = np.zeros((5, 5), int)
    s[2:, 2:] = 1
    assert M.boundary_map(s).sum() == 6
    assert M.boundary_recall_precision(s, g, r=1)[0] == 0.0
    assert M.boundary_recall_precision(s, g, r=2)[0] == 1.0
    # precision at r=2: (1,2), (2,1) within 2 of (0,0); (1,3), (3,1) at 3; (1,4), (4,1) at 4 -> 2/6
    assert M.boundary_recall_precision(s, g, r=2)[1] == pytest.approx(2 / 6)


def test_explained_variation_by_hand():
    # 2x2 image, red = [[0,2],[4,6]], green/blue constant; superpixels = rows.
    # mean red 3; total = 9+1+1+9 = 20; row means 1 and 5 -> between = 2*4 + 2*4 = 16 -> EV = 0.8
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = [[0, 2], [4, 6]]
    img[..., 1:] = 50
    labels = np.array([[0, 0], [1, 1]])
    assert M.explained_variation(labels, img) == pytest.approx(0.8)
    # columns: means 2 and 4 -> between = 2*1 + 2*1 = 4 -> 0.2
    assert M.explained_variation(labels.T, img) == pytest.approx(0.2)
    assert M.explained_variation(np.arange(4).reshape(2, 2), img) == pytest.approx(1.0)
    assert M.explained_variation(np.zeros((2, 2), int), img) == pytest.approx(0.0)


def test_delta_k_by_hand():
    labels = np.array([[3, 3, 7], [100, 100, 7]])   # K' = 3
    assert M.delta_k(labels, 4) == pytest.approx(0.25)
    assert M.delta_k(labels, 2) == pytest.approx(0.5)
    assert M.delta_k(labels, 3) == 0.0


def _squares(h, w, step):
    yy, xx = np.mgrid[:h, :w]
    return (yy // step) * (w // step) + xx // step


def test_src_single_square_is_one():
    assert M.global_regularity(np.zeros((10, 10), int))["src"] == pytest.approx(1.0)


def test_src_of_a_rectangle_by_hand():
    # one 2x8 rectangle: convex so CR = 1; σy = 0.5 (rows 0,1), σx = sqrt((8²-1)/12) = sqrt(5.25)
    # V = sqrt(0.5 / sqrt(5.25)) = 0.46706...
    src = M.global_regularity(np.zeros((2, 8), int))["src"]
    assert src == pytest.approx(np.sqrt(0.5 / np.sqrt(5.25)))


def test_smf_identical_squares_is_one():
    out = M.global_regularity(_squares(12, 12, 3))
    assert out["smf"] == pytest.approx(1.0)
    out = M.global_regularity(_squares(12, 16, 4))   # even side: barycentres at .5, rounded half up
    assert out["smf"] == pytest.approx(1.0)


def test_smf_by_hand():
    # 1x3 image, labels [0 0 1]. S0 barycentre x=0.5 -> 1: registered at offsets {-1, 0}, normalised 1/2 each.
    # S1 at offset {0} with weight 1. S̄ = {-1: 1/4, 0: 3/4}.
    # ‖S̄ − S0‖₁ = 1/4 + 1/4 = 1/2, ‖S̄ − S1‖₁ = 1/4 + 1/4 = 1/2.
    # SMF = 1 − (2·1/2 + 1·1/2) / (2·3) = 1 − 1.5/6 = 0.75
    assert M.global_regularity(np.array([[0, 0, 1]]))["smf"] == pytest.approx(0.75)


def test_gr_squares_beat_stripes_and_irregular_cells():
    h = w = 24
    squares = _squares(h, w, 4)
    stripes = np.repeat(np.arange(h)[:, None], w, axis=1)            # 1-pixel rows: V = 0
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, h, (36, 2))
    yy, xx = np.mgrid[:h, :w]
    voronoi = ((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2).argmin(-1)
    gr_sq = M.global_regularity(squares)
    gr_st = M.global_regularity(stripes)
    gr_vo = M.global_regularity(voronoi)
    assert gr_sq["gr"] == pytest.approx(1.0)
    assert gr_st["src"] == pytest.approx(0.0)
    assert gr_sq["gr"] > gr_vo["gr"] > gr_st["gr"]
    for out in (gr_sq, gr_st, gr_vo):
        assert out["gr"] == pytest.approx(out["src"] * out["smf"])
        assert 0.0 <= out["smf"] <= 1.0 + 1e-12 and 0.0 <= out["src"] <= 1.0 + 1e-12


def test_evaluate_averages_over_annotators():
    g2 = np.array([[0, 0, 0, 0]] * 2 + [[1, 1, 1, 1]] * 2)         # S4 refines it: ASA 1, UE 0
    img = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    out = M.evaluate(S4, [G4, g2], img, k=5)
    assert out["asa"] == pytest.approx((12 / 16 + 1.0) / 2)
    assert out["ue"] == pytest.approx((8 / 16 + 0.0) / 2)
    br1, bp1 = M.boundary_recall_precision(S4, G4)
    br2, bp2 = M.boundary_recall_precision(S4, g2)
    assert out["br"] == pytest.approx((br1 + br2) / 2) and out["bp"] == pytest.approx((bp1 + bp2) / 2)
    assert out["ev"] == pytest.approx(M.explained_variation(S4, img))
    assert out["k_produced"] == 4 and out["delta_k"] == pytest.approx(0.2)
    assert set(out) == {"asa", "ue", "br", "bp", "ev", "src", "smf", "gr", "k_produced", "delta_k"}
    # a single array is one annotator
    assert M.evaluate(S4, G4, img, 4)["asa"] == pytest.approx(12 / 16)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        M.asa(S4, G4[:3])
