"""Med-SORA image networks (method.md §3)."""

from .fusion import ConcatFusion, CrossAttentionFusion
from .huggingface_vit import HuggingFaceViTSliceEncoder
from .medsora_image_net import FUSION_MODES, SLICE_BACKBONES, MedSORAImageNet, classification_head
from .vit_encoder import MonaiViTEncoder

__all__ = [
    "FUSION_MODES",
    "SLICE_BACKBONES",
    "ConcatFusion",
    "CrossAttentionFusion",
    "HuggingFaceViTSliceEncoder",
    "MedSORAImageNet",
    "MonaiViTEncoder",
    "classification_head",
]
