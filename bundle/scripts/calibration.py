"""Fitting the map from symptom-organ evidence to probability (step 4 of the inference rule, scripts.reasoning).

InfoNCE (method.md §4) trains only relative similarities, so nothing in it says which value of f_hat . g_i
means "related". Platt scaling fixes that: p_i = sigmoid(a f_hat . g_i + b), with the two scalars a and b fitted
by logistic regression on the corpus' training texts against the validation scans' organ features, the targets
being each text's multi-organ labels (and 0 for every organ of an out-of-domain training text). It changes no
weight and so no ranking of the organs of one symptom.

Under data-parallel training each rank validates a share of the scans; the organ features are summed over the
ranks before the fit, so that every rank fits the same a and b, on all the validation samples.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from sklearn.linear_model import LogisticRegression

from scripts.networks import MedSORANet
from scripts.organ_features import OrganFeatureAccumulator, OrganFeatures
from scripts.text_bank import OrganTextBank
from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank of the default process group, on ``tensor``'s device; ``tensor`` itself
    when no group of 2 or more processes is initialised.

    A collective: under ``torch.distributed`` every rank must call it, in the same order as its other collectives.
    """
    if not _distributed():
        return tensor
    backend_device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    )
    total = tensor.to(backend_device, copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


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


@torch.no_grad()
def fit_network_probability(model: MedSORANet, organs: OrganFeatures, bank: OrganTextBank) -> tuple[float, float]:
    """Platt-scale ``model``'s organ probability on every text of ``bank`` against the organ features ``organs``:
    set its ``probability_scale``, ``probability_bias`` and ``probability_fitted``, and return (a, b).

    Raises:
        ValueError: no organ has features, or :func:`fit_organ_probability` fails; ``probability_fitted`` is
            then False.
    """
    texts = torch.cat([bank.all_features, bank.other_features])
    labels = torch.cat([bank.organ_labels, torch.zeros(len(bank.other_features), len(ORGANS))])
    projected = model.project_texts(texts.to(model.align.weight.device)).float().cpu()
    evidence = projected @ organs.features[organs.present].T
    try:
        if not bool(organs.present.any()):
            raise ValueError("no validation organ samples")
        scale, bias = fit_organ_probability(evidence.numpy(), labels[:, organs.present].numpy())
    except ValueError:
        model.probability_fitted.fill_(False)
        raise
    model.probability_scale.fill_(scale)
    model.probability_bias.fill_(bias)
    model.probability_fitted.fill_(True)
    return scale, bias


class FitOrganProbability:
    """After each validation, fit the network's ``probability_scale`` and ``probability_bias`` (Platt scaling).

    Collects the validation samples' slice features by organ while the evaluator runs (it must call the
    network with ``organ_texts``), forms g_i, and fits on every text of ``bank`` against them. Attach it before
    the checkpoint saver, so that the saved weights carry the fitted values. Adds ``probability_scale``,
    ``probability_bias`` (when fitted) and ``probability_fit_samples`` (the organ samples g_i came from) to
    the engine's metrics.

    Under ``torch.distributed`` (data-parallel validation, each rank on a share of the samples) the per-organ
    feature sums and counts are summed over the ranks first (:func:`sum_over_ranks`), so every rank fits the
    same values on all the samples. That is a collective: attach this handler on every rank (see
    ``every_rank``; ``multi_gpu_train.yaml``); only rank 0 logs.

    Args:
        network: the network being trained (or its DistributedDataParallel wrapper).
        bank: the training texts.
    """

    every_rank = True  # takes part in a collective: data-parallel configs attach it on every rank

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

    def _gathered(self) -> OrganFeatureAccumulator:
        """The accumulated sums and counts of every rank (one all-reduce, float64: the counts stay exact)."""
        mine = self._organs
        sums = mine.sums if mine.sums is not None else torch.zeros(len(ORGANS), self._model.feature_size)
        total = sum_over_ranks(torch.cat([sums.double(), mine.counts.double().unsqueeze(1)], dim=1))
        gathered = OrganFeatureAccumulator()
        gathered.sums, gathered.counts = total[:, :-1].float(), total[:, -1].round().long()
        return gathered

    @torch.no_grad()
    def _fit(self, engine: Engine) -> None:
        organs = self._gathered().result()  # every rank reaches this collective first, whatever follows
        main = not _distributed() or dist.get_rank() == 0
        model = self._model
        engine.state.metrics["probability_fit_samples"] = int(organs.counts.sum())
        try:
            scale, bias = fit_network_probability(model, organs, self.bank)
        except ValueError as error:
            if main:
                logger.warning(
                    "epoch %d: organ probabilities not fitted, weights saved now cannot score symptoms: %s",
                    engine.state.epoch,
                    error,
                )
            return
        engine.state.metrics["probability_scale"], engine.state.metrics["probability_bias"] = scale, bias
        if main:
            logger.info(
                "organ probability: sigmoid(%.3f * evidence %+.3f), fitted on %d validation organ samples",
                scale,
                bias,
                int(organs.counts.sum()),
            )
