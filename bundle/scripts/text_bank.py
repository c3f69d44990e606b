"""The text side of alignment training: the corpus texts' f_bar by organ, and the batches that carry them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from monai.engines import PrepareBatch, default_prepare_batch

from text_pipeline.corpus import read_corpus, read_queries
from text_pipeline.labels import hard_labels, organ_sets
from text_pipeline.organs import ORGANS, organ_index
from text_pipeline.text_model import load_text_model_and_encoder

logger = logging.getLogger(__name__)

POSITIVES = ("organ_set", "source")


class OrganTextBank:
    """f_bar = MLP(f) (method.md §2) of every text of one corpus split, grouped by organ.

    ``features[i]`` holds the f_bar of organ i's texts [N_i, d_txt], the InfoNCE positives of organ i: with
    ``positives="organ_set"`` every text whose known organ set names organ i (a text of jaundice counts for the
    liver, the gallbladder and the pancreas alike: the one-to-many knowledge of the corpus reaches W_align), with
    ``"source"`` only the texts expanded from organ i's passages. ``soft_labels[i]`` [N_i, O] are those texts' soft
    labels: the text MLP's organ probabilities, sigmoid(head(f_bar)), the targets of ``L_text->image``
    (``scripts.losses.TextToImageLoss``). ``all_features`` [N, d_txt] and ``organ_labels`` [N, O] (multi-hot:
    every organ a text names as related) are all the texts, for fitting the organ probabilities;
    ``other_features`` [M, d_txt] are the out-of-domain texts (symptoms of no organ), empty without
    ``out_of_domain_file``.

    The text MLP is frozen: it was trained offline on the corpus (``python -m text_pipeline build``), and
    alignment learns only W_align on top of its features.

    Args:
        text_model_path: a text MLP saved by ``text_pipeline`` (``text_mlp_<labels>.pt``, labels hard, anchors
            or calibrated); the encoder it was trained with embeds the texts.
        split: corpus split whose texts fill the bank (``"train"``; the test split is for evaluation).
        cache_dir: embedding cache of the encoder (by encoder and text), or None.
        out_of_domain_file: a JSON-lines file of symptoms of none of the organs (``"organs": []``), e.g.
            ``text_pipeline.corpus.OOD_TRAINING_TEXTS``, or None.
        positives: ``"organ_set"`` or ``"source"``: which texts are organ i's (above).
    """

    def __init__(
        self,
        text_model_path: str | Path,
        split: str = "train",
        cache_dir: str | Path | None = None,
        out_of_domain_file: str | Path | None = None,
        positives: str = "organ_set",
    ):
        if positives not in POSITIVES:
            raise ValueError(f"positives must be one of {', '.join(POSITIVES)}, got {positives!r}")
        self.text_model, encoder = load_text_model_and_encoder(text_model_path, cache_dir)
        queries = read_corpus(split)
        f_bar = self._f_bar(encoder, [query.text for query in queries])
        soft_labels = torch.sigmoid(self.text_model.head(f_bar)).detach()
        self.all_features = f_bar
        self.organ_labels = organ_sets(queries)
        if positives == "source":
            of_organ = hard_labels([organ_index(query.meta["organ"]) for query in queries]).bool()
        else:
            of_organ = self.organ_labels.bool()
        self.features = [f_bar[of_organ[:, index]] for index in range(len(ORGANS))]
        self.soft_labels = [soft_labels[of_organ[:, index]] for index in range(len(ORGANS))]
        empty = [organ for organ, features in zip(ORGANS, self.features) if not len(features)]
        if empty:
            raise ValueError(f"the corpus {split} split has no text of {', '.join(empty)}: alignment needs every organ")
        self.other_features = torch.zeros(0, self.feature_size)
        if out_of_domain_file is not None:
            others = read_queries(out_of_domain_file)
            in_domain = [number for number, query in enumerate(others, 1) if query.organs]
            if in_domain:
                raise ValueError(f"{out_of_domain_file}: queries {in_domain[:5]} name organs; expected 'organs': []")
            self.other_features = self._f_bar(encoder, [query.text for query in others])
        logger.info(
            "text bank: f_bar of %d %s texts and %d out-of-domain texts, %d-d",
            len(queries),
            split,
            len(self.other_features),
            self.feature_size,
        )

    @torch.no_grad()
    def _f_bar(self, encoder, texts: list[str]) -> torch.Tensor:
        return self.text_model.embed(torch.from_numpy(encoder.encode(texts)))

    @property
    def feature_size(self) -> int:
        """d_txt, the width of f_bar."""
        return self.features[0].shape[1]

    def sample(
        self, texts_per_organ: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts_per_organ`` texts drawn at random (without replacement) for each organ: their f_bar
        [O, K, d_txt] and soft labels [O, K, O]."""
        self._check_count(texts_per_organ)
        drawn = [torch.randperm(len(features), generator=generator)[:texts_per_organ] for features in self.features]
        return self._gather(drawn)

    def first(self, texts_per_organ: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each organ's first ``texts_per_organ`` texts in corpus order, as :meth:`sample`: the same every call."""
        self._check_count(texts_per_organ)
        return self._gather([torch.arange(texts_per_organ)] * len(self.features))

    def _gather(self, drawn: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.stack([features[indices] for features, indices in zip(self.features, drawn)])
        labels = torch.stack([labels[indices] for labels, indices in zip(self.soft_labels, drawn)])
        return features, labels

    def other(self, count: int, random: bool = True) -> torch.Tensor:
        """f_bar of ``count`` out-of-domain texts, drawn at random or the first ones, [count, d_txt]."""
        if not 1 <= count <= len(self.other_features):
            raise ValueError(f"out-of-domain texts per step must lie in 1..{len(self.other_features)}, got {count}")
        order = torch.randperm(len(self.other_features)) if random else torch.arange(len(self.other_features))
        return self.other_features[order[:count]]

    def _check_count(self, texts_per_organ: int) -> None:
        fewest = min(len(features) for features in self.features)
        if not 1 <= texts_per_organ <= fewest:
            raise ValueError(
                f"texts_per_organ must lie in 1..{fewest} (the fewest texts of an organ), got {texts_per_organ}"
            )


class PrepareBatchWithOrganTexts(PrepareBatch):
    """A MONAI ``prepare_batch`` that passes K texts per organ to the network as ``organ_texts`` [O, K, d_txt],
    their soft labels as ``organ_text_labels`` [O, K, O] and M out-of-domain texts as ``other_texts`` [M, d_txt].

    Training draws new texts every iteration (from torch's global generator, seeded by ``set_determinism``);
    validation uses the same texts every time, so that its metrics compare across epochs.

    Args:
        bank: the texts.
        texts_per_organ: K.
        other_texts: M (0: none).
        random: draw at random (training) or take the first texts (validation).
    """

    def __init__(self, bank: OrganTextBank, texts_per_organ: int = 16, other_texts: int = 0, random: bool = True):
        bank._check_count(texts_per_organ)
        if other_texts:
            bank.other(other_texts)
        self.bank, self.texts_per_organ, self.other_texts, self.random = bank, texts_per_organ, other_texts, random

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        texts, labels = self.bank.sample(self.texts_per_organ) if self.random else self.bank.first(self.texts_per_organ)
        extra = {"organ_texts": texts, "organ_text_labels": labels}
        if self.other_texts:
            extra["other_texts"] = self.bank.other(self.other_texts, self.random)
        return (
            image,
            label,
            (),
            {key: value.to(device=device, non_blocking=non_blocking) for key, value in extra.items()},
        )
