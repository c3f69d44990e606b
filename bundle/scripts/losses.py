"""Losses of Med-SORA, one module per equation (method.md §3-4)."""

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


def avg_sim(slice_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """avgSim (method.md §4): the cosine similarity of an organ sample's slices and an organ's texts,
    averaged over the D slices and the K texts.

    avgSim(b, o) = 1/(D K) sum_d sum_k cos(F[b, d], T[o, k]), computed as the dot product of the mean unit
    slice feature and the mean unit text feature (the same number, in O(B D + O K) normalisations).

    Args:
        slice_features: per-slice image features, [B, D, d_img].
        text_features: projected text features f_hat of K texts per organ, [O, K, d_img].

    Returns:
        [B, O] similarities in [-1, 1].
    """
    if slice_features.ndim != 3 or text_features.ndim != 3 or slice_features.shape[-1] != text_features.shape[-1]:
        raise ValueError(
            f"avgSim needs slice features [B, D, d] and text features [O, K, d], "
            f"got {tuple(slice_features.shape)} and {tuple(text_features.shape)}"
        )
    image = F.normalize(slice_features, dim=-1).mean(dim=1)
    text = F.normalize(text_features, dim=-1).mean(dim=1)
    return image @ text.T


def alignment_logits(
    slice_features: torch.Tensor,
    text_features: torch.Tensor,
    other_text_features: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """The InfoNCE logits of L_align: avgSim of each organ sample with each organ's texts, then with each
    out-of-domain text on its own (K = 1), over tau: [B, O] or [B, O + M].

    Args:
        slice_features: [B, D, d_img].
        text_features: projected texts of each organ, [O, K, d_img].
        other_text_features: projected out-of-domain texts (symptoms of no organ), [M, d_img], or None.
        temperature: tau.
    """
    logits = avg_sim(slice_features, text_features)
    if other_text_features is not None:
        logits = torch.cat([logits, avg_sim(slice_features, other_text_features.unsqueeze(1))], dim=1)
    return logits / temperature


class AlignmentLoss(nn.Module):
    """L_align, InfoNCE over organs (method.md §4).

    For an organ sample of organ i, the positive is the texts of organ i and the negatives are the texts of
    the other organs: L_align = -log softmax_o(avgSim(sample, texts_o) / tau)[i], averaged over the batch.
    Out-of-domain texts, if given, are further negatives, one each (this project's addition: the paper wants
    unrelated symptoms to score low everywhere but does not say how; see bundle/docs/README.md).

    Args:
        temperature: tau (paper: 0.1).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(
        self,
        slice_features: torch.Tensor,
        text_features: torch.Tensor,
        organ: torch.Tensor,
        other_text_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            slice_features: [B, D, d_img] image features of B organ samples.
            text_features: [O, K, d_img] projected features of K texts per organ, organs in class order.
            organ: the samples' organ class indices, [B] (or [B, 1]).
            other_text_features: [M, d_img] projected out-of-domain texts, or None.
        """
        logits = alignment_logits(slice_features, text_features, other_text_features, self.temperature)
        return F.cross_entropy(logits, organ.reshape(-1).long())


class MedSORALoss(nn.Module):
    """L_total = L_image + L_align (method.md §4), on the output of ``MedSORANet(x, organ_texts)``.

    Args:
        temperature: tau of the alignment loss (paper: 0.1).
        image_loss: False drops L_image, for training the alignment alone on a frozen image model.
    """

    def __init__(self, temperature: float = 0.1, image_loss: bool = True) -> None:
        super().__init__()
        self.image_loss = ImageLoss() if image_loss else None
        self.alignment_loss = AlignmentLoss(temperature)

    def forward(self, output: Mapping[str, torch.Tensor], organ: torch.Tensor) -> torch.Tensor:
        """
        Args:
            output: the network's training output, with ``"slice_features"``, ``"text_features"`` and the
                heads' logits.
            organ: the organs' class indices, [B] (or [B, 1]).
        """
        missing = {"slice_features", "text_features"} - output.keys()
        if missing:
            raise ValueError(
                f"MedSORALoss needs {sorted(missing)} in the network output: call the network with organ_texts "
                "(the trainer's prepare_batch should be scripts.text_bank.PrepareBatchWithOrganTexts)"
            )
        loss = self.alignment_loss(
            output["slice_features"], output["text_features"], organ, output.get("other_text_features")
        )
        if self.image_loss is not None:
            loss = loss + self.image_loss(output, organ)
        return loss
