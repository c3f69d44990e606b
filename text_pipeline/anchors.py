"""Learnable organ anchors and the soft labels they give, one function per equation (method.md §2).

Each organ i has a positive anchor v+_i (what is specific to organ i) and a negative anchor v-_i (what it
shares with the other organs), both in the text encoder's space. They are fitted offline, on text alone,
with the margin loss below; the soft label of a text for organ i is then its rescaled cosine similarity
to v+_i.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)

PAPER_MARGIN = 0.8


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` torch intra-op threads (``None``: leave the setting alone).

    The anchors and the text MLP train on batches so small that one thread is fastest, and several threads
    spin against each other when the machine is busy (tens of times slower on a loaded 2-core machine).
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def margin(a: torch.Tensor, b: torch.Tensor, m: float = PAPER_MARGIN) -> torch.Tensor:
    """Margin function M (method.md §2), elementwise:

        M(a, b) = max(0, m - a) + max(0, b - (1 - m))

    It is zero when the similarity to the anchor that should be near, ``a``, is at least ``m`` and the
    similarity to the anchor that should be far, ``b``, is at most ``1 - m``.

    Args:
        a: similarities to the anchor a text should be close to.
        b: similarities to the anchor it should be far from (broadcastable with ``a``).
        m: the margin (paper: 0.8).
    """
    return torch.clamp(m - a, min=0.0) + torch.clamp(b - (1.0 - m), min=0.0)


def cosine_similarity_matrix(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """sim(v_i, f_n) = cos(v_i, f_n) for every text n and anchor i: [N, d] x [O, d] -> [N, O]."""
    return F.normalize(features, dim=-1) @ F.normalize(anchors, dim=-1).T


def anchor_loss(
    v_pos: torch.Tensor,
    v_neg: torch.Tensor,
    features: torch.Tensor,
    organ_of_text: torch.Tensor,
    m: float = PAPER_MARGIN,
) -> torch.Tensor:
    """Anchor loss (method.md §2), summed over the organs i:

        L_anchor = sum_i ( E_{f in P_i}[ M(sim(v+_i, f), sim(v-_i, f)) ]
                         + E_{f in N_i}[ M(sim(v-_i, f), sim(v+_i, f)) ] )

    with sim the cosine similarity, P_i the texts of organ i and N_i the texts of the other organs: texts of
    organ i are pulled to v+_i and pushed from v-_i, the other texts the reverse. method.md defines the loss
    of one organ; the total is their sum (not their mean), so each organ's term keeps its scale whatever the
    number of organs. An expectation over an empty set (no text of organ i in the batch, or only texts of
    organ i) is skipped: that term adds nothing.

    Args:
        v_pos: positive anchors v+, [O, d].
        v_neg: negative anchors v-, [O, d].
        features: text embeddings f, [N, d].
        organ_of_text: each text's organ index in ``0..O-1``, [N].
        m: the margin of M (paper: 0.8).

    Returns:
        The scalar loss.
    """
    num_organs = v_pos.shape[0]
    if v_neg.shape != v_pos.shape or features.ndim != 2 or features.shape[1] != v_pos.shape[1]:
        raise ValueError(
            f"anchors {tuple(v_pos.shape)} / {tuple(v_neg.shape)} and features {tuple(features.shape)} do not match"
        )
    organ_of_text = organ_of_text.reshape(-1).long()
    if organ_of_text.shape[0] != features.shape[0]:
        raise ValueError(f"{features.shape[0]} texts but {organ_of_text.shape[0]} organ indices")
    if organ_of_text.numel() and (organ_of_text.min() < 0 or organ_of_text.max() >= num_organs):
        raise ValueError(f"organ indices must lie in 0..{num_organs - 1}")

    sim_pos = cosine_similarity_matrix(features, v_pos)
    sim_neg = cosine_similarity_matrix(features, v_neg)
    in_p = F.one_hot(organ_of_text, num_organs).to(sim_pos.dtype)
    in_n = 1.0 - in_p
    positive_terms = margin(sim_pos, sim_neg, m) * in_p
    negative_terms = margin(sim_neg, sim_pos, m) * in_n
    # an empty P_i or N_i has a zero sum over a clamped count of one: its term drops out
    expectation_p = positive_terms.sum(0) / in_p.sum(0).clamp(min=1.0)
    expectation_n = negative_terms.sum(0) / in_n.sum(0).clamp(min=1.0)
    return (expectation_p + expectation_n).sum()


def soft_labels(v_pos: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Soft label of each text for each organ (method.md §2):

        y_i(t) = (sim(v+_i, f_t) + 1) / 2

    in [0, 1], with no softmax across organs: a text can be high for several organs.

    Args:
        v_pos: positive anchors v+, [O, d].
        features: text embeddings f, [N, d].

    Returns:
        y, [N, O].
    """
    return ((cosine_similarity_matrix(features, v_pos) + 1.0) / 2.0).clamp(0.0, 1.0)


class OrganAnchors(nn.Module):
    """The learnable positive and negative anchors v+ and v- of every organ (method.md §2).

    Initialised with seeded random unit vectors; ``forward`` is :func:`anchor_loss`.

    Args:
        num_organs: number of organs O.
        dim: dimension d of the text embeddings.
        m: the margin of the anchor loss (paper: 0.8).
        generator: random generator of the initial anchors.
    """

    def __init__(
        self, num_organs: int, dim: int, m: float = PAPER_MARGIN, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.m = m
        self.v_pos = nn.Parameter(F.normalize(torch.randn(num_organs, dim, generator=generator), dim=-1))
        self.v_neg = nn.Parameter(F.normalize(torch.randn(num_organs, dim, generator=generator), dim=-1))

    def forward(self, features: torch.Tensor, organ_of_text: torch.Tensor) -> torch.Tensor:
        """:func:`anchor_loss` of a batch of texts ``features`` [N, d] with organ indices ``organ_of_text`` [N]."""
        return anchor_loss(self.v_pos, self.v_neg, features, organ_of_text, self.m)

    def soft_labels(self, features: torch.Tensor) -> torch.Tensor:
        """:func:`soft_labels` of ``features`` [N, d] under these anchors: [N, O]."""
        return soft_labels(self.v_pos, features)


def fit_anchors(
    features: torch.Tensor,
    organ_of_text: torch.Tensor,
    *,
    num_organs: int = len(ORGANS),
    margin: float = PAPER_MARGIN,
    epochs: int = 200,
    lr: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
    num_threads: int | None = 1,
) -> OrganAnchors:
    """Fit the organ anchors to labelled texts by minimising :func:`anchor_loss` with Adam (method.md §2).

    The paper gives no schedule for the anchors. With the defaults the loss on the shipped corpus (1,450 MiniLM
    embeddings) is where 600 epochs or lr 3e-2 leave it, after a few seconds on 2 CPU cores. Deterministic for
    a given ``seed``; the global torch RNG is left untouched.

    Args:
        features: text embeddings f, [N, d].
        organ_of_text: each text's (source) organ index, [N].
        num_organs: number of organs O (indices ``0..O-1``).
        margin: the margin m of the loss (paper: 0.8).
        epochs: passes over the texts.
        lr: Adam's learning rate.
        batch_size: texts per step (shuffled every epoch).
        seed: seeds the initial anchors and the shuffling.
        num_threads: torch threads while fitting (see :func:`torch_threads`); ``None`` keeps the current number.

    Returns:
        The fitted anchors, in eval mode.
    """
    features = torch.as_tensor(features, dtype=torch.float32, device="cpu").detach()
    organ_of_text = torch.as_tensor(organ_of_text, device="cpu").reshape(-1).long()
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [N, d] matrix, got shape {tuple(features.shape)}")
    if organ_of_text.shape[0] != features.shape[0]:
        raise ValueError(f"{features.shape[0]} texts but {organ_of_text.shape[0]} organ indices")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    if organ_of_text.min() < 0 or organ_of_text.max() >= num_organs:
        raise ValueError(f"organ indices must lie in 0..{num_organs - 1}")
    generator = torch.Generator().manual_seed(seed)
    anchors = OrganAnchors(num_organs, features.shape[1], m=margin, generator=generator)
    optimizer = torch.optim.Adam(anchors.parameters(), lr=lr, fused=True)
    num_texts = features.shape[0]
    with torch_threads(num_threads):
        for epoch in range(epochs):
            order = torch.randperm(num_texts, generator=generator)
            shuffled_features, shuffled_organs = features[order], organ_of_text[order]
            for start in range(0, num_texts, batch_size):
                batch = slice(start, start + batch_size)
                loss = anchors(shuffled_features[batch], shuffled_organs[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if epoch == 0 or (epoch + 1) % max(1, epochs // 5) == 0:
                logger.debug("anchor epoch %d/%d: batch loss %.4f", epoch + 1, epochs, loss.item())
        with torch.no_grad():
            total = anchors(features, organ_of_text).item()
    logger.info("anchors fitted: anchor loss over all %d texts %.4f", num_texts, total)
    return anchors.eval()
