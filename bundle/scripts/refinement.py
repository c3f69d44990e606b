"""Alignment refinement: W_align trained a little longer, alone, on the frozen image network that training chose.

During training W_align chases image features that are still moving, and the weights kept (``model.pt``, the
epoch of lowest validation alignment loss) pair the image network of that epoch with a W_align fitted to the
features of the epochs before. Refinement loads those weights, computes the image features of a few augmented
passes over the training samples once (the image network is frozen, so they do not change), trains W_align alone
on them with the training loss for a fixed number of steps, refits the organ probability on the validation scans
and writes ``model.pt`` again, marked refined (the network's ``alignment_refined``). The image network, and so
every organ it names, is unchanged. A ``model.pt`` already refined (a resumed run whose validation found nothing
better) is left as it is: refining it again would train W_align further than the settings say.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from scripts.calibration import fit_network_probability
from scripts.checkpoints import load_weights
from scripts.losses import MedSORALoss
from scripts.networks import MedSORANet
from scripts.organ_features import organ_image_features
from scripts.text_bank import OrganTextBank
from text_pipeline.files import write_torch_atomically

logger = logging.getLogger(__name__)


@torch.no_grad()
def frozen_slice_features(
    network: MedSORANet, dataset: Dataset, passes: int, batch_size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-slice image features [N, D, d_img] and organs [N] of ``passes`` passes over ``dataset`` (each item
    drawn anew: a training dataset augments), N = passes x len(dataset)."""
    network.eval()
    features, organs = [], []
    for _ in range(passes):
        for start in range(0, len(dataset), batch_size):
            items = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([torch.as_tensor(item["image"]) for item in items]).to(device)
            features.append(network.image.slice_features(images).float().cpu())
            organs.append(torch.tensor([int(torch.as_tensor(item["label"]).reshape(-1)[0]) for item in items]))
    return torch.cat(features), torch.cat(organs)


class AlignmentRefinement:
    """After training: refine W_align of the weights in ``model_path`` on the frozen image network (module docstring).

    Args:
        network: the network training used (not wrapped for data parallelism).
        model_path: the weights training chose (``model.pt``), read and then replaced.
        train_dataset: the training samples, augmented as in training.
        validation_samples: the preprocessed validation samples, for refitting the organ probability.
        bank: the training texts.
        loss: the training loss, without L_image (``MedSORALoss(image_loss=False, ...)``).
        steps: W_align updates (0: no refinement).
        passes: augmented passes over ``train_dataset`` whose features the updates draw from.
        batch_size: organ samples per update.
        texts_per_organ: K texts of every organ per update.
        other_texts: out-of-domain texts per update (0: none).
        learning_rate: AdamW's.
        weight_decay: AdamW's.
        seed: seeds the draws of samples and texts.
        device: where the network runs.
    """

    def __init__(
        self,
        network: MedSORANet,
        model_path: str | Path,
        train_dataset: Dataset,
        validation_samples: Sequence[dict],
        bank: OrganTextBank,
        loss: MedSORALoss,
        steps: int = 900,
        passes: int = 3,
        batch_size: int = 16,
        texts_per_organ: int = 64,
        other_texts: int = 32,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.05,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if loss.image_loss is not None:
            raise ValueError("refinement trains W_align alone: pass a MedSORALoss with image_loss=False")
        if steps < 0:
            raise ValueError(f"alignment refinement steps must be 0 or more, got {steps}")
        if passes < 1 or batch_size < 1:
            raise ValueError(f"alignment refinement passes and batch_size must be positive, got {passes}, {batch_size}")
        bank._check_count(texts_per_organ)
        if other_texts:
            bank.other(other_texts)
        self.network, self.model_path, self.loss = network, Path(model_path), loss
        self.train_dataset, self.validation_samples, self.bank = train_dataset, validation_samples, bank
        self.steps, self.passes, self.batch_size = steps, passes, batch_size
        self.texts_per_organ, self.other_texts = texts_per_organ, other_texts
        self.learning_rate, self.weight_decay, self.seed, self.device = learning_rate, weight_decay, seed, device

    def __call__(self) -> dict[str, float]:
        """Refine, refit, save; returns the mean loss of the first and last 10% of the updates and the fitted
        probability (empty when ``steps`` is 0 or ``model.pt`` is refined already)."""
        if not self.steps:
            logger.info("alignment refinement: 0 steps, model.pt left as training wrote it")
            return {}
        network = load_weights(self.network, self.model_path, map_location=self.device)
        if bool(network.alignment_refined):
            logger.info("alignment refinement: %s is refined already (no better epoch in this run)", self.model_path)
            return {}
        image_requires_grad = [parameter.requires_grad for parameter in network.image.parameters()]
        network.image.requires_grad_(False)
        try:
            losses = self._train_w_align(network)
        finally:
            for parameter, requires_grad in zip(network.image.parameters(), image_requires_grad):
                parameter.requires_grad_(requires_grad)
        organs = organ_image_features(network, self.validation_samples, self.device, self.batch_size)
        scale, bias = fit_network_probability(network, organs, self.bank)
        network.alignment_refined.fill_(True)
        write_torch_atomically(self.model_path, network.state_dict())
        tenth = max(1, len(losses) // 10)
        summary = {
            "loss_first": sum(losses[:tenth]) / tenth,
            "loss_last": sum(losses[-tenth:]) / tenth,
            "probability_scale": scale,
            "probability_bias": bias,
        }
        logger.info(
            "alignment refinement: %d steps of W_align on %d frozen training samples, loss %.3f -> %.3f; organ "
            "probability sigmoid(%.3f * evidence %+.3f); %s rewritten",
            self.steps,
            self.passes * len(self.train_dataset),
            summary["loss_first"],
            summary["loss_last"],
            scale,
            bias,
            self.model_path,
        )
        return summary

    def _train_w_align(self, network: MedSORANet) -> list[float]:
        generator = torch.Generator().manual_seed(self.seed)
        slices, organs = frozen_slice_features(network, self.train_dataset, self.passes, self.batch_size, self.device)
        optimizer = torch.optim.AdamW(network.align.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        losses = []
        for _ in range(self.steps):
            batch = torch.randint(len(organs), (self.batch_size,), generator=generator)
            texts, labels = self.bank.sample(self.texts_per_organ, generator)
            output = {
                "slice_features": slices[batch].to(self.device),
                "text_features": network.project_texts(texts.to(self.device)),
                "organ_text_labels": labels.to(self.device),
            }
            if self.other_texts:
                drawn = torch.randperm(len(self.bank.other_features), generator=generator)[: self.other_texts]
                output["other_text_features"] = network.project_texts(self.bank.other_features[drawn].to(self.device))
            loss = self.loss(output, organs[batch].to(self.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        return losses
