"""Shared test helpers: synthetic images and partitions, and the invariant checks."""
import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries


def synthetic_image(h=96, w=128, seed=0):
    """(H, W, 3) uint8: coloured discs and rectangles over a gradient, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 90)], -1).astype(np.float64)
    for _ in range(6):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, 30)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def voronoi_partition(h, w, n_objects, seed=0, band=True):
    """(H, W) int32 partition into Voronoi cells, with a 1-px band of -1 along the cell boundaries."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([0, 0], [h, w], size=(n_objects, 2))
    yy, xx = np.mgrid[:h, :w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    part = d.argmin(-1).astype(np.int32)
    if band:
        part[find_boundaries(part, mode="inner")] = -1
    return part


def assert_superpixels_respect_prior(labels, prior):
    """No superpixel holds pixels of two different prior objects."""
    known = prior >= 0
    pairs = np.unique(np.stack([labels[known], prior[known]], 1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs), "a superpixel crosses a prior object boundary"


def assert_connected(labels):
    """Every superpixel is one 4-connected component, labels are 0..K'-1."""
    n = labels.max() + 1
    assert set(np.unique(labels)) == set(range(n))
    objects = ndimage.find_objects(labels + 1)
    for k, sl in enumerate(objects):
        _, count = ndimage.label(labels[sl] == k)
        assert count == 1, f"superpixel {k} has {count} 4-connected components"


def two_soft_iterations_with_grads(backend, f, c, cands, monkeypatch):
    """Two chained soft iterations through the dispatch with ``SPAM_KERNELS=backend`` and a fixed loss, backpropagated:
    (q (N, 9), centroids (K, D), grad of f, grad of c)."""
    import torch

    import spam_stream.kernels as kernels

    monkeypatch.setenv("SPAM_KERNELS", backend)
    f1, c1 = f.clone().requires_grad_(), c.clone().requires_grad_()
    _, c_new = kernels.soft_iteration(f1, c1, cands)
    q2, c_new2 = kernels.soft_iteration(f1, c_new, cands)
    wq = torch.linspace(-1, 1, q2.numel(), device=q2.device).reshape(q2.shape)
    ((q2 * wq).sum() + (c_new2 ** 2).sum()).backward()
    return q2.detach(), c_new2.detach(), f1.grad, c1.grad


def bsds_test_split():
    """The BSDS500 test split (:class:`spam_stream.datasets.BSDS500`), or a pytest skip naming where it was looked
    for (``$SPAM_BSDS_ROOT``, else ../shared/datasets/bsds500)."""
    import pytest

    from spam_stream.datasets import BSDS500, default_bsds_root

    root = default_bsds_root()
    if root is None or not (root / "data" / "images" / "test").is_dir():
        pytest.skip(f"BSDS500 not found at {root or '../shared/datasets/bsds500'} (set SPAM_BSDS_ROOT)")
    return BSDS500(root, "test")


def dotted_line_case():
    """A thin object (id 1) cut into 1-px dots by a band of uncertain pixels, inside object 0: the dots sit on a
    diagonal, two band pixels apart, and the line's first dot is a 3×3 block that holds its seed. Labels: object 0
    is superpixel 0 (its band pixels included), the block superpixel 1, every dot its own label (as clustering leaves
    the unseeded dots: a label whose largest piece is elsewhere)."""
    prior = np.zeros((24, 24), np.int32)
    labels = np.zeros((24, 24), np.int64)
    prior[2:7, 2:7] = -1
    prior[3:6, 3:6] = 1
    labels[3:6, 3:6] = 1
    dots = [(7 + 2 * i, 6 + 2 * i) for i in range(7)]
    for y, x in dots:
        prior[y - 1:y + 2, x - 1:x + 2] = np.where(prior[y - 1:y + 2, x - 1:x + 2] == 1, 1, -1)
    for y, x in dots:
        prior[y, x] = 1
        labels[y, x] = 1  # the dots carry the block's label: fragments of superpixel 1
    return labels, prior, dots


def assert_budget_free(f, c, cands, n_iter: int, budgets=(1, 2, 0)):
    """cpu.hard_iterations under each live thread budget (spam_stream.kernels.threads) equals the torch reference,
    and leaves the calling thread's numba count (set to 1 here) as it was."""
    import numba
    import numpy as np
    import torch

    from spam_stream.kernels import cpu, reference, threads

    lb, cb = reference.hard_iterations(f, c, cands, n_iter)
    numba.set_num_threads(1)
    try:
        for value in budgets:
            threads.set_thread_budget(np.array([value], np.int64))
            la, ca = cpu.hard_iterations(f, c, cands, n_iter)
            assert torch.equal(la, lb)
            torch.testing.assert_close(ca, cb, rtol=1e-5, atol=1e-5)
            assert numba.get_num_threads() == 1
    finally:
        threads.set_thread_budget(None)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
