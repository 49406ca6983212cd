"""Superpixel graphs, tokens and batched small images (issue 24), on the CPU, ``--encoder none``.

    python benchmarks/bench_graph.py [--repeats 5] [--batch 64] [--image samples/coffee.jpg] [--threads 1]

1. Graph and tokens vs ``segment()`` at BSDS size (481×321, K=400) and 1080p (K=2000): ``region_graph(labels,
   image)`` and ``tokens`` of a (1, 20, H, W) feature map (the bundled encoder's D at full resolution), against
   scikit-image on the same labels: ``skimage.graph.rag_mean_color`` + ``regionprops`` (area, centroid, bbox and mean
   colour of every region read).
2. Batched 224×224, K=196: ``SPAM.segment`` on a (B, 224, 224, 3) batch (one frame of B tiles) vs a per-image loop
   of ``SPAM.segment`` vs ``skimage.segmentation.slic`` per image (n_segments=196, its defaults) vs PyG's
   ``ToSLIC`` (slic + mean colour and centroid per superpixel) when torch_geometric is installed; the batched
   labels are checked equal to the loop's. Images: 224×224 crops of the image at B positions.

Median of --repeats after a warm-up (skimage's RAG at 1080p: --slow-repeats). The load average (1 min) before
and after is printed: the numbers are only comparable within one run on a busy machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from timing import median_ms  # noqa: E402


def load(path, size):
    return np.asarray(Image.open(path).convert("RGB").resize(size, Image.BICUBIC))


def skimage_graph(image, labels):
    from skimage import graph as skgraph
    from skimage.measure import regionprops

    lab = labels + 1  # regionprops skips 0
    rag = skgraph.rag_mean_color(image, lab)
    props = regionprops(lab, intensity_image=image)
    return rag, [(p.area, p.centroid, p.bbox, p.intensity_mean) for p in props]


def frame_rows(args, model):
    from spam_stream import region_graph, tokens

    rows = []
    for name, size, k in (("BSDS 481×321", (481, 321), 400), ("1080p", (1920, 1080), 2000)):
        image = load(args.image, size)
        labels = model.segment(image, k)
        feats = torch.randn(1, 20, size[1], size[0])
        lab_t = torch.from_numpy(labels)[None]
        t_seg = median_ms(lambda: model.segment(image, k), args.repeats)
        t_graph = median_ms(lambda: region_graph(labels, image), args.repeats)
        t_tok = median_ms(lambda: tokens(feats, lab_t), args.repeats)
        slow = args.slow_repeats if size[0] > 1000 else args.repeats
        t_sk = median_ms(lambda: skimage_graph(image, labels), slow)
        g = region_graph(labels, image)
        rows.append((name, k, g.n_nodes, g.n_edges, t_seg, t_graph, t_tok, t_sk))
    print("\n| frame | K | K' | edges | segment() ms | region_graph ms (% of segment) | tokens C=20 ms | "
          "skimage rag_mean_color + regionprops ms | graph speed-up vs skimage |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, k, kk, e, s, g, t, sk in rows:
        print(f"| {name} | {k} | {kk} | {e} | {s:.1f} | {g:.1f} ({100 * g / s:.1f}%) | {t:.1f} | {sk:.0f} | "
              f"{sk / g:.0f}× |")


def batch_rows(args, model):
    from skimage.segmentation import slic

    base = load(args.image, (640, 427))
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, 427 - 224, args.batch), rng.integers(0, 640 - 224, args.batch)
    images = np.stack([base[y:y + 224, x:x + 224] for y, x in zip(ys, xs)])
    k = 196

    def batched():
        return model.segment(images, k)

    def loop():
        return np.stack([model.segment(im, k) for im in images])

    def slic_loop():
        return [slic(im, n_segments=k, start_label=1) for im in images]

    equal = np.array_equal(batched(), loop())
    results = [("SPAM batched (frames of tiles, spam_stream.tiles)", median_ms(batched, args.repeats))]
    results.append(("SPAM per-image loop", median_ms(loop, args.repeats)))
    results.append(("skimage slic per image", median_ms(slic_loop, args.repeats)))
    try:
        from torch_geometric.transforms import ToSLIC

        to_slic = ToSLIC(n_segments=k)
        tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
        results.append(("PyG ToSLIC per image (slic + mean colour, centroid)",
                        median_ms(lambda: [to_slic(t) for t in tensors], args.repeats)))
    except ImportError:
        print("(torch_geometric not installed: no ToSLIC row)")
    from spam_stream import region_graph

    results.append(("SPAM batched + region_graph per image",
                    median_ms(lambda: [region_graph(lab, im) for lab, im in zip(batched(), images)],
                              args.repeats)))
    from spam_stream import tokens

    labels = torch.from_numpy(batched())
    vit = torch.randn(args.batch, 384, 14, 14)  # ViT-S/16 patch embeddings of 224×224 images
    t_tok = median_ms(lambda: tokens(vit, labels), args.repeats)
    best = results[0][1]
    print(f"\n224×224, K={k}, B={args.batch}, --encoder none; batched labels equal to the loop's: {equal}")
    print("\n| method | ms per batch | images/s | batched SPAM's speed-up |")
    print("|---|---|---|---|")
    for name, ms in results:
        print(f"| {name} | {ms:.0f} | {1e3 * args.batch / ms:.1f} | {ms / best:.2f}× |")
    print(f"\ntokens of ViT-S/16 patch features ({args.batch}, 384, 14, 14) pooled into those superpixels (mean, "
          f"padded to K_max={int(labels.amax((1, 2)).max()) + 1}): {t_tok:.1f} ms per batch")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=os.path.join(os.path.dirname(HERE), "samples", "coffee.jpg"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--slow-repeats", type=int, default=1, help="repeats of skimage's RAG at 1080p (slow)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--only", choices=["frames", "batch"], default=None)
    p.add_argument("--threads", type=int, default=0,
                   help="torch and numba threads (0: their defaults). On a machine shared with other busy processes "
                        "1 is the fair setting: a 2-thread parallel region waits for its descheduled thread")
    args = p.parse_args(argv)
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    from spam_stream import SPAM

    model = SPAM(encoder=None)
    import numba

    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs), torch threads "
          f"{torch.get_num_threads()}, numba threads {numba.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.only in (None, "frames"):
        frame_rows(args, model)
    if args.only in (None, "batch"):
        batch_rows(args, model)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
