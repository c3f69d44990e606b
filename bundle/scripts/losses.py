"""Losses of Med-SORA, one module per equation (method.md §3-4), and this project's text-to-image term."""

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

    def forward(
        self, logits: Mapping[str, torch.Tensor], organ: torch.Tensor, return_terms: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """
        Args:
            logits: the network's training output: ``{"2d" | "3d" | "fusion": [B, num_organs] logits, ...}``.
            organ: the organs' class indices, [B] (or [B, 1]).
            return_terms: also return each head's term: ``{"image", "image_2d", "image_3d", "image_fusion"}``
                (L_image, L_2D, L_3D, L_fusion; the heads the network returned).
        """
        heads = [head for head in HEADS if head in logits]
        if not heads:
            raise ValueError(f"ImageLoss needs the logits of at least one of the heads {HEADS}, got {sorted(logits)}")
        target = organ.reshape(-1).long()
        terms = {f"image_{head}": F.cross_entropy(logits[head], target) for head in heads}
        loss = sum(terms.values())
        return {"image": loss, **terms} if return_terms else loss


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


def positive_temperature(temperature: float) -> float:
    """``temperature`` (tau of a contrastive loss), or an error if it is not positive."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return temperature


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
        self.temperature = positive_temperature(temperature)

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


def organ_image_prototypes(slice_features: torch.Tensor, organ: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The organs of a batch and their image features: the unit mean, over each organ's samples, of their mean
    unit slice feature (g_i of the inference rule, on one batch).

    Args:
        slice_features: [B, D, d_img].
        organ: the samples' organ class indices, [B] (or [B, 1]).

    Returns:
        the organs present, sorted [P], and their features [P, d_img].
    """
    organ = organ.reshape(-1).long()
    present = torch.unique(organ)
    per_sample = F.normalize(slice_features, dim=-1).mean(dim=1)
    sums = torch.zeros(len(present), per_sample.shape[1], dtype=per_sample.dtype, device=per_sample.device)
    sums = sums.index_add(0, torch.searchsorted(present, organ), per_sample)
    return present, F.normalize(sums, dim=-1)


class TextToImageLoss(nn.Module):
    """L_text->image, this project's addition: the other direction of L_align, as in CLIP's symmetric InfoNCE,
    with the texts' soft labels as targets.

    L_align asks of each organ sample which organ's texts, on average, are nearest; nothing in it asks each text
    to be nearest its own organs, yet at inference every symptom stands alone. Here each projected text is a query
    over the organs of the batch (their :func:`organ_image_prototypes` g_p), scored cos(f_hat_t, g_p) / tau, and
    its target is its soft labels y_t (the text MLP's organ probabilities) over those organs, made a distribution:
    L = -sum_p y_tp / (sum_q y_tq) log softmax_p(cos(f_hat_t, g_p) / tau), averaged over the texts of the organs
    in the batch. So W_align learns the text side's own ranking of the organs, one-to-many knowledge included,
    not only which organ's passages a text was written from. Without soft labels a text drawn for organ o has
    the target o alone.

    Args:
        temperature: its own tau; the organs of one batch are few and their features close, and 0.1 (L_align's)
            made the term too sharp to help (bundle/docs/README.md).
    """

    def __init__(self, temperature: float = 0.3) -> None:
        super().__init__()
        self.temperature = positive_temperature(temperature)

    def forward(
        self,
        slice_features: torch.Tensor,
        text_features: torch.Tensor,
        organ: torch.Tensor,
        text_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            slice_features: [B, D, d_img] image features of B organ samples.
            text_features: [O, K, d_img] projected features of K texts per organ, organs in class order.
            organ: the samples' organ class indices, [B] (or [B, 1]).
            text_labels: the texts' soft labels [O, K, O] in [0, 1], or None (each text's target: its organ).
        """
        present, prototypes = organ_image_prototypes(slice_features, organ)
        texts = F.normalize(text_features[present], dim=-1)  # [P, K, d_img]
        logits = texts.reshape(-1, texts.shape[-1]) @ prototypes.T / self.temperature
        if text_labels is None:
            target = torch.eye(len(present), device=logits.device).repeat_interleave(texts.shape[1], dim=0)
        else:
            target = text_labels[present][..., present].reshape(-1, len(present)).to(logits.dtype)
            known = target.sum(dim=1) > 0  # a text with no mass on the batch's organs asks nothing of them
            if not bool(known.any()):
                return logits.sum() * 0.0
            logits, target = logits[known], target[known] / target[known].sum(dim=1, keepdim=True)
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class MedSORALoss(nn.Module):
    """L_total = L_image + L_align (method.md §4) + w L_text->image, on the output of ``MedSORANet(x, organ_texts)``.

    Args:
        temperature: tau of the alignment loss (paper: 0.1).
        image_loss: False drops L_image, for training the alignment alone on a frozen image model.
        text_to_image_weight: w, the weight of :class:`TextToImageLoss` (0: the paper's loss).
        text_to_image_temperature: its tau.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        image_loss: bool = True,
        text_to_image_weight: float = 0.0,
        text_to_image_temperature: float = 0.3,
    ) -> None:
        super().__init__()
        if text_to_image_weight < 0:
            raise ValueError(f"text_to_image_weight must be 0 or more, got {text_to_image_weight}")
        self.image_loss = ImageLoss() if image_loss else None
        self.alignment_loss = AlignmentLoss(temperature)
        self.text_to_image_weight = float(text_to_image_weight)
        self.text_to_image_loss = TextToImageLoss(text_to_image_temperature) if text_to_image_weight else None
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(
        self, output: Mapping[str, torch.Tensor], organ: torch.Tensor, return_terms: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """
        Args:
            output: the network's training output, with ``"slice_features"``, ``"text_features"`` and the
                heads' logits.
            organ: the organs' class indices, [B] (or [B, 1]).
            return_terms: also return each term: ``{"loss", "align", "image", "image_2d", "image_3d",
                "image_fusion", "text_to_image"}`` (L_total and the terms in use, unweighted). The terms of the
                latest call are also kept, detached, in ``last_terms``, for the trainer's logs.
        """
        missing = {"slice_features", "text_features"} - output.keys()
        if missing:
            raise ValueError(
                f"MedSORALoss needs {sorted(missing)} in the network output: call the network with organ_texts "
                "(the trainer's prepare_batch should be scripts.text_bank.PrepareBatchWithOrganTexts)"
            )
        terms = {
            "align": self.alignment_loss(
                output["slice_features"], output["text_features"], organ, output.get("other_text_features")
            )
        }
        if self.image_loss is not None:
            terms.update(self.image_loss(output, organ, return_terms=True))
        if self.text_to_image_loss is not None:
            terms["text_to_image"] = self.text_to_image_loss(
                output["slice_features"], output["text_features"], organ, output.get("organ_text_labels")
            )
        loss = terms["align"] + terms.get("image", 0.0) + self.text_to_image_weight * terms.get("text_to_image", 0.0)
        self.last_terms = {name: value.detach() for name, value in terms.items()}
        return {"loss": loss, **terms} if return_terms else loss
