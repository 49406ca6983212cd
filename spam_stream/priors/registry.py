"""Provider by name: one place that turns ``--prior`` / ``segment(prior="fastsam")`` into a ready provider."""
from __future__ import annotations

from .base import Provider

PRIOR_NAMES = ("none", "sam", "fastsam", "masks")


def make_provider(name: str, checkpoint=None, sam_model: str = "vit_h", masks=None, **options) -> Provider | None:
    """A ready prior provider (its model loaded once), or None for "none".

    Args:
        name: "none" | "sam" | "fastsam" | "masks".
        checkpoint: model checkpoint for "sam" / "fastsam" (required; never downloaded).
        sam_model: SAM architecture, "vit_h" | "vit_l" | "vit_b" (must match the checkpoint).
        masks: file or folder for "masks".
        options: provider keyword options — SAM: points_per_side, generator_options, build; FastSAM: imgsz, conf,
            iou, retina_masks; all: aggregation (options of :func:`spam_stream.aggregation.aggregate`), device
            (model providers).
    Raises:
        ValueError for an unknown name or a missing required argument;
        :class:`~spam_stream.priors.base.PriorCheckpointError` (an InputError) for a bad checkpoint.
    """
    if name in (None, "none"):
        return None
    if name in ("sam", "fastsam") and checkpoint is None:
        raise ValueError(f"the {name} prior needs a checkpoint file (prior_checkpoint= / --prior-checkpoint PATH); "
                         "nothing is downloaded")
    if name == "sam":
        from .sam import SamProvider

        return SamProvider(checkpoint, model_type=sam_model, **options)
    if name == "fastsam":
        from .fastsam import FastSamProvider

        return FastSamProvider(checkpoint, **options)
    if name == "masks":
        from .masks import MaskProvider

        if masks is None:
            raise ValueError("the masks prior needs a file or folder (prior_masks= / --prior-masks PATH)")
        return MaskProvider(masks, **options)
    raise ValueError(f"unknown prior {name!r}: expected one of {', '.join(PRIOR_NAMES)}")
