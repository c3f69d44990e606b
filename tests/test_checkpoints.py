"""Checkpoints are written whole or not at all, and resuming finds the newest one."""

from __future__ import annotations

import os
import time

import pytest
import torch
from ignite.engine import Engine
from scripts.checkpoints import AtomicCheckpointSaver, TrainingCheckpointSaver, latest_checkpoint


def half_writing_save(obj, f, **kwargs):
    """A torch.save that dies half way through, as a killed process would."""
    (f.write if hasattr(f, "write") else open(f, "wb").write)(b"PK\x03\x04 half a checkpoint")
    raise KeyboardInterrupt("killed while saving")


@pytest.mark.parametrize("saver", [TrainingCheckpointSaver, AtomicCheckpointSaver])
def test_a_save_killed_half_way_leaves_no_checkpoint_under_its_name(tmp_path, monkeypatch, saver):
    network = torch.nn.Linear(2, 2)
    engine = Engine(lambda engine, batch: None)
    saver(save_dir=str(tmp_path), save_dict={"model": network}, save_interval=1, n_saved=1).attach(engine)
    monkeypatch.setattr(torch, "save", half_writing_save)
    with pytest.raises(KeyboardInterrupt):
        engine.run([0, 1], max_epochs=1)
    assert not list(tmp_path.glob("*.pt"))


def test_training_saver_stores_the_engine_state(tmp_path):
    engine = Engine(lambda engine, batch: None)
    TrainingCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(2, 2)}, save_interval=1).attach(
        engine
    )
    engine.run([0, 1, 2], max_epochs=2)
    state = torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 6 and "model" in state


def test_latest_checkpoint_is_the_newest_written(tmp_path):
    for index, name in enumerate(["checkpoint_epoch=3.pt", "checkpoint_final_iteration=12.pt", "model.pt"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, ns=(time.time_ns(), time.time_ns() + index * 10**9))
    assert latest_checkpoint(tmp_path).name == "checkpoint_final_iteration=12.pt"
    with pytest.raises(FileNotFoundError, match="holds no training checkpoint"):
        latest_checkpoint(tmp_path / "empty")
