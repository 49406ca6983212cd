"""Offline stand-ins for the prior models: a tiny random-weight SAM and a random-weight FastSAM checkpoint.

Nothing is downloaded: the SAM is assembled from ``segment_anything.modeling`` parts, the FastSAM-compatible model is
ultralytics' bundled ``yolov8n-seg.yaml`` architecture with random weights.
"""
from functools import partial

import torch


def build_tiny_sam(checkpoint=None, img_size=256, dim=32):
    """A SAM with a 2-block, 32-wide ViT on 256-px inputs (88k parameters), built like ``sam_model_registry``'s
    builders (``build(checkpoint=None)``). SamPredictor reads ``image_encoder.img_size``, so 256 works end to end."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    assert checkpoint is None
    grid = img_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=dim, img_size=img_size, mlp_ratio=2, num_heads=2,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), patch_size=16, qkv_bias=True,
                                      use_rel_pos=True, global_attn_indexes=[1], window_size=4, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


def save_tiny_sam(path):
    """A state_dict checkpoint of :func:`build_tiny_sam` with random weights (seeded)."""
    torch.manual_seed(0)
    torch.save(build_tiny_sam().state_dict(), path)
    return path


def save_random_fastsam(path):
    """A FastSAM-compatible ``.pt`` (YOLOv8n-seg, random weights) that ``ultralytics.FastSAM(path)`` loads offline.

    The class-score biases are raised so that the random network still proposes masks above FastSAM's default
    confidence (0.4): the tests then exercise the mask → aggregation path, not only the empty one.
    """
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolov8n-seg.yaml")
    for branch in model.model.model[-1].cv3:
        branch[-1].bias.data[:] = 2.0
    model.save(str(path))
    return path
