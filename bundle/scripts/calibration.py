"""Fitting the map from symptom-organ evidence to probability (step 4 of the inference rule, scripts.reasoning).

InfoNCE (method.md §4) trains only relative similarities, so nothing in it says which value of f_hat . g_i
means "related". Platt scaling fixes that: p_i = sigmoid(a f_hat . g_i + b), with the two scalars a and b fitted
by logistic regression on the corpus' training texts against the validation scans' organ features, the targets
being each text's multi-organ labels (and 0 for every organ of an out-of-domain training text). It changes no
weight and so no ranking of the organs of one symptom.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from ignite.engine import Engine, Events
from sklearn.linear_model import LogisticRegression

from scripts.networks import MedSORANet
from scripts.reasoning import OrganFeatureAccumulator
from scripts.text_bank import OrganTextBank
from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)


def fit_organ_probability(evidence: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling: (a, b) of sigmoid(a e + b) maximising the likelihood of ``labels`` given ``evidence``.

    Args:
        evidence: f_hat . g_i of every (text, organ) pair, any shape.
        labels: 1 where the organ is one of the text's organs, 0 elsewhere, same shape.

    Raises:
        ValueError: the labels are not both 0 and 1, or the fitted scale is not positive (more evidence would
            mean less probability: the alignment did not learn).
    """
    evidence, labels = np.asarray(evidence, dtype=np.float64).reshape(-1, 1), np.asarray(labels).reshape(-1)
    if evidence.shape[0] != labels.shape[0] or len(np.unique(labels)) != 2:
        raise ValueError("fitting organ probabilities needs evidence and 0/1 labels of equal size, with both labels")
    model = LogisticRegression(C=1e4).fit(evidence, labels)
    scale, bias = float(model.coef_[0, 0]), float(model.intercept_[0])
    if scale <= 0:
        raise ValueError(f"fitted probability scale {scale:.4g} is not positive: the alignment has not learned")
    return scale, bias


class FitOrganProbability:
    """After each validation, fit the network's ``probability_scale`` and ``probability_bias`` (Platt scaling).

    Collects the validation samples' slice features by organ while the evaluator runs (it must call the
    network with ``organ_texts``), forms g_i, and fits on every text of ``bank`` against them. Attach it before
    the checkpoint saver, so that the saved weights carry the fitted values.

    Args:
        network: the network being trained (or its DistributedDataParallel wrapper).
        bank: the training texts.
    """

    def __init__(self, network: torch.nn.Module, bank: OrganTextBank) -> None:
        self.network, self.bank = network, bank
        self._organs = OrganFeatureAccumulator()

    @property
    def _model(self) -> MedSORANet:
        return getattr(self.network, "module", self.network)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._fit)

    def _reset(self, engine: Engine) -> None:
        self._organs = OrganFeatureAccumulator()

    def _collect(self, engine: Engine) -> None:
        self._organs.add(engine.state.output["pred"]["slice_features"], engine.state.output["label"])

    @torch.no_grad()
    def _fit(self, engine: Engine) -> None:
        organs = self._organs.result()
        model = self._model
        texts = torch.cat([self.bank.all_features, self.bank.other_features])
        labels = torch.cat([self.bank.organ_labels, torch.zeros(len(self.bank.other_features), len(ORGANS))])
        projected = model.project_texts(texts.to(model.align.weight.device)).float().cpu()
        evidence = projected @ organs.features[organs.present].T
        try:
            scale, bias = fit_organ_probability(evidence.numpy(), labels[:, organs.present].numpy())
        except ValueError as error:
            model.probability_fitted.fill_(False)
            logger.warning(
                "epoch %d: organ probabilities not fitted, weights saved now cannot score symptoms: %s",
                engine.state.epoch,
                error,
            )
            return
        model.probability_scale.fill_(scale)
        model.probability_bias.fill_(bias)
        model.probability_fitted.fill_(True)
        engine.state.metrics["probability_scale"], engine.state.metrics["probability_bias"] = scale, bias
        logger.info("organ probability: sigmoid(%.3f * evidence %+.3f)", scale, bias)
