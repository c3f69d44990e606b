"""Med-SORA image networks (method.md §3)."""

from .fusion import ConcatFusion, CrossAttentionFusion
from .medsora_image_net import FUSION_MODES, SLICE_BACKBONES, MedSORAImageNet, VolumeViTEncoder, classification_head
from .slice_encoders import HuggingFaceViTSliceEncoder, MonaiViTSliceEncoder

__all__ = [
    "FUSION_MODES",
    "SLICE_BACKBONES",
    "ConcatFusion",
    "CrossAttentionFusion",
    "HuggingFaceViTSliceEncoder",
    "MedSORAImageNet",
    "MonaiViTSliceEncoder",
    "VolumeViTEncoder",
    "classification_head",
]
