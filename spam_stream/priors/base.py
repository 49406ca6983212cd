"""What every prior provider returns: a :class:`Prior` (a partition plus the raw proposals it came from)."""
from __future__ import annotations

import numpy as np

from ..io import InputError

SAM_CHECKPOINTS = ("https://github.com/facebookresearch/segment-anything#model-checkpoints "
                   "(sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth)")
FASTSAM_CHECKPOINTS = ("https://github.com/CASIA-IVA-Lab/FastSAM or the ultralytics assets release "
                       "(FastSAM-s.pt, FastSAM-x.pt)")


class PriorCheckpointError(InputError):
    """A prior model checkpoint that is missing, unreadable or does not fit the model: the message is one line that
    names the file and says where official checkpoints come from (nothing is ever downloaded)."""


def checkpoint_error(path, problem: str, where: str) -> PriorCheckpointError:
    return PriorCheckpointError(f"{path}: {problem}; official checkpoints: {where} — download one yourself, "
                                f"spam-stream never downloads")


def empty_proposals(height: int, width: int) -> np.ndarray:
    """(0, H, W) bool: no raw proposals (a provider that reads a partition directly)."""
    return np.zeros((0, height, width), bool)


class Prior:
    """A prior object partition.

    Attributes:
        partition: (H, W) int32 object ids 0..n-1, -1 = uncertain pixel (belongs to no object).
        proposals: (M, H, W) bool raw object masks the partition was aggregated from (SAM / FastSAM output), for
            inspection; (0, H, W) when the provider reads a partition directly. Providers that aggregate without
            full-resolution masks (FastSAM at network resolution, SAM crops) pass a callable instead: the stack is
            made on first access only, so nothing on the per-frame path pays for it.
    """

    def __init__(self, partition: np.ndarray, proposals=None):
        self.partition = partition
        self._proposals = proposals

    @property
    def proposals(self) -> np.ndarray:
        if callable(self._proposals):
            self._proposals = self._proposals()
        if self._proposals is None:
            self._proposals = empty_proposals(*self.partition.shape)
        return self._proposals

    @property
    def n_objects(self) -> int:
        return int(self.partition.max()) + 1 if self.partition.size else 0

    def __repr__(self) -> str:
        return f"Prior(partition={self.partition!r})"


class Provider:
    """A source of prior partitions: ``provider(image) -> Prior``.

    Subclasses load their model once in ``__init__`` and implement ``__call__(image, key=None)`` where ``image`` is
    (H, W, 3) uint8 RGB and ``key`` optionally names the input (its file stem, or a frame index) for providers that
    read one file per input; model-based providers ignore it.
    """

    name = "provider"

    def __call__(self, image: np.ndarray, key=None) -> Prior:  # pragma: no cover - interface
        raise NotImplementedError
