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


def validation_run(ckpt_dir, val_losses: dict[int, float], max_epochs: int, resume: bool = False, saver: bool = True):
    """A tiny MONAI trainer with the bundle's checkpoint handlers, validated every epoch; the key validation
    metric of epoch e (a loss: lower is better) is ``val_losses[e]``. Returns the trainer, evaluator, network."""
    from ignite.metrics import Average
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import ValidationHandler
    from scripts.checkpoints import ResumeFromLatestCheckpoint

    torch.manual_seed(0)
    network = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    loader = DataLoader(Dataset([{"image": torch.ones(2), "label": torch.tensor(0)}] * 2), batch_size=2)
    val_handlers = [
        AtomicCheckpointSaver(
            save_dir=str(ckpt_dir),
            save_dict={"model": network},
            save_key_metric=True,
            key_metric_filename="model.pt",
            key_metric_negative_sign=True,
        )  # fmt: skip
    ]
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=loader, network=network, metric_cmp_fn=lambda current, best: current < best,
        key_val_metric={"val_loss": Average(output_transform=lambda output: val_losses[trainer.state.epoch])},
        val_handlers=val_handlers if saver else None,
    )  # fmt: skip
    handlers = [ResumeFromLatestCheckpoint(ckpt_dir, {"model": network, "optimizer": optimizer})] if resume else []
    handlers += [
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
        TrainingCheckpointSaver(
            save_dir=str(ckpt_dir),
            save_dict={"model": network, "optimizer": optimizer},
            save_interval=1,
            n_saved=1,
            save_final=True,
        ),  # fmt: skip
    ]
    trainer = SupervisedTrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=loader, network=network, optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(), train_handlers=handlers,
    )  # fmt: skip
    trainer.run()
    return trainer, evaluator, network


def saved_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(first, second) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_a_resumed_run_replaces_model_pt_only_with_a_better_validation(tmp_path):
    _, evaluator, network = validation_run(tmp_path, {1: 0.5, 2: 0.3}, max_epochs=2)
    model = tmp_path / "model.pt"
    best = saved_weights(model)
    assert same_weights(best, network.state_dict())  # epoch 2, the better one
    record = saved_weights(latest_checkpoint(tmp_path))["best_validation"]  # loads with weights_only=True
    (validator,) = record["validators"]
    assert validator["key_metric_name"] == "val_loss"
    assert (validator["best_metric"], validator["best_metric_epoch"]) == (pytest.approx(0.3), 2)
    assert [score for score, _ in validator["key_metric_savers"][0]["_saved"]] == [pytest.approx(-0.3)]
    stamp = model.stat().st_mtime_ns

    # epoch 3 is worse than epoch 2: model.pt stays, though the weights moved on
    _, evaluator, network = validation_run(tmp_path, {3: 0.4}, max_epochs=3, resume=True)
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (pytest.approx(0.3), 2)
    assert not same_weights(best, network.state_dict())
    assert same_weights(saved_weights(model), best) and model.stat().st_mtime_ns == stamp

    # epoch 4 beats them all: model.pt is replaced, and the record moves on
    _, evaluator, network = validation_run(tmp_path, {4: 0.2}, max_epochs=4, resume=True)
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (pytest.approx(0.2), 4)
    assert same_weights(saved_weights(model), network.state_dict())
    (validator,) = saved_weights(latest_checkpoint(tmp_path))["best_validation"]["validators"]
    assert (validator["best_metric"], validator["best_metric_epoch"]) == (pytest.approx(0.2), 4)


def test_resuming_a_checkpoint_without_the_record_warns_and_carries_on(tmp_path, caplog):
    validation_run(tmp_path, {1: 0.3}, max_epochs=1)
    for path in tmp_path.glob("checkpoint_*.pt"):  # as written before the record was kept
        checkpoint = saved_weights(path)
        del checkpoint["best_validation"]
        torch.save(checkpoint, path)
    _, evaluator, network = validation_run(tmp_path, {2: 0.4}, max_epochs=2, resume=True)
    assert "holds no record of the best validation" in caplog.text
    assert evaluator.state.best_metric_epoch == 2  # nothing to compare with: the worse epoch wins, as before
    assert same_weights(saved_weights(tmp_path / "model.pt"), network.state_dict())


def test_a_validator_without_the_saver_still_gets_its_best_metric_back(tmp_path, caplog):
    """Under multi_gpu_train.yaml, ranks above 0 validate without the savers."""
    validation_run(tmp_path, {1: 0.3}, max_epochs=1)
    model = saved_weights(tmp_path / "model.pt")
    _, evaluator, _ = validation_run(tmp_path, {2: 0.4}, max_epochs=2, resume=True, saver=False)
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (pytest.approx(0.3), 1)
    assert same_weights(saved_weights(tmp_path / "model.pt"), model)
    assert "WARNING" not in caplog.text


def test_a_changed_key_metric_is_not_compared_with_the_recorded_one(tmp_path, caplog):
    from scripts.checkpoints import BestValidation

    validation_run(tmp_path, {1: 0.3}, max_epochs=1)
    trainer, evaluator, _ = validation_run(tmp_path / "other", {1: 0.9}, max_epochs=1)
    record = saved_weights(latest_checkpoint(tmp_path))["best_validation"]
    record["validators"][0]["key_metric_name"] = "val_accuracy"
    BestValidation(trainer).load_state_dict(record)
    assert "checkpoint's key metric is val_accuracy" in caplog.text
    assert evaluator.state.best_metric == pytest.approx(0.9)


def test_model_pt_is_replaced_in_one_rename_never_deleted_first(tmp_path):
    network = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": network}, save_key_metric=True, key_metric_filename="model.pt",
        save_interval=1, n_saved=1,
    )  # fmt: skip
    (tmp_path / "model.pt").write_bytes(b"best so far")
    saver._key_metric_checkpoint.save_handler.remove("model.pt")  # what Ignite calls before saving a better one
    assert (tmp_path / "model.pt").read_bytes() == b"best so far"
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"x")
    saver._interval_checkpoint.save_handler.remove("checkpoint_epoch=1.pt")  # other files rotate as before
    assert not (tmp_path / "checkpoint_epoch=1.pt").exists()
