"""Fusion of the per-slice 2D features F2D with the volume feature f3D (method.md §3 and its ablation)."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import CrossAttentionBlock

__all__ = ["ConcatFusion", "CrossAttentionFusion"]


def _check_shapes(volume_feature: torch.Tensor, slice_features: torch.Tensor) -> None:
    if volume_feature.ndim != 2 or slice_features.ndim != 3:
        raise ValueError(
            f"expected volume_feature [B, d] and slice_features [B, D, d], got {tuple(volume_feature.shape)} "
            f"and {tuple(slice_features.shape)}."
        )
    if volume_feature.shape[0] != slice_features.shape[0] or volume_feature.shape[1] != slice_features.shape[2]:
        raise ValueError(
            f"volume_feature {tuple(volume_feature.shape)} and slice_features {tuple(slice_features.shape)} "
            "must agree in batch size and feature size."
        )


class CrossAttentionFusion(nn.Module):
    """
    Cross-attention fusion of method.md §3:
    ``F_out = CrossAttention(query = f3D, keys = values = F2D)``, ``F_bar = F2D + F_out``.

    The query is the single volume token, so ``F_out`` is one vector per sample, added to each of the
    D slice features (the paper's broadcast over slices). The attention is MONAI's
    ``CrossAttentionBlock`` (q/k/v projections without bias, output projection with bias, no
    normalisation), as the paper specifies no normalisation around it.

    Args:
        hidden_size: feature size d of both f3D and F2D.
        num_heads: number of attention heads; must divide ``hidden_size``.
        dropout_rate: dropout on the attention weights and on the attention output.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0) -> None:
        super().__init__()
        self.cross_attention = CrossAttentionBlock(
            hidden_size=hidden_size, num_heads=num_heads, dropout_rate=dropout_rate
        )

    def forward(self, volume_feature: torch.Tensor, slice_features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            volume_feature: f3D, [B, d].
            slice_features: F2D, [B, D, d].

        Returns:
            F_bar, [B, D, d].
        """
        _check_shapes(volume_feature, slice_features)
        attended = self.cross_attention(volume_feature.unsqueeze(1), context=slice_features)
        return slice_features + attended


class ConcatFusion(nn.Module):
    """
    "2D+3D concatenation" ablation of method.md §5: the slice-averaged F2D concatenated with f3D.

    Has no parameters; the result feeds the fusion classification head.
    """

    def forward(self, volume_feature: torch.Tensor, slice_features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            volume_feature: f3D, [B, d].
            slice_features: F2D, [B, D, d].

        Returns:
            ``[mean_D(F2D), f3D]``, [B, 2d].
        """
        _check_shapes(volume_feature, slice_features)
        return torch.cat([slice_features.mean(dim=1), volume_feature], dim=-1)
