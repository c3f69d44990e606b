"""Checkpoints: saving them whole, resuming an interrupted training run, loading trained weights."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver, ValidationHandler

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


def _keep_file(filename: str) -> None:
    """The ``remove`` of a saver with a fixed file name: the atomic save that follows replaces the file."""


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` that writes every file to a temporary file and renames it into place.

    MONAI turns Ignite's atomic saving off (for file permissions, which Ignite now sets itself), so a run
    killed while saving would leave a truncated checkpoint under its final name, and resuming from it would
    fail. A file of fixed name (``key_metric_filename``, e.g. ``model.pt``) is replaced by the rename rather than
    deleted before the new one is written, so there is always one. Same arguments as
    ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True
                if getattr(checkpoint.save_handler, "filename", None) is not None:
                    checkpoint.save_handler.remove = _keep_file


def _attached(engine: Engine, kind: type) -> list:
    """The objects of type ``kind`` attached to ``engine`` as handlers (themselves callable, or by a bound method),
    in the order of Ignite's handler registry."""
    found: list = []
    for handlers in engine._event_handlers.values():  # Ignite has no public list of an engine's handlers
        for handler, _, _ in handlers:
            parent = getattr(handler, "_parent", None)  # Ignite wraps a handler of a filtered event, e.g. every=2
            handler = parent() if parent is not None else handler
            owner = getattr(handler, "__self__", handler)
            if isinstance(owner, kind) and all(owner is not seen for seen in found):
                found.append(owner)
    return found


def _plain(value: Any) -> Any:
    """A tensor or NumPy scalar as a Python number, so that the checkpoint loads with ``weights_only=True``."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


class BestValidation:
    """The record of the best validation so far of a trainer's validators, as an entry of its training checkpoint.

    Two things decide whether a validation epoch replaces the best weights (``model.pt``), and a resumed run must
    get both back: each validator's ``state.best_metric`` and ``best_metric_epoch`` (MONAI's workflows compare
    every epoch's key metric with them), and the list of saved scores of each key-metric ``CheckpointSaver``
    attached to the validator (Ignite's ``Checkpoint`` replaces its file only with a better score; empty, any
    score wins). The validators are those of the ``ValidationHandler`` handlers attached to ``trainer``, looked up
    when the state is read or restored (so after every handler is attached).

    Args:
        trainer: the training engine.
    """

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer

    def validators(self) -> list[Engine]:
        handlers = _attached(self.trainer, ValidationHandler)
        return [handler.validator for handler in handlers if handler.validator is not None]

    @staticmethod
    def key_metric_savers(validator: Engine) -> list[CheckpointSaver]:
        return [saver for saver in _attached(validator, CheckpointSaver) if saver._key_metric_checkpoint is not None]

    def state_dict(self) -> dict[str, Any]:
        records = []
        for validator in self.validators():
            state = validator.state
            savers = [saver._key_metric_checkpoint.state_dict() for saver in self.key_metric_savers(validator)]
            records.append(
                {
                    "key_metric_name": getattr(state, "key_metric_name", None),
                    "best_metric": _plain(getattr(state, "best_metric", None)),
                    "best_metric_epoch": _plain(getattr(state, "best_metric_epoch", None)),
                    "key_metric_savers": [
                        {key: [(_plain(score), str(name)) for score, name in saved] for key, saved in saver.items()}
                        for saver in savers
                    ],
                }
            )
        return {"validators": records}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        validators, records = self.validators(), list(state_dict.get("validators", []))
        if len(records) != len(validators):
            logger.warning(
                "the checkpoint records the best of %d validators, the trainer has %d: restoring the first %d",
                len(records),
                len(validators),
                min(len(records), len(validators)),
            )
        for validator, record in zip(validators, records):
            name = getattr(validator.state, "key_metric_name", None)
            if record.get("key_metric_name") != name:
                logger.warning(
                    "not restoring the best validation: the checkpoint's key metric is %s, the validation's is %s",
                    record.get("key_metric_name"),
                    name,
                )
                continue
            validator.state.best_metric = record["best_metric"]
            validator.state.best_metric_epoch = record["best_metric_epoch"]
            savers, saved = self.key_metric_savers(validator), record.get("key_metric_savers", [])
            for saver, saver_state in zip(savers, saved):
                saver.load_state_dict(saver_state)
            if len(savers) > len(saved):
                logger.warning("%d key-metric savers have no saved state in the checkpoint", len(savers) - len(saved))


class TrainingCheckpointSaver(AtomicCheckpointSaver):
    """An :class:`AtomicCheckpointSaver` that also saves the state of the engine it is attached to, as ``trainer``,
    and its validation's best so far (:class:`BestValidation`), as ``best_validation``.

    A bundle config cannot name the trainer inside the trainer's own handlers (a circular reference), so
    both are added when the handler is attached.
    """

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine
        self.save_dict["best_validation"] = BestValidation(engine)
        super().attach(engine)


class ResumeFromLatestCheckpoint:
    """Load the newest training checkpoint of ``ckpt_dir`` into ``load_dict`` and the engine when it starts.

    The trainer's state (epoch and iteration) is part of the checkpoint (see :class:`TrainingCheckpointSaver`),
    so the run continues counting where the interrupted one stopped; so is the best validation so far
    (:class:`BestValidation`), restored into the validators of the engine's ``ValidationHandler`` and their
    key-metric savers, so that only a validation better than any before the interruption replaces ``model.pt``.

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
        engine.add_event_handler(Events.STARTED, self._restore_best_validation, path)
        engine.add_event_handler(Events.STARTED, self._report)

    @staticmethod
    def _restore_best_validation(engine: Engine, path: Path) -> None:
        record = torch.load(path, map_location="cpu", weights_only=True).get("best_validation")
        if record is None:
            logger.warning(
                "%s holds no record of the best validation (written before it was kept): the first validation "
                "after resuming replaces model.pt, better or not",
                path,
            )
            return
        best = BestValidation(engine)
        best.load_state_dict(record)
        for validator in best.validators():
            state = validator.state
            if getattr(state, "best_metric_epoch", -1) != -1:
                name, value, epoch = state.key_metric_name, state.best_metric, state.best_metric_epoch
                logger.info("restored the best validation so far: %s %.4g at epoch %d", name, value, epoch)

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
        ValueError: the file cannot be read as weights, or is not a state dict of this network (e.g. trained with
            other hyperparameters).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights {path} do not exist: train first, or set model_path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle, zip and EOF errors, whose torch messages point at torch rather than the file
        raise ValueError(
            f"model weights {path} cannot be read as a PyTorch state dict ({type(error).__name__}): is it a model.pt, "
            "and whole?"
        ) from error
    try:
        network.load_state_dict(state)
    except (RuntimeError, AttributeError, TypeError) as error:
        raise ValueError(
            f"{path} does not hold weights of this network (were its hyperparameters changed?): {error}"
        ) from None
    return network
