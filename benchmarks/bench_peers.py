"""spam-stream's CPU frame against the fastest SLIC implementations, measured in the same run (issue 29).

Speed: ``segment()`` with ``--encoder none`` (D=5), the same with a 25-object prior (a Voronoi partition), and
optionally the bundled encoder (``--encoder``), against fast-slic 0.4.0 (``SlicAvx2(num_components=K,
compactness=10).iterate(img, max_iter=10)``), OpenCV SLICO and LSC (``cv2.ximgproc``) and ``skimage.segmentation.slic``
at 481×321 K=400, 1280×720 K=1000 and 1920×1080 K=2000: median of --repeats calls after a warm-up, the methods
interleaved call by call so that drift hits them alike. Quality (``--quality N``): ASA (mean over the annotators),
GR and ΔK on the first N BSDS500 test images at K=400.

A peer that is not installed is skipped with a note. fast-slic 0.4.0 ships only a source package whose build fails
under build isolation; this builds it:
``pip install "cython<3" numpy setuptools wheel py-cpuinfo && pip install --no-build-isolation fast-slic==0.4.0``.
OpenCV: ``pip install opencv-contrib-python-headless`` (the ``eval`` extra).

    python benchmarks/bench_peers.py [--repeats 5] [--quality 30] [--encoder] [--stages] [--sizes 481x321:400,...]

``--stages``: also where ``segment()``'s time goes (median ms per stage of :class:`spam_stream.SPAM`'s frame:
seeds + candidates, features, clustering, connectivity; and the clustering rounds run), without and with the prior.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_SIZES = "481x321:400,1280x720:1000,1920x1080:2000"


def peers(k: int) -> dict:
    """name -> callable(image uint8 (H, W, 3)) -> labels, for the peers that import here."""
    out = {}
    try:
        from fast_slic.avx2 import SlicAvx2

        out["fast-slic"] = lambda img: SlicAvx2(num_components=k, compactness=10).iterate(img, max_iter=10)
    except ImportError:
        print("note: fast-slic not installed (see this script's docstring): skipped")
    try:
        import cv2

        def opencv(make):
            def run(img):
                lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
                size = max(2, int(round((img.shape[0] * img.shape[1] / k) ** 0.5)))
                sp = make(lab, size)
                sp.iterate(10)
                return sp.getLabels()
            return run

        xi = cv2.ximgproc
        out["OpenCV SLICO"] = opencv(lambda lab, s: xi.createSuperpixelSLIC(lab, algorithm=xi.SLICO, region_size=s))
        out["OpenCV LSC"] = opencv(lambda lab, s: xi.createSuperpixelLSC(lab, region_size=s))
    except (ImportError, AttributeError):
        print("note: cv2.ximgproc not installed (opencv-contrib-python-headless): OpenCV skipped")
    from skimage.segmentation import slic

    out["skimage slic"] = lambda img: slic(img, n_segments=k, compactness=10, start_label=0)
    return out


def voronoi_prior(h: int, w: int, n: int = 25, seed: int = 0) -> np.ndarray:
    """(H, W) int32 partition into n Voronoi cells of random points: a stand-in for a 25-object prior."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    pts = rng.random((n, 2)) * (h, w)
    yy, xx = np.mgrid[:h, :w]
    return cKDTree(pts).query(np.stack([yy.ravel(), xx.ravel()], 1))[1].reshape(h, w).astype(np.int32)


def bench_image(size):
    path = os.path.join(ROOT, "..", "shared", "datasets", "bsds500", "data", "images", "test", "100007.jpg")
    if not os.path.isfile(path):
        path = os.path.join(ROOT, "samples", "coffee.jpg")
    return np.asarray(Image.open(path).convert("RGB").resize(size, Image.BICUBIC))


def speed(sizes, repeats: int, with_encoder: bool, subsample: int = 1) -> None:
    from spam_stream import SPAM

    d5 = SPAM(encoder=None, subsample=subsample)
    bundled = SPAM(subsample=subsample) if with_encoder else None
    every_row = (SPAM(encoder=None, subsample=1), SPAM(subsample=1) if with_encoder else None) if subsample > 1 else None
    print(f"spam-stream with subsample={subsample}" + (" (and subsample=1, the rows every round, same run)"
                                                       if every_row else ""))
    print("| frame | " + " | ".join(["spam D=5", "D=5 + 25-object prior", "prior/none"]
                                      + (["bundled encoder"] if with_encoder else [])
                                      + (["subsample=1: D=5 / prior" + (" / bundled" if with_encoder else "")]
                                         if every_row else [])) + " | peers (ms) |")
    for (w, h), k in sizes:
        img = bench_image((w, h))
        prior = voronoi_prior(h, w)
        runs = {"D=5": lambda: d5.segment(img, k), "prior": lambda: d5.segment(img, k, prior=prior)}
        if with_encoder:
            runs["bundled"] = lambda: bundled.segment(img, k)
        if every_row:
            runs["D=5 s1"] = lambda: every_row[0].segment(img, k)
            runs["prior s1"] = lambda: every_row[0].segment(img, k, prior=prior)
            if with_encoder:
                runs["bundled s1"] = lambda: every_row[1].segment(img, k)
        for name, fn in peers(k).items():
            runs[name] = (lambda f=fn: f(img))
        times = {name: [] for name in runs}
        for fn in runs.values():  # warm-up (compilation, caches)
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(1e3 * (time.perf_counter() - t))
        med = {name: statistics.median(v) for name, v in times.items()}
        base = med.get("fast-slic")
        cells = [f"{med['D=5']:.1f}" + (f" ({med['D=5'] / base:.2f}× fast-slic)" if base else ""),
                 f"{med['prior']:.1f}", f"{med['prior'] / med['D=5']:.2f}"]
        if with_encoder:
            cells.append(f"{med['bundled']:.0f}")
        if every_row:
            cells.append(" / ".join(f"{med[n + ' s1']:.1f}" for n in ("D=5", "prior") + (("bundled",) if with_encoder
                                                                                         else ())))
        ours = ("D=5", "prior", "bundled", "D=5 s1", "prior s1", "bundled s1")
        peer_txt = ", ".join(f"{n} {med[n]:.1f}" for n in med if n not in ours)
        print(f"| {w}×{h}, K={k} | " + " | ".join(cells) + f" | {peer_txt} |")


def stages(sizes, repeats: int, subsample: int = 1) -> None:
    """Median ms per stage of SPAM(encoder=None)'s frame (the stages ``segment()`` runs), without and with the
    25-object prior."""
    from spam_stream import SPAM

    model = SPAM(encoder=None, subsample=subsample)
    print("\n| frame | prior | seeds | features | cluster | connectivity | other | total | rounds |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for (w, h), k in sizes:
        img = bench_image((w, h))
        for name, prior in (("none", None), ("25 objects", voronoi_prior(h, w))):
            rows, totals = [], []
            for i in range(repeats + 1):  # the first call warms up
                frame = model.frame(img, k, prior)
                t = time.perf_counter()
                model.run_stages(frame)
                if i:
                    totals.append(1e3 * (time.perf_counter() - t))
                    rows.append({s: 1e3 * v for s, v in frame.timings.items()})
            names = ("prior", "seeds", "features", "cluster", "connectivity")
            med = {s: statistics.median(r.get(s, 0.0) for r in rows) for s in names}
            total = statistics.median(totals)
            other = statistics.median(t - sum(r.get(s, 0.0) for s in names) for t, r in zip(totals, rows))
            print(f"| {w}×{h}, K={k} | {name} | {med['prior'] + med['seeds']:.1f} | {med['features']:.1f} | "
                  f"{med['cluster']:.1f} | {med['connectivity']:.1f} | {other:.1f} | {total:.1f} | "
                  f"{frame.meta.get('iterations')} |")


def quality(n_images: int, with_encoder: bool, k: int = 400, subsample: int = 1) -> None:
    from spam_stream import SPAM
    from spam_stream.datasets import BSDS500, default_bsds_root
    from spam_stream.metrics import evaluate

    root = default_bsds_root()
    if root is None:
        print("note: BSDS500 not found (../shared/datasets/bsds500 or SPAM_BSDS_ROOT): quality skipped")
        return
    data = BSDS500(root, "test")
    methods = {"spam D=5": SPAM(encoder=None, subsample=subsample).segment}
    if with_encoder:
        methods["spam bundled"] = SPAM(subsample=subsample).segment
    methods.update(peers(k))
    scores = {name: [] for name in methods}
    for i in range(min(n_images, len(data))):
        sample = data[i]
        for name, fn in methods.items():
            labels = fn(sample.image, k) if name.startswith("spam") else fn(sample.image)
            scores[name].append(evaluate(labels, sample.gts, sample.image, k))
    print(f"\nquality on the first {min(n_images, len(data))} BSDS500 test images, K={k}")
    print("| method | ASA | GR | ΔK |\n|---|---|---|---|")
    for name, rows in scores.items():
        print(f"| {name} | {np.mean([r['asa'] for r in rows]):.4f} | {np.mean([r['gr'] for r in rows]):.3f} | "
              f"{np.mean([r['delta_k'] for r in rows]):.3f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quality", type=int, default=0, help="BSDS test images for the quality table (0: none)")
    ap.add_argument("--encoder", action="store_true", help="also time the bundled encoder")
    ap.add_argument("--stages", action="store_true", help="also time segment()'s stages (D=5, without/with prior)")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="WxH:K,... (default %(default)s)")
    ap.add_argument("--subsample", type=int, default=None,
                    help="spam-stream's row subsampling (SPAM(subsample=...); default: SPAM's default); > 1 also "
                         "times subsample=1 in the same run")
    args = ap.parse_args()
    sizes = []
    for item in args.sizes.split(","):
        wh, k = item.split(":")
        w, h = wh.split("x")
        sizes.append(((int(w), int(h)), int(k)))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    from spam_stream.model import DEFAULT_SUBSAMPLE

    sub = DEFAULT_SUBSAMPLE if args.subsample is None else args.subsample
    speed(sizes, args.repeats, args.encoder, sub)
    if args.stages:
        stages(sizes, args.repeats, sub)
    if args.quality:
        quality(args.quality, args.encoder, subsample=sub)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
