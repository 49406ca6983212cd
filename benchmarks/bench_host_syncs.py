"""Host round trips of one frame on the device path, per stage (issue 22, item 2).

On a GPU every op whose result the host reads — an ``int()`` of a tensor, a copy to the CPU, an output sized by the
data (``nonzero``, ``unique``, a boolean mask) — drains the device queue. This counts them per stage of
``SPAM.run_stages`` on the device-resident path (:class:`spam_stream.hostsync.HostSyncCounter`): on CUDA when a GPU
is present (and there also as reported by ``torch.cuda.set_sync_debug_mode``), else on CPU tensors with
``SPAM_DEVICE_FRAME=1`` and the GPU's torch connected components. Frames: 481×321 K=400 and 1920×1080 K=2000
(samples/coffee.jpg resized), without a prior and with a 25- and a 200-object Voronoi prior.

    python benchmarks/bench_host_syncs.py [--device cpu|cuda] [--encoder none|default] [--small]

On CPU tensors the clustering stage and the encoder's upsampling run their CPU kernels (the GPU runs Triton and
torch gathers), so those rows count only on CUDA; ``tests/test_host_syncs.py`` holds the features stage to one
upload (the picture) with the "meta" device standing in for a GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

STAGES = ("prior", "seeds", "features", "cluster", "connectivity")
METHODS = {"prior": "prior_stage", "seeds": "seed_stage", "features": "feature_stage", "cluster": "cluster_stage",
           "connectivity": "connectivity_stage"}


def count_frame(model, image, k, prior, cuda: bool):
    """{stage: (counted, reported by CUDA or None)} for one frame (after a warm-up frame of the same input)."""
    import torch

    from spam_stream.hostsync import HostSyncCounter

    model.run_stages(model.frame(image, k, prior))  # warm-up: compile, caches
    frame = model.frame(image, k, prior)
    out = {}
    for stage in STAGES:
        method = getattr(model, METHODS[stage])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            try:
                with HostSyncCounter() as syncs:
                    method(frame)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
        reported = sum("synchroniz" in str(w.message) for w in caught) if cuda else None
        out[stage] = (syncs.total, reported, syncs.by_place.most_common(3))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--encoder", default="none", choices=("none", "default"))
    parser.add_argument("--small", action="store_true", help="540×960 instead of 1080p (quicker on a CPU)")
    args = parser.parse_args(argv)

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if not cuda:  # the device path on CPU tensors, with the GPU's connected components
        os.environ["SPAM_DEVICE_FRAME"] = "1"
        from spam_stream.kernels import connectivity, labeling

        def torch_labels(values, background=None, connectivity=4):
            return labeling.label_components_torch(values, background, connectivity)

        labeling.label_components = torch_labels
        connectivity.label_components = torch_labels
    from bench_prior_cost import voronoi_prior

    from spam_stream import SPAM

    model = SPAM(encoder=None if args.encoder == "none" else "default", device=device)
    big = (540, 960, 1000) if args.small else (1080, 1920, 2000)
    picture = Image.open(os.path.join(ROOT, "samples", "coffee.jpg")).convert("RGB")
    rows = []
    for h, w, k in [(321, 481, 400), big]:
        image = np.asarray(picture.resize((w, h), Image.BILINEAR))
        for n_objects in (0, 25, 200):
            prior = voronoi_prior(h, w, n_objects, seed=n_objects) if n_objects else None
            rows.append((f"{w}×{h} K={k}, " + (f"{n_objects}-object prior" if n_objects else "no prior"),
                         count_frame(model, image, k, prior, cuda)))
    where = (f"CUDA ({torch.cuda.get_device_name()})" if cuda
             else "CPU tensors, SPAM_DEVICE_FRAME=1, torch connected components")
    print(f"host round trips per frame, device path on {where}; encoder {args.encoder}")
    print()
    print("| frame | " + " | ".join(STAGES) + " | total |")
    print("|---|" + "---|" * (len(STAGES) + 1))
    for name, counts in rows:
        cells = []
        for s in STAGES:
            counted, reported, _ = counts[s]
            cells.append(f"{counted}" + (f" ({reported})" if reported is not None else ""))
        print(f"| {name} | " + " | ".join(cells) + f" | {sum(c[0] for c in counts.values())} |")
    if cuda:
        print("\n(in brackets: the synchronizing calls torch.cuda.set_sync_debug_mode reported)")
    print("\nmost frequent places, last frame:")
    for s in STAGES:
        print(f"  {s}: {rows[-1][1][s][2]}")


if __name__ == "__main__":
    main()
