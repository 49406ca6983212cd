"""Per-stage times of SPAM on a GPU against the CPU path on the same machine, and the fused Triton pass against the
bytes floor.

    python benchmarks/bench_gpu.py [--repeats 7] [--image PATH] [--encoder default|none]

Two inputs: a BSDS-size image (481x321, K=400: BSDS500 test/100007.jpg when ../shared/datasets/bsds500 is present,
else samples/coffee.jpg resized) and a 1920x1080 frame (K=2000, the same picture resized). For each, the CPU path
(``SPAM(device="cpu")``: numba Lab, numpy seeds, numba clustering and connectivity) and the CUDA path
(``SPAM(device="cuda")``: the GPU-resident frame — uint8 upload, Lab in torch, grid candidates on the device, Triton
clustering, connectivity with torch connected components, labels back once): Lab, seeds + candidates, features (Lab +
encoder), clustering (10 iterations + final assignment), connectivity, and ``segment()`` end to end, with no prior
and with a prior (25 Voronoi objects with uncertain bands). With the prior, seeds + candidates is also split into its
two parts — object seeds (the objects' pieces, starts, k-means on yx) and the candidate table — timed on the CPU
(numpy/numba) and on the device (kernels.seeding / kernels.nearest, the partition uploaded once), and the device's
seeds and table are checked equal to the CPU's.
Each GPU time is wall time between ``torch.cuda.synchronize()`` calls (host work included); median of --repeats after
one warm-up.

Then the clustering kernels alone (D=20, grid layout): one fused hard pass that assigns only, that also sums the
centroids with the block-reduced update (the default) or with the previous per-pixel atomics, ``torch.index_add_``
of the same sums, and 10 iterations (Triton with either update, torch reference) — timed with CUDA events — against
the bytes floor: the bytes a pass must move (features, pixel objects read, labels written) over this GPU's copy
bandwidth (a device-to-device copy of 1 GiB, read + write counted).

Without a CUDA device it prints "no CUDA device: nothing to measure" and exits 0. ``--cpu-twins`` instead times the
device path's torch functions on CPU tensors against the CPU functions they replace, at 1080p (what a machine
without a GPU can check: the host-side cost of the device connectivity's sequential merges, and that labels are
equal), and the device path's object seeds + candidate table on CPU tensors at the BSDS size.

Last, one soft iteration of a training step (``train``'s batch of 6 crops as one frame): the Triton forward, and its
backward in one Triton kernel against the torch reference backward it replaces (times and gradients' agreement).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [("BSDS 481x321", (321, 481), 400), ("1920x1080", (1080, 1920), 2000)]
ITERS = 10
DEVICE = "cuda"  # module-level so that a dry run of this script's code can point it elsewhere


def bench_image(path: str | None):
    from PIL import Image

    bsds = os.path.join(HERE, "..", "..", "shared", "datasets", "bsds500", "data", "images", "test", "100007.jpg")
    path = path or (bsds if os.path.isfile(bsds) else os.path.join(HERE, "..", "samples", "coffee.jpg"))
    return Image.open(path).convert("RGB"), os.path.relpath(path)


def resized(picture, hw):
    from PIL import Image

    h, w = hw
    return np.asarray(picture.resize((w, h), Image.BILINEAR))


def voronoi_prior(h, w, n=25, seed=0):
    """n Voronoi objects with a 2-px uncertain (-1) band between them."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([0, 0], [h, w], size=(n, 2))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    best = np.full((h, w), np.inf, np.float32)
    second = np.full((h, w), np.inf, np.float32)
    part = np.zeros((h, w), np.int32)
    for i, (py, px) in enumerate(pts):
        d = np.sqrt((yy - py) ** 2 + (xx - px) ** 2)
        closer = d < best
        second = np.where(closer, best, np.minimum(second, d))
        part = np.where(closer, i, part)
        best = np.where(closer, d, best)
    part[second - best < 2] = -1
    return part


def wall_ms(fn, repeats: int, cuda: bool) -> float:
    """Median wall time of fn() in ms after one warm-up; with ``cuda`` the device is synchronised around each call."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def event_ms(fn, repeats: int) -> float:
    """Median device time of fn() in ms (CUDA events), after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def stage_times(model, image, k, prior, repeats, cuda):
    """{stage: ms} for one model on one image (each stage re-run on a frame prepared by the stages before it)."""
    from spam_stream.color import lab_yx_features
    from spam_stream.kernels.features import lab_yx_torch, upload_image

    frame = model.frame(image, k, prior)
    model.prior_stage(frame)
    out = {}
    if cuda:
        out["Lab + positions"] = wall_ms(lambda: lab_yx_torch(upload_image(image, model.device), 0.26, 0.1),
                                         repeats, cuda)
    else:
        out["Lab + positions"] = wall_ms(lambda: lab_yx_features(image, 0.26, 0.1), repeats, cuda)

    def seeds():
        frame.seeds = frame.cands = None
        model.seed_stage(frame)

    out["seeds + candidates"] = wall_ms(seeds, repeats, cuda)
    out["features (Lab + encoder)"] = wall_ms(lambda: model.feature_stage(frame), repeats, cuda)
    out[f"clustering ({ITERS} it.)"] = wall_ms(lambda: model.cluster_stage(frame), repeats, cuda)
    out["connectivity"] = wall_ms(lambda: model.connectivity_stage(frame), repeats, cuda)
    out["segment()"] = wall_ms(lambda: model.segment(image, k, prior), repeats, cuda)
    return out, frame.labels


def prior_seed_times(k, prior, repeats, device, cuda):
    """{part: ms} of seeds + candidates with a prior, CPU functions vs their device twins on ``device``, and
    whether the twins' seeds and table equal the CPU's."""
    from spam_stream.candidates import object_candidates
    from spam_stream.kernels.seeding import object_candidates_torch, object_seeds_torch
    from spam_stream.model import check_prior
    from spam_stream.seeding import object_seeds

    part = check_prior(prior, prior.shape)
    ref = object_seeds(part, k)
    ref_table = object_candidates(*ref.candidate_groups(part), 3.0).table.numpy()
    part_t = torch.from_numpy(part).to(device)
    got = object_seeds_torch(part_t, k)
    got_table = object_candidates_torch(*got.candidate_groups(part_t), 3.0).table
    equal = (np.array_equal(got.yx.cpu().numpy(), ref.yx) and np.array_equal(got.init_labels.cpu().numpy(),
                                                                                ref.init_labels)
             and np.array_equal(got_table.cpu().numpy(), ref_table))
    few = max(1, repeats // 2)
    cpu = {"object seeds": wall_ms(lambda: object_seeds(part, k), few, False),
           "candidate table": wall_ms(lambda: object_candidates(*ref.candidate_groups(part), 3.0), few, False)}
    dev = {"object seeds": wall_ms(lambda: object_seeds_torch(torch.from_numpy(part).to(device), k), repeats, cuda),
           "candidate table": wall_ms(lambda: object_candidates_torch(*got.candidate_groups(part_t), 3.0), repeats,
                                      cuda)}
    return cpu, dev, equal


def kernel_times(image, k, encoder, repeats):
    """Fused pass variants and 10 iterations on the GPU (CUDA events), with the bytes floor."""
    from spam_stream.candidates import grid_candidates
    from spam_stream.clustering import as_pixel_rows, initial_centroids
    from spam_stream.kernels import reference
    from spam_stream.kernels import triton_kernels as tk
    from spam_stream.kernels.features import pixel_features_torch
    from spam_stream.seeding import grid_seeds

    dev = torch.device(DEVICE)
    h, w = image.shape[:2]
    f = as_pixel_rows(pixel_features_torch(image, k, encoder, device=dev))
    if f.shape[1] != 20:  # D=20 as the paper (pad the D=5 features with their copies when run without the encoder)
        f = torch.cat([f] * 4, 1).contiguous()
    seeds = grid_seeds(h, w, k)
    cands = grid_candidates(h, w, seeds).to(dev)
    c = initial_centroids(f, torch.from_numpy(seeds.init_labels).to(dev), len(seeds))
    labels = tk.assign(f, c, cands)
    n, d = f.shape
    res = {
        "assign only": event_ms(lambda: tk.assign(f, c, cands), repeats),
        "fused, block-reduced sums (new)": event_ms(lambda: tk.fused_hard_pass(f, c, cands, "reduce"), repeats),
        "fused, per-pixel atomic sums (old)": event_ms(lambda: tk.fused_hard_pass(f, c, cands, "atomic"), repeats),
        "torch index_add_ of the same sums": event_ms(
            lambda: torch.zeros(len(c), d, device=dev).index_add_(0, labels.long(), f), repeats),
    }
    iters = {}
    for update in ("reduce", "atomic"):
        tk.CENTROID_UPDATE = update
        iters[f"Triton, {update}"] = event_ms(lambda: tk.hard_iterations(f, c, cands, ITERS), repeats)
    tk.CENTROID_UPDATE = "reduce"
    iters["torch reference"] = event_ms(lambda: reference.hard_iterations(f, c, cands, ITERS), max(3, repeats // 2))
    # agreement of the two updates after 10 iterations (sums differ only in float32 rounding)
    final = {}
    for update in ("reduce", "atomic"):
        tk.CENTROID_UPDATE = update
        final[update] = tk.hard_iterations(f, c, cands, ITERS)[0]
    tk.CENTROID_UPDATE = "reduce"
    same = (final["reduce"] == final["atomic"]).float().mean()
    per_pass = n * d * 4 + n * 4 + n * 4  # features, pixel objects read; labels written (grid: no table)
    return res, iters, per_pass, float(same), (n, d, len(c))


def soft_backward_times(repeats, batch=6, crop=201, crop_superpixels=100, d=20):
    """The soft iteration of a training step (``train``'s batched frame: ``batch`` crops as one table layout) on the
    GPU, CUDA events: forward (association + sums) and its backward, the one-kernel Triton backward against its torch
    twin (reference.soft_iteration_backward), with the gradients' agreement."""
    from spam_stream.clustering import initial_centroids
    from spam_stream.kernels import reference
    from spam_stream.kernels import triton_kernels as tk
    from spam_stream.training import batch_candidates

    dev = torch.device(DEVICE)
    cands, init = batch_candidates(batch, crop, crop_superpixels, str(dev))
    g = torch.Generator(device=dev).manual_seed(0)
    f = torch.randn(cands.n_pixels, d, device=dev, generator=g) * 3
    c = initial_centroids(f, init, cands.n_superpixels)
    q = tk.associate(f, c, cands)
    sums, counts = tk.centroid_sums_soft(f, q, cands)
    new_c = reference.new_centroids(sums, counts, c)
    grad_q = torch.randn(q.shape, device=dev, generator=g)
    grad_c = torch.randn(c.shape, device=dev, generator=g)
    args = (f, c, cands, q, counts, new_c, grad_q, grad_c)
    times = {
        "forward: association + soft sums (Triton)": event_ms(
            lambda: tk.centroid_sums_soft(f, tk.associate(f, c, cands), cands), repeats),
        "backward, Triton (one kernel)": event_ms(lambda: tk.soft_iteration_backward(*args), repeats),
        "backward, torch reference (its twin)": event_ms(lambda: reference.soft_iteration_backward(*args), repeats),
    }
    got, ref = tk.soft_iteration_backward(*args), reference.soft_iteration_backward(*args)
    err = max(float((a - b).norm() / b.norm()) for a, b in zip(got, ref))
    return times, err, (cands.n_pixels, d, cands.n_superpixels)


def copy_bandwidth(n_bytes=1 << 30, repeats=10) -> float:
    """Device copy bandwidth in bytes/s (bytes read + written)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=DEVICE).fill_(1.0)
    dst = torch.empty_like(src)
    ms = event_ms(lambda: dst.copy_(src), repeats)
    return 2 * n_bytes / (ms * 1e-3)


def cpu_twins(picture, repeats):
    """Torch twins on CPU tensors vs the CPU functions at 1080p, K=2000 (labels from a D=5 clustering)."""
    from skimage.color import rgb2lab
    from skimage.measure import label as sk_label

    from spam_stream import SPAM
    from spam_stream.color import lab_yx_features
    from spam_stream.connectivity import enforce_connectivity
    from spam_stream.kernels.connectivity import enforce_connectivity_torch
    from spam_stream.kernels.features import lab_yx_torch
    from spam_stream.kernels.labeling import label_components_torch

    (name, hw, k) = SIZES[0]
    prior = voronoi_prior(*hw)
    cpu, dev, equal = prior_seed_times(k, prior, max(1, repeats // 2), "cpu", False)
    print(f"{name}, K={k}, 25-object prior: seeds + candidates, CPU functions vs the device twins on CPU tensors "
          f"(seeds and table equal: {equal})\n")
    print("| part | CPU functions (ms) | device twins on CPU tensors (ms) |")
    print("|---|---|---|")
    for what in cpu:
        print(f"| {what} | {cpu[what]:.1f} | {dev[what]:.1f} |")
    print()
    (name, hw, k) = SIZES[1]
    image = resized(picture, hw)
    prior = voronoi_prior(*hw)
    model = SPAM(encoder=None)
    img_t = torch.from_numpy(image.copy())
    print(f"{name}, K={k}, CPU tensors, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          f"median of {repeats}\n")
    print("| function | ms | × baseline |")
    print("|---|---|---|")
    base = wall_ms(lambda: rgb2lab(image), repeats, False)
    rows = [("skimage rgb2lab (baseline)", base),
            ("color.lab_yx_features (numba, CPU path)", wall_ms(lambda: lab_yx_features(image, 0.26, 0.1), repeats, False)),
            ("kernels.features.lab_yx_torch (device path)", wall_ms(lambda: lab_yx_torch(img_t, 0.26, 0.1), repeats, False))]
    for what, ms in rows:
        print(f"| {what} | {ms:.1f} | {ms / base:.2f} |")
    for part in (None, prior):
        frame = model.frame(image, k, part)
        for stage in (model.prior_stage, model.seed_stage, model.feature_stage, model.cluster_stage):
            stage(frame)
        lab = frame.cluster_labels
        min_size = max(1, int(model.min_size_factor * lab.size / k))
        lab_t = torch.from_numpy(lab)
        part_t = None if part is None else torch.from_numpy(part)
        base = wall_ms(lambda: sk_label(lab + 1, background=-1, connectivity=1), repeats, False)
        ref = enforce_connectivity(lab, part, min_size)
        got = enforce_connectivity_torch(lab_t, part_t, min_size).numpy()
        got_torch_cc = enforce_connectivity_torch(lab_t, part_t, min_size, labeler=label_components_torch).numpy()
        tag = "no prior" if part is None else "25-object prior"
        rows = [(f"skimage.measure.label, {tag} (baseline)", base),
                ("connectivity.enforce_connectivity (numba, CPU path)",
                 wall_ms(lambda: enforce_connectivity(lab, part, min_size), repeats, False)),
                ("kernels.connectivity.enforce_connectivity_torch, numba components",
                 wall_ms(lambda: enforce_connectivity_torch(lab_t, part_t, min_size), repeats, False)),
                ("kernels.connectivity.enforce_connectivity_torch, torch components (the CUDA code path)",
                 wall_ms(lambda: enforce_connectivity_torch(lab_t, part_t, min_size, labeler=label_components_torch),
                         max(1, repeats // 2), False))]
        for what, ms in rows:
            print(f"| {what} | {ms:.1f} | {ms / base:.2f} |")
        print(f"| labels equal to enforce_connectivity ({tag}) | {np.array_equal(got, ref)} / "
              f"{np.array_equal(got_torch_cc, ref)} | |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--image", default=None, help="picture to resize to both sizes (default: BSDS 100007 or coffee)")
    ap.add_argument("--encoder", default="default", help='"default" (bundled weights) or "none" (D=5)')
    ap.add_argument("--cpu-twins", action="store_true", help="time the torch twins on CPU tensors (no GPU needed)")
    args = ap.parse_args()
    if args.cpu_twins:
        cpu_twins(bench_image(args.image)[0], args.repeats)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("warning: TRITON_INTERPRET is set: Triton kernels run in the interpreter, not compiled", file=sys.stderr)
    import triton

    from spam_stream import SPAM
    from spam_stream.metrics import asa

    picture, source = bench_image(args.image)
    encoder = None if args.encoder == "none" else args.encoder
    gpu_model, cpu_model = SPAM(encoder=encoder, device=DEVICE), SPAM(encoder=encoder, device="cpu")
    print(f"GPU: {torch.cuda.get_device_name(0)}; CPU: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads;"
          f" torch {torch.__version__}, triton {triton.__version__}")
    print(f"picture: {source}; encoder: {args.encoder} (D={gpu_model.n_features}); median of {args.repeats}")
    bw = copy_bandwidth()
    print(f"device copy bandwidth: {bw / 1e12:.2f} TB/s (read + write)")
    for name, hw, k in SIZES:
        image = resized(picture, hw)
        prior = voronoi_prior(*hw)
        print(f"\n## {name}, K={k}\n")
        print("| stage | CPU (ms) | CUDA (ms) | CPU / CUDA |")
        print("|---|---|---|---|")
        cpu_t, cpu_labels = stage_times(cpu_model, image, k, None, max(3, args.repeats // 2), cuda=False)
        gpu_t, gpu_labels = stage_times(gpu_model, image, k, None, args.repeats, cuda=True)
        for stage in cpu_t:
            print(f"| {stage} | {cpu_t[stage]:.1f} | {gpu_t[stage]:.2f} | {cpu_t[stage] / gpu_t[stage]:.1f} |")
        cpu_p = stage_times(cpu_model, image, k, prior, max(3, args.repeats // 2), cuda=False)[0]
        gpu_p = stage_times(gpu_model, image, k, prior, args.repeats, cuda=True)[0]
        for stage in ("seeds + candidates", "segment()"):
            print(f"| {stage}, 25-object prior | {cpu_p[stage]:.1f} | {gpu_p[stage]:.2f} | "
                  f"{cpu_p[stage] / gpu_p[stage]:.1f} |")
        cpu_s, gpu_s, seeds_equal = prior_seed_times(k, prior, args.repeats, DEVICE, True)
        for part in cpu_s:
            print(f"| — {part}, 25-object prior | {cpu_s[part]:.1f} | {gpu_s[part]:.2f} | "
                  f"{cpu_s[part] / gpu_s[part]:.1f} |")
        print(f"\nprior seeds + candidate table on the device equal to the CPU's: {seeds_equal}")
        print(f"\nCUDA vs CPU labels (no prior): ASA {asa(gpu_labels, cpu_labels):.4f}, K' {gpu_labels.max() + 1} vs "
              f"{cpu_labels.max() + 1}, identical: {np.array_equal(gpu_labels, cpu_labels)}")

        res, iters, per_pass, same, (n, d, kk) = kernel_times(image, k, gpu_model.encoder, args.repeats)
        floor = per_pass / bw * 1e3
        print(f"\nclustering kernels, N={n}, D={d}, K={kk} (grid), CUDA events; bytes floor of one pass "
              f"{per_pass / 1e6:.1f} MB / {bw / 1e12:.2f} TB/s = {floor * 1e3:.1f} µs\n")
        print("| one pass | ms | × assign only | × floor |")
        print("|---|---|---|---|")
        for what, ms in res.items():
            print(f"| {what} | {ms:.3f} | {ms / res['assign only']:.2f} | {ms / floor:.1f} |")
        print(f"\n| {ITERS} iterations + final assignment | ms | × floor ({ITERS + 1} passes) |")
        print("|---|---|---|")
        for what, ms in iters.items():
            print(f"| {what} | {ms:.2f} | {ms / (floor * (ITERS + 1)):.1f} |")
        print(f"\nlabels after {ITERS} iterations, reduce vs atomic update: {same:.2%} equal")
    times, err, (n, d, kk) = soft_backward_times(args.repeats)
    print(f"\n## One soft iteration of a training step (6 crops of 201², one table-layout frame: N={n}, D={d}, "
          f"K={kk}), CUDA events\n")
    print("| part | ms |")
    print("|---|---|")
    for what, ms in times.items():
        print(f"| {what} | {ms:.3f} |")
    print(f"\nTriton vs torch backward: max relative difference of the gradients {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
