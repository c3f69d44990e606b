"""The targets the text MLP is trained on, one function per kind (method.md §2; model card, "Text labels").

- ``hard``: one-hot source organ, the paper's baseline.
- ``anchors``: the paper's soft labels, y_i(t) = (sim(v+_i, f_t) + 1) / 2 (:func:`text_pipeline.anchors.soft_labels`).
- ``calibrated``: the anchors' similarities made informative and joined with the organs a clinician would
  consider (:func:`calibrated_labels`).

With a sentence encoder like MiniLM the paper's margin cannot be met, so every anchor label lands in a narrow
band (0.62-0.77 on the first shipped corpus): the labels barely rank the organs, and nothing in them says which
organs a text is about. ``calibrated`` keeps the anchors' graded similarity but rescales it per organ into the
probability that the organ is among a text's organs (Platt scaling fitted on the training texts, those of no
organ included), and averages it with the text's ranked known organ set, so that the organs a clinician named
lead, the likeliest first, and the organs the anchors find similar but nobody named keep some weight below them.
Texts of no organ (the out-of-domain training texts) are labelled 0 for every organ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from text_pipeline.anchors import cosine_similarity_matrix
from text_pipeline.organs import ORGANS, organ_index

LABEL_KINDS = ("hard", "anchors", "calibrated")
SET_WEIGHT = 0.5  # w of the calibrated labels
SECONDARY_ORGAN_WEIGHT = 0.7  # k of an organ in a text's set that is not its primary


def hard_labels(organ_of_text: torch.Tensor | np.ndarray, num_organs: int = len(ORGANS)) -> torch.Tensor:
    """One-hot source-organ targets of the hard-label baseline (method.md §2): [N] indices -> [N, O] float."""
    return F.one_hot(torch.as_tensor(organ_of_text).reshape(-1).long(), num_organs).float()


def organ_sets(queries: Sequence) -> torch.Tensor:
    """Each text's known organ set, multi-hot [N, O]: 1 for every organ a clinician would consider (the corpus'
    ``organs``), 0 for the others; all 0 for an out-of-domain text."""
    sets = torch.zeros(len(queries), len(ORGANS))
    for row, query in enumerate(queries):
        sets[row, [organ_index(organ) for organ in query.organs]] = 1.0
    return sets


def ranked_organ_sets(queries: Sequence, secondary: float = SECONDARY_ORGAN_WEIGHT) -> torch.Tensor:
    """k_i(t) of the calibrated labels, [N, O]: 1 for the text's primary organ (the likeliest), ``secondary`` for
    the other organs of its known set, 0 for the rest; all 0 for an out-of-domain text."""
    sets = organ_sets(queries)
    for row, query in enumerate(queries):
        if query.organs:
            sets[row] *= secondary
            sets[row, organ_index(query.primary or query.organs[0])] = 1.0
    return sets


@dataclass(frozen=True)
class AnchorCalibration:
    """Per-organ Platt scaling of the anchor similarities: P(organ i in the text's set) = sigmoid(a_i s_i + b_i)."""

    scale: torch.Tensor  # a, [O], positive when the anchors point the right way
    bias: torch.Tensor  # b, [O]

    def __call__(self, similarities: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(similarities * self.scale + self.bias)


def fit_anchor_calibration(similarities: torch.Tensor, sets: torch.Tensor, steps: int = 200) -> AnchorCalibration:
    """Fit :class:`AnchorCalibration` by maximum likelihood, one logistic regression per organ (LBFGS).

    Args:
        similarities: sim(v+_i, f_t) of the training texts, [N, O].
        sets: their known organ sets (:func:`organ_sets`), [N, O].
        steps: LBFGS iterations.
    """
    similarities, sets = similarities.detach().float(), sets.detach().float()
    if similarities.shape != sets.shape or similarities.ndim != 2:
        raise ValueError(f"similarities {tuple(similarities.shape)} and organ sets {tuple(sets.shape)} differ")
    missing = [ORGANS[i] for i in range(sets.shape[1]) if not 0 < sets[:, i].sum() < len(sets)]
    if missing:
        raise ValueError(f"calibration needs texts with and without each organ; not so for {', '.join(missing)}")
    # standardised inputs make one step size right for every organ
    mean, std = similarities.mean(0), similarities.std(0).clamp(min=1e-6)
    weight = torch.ones(sets.shape[1], requires_grad=True)
    bias = torch.zeros(sets.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")
    standardised = (similarities - mean) / std

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(standardised * weight + bias, sets)
        loss.backward()
        return loss

    optimizer.step(closure)
    scale = (weight / std).detach()
    return AnchorCalibration(scale=scale, bias=(bias - weight * mean / std).detach())


def calibrated_labels(
    similarities: torch.Tensor,
    known_sets: torch.Tensor,
    calibration: AnchorCalibration,
    set_weight: float = SET_WEIGHT,
) -> torch.Tensor:
    """The ``calibrated`` soft labels (model card, "Text labels"):

        y_i(t) = w * k_i(t) + (1 - w) * sigmoid(a_i sim(v+_i, f_t) + b_i)   for a text of some organ
        y_i(t) = 0                                                       for a text of no organ

    with k_i(t) the text's ranked known organ set (:func:`ranked_organ_sets`: 1 for its primary organ, 0.7 for
    the other organs a clinician would consider, 0 for the rest) and a_i, b_i the anchor calibration. With
    w = 0.5 the primary organ scores at least 0.5 and every organ nobody named below 0.5; the other named organs
    lie between 0.35 and 0.85, ordered by their anchors.

    Args:
        similarities: sim(v+_i, f_t), [N, O].
        known_sets: k, [N, O]; a row of zeros is a text of no organ.
        calibration: fitted on the training texts (:func:`fit_anchor_calibration`).
        set_weight: w in [0, 1].
    """
    if not 0.0 <= set_weight <= 1.0:
        raise ValueError(f"set_weight must lie in [0, 1], got {set_weight}")
    labels = set_weight * known_sets + (1.0 - set_weight) * calibration(similarities)
    in_domain = (known_sets > 0).any(dim=1, keepdim=True)
    return torch.where(in_domain, labels, torch.zeros_like(labels)).clamp(0.0, 1.0)


def anchor_similarities(v_pos: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """sim(v+_i, f_t) of every text and organ, [N, O]."""
    return cosine_similarity_matrix(features, v_pos)
