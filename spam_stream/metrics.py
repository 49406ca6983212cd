"""Superpixel quality metrics (definitions: ``../shared/METRICS.md``).

Conventions shared by every function:

* ``labels`` / ``gt``: (H, W) integer arrays of non-negative ids. Ids need not be consecutive (they are
  relabelled internally); any integer dtype works.
* ``image``: (H, W, 3) uint8 RGB.
* All metrics are vectorised over superpixels (``np.bincount`` / ``np.add.at``); the only per-superpixel Python
  loop is scikit-image's ``regionprops`` for the perimeters and convex hulls of the global-regularity metric.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.measure import perimeter as _perimeter
from skimage.measure import regionprops

__all__ = [
    "asa",
    "undersegmentation_error",
    "boundary_recall_precision",
    "explained_variation",
    "delta_k",
    "n_superpixels",
    "global_regularity",
    "evaluate",
]


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) any-int ids -> ((H*W,) int64 ids 0..n-1 in ravel order, n)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"label map must have an integer dtype, got {labels.dtype}")
    uniq, inv = np.unique(labels.ravel(), return_inverse=True)
    return inv.astype(np.int64, copy=False), len(uniq)


def _contingency(s: np.ndarray, ns: int, g: np.ndarray, ng: int):
    """Sparse contingency table of two flat consecutive label vectors.

    Returns (rows, cols, counts): int64 arrays with one entry per non-empty intersection S_row ∩ G_col.
    """
    code = s * ng + g
    if ns * ng <= 4_000_000:  # dense bincount is fastest for the usual sizes
        counts = np.bincount(code, minlength=ns * ng)
        nz = np.flatnonzero(counts)
        return nz // ng, nz % ng, counts[nz]
    nz, counts = np.unique(code, return_counts=True)
    return nz // ng, nz % ng, counts


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if np.shape(a)[:2] != np.shape(b)[:2]:
        raise ValueError(f"{what}: shapes differ, {np.shape(a)} vs {np.shape(b)}")


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: True where the right or the lower neighbour has another label."""
    labels = np.asarray(labels)
    b = np.zeros(labels.shape, dtype=bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return b


# --------------------------------------------------------------------------------------------------------------
# accuracy metrics (need a ground truth)
# --------------------------------------------------------------------------------------------------------------
def asa(labels: np.ndarray, gt: np.ndarray) -> float:
    """Achievable segmentation accuracy, (1/N) Σ_k max_j |S_k ∩ G_j|, in [0, 1]; higher is better.

    labels, gt: (H, W) integer label maps (superpixels, one ground-truth segmentation).
    """
    _check_same_shape(labels, gt, "asa")
    s, ns = _consecutive(labels)
    g, ng = _consecutive(gt)
    rows, _, counts = _contingency(s, ns, g, ng)
    best = np.zeros(ns, dtype=np.int64)
    np.maximum.at(best, rows, counts)
    return float(best.sum() / s.size)


def undersegmentation_error(labels: np.ndarray, gt: np.ndarray) -> float:
    """Undersegmentation error, Neubert–Protzel form; lower is better.

    UE = (1/N) Σ_j Σ_{k: S_k∩G_j≠∅} min(|S_k ∩ G_j|, |S_k \\ G_j|).
    labels, gt: (H, W) integer label maps.
    """
    _check_same_shape(labels, gt, "undersegmentation_error")
    s, ns = _consecutive(labels)
    g, ng = _consecutive(gt)
    rows, _, inter = _contingency(s, ns, g, ng)
    size = np.bincount(s, minlength=ns)
    return float(np.minimum(inter, size[rows] - inter).sum() / s.size)


def boundary_recall_precision(labels: np.ndarray, gt: np.ndarray, r: int = 2) -> tuple[float, float]:
    """Boundary recall and precision with a Chebyshev tolerance of ``r`` pixels.

    A boundary pixel is one whose right or lower neighbour has another label. Recall = fraction of gt boundary
    pixels within distance r of a superpixel boundary pixel; precision = fraction of superpixel boundary pixels
    within r of a gt boundary pixel (a (2r+1)x(2r+1) square dilation).
    Degenerate cases: recall is 1.0 when gt has no boundary, precision is 1.0 when ``labels`` has no boundary
    (nothing to find / nothing claimed).

    labels, gt: (H, W) integer label maps. Returns (recall, precision) as floats in [0, 1].
    """
    _check_same_shape(labels, gt, "boundary_recall_precision")
    bs = boundary_map(labels)
    bg = boundary_map(gt)
    size = 2 * int(r) + 1
    # maximum_filter with a plain size is separable (two 1-D passes): fast even for large r
    near_s = ndimage.maximum_filter(bs.view(np.uint8), size=size, mode="constant").view(bool)
    near_g = ndimage.maximum_filter(bg.view(np.uint8), size=size, mode="constant").view(bool)
    n_g, n_s = int(bg.sum()), int(bs.sum())
    recall = float((bg & near_s).sum() / n_g) if n_g else 1.0
    precision = float((bs & near_g).sum() / n_s) if n_s else 1.0
    return recall, precision


# --------------------------------------------------------------------------------------------------------------
# metrics without ground truth
# --------------------------------------------------------------------------------------------------------------
def explained_variation(labels: np.ndarray, image: np.ndarray) -> float:
    """Explained variation of RGB colour, Σ_k |S_k| ‖μ_k − μ‖² / Σ_p ‖x_p − μ‖², in [0, 1]; higher is better.

    labels: (H, W) integer label map; image: (H, W, 3) uint8 RGB (any numeric dtype works; values used as is).
    A constant image (zero total variation) gives 1.0.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    _check_same_shape(labels, image, "explained_variation")
    s, ns = _consecutive(labels)
    x = image.reshape(-1, image.shape[2]).astype(np.float64)
    mu = x.mean(axis=0)
    total = float(((x - mu) ** 2).sum())
    if total == 0.0:
        return 1.0
    size = np.bincount(s, minlength=ns).astype(np.float64)
    means = np.stack([np.bincount(s, weights=x[:, c], minlength=ns) for c in range(x.shape[1])], 1) / size[:, None]
    between = float((size * ((means - mu) ** 2).sum(axis=1)).sum())
    return between / total


def id_change_fraction(previous: np.ndarray, current: np.ndarray) -> float:
    """Temporal stability of superpixel ids between two consecutive frames of a video: the fraction of pixels whose
    superpixel id differs, (1/N) Σ_p [S_t(p) ≠ S_{t+1}(p)], in [0, 1]; 0 when every pixel keeps its id.

    Ids are compared as they are (no matching): it measures what a user of the label maps sees. Frames segmented
    independently renumber their superpixels, so even small changes move many ids; coherent frames keep an id on the
    same content. On moving content it also counts the pixels that the motion carries into another superpixel.
    """
    _check_same_shape(previous, current, "previous and current labels")
    return float(np.mean(previous != current))


def n_superpixels(labels: np.ndarray) -> int:
    """K' = number of distinct ids in an (H, W) label map."""
    return int(np.unique(np.asarray(labels)).size)


def delta_k(labels: np.ndarray, k: int) -> float:
    """ΔK = |K' − K| / K, K' = number of distinct ids in the (H, W) label map, K the requested number (> 0)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return abs(n_superpixels(labels) - k) / k


def global_regularity(labels: np.ndarray) -> dict:
    """Global regularity GR = SRC × SMF (Giraud et al., J. Electronic Imaging 2017); all in [0, 1], higher = more
    regular.

    labels: (H, W) integer label map. Returns ``{"src": float, "smf": float, "gr": float}``.

    * SRC = Σ_k (|S_k|/N) · CR_k · V_k, CR_k = (P(H_k)/|H_k|) / (P(S_k)/|S_k|) with H_k the convex hull (scikit-image
      ``regionprops`` perimeter and ``image_convex``) and V_k = sqrt(min(σy,σx)/max(σy,σx)) from the standard
      deviations of the pixel coordinates. Degenerate regions: CR_k = 1 when the perimeter is 0 (one pixel),
      V_k = 1 when both standard deviations are 0.
    * SMF = 1 − Σ_k |S_k| · ‖S̄ − S_k/|S_k|‖₁ / (2N), every superpixel registered at its barycentre (rounded half up)
      into a (2H+1)×(2W+1) frame, S̄ the mean of the normalised registered shapes (sums to 1).
    """
    s, ns = _consecutive(labels)
    h, w = np.shape(labels)
    n = s.size
    lab = (s + 1).reshape(h, w)  # regionprops ignores label 0

    # --- per-superpixel moments (vectorised) ---
    yy, xx = np.divmod(np.arange(n, dtype=np.int64), w)
    size = np.bincount(s, minlength=ns).astype(np.float64)
    my = np.bincount(s, weights=yy, minlength=ns) / size
    mx = np.bincount(s, weights=xx, minlength=ns) / size
    vy = np.maximum(np.bincount(s, weights=(yy - my[s]) ** 2, minlength=ns) / size, 0.0)
    vx = np.maximum(np.bincount(s, weights=(xx - mx[s]) ** 2, minlength=ns) / size, 0.0)
    sy, sx = np.sqrt(vy), np.sqrt(vx)
    hi = np.maximum(sy, sx)
    v = np.where(hi > 0, np.sqrt(np.minimum(sy, sx) / np.where(hi > 0, hi, 1.0)), 1.0)

    # --- convexity: perimeters of the region and of its convex hull ---
    cr = np.ones(ns)
    for region in regionprops(lab):
        k = region.label - 1
        p_s = region.perimeter
        hull = region.image_convex
        p_h = _perimeter(hull)
        if p_s > 0 and p_h > 0:
            cr[k] = (p_h / hull.sum()) / (p_s / size[k])
    src = float((size / n * cr * v).sum())

    # --- SMF: register all shapes at their rounded barycentres into one (2H+1)x(2W+1) frame ---
    cy = np.floor(my + 0.5).astype(np.int64)
    cx = np.floor(mx + 0.5).astype(np.int64)
    fy = yy - cy[s] + h  # frame coordinates of every pixel of its own superpixel
    fx = xx - cx[s] + w
    fw = 2 * w + 1
    fidx = fy * fw + fx
    inv_size = 1.0 / size
    frame = np.bincount(fidx, weights=inv_size[s], minlength=(2 * h + 1) * fw)
    frame /= frame.sum()  # S̄, sums to 1
    # ‖S̄ − S_k/|S_k|‖₁ = Σ_{q∉S_k} S̄(q) + Σ_{q∈S_k} |S̄(q) − 1/|S_k||
    #                   = 1 − Σ_{q∈S_k} S̄(q) + Σ_{q∈S_k} |S̄(q) − 1/|S_k||
    sbar = frame[fidx]
    inside = np.bincount(s, weights=sbar, minlength=ns)
    absdiff = np.bincount(s, weights=np.abs(sbar - inv_size[s]), minlength=ns)
    l1 = 1.0 - inside + absdiff
    smf = float(1.0 - (size * l1).sum() / (2.0 * n))
    return {"src": src, "smf": smf, "gr": src * smf}


# --------------------------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------------------------
def evaluate(labels: np.ndarray, gts: Sequence[np.ndarray] | np.ndarray, image: np.ndarray, k: int,
             r: int = 2) -> dict:
    """All metrics of one superpixel map.

    labels: (H, W) integer superpixel map; gts: list of (H, W) integer ground-truth segmentations (one per
    annotator; a single (H, W) array is accepted too); image: (H, W, 3) uint8 RGB; k: requested number of
    superpixels; r: boundary tolerance in pixels.

    Returns a dict of floats: asa, ue, br, bp (averaged over the annotators), ev, src, smf, gr, k_produced (int),
    delta_k.
    """
    labels = np.asarray(labels)
    if isinstance(gts, np.ndarray) and gts.ndim == 2:
        gts = [gts]
    if len(gts) == 0:
        raise ValueError("evaluate needs at least one ground-truth segmentation")
    s, ns = _consecutive(labels)
    size = np.bincount(s, minlength=ns)
    bs = boundary_map(labels)
    size_f = 2 * int(r) + 1
    near_s = ndimage.maximum_filter(bs.view(np.uint8), size=size_f, mode="constant").view(bool)
    n_s = int(bs.sum())

    # the ground-truth metrics share the relabelled superpixel map and its boundary (computed once)
    acc = {"asa": [], "ue": [], "br": [], "bp": []}
    for gt in gts:
        gt = np.asarray(gt)
        _check_same_shape(labels, gt, "evaluate")
        g, ng = _consecutive(gt)
        rows, _, inter = _contingency(s, ns, g, ng)
        best = np.zeros(ns, dtype=np.int64)
        np.maximum.at(best, rows, inter)
        acc["asa"].append(best.sum() / s.size)
        acc["ue"].append(np.minimum(inter, size[rows] - inter).sum() / s.size)
        bg = boundary_map(gt)
        near_g = ndimage.maximum_filter(bg.view(np.uint8), size=size_f, mode="constant").view(bool)
        n_g = int(bg.sum())
        acc["br"].append((bg & near_s).sum() / n_g if n_g else 1.0)
        acc["bp"].append((bs & near_g).sum() / n_s if n_s else 1.0)

    out = {key: float(np.mean(vals)) for key, vals in acc.items()}
    out["ev"] = explained_variation(labels, image)
    out.update(global_regularity(labels))
    out["k_produced"] = int(ns)
    out["delta_k"] = abs(ns - k) / k
    return out
