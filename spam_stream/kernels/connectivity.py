"""Step 5 on the device: the torch twin of :func:`spam_stream.connectivity.enforce_connectivity` (same rule, same
labels).

The frame-sized work runs as whole-image torch ops on the labels' device (a GPU for a GPU-resident frame):

1. 4-connected components of equal labels, numbered in the raster order of their first pixel
   (:func:`spam_stream.kernels.labeling.label_components`: union-find in numba for CPU tensors, hooking + pointer
   jumping for CUDA tensors);
2. per component: size (``bincount``), label (at its first pixel, ``scatter_reduce`` amin of the pixel index), prior
   object (at its last known pixel in raster order, ``scatter_reduce`` amax — the object the numba pass keeps);
3. the component each label keeps (its largest holding object pixels, else its largest; ties: first in raster
   order: three stable sorts) and the small fragments (the others below ``min_size``);
4. the border lengths between each small fragment and its neighbours: the 4-adjacent pixel pairs across component
   borders that start in a small fragment, counted by ``torch.unique`` on (fragment, neighbour) keys — sorted by
   fragment, then by neighbour id, the order in which the rule scans them.

Only those per-fragment lists (a few thousand entries) go to the host, where the merges run as the same sequential
union-find as the CPU implementation (smallest fragment first, ties in raster order; each picks, among compatible
neighbours in increasing component order, the first with the longest shared border; a fragment of uncertain pixels
may join any neighbour, and a group takes the object of the fragment it absorbs). The merge order matters (a merged
group's object constrains later merges), so it stays sequential — on a few thousand fragments it is microseconds of
numba. The resulting component → output id table (C,) goes back to the device and one gather writes the labels: the
output equals :func:`~spam_stream.connectivity.enforce_connectivity` label for label.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from ..connectivity import MAX_BRIDGE_GAP, _find, bridge_after_merge, merge_into_best  # the CPU rules
from .labeling import label_components


@numba.njit(cache=True, nogil=True)
def _merge_fragments(order, start, neighbour, length, obj, n):
    """Union-find merges of the small fragments in ``order`` from their adjacency lists; each component's root (n,).

    ``neighbour[start[i]:start[i + 1]]`` (increasing ids) and ``length[...]`` (shared border in pixel pairs) list the
    neighbours of ``order``'s i-th fragment — the same scan as :func:`spam_stream.connectivity._merge_small`."""
    parent = np.arange(n)
    group_obj = obj.copy()
    for i in range(order.shape[0]):
        merge_into_best(parent, group_obj, order[i], neighbour, length, start[i], start[i + 1])
    for c in range(n):
        parent[c] = _find(parent, c)
    return parent


def _components(labels: torch.Tensor, partition: torch.Tensor | None, labeler):
    """comp (H*W,) int64 0..C-1 in raster order, and per component: size, label, prior object (C,) int64. The host
    reads one number (C); the rest are scatters of fixed shapes."""
    h, w = labels.shape
    dev = labels.device
    comp = (labeler(labels, None, 4).reshape(-1) - 1).to(torch.int64)
    n = int(comp.max()) + 1
    size = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(0, comp, torch.ones_like(comp))
    pix = torch.arange(h * w, device=dev)
    first = torch.full((n,), h * w, dtype=torch.int64, device=dev).scatter_reduce(0, comp, pix, "amin")
    sp = labels.reshape(-1)[first].to(torch.int64)
    if partition is None:
        obj = torch.zeros(n, dtype=torch.int64, device=dev)
    else:
        part = partition.reshape(-1).to(dev, torch.int64)
        known_pix = torch.where(part >= 0, pix, -1)  # the last pixel with a known object, -1 for none
        last = torch.full((n,), -1, dtype=torch.int64, device=dev).scatter_reduce(0, comp, known_pix, "amax")
        obj = torch.where(last >= 0, part[last.clamp(min=0)], -1)
    return comp, size, sp, obj


def _kept(size: torch.Tensor, sp: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """(C,) bool: the largest component of each label that holds object pixels (``obj`` ≥ 0), else its largest
    (ties: the lowest component id = first in raster order)."""
    order = torch.sort(-size, stable=True).indices
    order = order[torch.sort((obj[order] < 0).to(torch.int8), stable=True).indices]
    order = order[torch.sort(sp[order], stable=True).indices]  # = np.lexsort((-size, obj < 0, sp))
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = sp[order[1:]] != sp[order[:-1]]
    return torch.zeros_like(first).scatter_(0, order, first)


def _fragment_borders(comp: torch.Tensor, shape, small: torch.Tensor, n: int):
    """(keys, counts): key = fragment * n + neighbour for every small fragment and adjacent component, sorted; count =
    the 4-adjacent pixel pairs (one in each) they share. Two host round trips: one mask over every pixel pair (its
    few true entries), one ``unique``."""
    h, w = shape
    c2 = comp.view(h, w)
    src, dst = [], []
    for a, b in ((c2[:, :-1], c2[:, 1:]), (c2[:-1, :], c2[1:, :])):
        a, b = a.reshape(-1), b.reshape(-1)
        src += [a, b]
        dst += [b, a]
    src, dst = torch.cat(src), torch.cat(dst)
    mine = small[src] & (src != dst)  # a border pixel pair seen from its small fragment's side
    return torch.unique((src * n + dst)[mine], sorted=True, return_counts=True)


def enforce_connectivity_torch(labels: torch.Tensor, partition: torch.Tensor | None = None, min_size: int = 1,
                               return_source: bool = False, labeler=None, max_gap: int = MAX_BRIDGE_GAP):
    """:func:`spam_stream.connectivity.enforce_connectivity` on tensors, frame-sized work on their device.

    Args:
        labels: (H, W) integer tensor of superpixel labels (any ids; -1 is a label of its own), any device.
        partition: (H, W) integer tensor (or array) of prior object ids (-1 = uncertain), or None for no prior.
        min_size: fragments smaller than this merge into a neighbour.
        return_source: also return, per output superpixel, the input label it keeps (-1: a fragment on its own).
        labeler: the connected-components function (``label_components``'s signature); None:
            :func:`~spam_stream.kernels.labeling.label_components`, numba for CPU tensors and torch ops for CUDA
            tensors.
        max_gap: bridging of stranded fragments through uncertain pixels
            (:func:`spam_stream.connectivity.bridge_stranded`); it runs on the host, only for a frame that has a
            stranded fragment of an object smaller than ``min_size`` (labels and prior go down and the labels back).
    Returns:
        (H, W) int32 tensor on ``labels``' device, 0..K'-1, equal to ``enforce_connectivity``'s labels; with
        ``return_source`` also (K',) int64 numpy ``source``.
    """
    if labels.ndim != 2:
        raise ValueError(f"expected (H, W) labels, got shape {tuple(labels.shape)}")
    dev = labels.device
    h, w = labels.shape
    if partition is not None:
        partition = torch.as_tensor(partition, device=dev)
        if partition.shape != labels.shape:
            raise ValueError(f"partition has shape {tuple(partition.shape)} but the labels are {(h, w)}")
    comp, size, sp, obj = _components(labels.to(torch.int64), partition, labeler or label_components)
    n = size.shape[0]
    kept = _kept(size, sp, obj)
    small = ~kept & (size < min_size)
    n_small = int(small.sum())
    if n_small == 0:
        out = comp.to(torch.int32).view(h, w)  # components are the superpixels, already numbered in raster order
        if not return_source:
            return out
        return out, torch.where(kept, sp, -1).cpu().numpy()
    keys, border = _fragment_borders(comp, (h, w), small, n)
    # everything the host merge reads, in one copy: one wait for the device instead of one per array
    m = keys.shape[0]
    host = torch.cat([keys, border, size, small.to(torch.int64), obj, kept.to(torch.int64), sp]).cpu().numpy()
    keys, border = host[:m], host[m:2 * m]
    size_h, small_h, obj_h, kept_h, sp_h = (host[2 * m + i * n:2 * m + (i + 1) * n] for i in range(5))
    small_h, kept_h = small_h.astype(bool), kept_h.astype(bool)
    small_ids = np.flatnonzero(small_h)
    order = small_ids[np.argsort(size_h[small_ids], kind="stable")]
    frag, neighbour = np.divmod(keys, n)
    # adjacency rows grouped in merge order (keys are sorted by fragment, then neighbour: a stable sort keeps that)
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(len(order))
    rows = np.argsort(pos[frag], kind="stable")
    start = np.zeros(len(order) + 1, np.int64)
    np.cumsum(np.bincount(pos[frag], minlength=len(order)), out=start[1:])
    root = _merge_fragments(order.astype(np.int64), start, neighbour[rows].astype(np.int64),
                            border[rows].astype(np.int64), obj_h.astype(np.int64), n)
    is_root = root == np.arange(n)
    rank = np.cumsum(is_root) - 1  # output ids in the order of the naming (root) component
    out_of_comp = torch.from_numpy(rank[root].astype(np.int32)).to(dev)
    out = out_of_comp[comp].view(h, w)
    roots = np.flatnonzero(is_root)
    source = np.where(kept_h[roots], sp_h[roots], -1).astype(np.int64)
    if partition is not None and max_gap > 0:
        stranded = ~kept_h[roots]
        group_size = np.bincount(rank[root], weights=size_h, minlength=len(roots))
        group_obj = np.full(len(roots), -1, np.int64)
        np.maximum.at(group_obj, rank[root], obj_h)
        if (stranded & (group_size < min_size) & (group_obj >= 0)).any():  # rare: the host does it
            labels_h, source = bridge_after_merge(out.cpu().numpy(), partition.cpu().numpy(), stranded, source,
                                                  min_size, max_gap)
            out = torch.from_numpy(labels_h).to(dev)
    return (out, source) if return_source else out


__all__ = ["enforce_connectivity_torch"]
