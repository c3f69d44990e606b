"""Med-SORA image network: 2D slice encoder, 3D volume encoder, their fusion and the organ heads (method.md §3)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from .fusion import ConcatFusion, CrossAttentionFusion
from .huggingface_vit import HuggingFaceViTSliceEncoder
from .vit_encoder import MonaiViTEncoder

__all__ = ["FUSION_MODES", "SLICE_BACKBONES", "MedSORAImageNet", "classification_head"]

FUSION_MODES = ("2d", "3d", "concat", "cross_attention")
SLICE_BACKBONES = ("monai", "huggingface")
_MAIN_HEAD = {"2d": "2d", "3d": "3d", "concat": "fusion", "cross_attention": "fusion"}


def classification_head(in_features: int, hidden_features: int, num_classes: int, dropout_rate: float) -> nn.Module:
    """Organ classification MLP of method.md §3 (one each on F2D, f3D and F_bar): LayerNorm-Linear-GELU-Linear."""
    return nn.Sequential(
        nn.LayerNorm(in_features),
        nn.Linear(in_features, hidden_features),
        nn.GELU(),
        nn.Dropout(dropout_rate),
        nn.Linear(hidden_features, num_classes),
    )


class MedSORAImageNet(nn.Module):
    """
    Med-SORA image network (method.md §3): per-slice 2D ViT features F2D [B, D, d_img], a 3D ViT
    feature f3D [B, d_img] of the whole stack, their fusion, and organ classification heads.

    Input is one masked organ sample [B, C, H, W, D] (D axial slices of H x W). ``fusion`` selects
    the paper's ablation, and only the parts a mode uses are built:

    - ``"2d"``: slice encoder and the "2d" head on the slice-mean of F2D.
    - ``"3d"``: volume encoder and the "3d" head on f3D.
    - ``"concat"``: both encoders, "2d" and "3d" heads, and the "fusion" head on [mean_D(F2D), f3D].
    - ``"cross_attention"``: both encoders, "2d" and "3d" heads, and the "fusion" head on the
      slice-mean of F_bar = F2D + CrossAttention(f3D, F2D).

    ``forward`` in eval mode returns the logits [B, num_organs] of the mode's main head ("2d", "3d",
    or "fusion" for the two fusion modes). In training mode it returns a dict with the logits of
    every head the mode trains (so the caller can form L_image = L_2D + L_3D + L_fusion) and
    ``"slice_features"``, the per-slice image features used by the alignment loss (method.md §4):
    F_bar for "cross_attention", F2D for "2d" and "concat", f3D as [B, 1, d_img] for "3d". Returning
    more in training follows MONAI's ``DynUNet`` deep supervision, and keeps every output inside
    ``forward`` as DDP requires.

    d_img (``self.feature_size``) is ``hidden_size`` for the MONAI backbone and the pretrained
    model's width for the Hugging Face backbone; in "3d" mode no slice encoder exists and
    d_img = ``hidden_size``. f3D is projected by a Linear to d_img when ``hidden_size_3d`` differs.

    Args:
        num_organs: number of organ classes.
        img_size: input size (H, W, D).
        in_channels: number of input channels.
        fusion: one of ``FUSION_MODES``.
        slice_backbone: ``"monai"`` (random-init MONAI ViT) or ``"huggingface"`` (pretrained local ViT).
        pretrained_dir: local Hugging Face ViT directory; required for ``slice_backbone="huggingface"``.
        slice_patch_size: square patch size of the MONAI slice ViT; must divide H and W.
        hidden_size: width of the MONAI slice ViT (d_img for that backbone).
        mlp_dim: MLP width of the MONAI slice ViT.
        num_layers_2d: number of transformer blocks of the MONAI slice ViT.
        num_heads: attention heads of the MONAI slice ViT and of the cross-attention fusion.
        volume_patch_size: 3D patch (H, W, D); must divide ``img_size``. Paper: (16, 16, 8).
        hidden_size_3d: width of the 3D ViT; defaults to ``hidden_size``.
        mlp_dim_3d: MLP width of the 3D ViT; defaults to ``mlp_dim``.
        num_layers_3d: number of transformer blocks of the 3D ViT (paper: 6).
        num_heads_3d: attention heads of the 3D ViT; defaults to ``num_heads``.
        head_hidden_size: hidden width of the classification MLPs; defaults to each head's input width.
        dropout_rate: dropout in encoders, fusion and heads.

    Raises:
        ValueError: for an unknown ``fusion`` or ``slice_backbone``, a missing ``pretrained_dir``,
            or an ``img_size`` not divisible by ``slice_patch_size`` / ``volume_patch_size``.
    """

    def __init__(
        self,
        num_organs: int = 7,
        img_size: Sequence[int] = (64, 64, 16),
        in_channels: int = 1,
        fusion: str = "cross_attention",
        slice_backbone: str = "monai",
        pretrained_dir: str | os.PathLike | None = None,
        slice_patch_size: int = 16,
        hidden_size: int = 128,
        mlp_dim: int = 512,
        num_layers_2d: int = 4,
        num_heads: int = 4,
        volume_patch_size: Sequence[int] = (16, 16, 8),
        hidden_size_3d: int | None = None,
        mlp_dim_3d: int | None = None,
        num_layers_3d: int = 6,
        num_heads_3d: int | None = None,
        head_hidden_size: int | None = None,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}.")
        if slice_backbone not in SLICE_BACKBONES:
            raise ValueError(f"slice_backbone must be one of {SLICE_BACKBONES}, got {slice_backbone!r}.")
        img_size = tuple(img_size)
        if len(img_size) != 3:
            raise ValueError(f"img_size must be (H, W, D), got {img_size}.")
        self.fusion_mode = fusion
        self.main_head = _MAIN_HEAD[fusion]
        uses_2d, uses_3d = fusion != "3d", fusion != "2d"

        self.slice_encoder: nn.Module | None = None
        self.feature_size: int = hidden_size
        if uses_2d:
            if slice_backbone == "huggingface":
                if pretrained_dir is None:
                    raise ValueError('slice_backbone "huggingface" requires pretrained_dir (a local model directory).')
                self.slice_encoder = HuggingFaceViTSliceEncoder(pretrained_dir, in_channels=in_channels)
            else:
                self.slice_encoder = MonaiViTEncoder(
                    spatial_dims=2,
                    in_channels=in_channels,
                    img_size=img_size[:2],
                    patch_size=slice_patch_size,
                    hidden_size=hidden_size,
                    mlp_dim=mlp_dim,
                    num_layers=num_layers_2d,
                    num_heads=num_heads,
                    dropout_rate=dropout_rate,
                    patch_size_name="slice_patch_size",
                )
            self.feature_size = self.slice_encoder.out_features
        d_img = self.feature_size

        self.volume_encoder: nn.Module | None = None
        self.volume_projection: nn.Module | None = None
        if uses_3d:
            self.volume_encoder = MonaiViTEncoder(
                spatial_dims=3,
                in_channels=in_channels,
                img_size=img_size,
                patch_size=volume_patch_size,
                hidden_size=hidden_size_3d or hidden_size,
                mlp_dim=mlp_dim_3d or mlp_dim,
                num_layers=num_layers_3d,
                num_heads=num_heads_3d or num_heads,
                dropout_rate=dropout_rate,
                patch_size_name="volume_patch_size",
            )
            if self.volume_encoder.out_features != d_img:
                self.volume_projection = nn.Linear(self.volume_encoder.out_features, d_img)

        self.fusion: nn.Module | None = None
        fusion_features = d_img
        if fusion == "cross_attention":
            self.fusion = CrossAttentionFusion(d_img, num_heads, dropout_rate)
        elif fusion == "concat":
            self.fusion = ConcatFusion()
            fusion_features = 2 * d_img

        head_inputs = {"2d": d_img, "3d": d_img, "fusion": fusion_features}
        trained_heads = [self.main_head] if fusion in ("2d", "3d") else ["2d", "3d", "fusion"]
        self.heads = nn.ModuleDict(
            {
                name: classification_head(
                    head_inputs[name], head_hidden_size or head_inputs[name], num_organs, dropout_rate
                )
                for name in trained_heads
            }
        )

    def encode_slices(self, x: torch.Tensor) -> torch.Tensor:
        """F2D of method.md §3: the slice encoder on each of the D slices of [B, C, H, W, D] -> [B, D, d_img]."""
        if self.slice_encoder is None:
            raise RuntimeError(f'fusion "{self.fusion_mode}" has no slice encoder.')
        b, c, h, w, d = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        return self.slice_encoder(slices).view(b, d, -1)

    def encode_volume(self, x: torch.Tensor) -> torch.Tensor:
        """f3D of method.md §3: the 3D ViT CLS feature of [B, C, H, W, D], projected to d_img -> [B, d_img]."""
        if self.volume_encoder is None:
            raise RuntimeError(f'fusion "{self.fusion_mode}" has no volume encoder.')
        f3d = self.volume_encoder(x)
        return f3d if self.volume_projection is None else self.volume_projection(f3d)

    def heads_and_features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The logits of every head the mode has, and the per-slice features of :meth:`slice_features`."""
        f2d = self.encode_slices(x) if self.slice_encoder is not None else None
        f3d = self.encode_volume(x) if self.volume_encoder is not None else None
        logits: dict[str, torch.Tensor] = {}
        if f2d is not None:
            logits["2d"] = self.heads["2d"](f2d.mean(dim=1))
        if f3d is not None:
            logits["3d"] = self.heads["3d"](f3d)
        if self.fusion_mode == "cross_attention":
            f_bar = self.fusion(f3d, f2d)
            logits["fusion"] = self.heads["fusion"](f_bar.mean(dim=1))
            return logits, f_bar
        if self.fusion_mode == "concat":
            logits["fusion"] = self.heads["fusion"](self.fusion(f3d, f2d))
        return logits, f2d if f2d is not None else f3d.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """
        Args:
            x: [B, C, H, W, D].

        Returns:
            eval mode: logits of the main head, [B, num_organs]. Training mode: dict of the trained
            heads' logits plus ``"slice_features"`` [B, D or 1, d_img].
        """
        logits, slice_features = self.heads_and_features(x)
        if not self.training:
            return logits[self.main_head]
        return {**logits, "slice_features": slice_features}

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice image features for alignment and inference (method.md §4-5), [B, D or 1, d_img]."""
        return self.heads_and_features(x)[1]
