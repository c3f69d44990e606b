"""The text MLP: f_bar = MLP(f) with a head of one sigmoid output per organ (method.md §2).

It is trained with binary cross-entropy against one kind of label of :mod:`text_pipeline.labels` (hard, the
paper's anchor soft labels, or calibrated); all go through :func:`train_text_mlp`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from text_pipeline.anchors import torch_threads
from text_pipeline.encoders import TextEncoder, make_encoder
from text_pipeline.files import write_atomically
from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class TextMLP(nn.Module):
    """f_bar = MLP(f) and the organ head (method.md §2): Linear -> ReLU -> Dropout gives f_bar, a Linear
    head gives one logit per organ. The paper does not give the sizes.

    Args:
        in_dim: dimension of the text embeddings f.
        hidden_dim: dimension of f_bar.
        num_organs: number of sigmoid outputs.
        dropout: dropout on f_bar during training.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, num_organs: int = len(ORGANS), dropout: float = 0.1):
        super().__init__()
        self.config = {"in_dim": in_dim, "hidden_dim": hidden_dim, "num_organs": num_organs, "dropout": dropout}
        self.body = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden_dim, num_organs)
        self.extra: dict[str, Any] = {}

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """f_bar, [N, hidden_dim]: the text feature that method.md §4 projects into the image space."""
        return self.body(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Organ logits [N, num_organs] of text embeddings ``features`` [N, in_dim]."""
        return self.head(self.body(features))

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Organ probabilities sigmoid(logits), [N, num_organs], each in [0, 1] independently.

        Runs in eval mode (no dropout) and restores the module's mode afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self(torch.as_tensor(features, dtype=torch.float32)))
        finally:
            self.train(was_training)


def text_mlp_loss(model: TextMLP, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the MLP's sigmoid outputs against the (soft or hard) targets (method.md §2),
    averaged over texts and organs."""
    return F.binary_cross_entropy_with_logits(model(features), targets)


def train_text_mlp(
    features: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    *,
    epochs: int = 500,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    hidden_dim: int = 256,
    dropout: float = 0.1,
    progress: bool = True,
    num_threads: int | None = 1,
) -> TextMLP:
    """Train a :class:`TextMLP` with BCE on ``targets`` (paper: 500 epochs, batch 32, Adam, lr 1e-3).

    Every kind of label of :mod:`text_pipeline.labels` (hard, the paper's anchors, calibrated) comes through
    here. Deterministic for a given ``seed`` (initial weights, shuffling and dropout); the
    global torch RNG is left untouched. ``epochs=0`` returns the untrained, seeded model.

    Args:
        features: text embeddings f, [N, in_dim].
        targets: per-organ targets in [0, 1], [N, num_organs].
        epochs: passes over the texts.
        batch_size: texts per Adam step (shuffled every epoch; the last batch may be smaller).
        lr: Adam's learning rate.
        seed: random seed.
        hidden_dim: dimension of f_bar.
        dropout: dropout on f_bar.
        progress: log the mean training loss about ten times during training.
        num_threads: torch threads while training (batches of 32 run fastest on one; see
            :func:`text_pipeline.anchors.torch_threads`); ``None`` keeps the current number.

    Returns:
        The trained model, in eval mode.
    """
    features = torch.as_tensor(features, dtype=torch.float32, device="cpu").detach()
    targets = torch.as_tensor(targets, dtype=torch.float32, device="cpu").detach()
    if features.ndim != 2 or targets.ndim != 2 or features.shape[0] != targets.shape[0] or features.shape[0] == 0:
        raise ValueError(
            f"need features [N, d] and targets [N, O] with N > 0, "
            f"got {tuple(features.shape)} and {tuple(targets.shape)}"
        )
    if not (torch.isfinite(features).all() and torch.isfinite(targets).all()):
        raise ValueError("features or targets contain NaN or infinite values")
    if targets.min() < 0 or targets.max() > 1:
        raise ValueError(f"targets must lie in [0, 1], got [{targets.min():.4g}, {targets.max():.4g}]")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")

    num_texts = features.shape[0]
    log_every = max(1, epochs // 10)
    start_time = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch_threads(num_threads):
        torch.manual_seed(seed)
        model = TextMLP(features.shape[1], hidden_dim=hidden_dim, num_organs=targets.shape[1], dropout=dropout)
        # fused: one Adam kernel per step instead of a dozen small ops, whose overhead dominates tiny batches
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(num_texts)
            shuffled_features, shuffled_targets = features[order], targets[order]
            log_this_epoch = progress and ((epoch + 1) % log_every == 0 or epoch == 0)
            epoch_loss = torch.zeros(())
            for start in range(0, num_texts, batch_size):
                batch = slice(start, start + batch_size)
                batch_targets = shuffled_targets[batch]
                loss = text_mlp_loss(model, shuffled_features[batch], batch_targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if log_this_epoch:
                    epoch_loss += loss.detach() * batch_targets.shape[0]
            if log_this_epoch:
                logger.info("text MLP epoch %d/%d: BCE %.4f", epoch + 1, epochs, epoch_loss.item() / num_texts)
    if progress:
        logger.info("text MLP trained on %d texts in %.1f s", num_texts, time.perf_counter() - start_time)
    return model.eval()


def _plain(value: Any, where: str) -> Any:
    """``value`` if it is made of what ``torch.load(weights_only=True)`` reads back (JSON-like types)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item, where) for item in value]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"{where} must hold only str, int, float, bool, None, lists and str-keyed dicts")


def save_text_model(path: str | Path, model: TextMLP, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Save a :class:`TextMLP` (config, weights, organ order and ``extra``) atomically with ``torch.save``.

    Args:
        path: the ``.pt`` file to write.
        model: the model.
        extra: JSON-like metadata (e.g. the encoder's name and the label kind); default ``model.extra``.
    """
    extra = model.extra if extra is None else extra
    content = {
        "format_version": FORMAT_VERSION,
        "config": dict(model.config),
        "organs": list(ORGANS) if model.config["num_organs"] == len(ORGANS) else None,
        "extra": _plain(dict(extra), "extra"),
        "state_dict": {key: value.detach().cpu().clone() for key, value in model.state_dict().items()},
    }
    return write_atomically(path, lambda tmp: torch.save(content, tmp))


def load_text_model_and_encoder(path: str | Path, cache_dir: str | Path | None = None) -> tuple[TextMLP, TextEncoder]:
    """A text MLP saved by :func:`save_text_model` and the encoder it was trained on (``extra["encoder"]``; a
    fine-tuned encoder's file is found beside the model), optionally caching embeddings in ``cache_dir``.

    Raises:
        ValueError: the model does not record its encoder (see also :func:`load_text_model`).
    """
    model = load_text_model(path)
    spec = model.extra.get("encoder")
    if not spec:
        raise ValueError(f"text model {path} does not record the encoder it was trained with")
    return model, make_encoder(spec, cache_dir=cache_dir, relative_to=Path(path).parent)


def load_text_model(path: str | Path) -> TextMLP:
    """Load a model written by :func:`save_text_model` (``weights_only=True``), in eval mode, its metadata in
    ``model.extra``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a saved text MLP, or its organ order differs from :data:`ORGANS`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text model {path} does not exist")
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a text MLP saved by save_text_model (format {FORMAT_VERSION})")
    if content["organs"] is not None and tuple(content["organs"]) != ORGANS:
        raise ValueError(f"{path} orders its organs {content['organs']}, this code {list(ORGANS)}")
    model = TextMLP(**content["config"])
    model.load_state_dict(content["state_dict"])
    model.extra = dict(content["extra"])
    return model.eval()
