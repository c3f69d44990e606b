"""The whole Med-SORA network: the image network and W_align, which brings text features into its space."""

from __future__ import annotations

import torch
import torch.nn as nn

from .medsora_image_net import MedSORAImageNet

__all__ = ["MedSORANet"]


class MedSORANet(nn.Module):
    """
    Med-SORA (method.md §3-4): :class:`MedSORAImageNet` and the text projection f_hat = W_align f_bar.

    ``W_align`` (``self.align``, a bias-free Linear d_txt -> d_img) maps the text MLP's features f_bar
    into the image features' space, where the alignment loss (``scripts.losses.AlignmentLoss``) compares
    them with each organ's slice features and inference turns their similarity into organ probabilities
    (``scripts.reasoning``).

    ``forward(x)`` is the image network's forward (eval: organ logits [B, num_organs]; training: the
    dict of head logits and ``"slice_features"``). ``forward(x, organ_texts)``, with the f_bar of K texts
    per organ [O, K, d_txt], returns a dict in both modes: ``"logits"`` (the image network's main head),
    ``"slice_features"`` [B, D, d_img], ``"text_features"`` [O, K, d_img] (= W_align f_bar) and, in
    training mode, every trained head's logits for L_image. Both inputs go through ``forward`` so that
    DistributedDataParallel sees every parameter used. ``forward(x, organ_texts, other_texts)`` adds
    ``"other_text_features"`` [M, d_img], the projected out-of-domain texts; ``organ_text_labels``, the soft
    labels of ``organ_texts`` [O, K, O], are handed on unchanged as ``"organ_text_labels"``, for the loss.

    ``probability_scale`` and ``probability_bias`` (buffers a and b, saved with the weights) turn the
    evidence f_hat . g_i of a symptom for organ i into a probability sigmoid(a f_hat . g_i + b); they are
    fitted after each validation (``scripts.calibration.FitOrganProbability``), not by gradient descent;
    ``probability_fitted`` says whether they were. ``alignment_refined`` says whether W_align was refined on the
    frozen image network after training (``scripts.refinement``), which is done once per ``model.pt``; a forward
    pass in training mode clears it (the weights are being trained again).

    Args:
        image_network: the image network.
        text_features: d_txt, the width of the text MLP's f_bar.
        train_image_network: False freezes the image network (``requires_grad=False``), so that only
            W_align trains: alignment alone on an image model trained before.
    """

    def __init__(self, image_network: MedSORAImageNet, text_features: int, train_image_network: bool = True) -> None:
        super().__init__()
        if text_features < 1:
            raise ValueError(f"text_features (d_txt) must be positive, got {text_features}.")
        self.image = image_network
        self.align = nn.Linear(text_features, image_network.feature_size, bias=False)
        self.train_image_network = bool(train_image_network)
        self.image.requires_grad_(self.train_image_network)
        self.register_buffer("probability_scale", torch.tensor(1.0))
        self.register_buffer("probability_bias", torch.tensor(0.0))
        self.register_buffer("probability_fitted", torch.tensor(False))
        self.register_buffer("alignment_refined", torch.tensor(False))

    @property
    def feature_size(self) -> int:
        """d_img, the width of the image features and of the projected text features."""
        return self.image.feature_size

    def project_texts(self, text_features: torch.Tensor) -> torch.Tensor:
        """f_hat = W_align f_bar (method.md §4): [..., d_txt] -> [..., d_img]."""
        if text_features.shape[-1] != self.align.in_features:
            raise ValueError(
                f"text features are {text_features.shape[-1]}-d but W_align takes {self.align.in_features}-d f_bar: "
                "set text_feature_size to the text MLP's hidden size"
            )
        return self.align(text_features)

    def forward(
        self,
        x: torch.Tensor,
        organ_texts: torch.Tensor | None = None,
        other_texts: torch.Tensor | None = None,
        organ_text_labels: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """
        Args:
            x: organ samples [B, C, H, W, D].
            organ_texts: optional f_bar of K texts per organ, [O, K, d_txt].
            other_texts: optional f_bar of M out-of-domain texts, [M, d_txt] (projected into
                ``"other_text_features"``, negatives of the alignment loss).
            organ_text_labels: optional soft labels of ``organ_texts``, [O, K, O], for the loss.
        """
        if self.training:
            self.alignment_refined.fill_(False)
        if organ_texts is None:
            return self.image(x)
        heads, slice_features = self.image.heads_and_features(x)
        output = dict(heads) if self.training else {}
        output.update(
            logits=heads[self.image.main_head],
            slice_features=slice_features,
            text_features=self.project_texts(organ_texts),
        )
        if other_texts is not None:
            output["other_text_features"] = self.project_texts(other_texts)
        if organ_text_labels is not None:
            output["organ_text_labels"] = organ_text_labels
        return output
