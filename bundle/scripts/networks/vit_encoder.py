"""The ViT encoders of Med-SORA's image model: one CLS feature per 2D slice or per 3D stack (method.md §3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import ViT

__all__ = ["MonaiViTEncoder"]


class MonaiViTEncoder(nn.Module):
    """
    A MONAI ``ViT`` whose output is its CLS token after the final LayerNorm: the 2D slice encoder
    (F2D, ``spatial_dims=2``, random init) and the lighter 3D encoder (f3D, ``spatial_dims=3``) of method.md §3.

    Built with ``classification=True`` (which creates the CLS token) and ``classification_head``
    replaced by ``nn.Identity``, so the output is the [N, hidden_size] CLS feature (no Linear, no
    Tanh). The patch embedding is a convolution with kernel = stride = ``patch_size`` (a Conv3d in 3D;
    the paper's (8, 16, 16) in (D, H, W) is ``patch_size=(16, 16, 8)`` in MONAI's [B, C, H, W, D] layout).
    MONAI's ``TransformerBlock`` creates ``norm_cross_attn`` even without cross-attention; it is replaced
    by ``nn.Identity`` so that every parameter receives a gradient (DDP without ``find_unused_parameters``).

    Args:
        spatial_dims: 2 for slices [N, C, H, W], 3 for stacks [N, C, H, W, D].
        in_channels: number of input channels.
        img_size: input size, ``spatial_dims`` values.
        patch_size: patch size, one int for all dimensions or ``spatial_dims`` values; must divide ``img_size``.
        hidden_size: transformer width, the output feature size.
        mlp_dim: width of the transformer MLPs.
        num_layers: number of transformer blocks.
        num_heads: number of attention heads; must divide ``hidden_size``.
        dropout_rate: dropout in the patch embedding and the transformer blocks.
        patch_size_name: how the error for a ``patch_size`` not dividing ``img_size`` names it.

    Raises:
        ValueError: if ``patch_size`` does not divide ``img_size`` (MONAI's conv patch embedding
            would silently drop the remainder).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int],
        patch_size: Sequence[int] | int,
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        patch_size_name: str = "patch_size",
    ) -> None:
        super().__init__()
        self.out_features: int = hidden_size
        img_size = tuple(img_size)
        patch = (patch_size,) * spatial_dims if isinstance(patch_size, int) else tuple(patch_size)
        if len(img_size) != spatial_dims or len(patch) != spatial_dims or any(s % p for s, p in zip(img_size, patch)):
            raise ValueError(
                f"img_size {img_size} must be {spatial_dims} sizes divisible by {patch_size_name} {patch_size}."
            )
        self.vit = ViT(
            in_channels=in_channels,
            img_size=img_size,
            patch_size=patch,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            classification=True,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
            post_activation=None,
        )
        self.vit.classification_head = nn.Identity()
        for block in self.vit.blocks:
            if not block.with_cross_attention:
                block.norm_cross_attn = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls_feature, _ = self.vit(x)
        return cls_feature
