"""Counting the host round trips of torch code, on any device (a diagnostic for the device path).

On a GPU every op whose result the host must see — a Python ``int``/``bool`` of a tensor, a copy to the CPU, an
output whose *size* depends on the data (``nonzero``, ``unique``, boolean-mask indexing, ``bincount``) — waits for
every queued kernel: the stream drains and the next launch starts cold. A blocking upload from pageable host memory
(``.to(device)`` of a CPU tensor, ``torch.tensor(..., device=...)``) waits too (counted as ``"upload"``; only
where the target is not the CPU, so not in a run on CPU tensors). ``torch.cuda.set_sync_debug_mode`` reports
them, but only on CUDA. :class:`HostSyncCounter` counts the same ops on any device (CPU tensors included), by the
place in ``spam_stream`` that made them, so that a test on this machine can hold the device path to a number of
round trips per frame that does not grow with the rounds of an algorithm or the number of prior objects.

Example::

    with HostSyncCounter() as syncs:
        model.segment(image, 400, prior=partition)   # SPAM_DEVICE_FRAME=1: the device path on CPU tensors
    print(syncs.total, syncs.by_place.most_common(5))
"""
from __future__ import annotations

import collections
import os
import sys

import torch
from torch.overrides import TorchFunctionMode

_T = torch.Tensor
# ops that return a host value or a data-sized output: they wait for the device on CUDA
_ALWAYS = {
    _T.item: "item", _T.tolist: "tolist", _T.numpy: "numpy", _T.cpu: "cpu",
    _T.__bool__: "bool", _T.__int__: "int", _T.__float__: "float", _T.__index__: "index",
    _T.nonzero: "nonzero", torch.nonzero: "nonzero", torch.argwhere: "nonzero", _T.argwhere: "nonzero",
    torch.unique: "unique", _T.unique: "unique", torch.unique_consecutive: "unique",
    _T.unique_consecutive: "unique", torch.masked_select: "masked_select", _T.masked_select: "masked_select",
    torch.bincount: "bincount", _T.bincount: "bincount", torch.equal: "equal", _T.equal: "equal",
    torch.allclose: "allclose", _T.allclose: "allclose",
}


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _kind(func, args, kwargs) -> str | None:
    kind = _ALWAYS.get(func)
    if kind is not None:
        return kind
    if func is _T.__getitem__ and len(args) > 1 and _bool_index(args[1]):
        return "bool-mask"
    if func is _T.__setitem__ and len(args) > 2 and _bool_index(args[1]) and isinstance(args[2], torch.Tensor) \
            and args[2].numel() > 1:
        return "bool-mask"  # x[mask] = values: the values are matched to the mask's True count
    if func is torch.where and len(args) == 1 and not kwargs:
        return "nonzero"
    if func in (torch.repeat_interleave, _T.repeat_interleave) and "output_size" not in kwargs \
            and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return "repeat_interleave"
    if func in (_T.to, _T.cuda) and args and isinstance(args[0], torch.Tensor):
        if func is _T.cuda:
            target = torch.device("cuda")
        else:
            target = _device(kwargs.get("device", args[1] if len(args) > 1 else None))
        if target is not None:
            here = args[0].device.type
            if target.type == "cpu" and here != "cpu":
                return "cpu"
            if target.type != "cpu" and here == "cpu" and not kwargs.get("non_blocking", False):
                return "upload"  # from pageable memory, synchronously: the host waits for the copy's stream
    if func is _T.copy_ and len(args) > 1 and isinstance(args[1], torch.Tensor) and not kwargs.get("non_blocking"):
        dst, src = args[0].device.type, args[1].device.type
        if dst != "cpu" and src == "cpu":
            return "upload"
        if dst == "cpu" and src != "cpu":
            return "cpu"
    if func in (torch.tensor, torch.as_tensor) and _device(kwargs.get("device")) is not None \
            and _device(kwargs.get("device")).type != "cpu" \
            and not (isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu"):
        return "upload"
    return None


def _device(value) -> torch.device | None:
    """``value`` as a device when it names one (a ``.to`` argument may also be a dtype or a tensor)."""
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError:
            return None
    return None


class HostSyncCounter(TorchFunctionMode):
    """Context manager counting the ops that wait for the device (see the module doc), by kind and by place.

    Attributes:
        by_kind: ``Counter`` kind → count (``"int"``, ``"bool-mask"``, ``"unique"``, ...).
        by_place: ``Counter`` ``"module.py:line"`` (the innermost ``spam_stream`` frame) → count.
        total: all of them.
    """

    def __init__(self, package: str = "spam_stream"):
        super().__init__()
        self.package = os.sep + package + os.sep
        self.by_kind: collections.Counter = collections.Counter()
        self.by_place: collections.Counter = collections.Counter()
        self._copied = None  # the last tensor a counted copy to the host returned (its .numpy() is the same trip)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func, args, kwargs)
        if kind == "numpy" and args and args[0] is self._copied:
            kind = None  # x.cpu().numpy(): one round trip, counted at .cpu()
        if kind is not None:
            self.by_kind[kind] += 1
            self.by_place[self._place()] += 1
        out = func(*args, **kwargs)
        if kind == "cpu":
            self._copied = out
        return out

    def _place(self) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if self.package in name and not name.endswith("hostsync.py"):
                return f"{os.path.basename(name)}:{frame.f_lineno}"
            frame = frame.f_back
        return "elsewhere"


__all__ = ["HostSyncCounter"]
