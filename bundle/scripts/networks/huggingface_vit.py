"""A pretrained transformers ViT as the 2D slice encoder: slices [N, C, H, W] to CLS features [N, out_features]."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HuggingFaceViTSliceEncoder"]


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
