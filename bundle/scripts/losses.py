"""Losses of Med-SORA's image model, one module per equation (method.md §3)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

HEADS = ("2d", "3d", "fusion")


class ImageLoss(nn.Module):
    """L_image = L_2D + L_3D + L_fusion (method.md §3).

    Each term is the cross-entropy of one classification head (on F2D, f3D and F_bar) against the organ
    label. The ablation modes train a subset of the heads; the sum runs over the heads the network returned.
    """

    def forward(self, logits: Mapping[str, torch.Tensor], organ: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: the network's training output: ``{"2d" | "3d" | "fusion": [B, num_organs] logits, ...}``.
            organ: the organs' class indices, [B] (or [B, 1]).
        """
        heads = [head for head in HEADS if head in logits]
        if not heads:
            raise ValueError(f"ImageLoss needs the logits of at least one of the heads {HEADS}, got {sorted(logits)}")
        target = organ.reshape(-1).long()
        return sum(F.cross_entropy(logits[head], target) for head in heads)
