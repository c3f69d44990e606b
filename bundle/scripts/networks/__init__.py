"""Med-SORA networks: the image network (method.md §3) and W_align (§4)."""

from .fusion import ConcatFusion, CrossAttentionFusion
from .huggingface_vit import HuggingFaceViTSliceEncoder
from .medsora_image_net import FUSION_MODES, SLICE_BACKBONES, MedSORAImageNet, classification_head
from .medsora_net import MedSORANet
from .vit_encoder import MonaiViTEncoder

__all__ = [
    "FUSION_MODES",
    "SLICE_BACKBONES",
    "ConcatFusion",
    "CrossAttentionFusion",
    "HuggingFaceViTSliceEncoder",
    "MedSORAImageNet",
    "MedSORANet",
    "MonaiViTEncoder",
    "classification_head",
]
