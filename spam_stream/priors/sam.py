"""SAM prior: segment-anything's automatic mask generator (a grid of point prompts) → aggregated partition.

The paper uses ViT-H with a 32×32 point grid. On a CPU that takes minutes per image; FastSAM is the fast choice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..aggregation import aggregate_crops
from .base import SAM_CHECKPOINTS, Prior, Provider, checkpoint_error, empty_proposals

SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")


def load_sam(checkpoint: str | Path, model_type: str = "vit_h", build: Callable | None = None) -> torch.nn.Module:
    """A SAM model with the weights of ``checkpoint`` (a state_dict file, as the official ``sam_vit_*.pth``).

    Equivalent to ``segment_anything.sam_model_registry[model_type](checkpoint=path)``, but the state dict is loaded
    here (``weights_only``, on the CPU) so that a missing, corrupt or mismatched checkpoint raises a one-line
    :class:`~spam_stream.priors.base.PriorCheckpointError`. ``build`` replaces the architecture builder (a callable
    returning an un-initialised ``Sam``; tests use a tiny one).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise checkpoint_error(path, "SAM checkpoint not found", SAM_CHECKPOINTS)
    if build is None:
        from segment_anything import sam_model_registry

        if model_type not in SAM_MODEL_TYPES:
            raise ValueError(f"unknown SAM model type {model_type!r}: expected one of {', '.join(SAM_MODEL_TYPES)}")
        build = sam_model_registry[model_type]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise checkpoint_error(path, f"not a readable torch checkpoint ({type(exc).__name__})", SAM_CHECKPOINTS) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise checkpoint_error(path, "not a SAM state_dict (expected a dict of tensors)", SAM_CHECKPOINTS)
    model = build(checkpoint=None)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip()[:160] if "\n" in str(exc) else str(exc)[:160]
        raise checkpoint_error(path, f"does not fit the SAM {model_type} architecture (wrong --sam-model? {first}…)",
                               SAM_CHECKPOINTS) from None
    return model.eval()


class SamProvider(Provider):
    """SAM automatic masks → partition.

    Args:
        checkpoint: SAM state_dict file (e.g. ``sam_vit_b_01ec64.pth``); never downloaded.
        model_type: "vit_h" (paper), "vit_l" or "vit_b" — must match the checkpoint.
        points_per_side: the point-prompt grid is points_per_side² (paper: 32).
        generator_options: other ``SamAutomaticMaskGenerator`` keyword arguments (pred_iou_thresh,
            stability_score_thresh, box_nms_thresh, crop_n_layers, points_per_batch, …).
        aggregation: keyword options of :func:`spam_stream.aggregation.aggregate`.
        device: torch device of the model.
        build: architecture builder replacing ``sam_model_registry[model_type]`` (for tests).
    """

    name = "sam"

    def __init__(self, checkpoint, model_type: str = "vit_h", points_per_side: int = 32,
                 generator_options: dict | None = None, aggregation: dict | None = None, device="cpu",
                 build: Callable | None = None):
        self._setup(load_sam(checkpoint, model_type, build).to(device), points_per_side, generator_options,
                    aggregation)

    @classmethod
    def from_model(cls, sam: torch.nn.Module, points_per_side: int = 32, generator_options: dict | None = None,
                   aggregation: dict | None = None) -> "SamProvider":
        """A provider around a SAM model already in memory (e.g. ``sam_model_registry["vit_b"]()`` for timing)."""
        provider = cls.__new__(cls)
        provider._setup(sam.eval(), points_per_side, generator_options, aggregation)
        return provider

    def _setup(self, sam, points_per_side, generator_options, aggregation):
        from segment_anything import SamAutomaticMaskGenerator

        self.model = sam
        self.generator = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, **(generator_options or {}))
        self.aggregation = aggregation or {}

    def records(self, image: np.ndarray) -> list[dict]:
        """The automatic mask generator's records for ``image`` (H, W, 3) uint8 RGB (segmentation, bbox, area…)."""
        with torch.inference_mode():
            return self.generator.generate(np.ascontiguousarray(image))

    @staticmethod
    def stack(records: list[dict], shape) -> np.ndarray:
        """The records' masks as one (M, H, W) bool stack."""
        return np.stack([r["segmentation"] for r in records]).astype(bool) if records else empty_proposals(*shape)

    @staticmethod
    def crops(records: list[dict]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Each record's mask cut to its box (SAM's XYWH bbox, inclusive corners) and the box's (y, x); a box that
        does not hold the record's whole area (never seen; checked) falls back to the full mask."""
        crops, offsets = [], []
        for r in records:
            seg = np.asarray(r["segmentation"], bool)
            x, y, w, h = (int(round(v)) for v in r["bbox"])
            crop = seg[y:y + h + 1, x:x + w + 1]
            if np.count_nonzero(crop) != int(r["area"]):
                crop, y, x = seg, 0, 0
            crops.append(crop)
            offsets.append((y, x))
        return crops, offsets

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """Raw SAM masks of ``image`` (H, W, 3) uint8 RGB: (M, H, W) bool."""
        return self.stack(self.records(image), image.shape[:2])

    def __call__(self, image: np.ndarray, key=None) -> Prior:
        """Prior of ``image`` (H, W, 3) uint8 RGB: the partition aggregated from the masks cut to their boxes (no
        M × H × W stack); ``proposals`` (M, H, W) bool made on access only."""
        shape = image.shape[:2]
        records = self.records(image)
        crops, offsets = self.crops(records)
        return Prior(aggregate_crops(crops, offsets, shape, **self.aggregation), lambda: self.stack(records, shape))
