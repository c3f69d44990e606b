"""2D slice encoders: each maps a batch of axial slices [N, C, H, W] to their CLS features [N, out_features]."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import ViT

__all__ = ["HuggingFaceViTSliceEncoder", "MonaiViTSliceEncoder", "monai_vit_cls_encoder"]


def monai_vit_cls_encoder(
    in_channels: int,
    img_size: Sequence[int],
    patch_size: Sequence[int] | int,
    hidden_size: int,
    mlp_dim: int,
    num_layers: int,
    num_heads: int,
    dropout_rate: float,
    spatial_dims: int,
) -> ViT:
    """
    MONAI ``ViT`` whose output is its CLS token after the final LayerNorm.

    Built with ``classification=True`` (which creates the CLS token) and ``classification_head``
    replaced by ``nn.Identity``, so ``vit(x)[0]`` is the [N, hidden_size] CLS feature (no Linear, no
    Tanh). MONAI's ``TransformerBlock`` creates ``norm_cross_attn`` even without cross-attention;
    it is replaced by ``nn.Identity`` so that every parameter receives a gradient (DDP without
    ``find_unused_parameters``).

    Raises:
        ValueError: if ``patch_size`` does not divide ``img_size`` (MONAI's conv patch embedding
            would silently drop the remainder).
    """
    img_size = tuple(img_size)
    patch = (patch_size,) * spatial_dims if isinstance(patch_size, int) else tuple(patch_size)
    if len(img_size) != spatial_dims or len(patch) != spatial_dims or any(s % p for s, p in zip(img_size, patch)):
        raise ValueError(f"img_size {img_size} must be {spatial_dims} sizes divisible by patch_size {patch_size}.")
    vit = ViT(
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
    vit.classification_head = nn.Identity()
    for block in vit.blocks:
        if not block.with_cross_attention:
            block.norm_cross_attn = nn.Identity()
    return vit


class MonaiViTSliceEncoder(nn.Module):
    """
    Randomly initialised 2D ViT giving one CLS feature per slice: the 2D encoder of method.md §3.

    A 2D MONAI ``ViT`` built by :func:`monai_vit_cls_encoder`: the output is the CLS token after
    the final LayerNorm, with no Linear and no Tanh on top.

    Args:
        in_channels: number of input channels.
        img_size: slice size (H, W).
        patch_size: square patch size; must divide H and W.
        hidden_size: transformer width, the output feature size.
        mlp_dim: width of the transformer MLPs.
        num_layers: number of transformer blocks.
        num_heads: number of attention heads; must divide ``hidden_size``.
        dropout_rate: dropout in the patch embedding and the transformer blocks.

    Raises:
        ValueError: if ``patch_size`` does not divide ``img_size``.
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int],
        patch_size: int,
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.out_features: int = hidden_size
        self.vit = monai_vit_cls_encoder(
            in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, dropout_rate, spatial_dims=2
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls_feature, _ = self.vit(x)
        return cls_feature


def _read_normalisation(pretrained_dir: Path, num_channels: int) -> tuple[list[float], list[float]]:
    """Mean and std from ``preprocessor_config.json``; identity when ``do_normalize`` is false, else 0.5/0.5."""
    mean, std = [0.5] * num_channels, [0.5] * num_channels
    config_file = pretrained_dir / "preprocessor_config.json"
    if not config_file.is_file():
        return mean, std
    config = json.loads(config_file.read_text())
    if not config.get("do_normalize", True):
        return [0.0] * num_channels, [1.0] * num_channels
    mean, std = config.get("image_mean", mean), config.get("image_std", std)
    if isinstance(mean, (int, float)):
        mean = [mean] * num_channels
    if isinstance(std, (int, float)):
        std = [std] * num_channels
    if len(mean) != num_channels or len(std) != num_channels:
        raise ValueError(f"{config_file}: image_mean/image_std must have {num_channels} values (num_channels).")
    return [float(m) for m in mean], [float(s) for s in std]


class HuggingFaceViTSliceEncoder(nn.Module):
    """
    Pretrained Hugging Face ViT giving one CLS feature per slice: the 2D encoder of method.md §3
    (the paper fine-tunes ViT-Large, ImageNet-21k, e.g. a saved ``google/vit-large-patch16-224-in21k``).

    Weights are only read from a local directory (``save_pretrained`` output); nothing is downloaded.
    Slices are expected as intensities in [0, 1] (the image processor's rescaling already applied);
    they are repeated to the model's ``num_channels``, resized (bilinear) to ``config.image_size``
    when needed, and normalised with ``image_mean``/``image_std`` from the directory's
    ``preprocessor_config.json`` (0.5/0.5 when that file is absent). The output is
    ``last_hidden_state[:, 0]``, i.e. the CLS token after the final LayerNorm.

    Args:
        pretrained_dir: local directory holding ``config.json`` and the weights.
        in_channels: channels of the input slices: 1 or the model's ``num_channels``.

    Raises:
        FileNotFoundError: if ``pretrained_dir`` or its ``config.json`` is missing.
        ValueError: if ``in_channels`` is neither 1 nor the model's ``num_channels``.
    """

    def __init__(self, pretrained_dir: str | os.PathLike, in_channels: int = 1) -> None:
        super().__init__()
        from transformers import ViTModel

        pretrained_dir = Path(pretrained_dir)
        if not pretrained_dir.is_dir():
            raise FileNotFoundError(f"pretrained_dir {str(pretrained_dir)!r} is not a directory.")
        if not (pretrained_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"pretrained_dir {str(pretrained_dir)!r} has no config.json; expected a Hugging Face "
                "save_pretrained directory of a ViT model."
            )
        self.model = ViTModel.from_pretrained(str(pretrained_dir), local_files_only=True, add_pooling_layer=False)
        config = self.model.config
        self.num_channels: int = config.num_channels
        if in_channels not in (1, self.num_channels):
            raise ValueError(
                f"in_channels {in_channels} must be 1 or the num_channels ({self.num_channels}) of the model in "
                f"{str(pretrained_dir)!r}."
            )
        self.in_channels = in_channels
        image_size = config.image_size
        self.image_size: tuple[int, int] = (
            (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)  # type: ignore[assignment]
        )
        self.out_features: int = config.hidden_size
        mean, std = _read_normalisation(pretrained_dir, self.num_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Map [N, in_channels, H, W] slices in [0, 1] to the model's normalised ``pixel_values``."""
        if x.shape[1] != self.num_channels:
            x = x.expand(-1, self.num_channels, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.preprocess(x)).last_hidden_state[:, 0]
