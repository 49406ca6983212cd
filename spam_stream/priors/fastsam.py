"""FastSAM prior (ultralytics ``FastSAM``: a YOLOv8-seg network segmenting everything) → aggregated partition.

Nothing is ever downloaded: ``YOLO_OFFLINE=1`` is set before ultralytics is imported, and the checkpoint path is
checked here first (ultralytics would otherwise try to fetch a missing file named like an official asset, e.g.
``FastSAM-s.pt``) and handed over as an absolute path.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..aggregation import aggregate
from .base import FASTSAM_CHECKPOINTS, Prior, Provider, checkpoint_error, empty_proposals


def load_fastsam(checkpoint: str | Path):
    """``ultralytics.FastSAM`` with the weights of ``checkpoint`` (a ``.pt`` file such as FastSAM-s.pt).

    A missing, unreadable or non-ultralytics checkpoint raises a one-line
    :class:`~spam_stream.priors.base.PriorCheckpointError` naming the file.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise checkpoint_error(path, "FastSAM checkpoint not found", FASTSAM_CHECKPOINTS)
    if path.suffix != ".pt":
        raise checkpoint_error(path, "a FastSAM checkpoint is a .pt file", FASTSAM_CHECKPOINTS)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import FastSAM

    try:
        model = FastSAM(str(path.resolve()))
        if getattr(model.model, "task", "segment") != "segment" or model.task != "segment":
            raise TypeError(f"an ultralytics {model.task} model, not a segmentation model")
    except Exception as exc:
        cause = exc.__cause__ or exc  # ultralytics wraps the torch.load error in a long TypeError
        reason = f"{type(cause).__name__}: {' '.join(str(cause).split())[:100]}"
        raise checkpoint_error(path, f"not a loadable FastSAM checkpoint ({reason})", FASTSAM_CHECKPOINTS) from None
    return model


class FastSamProvider(Provider):
    """FastSAM "segment everything" masks → partition.

    Args:
        checkpoint: FastSAM ``.pt`` file (FastSAM-s.pt or FastSAM-x.pt); never downloaded.
        imgsz: inference size, the long side in pixels (FastSAM's default 1024; 640 is ~2× faster on a CPU).
        conf: confidence threshold of the proposals (FastSAM default 0.4).
        iou: NMS IoU threshold (FastSAM default 0.9).
        retina_masks: masks computed at the image resolution (sharper) instead of the network's.
        aggregation: keyword options of :func:`spam_stream.aggregation.aggregate`.
        device: "cpu" (or a CUDA device).
    """

    name = "fastsam"

    def __init__(self, checkpoint, imgsz: int = 1024, conf: float = 0.4, iou: float = 0.9,
                 retina_masks: bool = True, aggregation: dict | None = None, device="cpu"):
        self.model = load_fastsam(checkpoint)
        self.options = dict(imgsz=imgsz, conf=conf, iou=iou, retina_masks=retina_masks, device=device, verbose=False)
        self.aggregation = aggregation or {}

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """Raw FastSAM masks of ``image`` (H, W, 3) uint8 RGB: (M, H, W) bool."""
        from ultralytics.utils.ops import scale_masks

        h, w = image.shape[:2]
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # ultralytics takes numpy images in OpenCV's BGR order
        result = self.model.predict(bgr, **self.options)[0]
        if result.masks is None:
            return empty_proposals(h, w)
        masks = result.masks.data.float()
        if masks.shape[1:] != (h, w):  # retina_masks=False: network resolution, letterboxed
            masks = scale_masks(masks[None], (h, w))[0]
        return (masks > 0.5).cpu().numpy()

    def __call__(self, image: np.ndarray, key=None) -> Prior:
        """Prior of ``image`` (H, W, 3) uint8 RGB: proposals (M, H, W) bool and their aggregated partition."""
        with torch.inference_mode():
            masks = self.proposals(image)
        return Prior(aggregate(masks, **self.aggregation), masks)
