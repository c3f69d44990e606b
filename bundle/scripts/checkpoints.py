"""Checkpoints: saving them whole, resuming an interrupted training run, loading trained weights."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERNS = ("checkpoint_epoch=*.pt", "checkpoint_final_iteration=*.pt")


def latest_checkpoint(ckpt_dir: str | Path) -> Path:
    """The most recently written training checkpoint (model, optimizer and trainer state) in ``ckpt_dir``."""
    found = [path for pattern in CHECKPOINT_PATTERNS for path in Path(ckpt_dir).glob(pattern)]
    if not found:
        raise FileNotFoundError(
            f"resume is set but ckpt_dir {ckpt_dir} holds no training checkpoint ({' or '.join(CHECKPOINT_PATTERNS)})"
        )
    return max(found, key=lambda path: path.stat().st_mtime_ns)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` that writes every file to a temporary file and renames it into place.

    MONAI turns Ignite's atomic saving off (for file permissions, which Ignite now sets itself), so a run
    killed while saving would leave a truncated checkpoint under its final name, and resuming from it would
    fail. Same arguments as ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True


class TrainingCheckpointSaver(AtomicCheckpointSaver):
    """An :class:`AtomicCheckpointSaver` that also saves the state of the engine it is attached to, as ``trainer``.

    A bundle config cannot name the trainer inside the trainer's own handlers (a circular reference), so
    the engine is added when the handler is attached.
    """

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine
        super().attach(engine)


class ResumeFromLatestCheckpoint:
    """Load the newest training checkpoint of ``ckpt_dir`` into ``load_dict`` and the engine when it starts.

    The trainer's state (epoch and iteration) is part of the checkpoint (see :class:`TrainingCheckpointSaver`),
    so the run continues counting where the interrupted one stopped.

    Args:
        ckpt_dir: folder the training run saves its checkpoints to.
        load_dict: objects to restore besides the engine, e.g. ``{"model": net, "optimizer": opt}``.
        map_location: as in ``torch.load``; default: CPU tensors.
    """

    def __init__(self, ckpt_dir: str | Path, load_dict: Mapping[str, object], map_location: str | None = "cpu"):
        self.ckpt_dir, self.load_dict, self.map_location = Path(ckpt_dir), dict(load_dict), map_location

    def attach(self, engine: Engine) -> None:
        path = latest_checkpoint(self.ckpt_dir)
        logger.info("resuming from %s", path)
        load_dict = {**self.load_dict, "trainer": engine}
        CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location=self.map_location).attach(engine)
        engine.add_event_handler(Events.STARTED, self._report)

    @staticmethod
    def _report(engine: Engine) -> None:
        state = engine.state
        logger.info("resumed at epoch %d, iteration %d of %d epochs", state.epoch, state.iteration, state.max_epochs)


def load_weights(
    network: torch.nn.Module, path: str | Path, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load a ``model.pt`` state dict (``weights_only=True``, strict) into ``network``; errors name the file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a state dict of this network (e.g. trained with other hyperparameters).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights {path} do not exist: train first, or set model_path")
    state = torch.load(path, map_location=map_location, weights_only=True)
    try:
        network.load_state_dict(state)
    except (RuntimeError, AttributeError, TypeError) as error:
        raise ValueError(
            f"{path} does not hold weights of this network (were its hyperparameters changed?): {error}"
        ) from None
    return network
