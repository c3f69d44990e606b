"""Encoder fine-tuning (text_pipeline.fine_tuning): adapters, training, resuming a killed run, bad encoders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_bert_dir
from torch import nn

from text_pipeline.encoders import TransformersEncoder, make_encoder
from text_pipeline.fine_tuning import (
    CHECKPOINT_FILE,
    FineTuneSettings,
    LowRankAdapter,
    TunedEncoder,
    add_adapters,
    fine_tune_encoder,
    merge_adapters,
    read_tuned_encoder,
)

WORDS = ["yellow skin", "dark urine", "knee pain", "jaundice", "yellow and dark", "pain with jaundice"]
TEXTS = [f"{a} {b}" for a in WORDS for b in WORDS]  # 36 texts
ORGAN_OF = {"yellow": 0, "jaundice": 0, "dark": 1, "urine": 1}  # two organs; knee pain: neither


def targets_of(texts: list[str]) -> torch.Tensor:
    targets = torch.zeros(len(texts), 2)
    for row, text in enumerate(texts):
        for word, organ in ORGAN_OF.items():
            if word in text.split():
                targets[row, organ] = 1.0
    return targets


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny_bert_dir(tmp_path_factory.mktemp("models") / "tiny-bert")


def test_an_adapter_starts_as_its_layer_and_merges_into_one():
    base = nn.Linear(8, 5)
    adapter = LowRankAdapter(base, rank=2, alpha=4.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 8)
    torch.testing.assert_close(adapter(x), base(x))  # B starts at zero
    with torch.no_grad():
        adapter.up.normal_()
    assert not torch.allclose(adapter(x), base(x))
    torch.testing.assert_close(adapter.merged()(x), adapter(x), rtol=1e-5, atol=1e-5)
    assert not base.weight.requires_grad and adapter.down.requires_grad and adapter.up.requires_grad


def test_adapters_go_on_every_linear_layer_but_the_pooler(tiny_bert):
    model = TransformersEncoder(tiny_bert).module
    names = add_adapters(model, rank=2, alpha=4.0)
    assert len(names) == 2 * 6 and not any("pooler" in name for name in names)  # q, k, v, out, up, down per layer
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert len(trainable) == 2 * len(names) and all(name.endswith((".down", ".up")) for name in trainable)
    merge_adapters(model)
    assert not any(isinstance(module, LowRankAdapter) for module in model.modules())


def test_fine_tuning_learns_the_organ_sets_and_the_tuned_encoder_is_used_by_its_spec(tiny_bert, tmp_path):
    spec = f"transformers:{tiny_bert}"
    settings = FineTuneSettings(epochs=12, batch_size=8, lr=1e-2, rank=4)
    out = tmp_path / "text" / "encoder_tuned.pt"
    summary = fine_tune_encoder(spec, TEXTS, targets_of(TEXTS), out, settings)
    assert summary["texts"] == len(TEXTS) and summary["resumed_after_epoch"] == 0
    per_layer = 4 * 4 * (32 + 32) + 2 * 4 * (32 + 64)  # rank 4: q, k, v, out (32 -> 32), up and down (32 <-> 64)
    assert summary["adapter_parameters"] == 2 * per_layer
    assert out.is_file() and not (out.parent / CHECKPOINT_FILE).exists()
    content = read_tuned_encoder(out)
    assert content["base"] == spec and content["settings"]["rank"] == 4

    before, after = make_encoder(spec), make_encoder("tuned:encoder_tuned.pt", relative_to=out.parent)
    assert isinstance(after, TunedEncoder) and after.name.startswith(f"tuned:{before.name}@")

    assert not np.allclose(after.encode(TEXTS[:4]), before.encode(TEXTS[:4]), atol=1e-4)
    targets = targets_of(TEXTS)
    rate = targets.mean(0).clamp(1e-6, 1 - 1e-6)  # predicting each organ's base rate: the loss of learning nothing
    base_rate_bce = float(torch.nn.functional.binary_cross_entropy(rate.expand_as(targets), targets))
    assert summary["final_bce"] < 0.5 * base_rate_bce


def test_a_second_run_on_the_same_texts_keeps_the_tuned_encoder(tiny_bert, tmp_path):
    spec, settings = f"transformers:{tiny_bert}", FineTuneSettings(epochs=1, batch_size=8, rank=2)
    out = tmp_path / "encoder_tuned.pt"
    fine_tune_encoder(spec, TEXTS, targets_of(TEXTS), out, settings)
    stamp = out.stat().st_mtime_ns
    assert fine_tune_encoder(spec, TEXTS, targets_of(TEXTS), out, settings)["reused"] is True
    assert out.stat().st_mtime_ns == stamp
    other = fine_tune_encoder(spec, TEXTS[:20], targets_of(TEXTS[:20]), out, settings)
    assert "reused" not in other and out.stat().st_mtime_ns != stamp


KILLABLE = """
import sys, time
import torch
from text_pipeline import fine_tuning
from test_fine_tuning import TEXTS, targets_of

spec, out, epochs, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
original = fine_tuning.write_torch_atomically
def slow_write(path, content):  # a pause after each checkpoint, so that the test can kill the run midway
    original(path, content)
    time.sleep(pause)
fine_tuning.write_torch_atomically = slow_write
settings = fine_tuning.FineTuneSettings(epochs=epochs, batch_size=8, lr=1e-2, rank=2)
summary = fine_tuning.fine_tune_encoder(spec, TEXTS, targets_of(TEXTS), out, settings)
print("resumed after", summary["resumed_after_epoch"])
"""


def run_killable(tiny_bert: Path, out: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    command = [sys.executable, "-c", KILLABLE, f"transformers:{tiny_bert}", str(out), "4", str(pause)]
    return subprocess.Popen(command, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_run_killed_midway_resumes_from_its_last_epoch_and_ends_as_an_unbroken_run(tiny_bert, tmp_path):
    unbroken = tmp_path / "unbroken" / "encoder_tuned.pt"
    unbroken.parent.mkdir()
    assert run_killable(tiny_bert, unbroken, 0.0).wait(timeout=300) == 0

    killed = tmp_path / "killed" / "encoder_tuned.pt"
    killed.parent.mkdir()
    process = run_killable(tiny_bert, killed, 30.0)
    checkpoint = killed.parent / CHECKPOINT_FILE
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert checkpoint.exists() and not killed.exists()  # one epoch kept, no tuned encoder half written
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1

    resumed = run_killable(tiny_bert, killed, 0.0)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "resumed after 1" in stdout
    assert not checkpoint.exists() and sorted(path.name for path in killed.parent.iterdir()) == [killed.name]
    first, second = read_tuned_encoder(unbroken)["adapters"], read_tuned_encoder(killed)["adapters"]
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-6)


def test_a_checkpoint_of_other_settings_or_a_broken_one_is_started_over(tiny_bert, tmp_path, caplog):
    spec, out = f"transformers:{tiny_bert}", tmp_path / "encoder_tuned.pt"
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    summary = fine_tune_encoder(spec, TEXTS, targets_of(TEXTS), out, FineTuneSettings(epochs=1, batch_size=8, rank=2))
    assert summary["resumed_after_epoch"] == 0 and f"{tmp_path / CHECKPOINT_FILE} is unreadable" in caplog.text


def test_an_encoder_directory_that_is_not_a_transformers_model_is_a_clear_error(tmp_path, tiny_bert):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty} is not a transformers model directory: it has no config.json"):
        TransformersEncoder(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ValueError, match=f"{broken} is not a usable transformers model directory"):
        TransformersEncoder(broken)
    with pytest.raises(ValueError, match="is not a tuned-encoder file"):
        (tmp_path / "bad.pt").write_bytes(b"garbage")
        read_tuned_encoder(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="run `python -m text_pipeline fine-tune` first"):
        make_encoder("tuned:missing.pt", relative_to=tmp_path)


def test_the_command_refuses_a_folder_that_is_not_a_model_and_writes_nothing(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    artifacts = tmp_path / "artifacts"
    result = subprocess.run(
        [sys.executable, "-m", "text_pipeline", "fine-tune", "--encoder", f"transformers:{empty}"]
        + ["--artifacts", str(artifacts)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert f"error: {empty} is not a transformers model directory: it has no config.json" in result.stderr
    assert "Traceback" not in result.stderr and not artifacts.exists()


def test_the_tuned_encoder_embeds_as_its_adapters_say(tiny_bert, tmp_path):
    spec, out = f"transformers:{tiny_bert}", tmp_path / "encoder_tuned.pt"
    settings = FineTuneSettings(epochs=2, batch_size=8, lr=1e-2, rank=2)
    fine_tune_encoder(spec, TEXTS, targets_of(TEXTS), out, settings)
    assert 0 < settings.interpolation < 1  # only a share of the learned update is applied
    unmerged = TransformersEncoder(tiny_bert)
    add_adapters(unmerged.module, rank=2, alpha=settings.alpha * settings.interpolation)  # the same share, unmerged
    unmerged.module.load_state_dict(read_tuned_encoder(out)["adapters"], strict=False)
    texts = ["yellow skin", "knee pain with dark urine"]
    np.testing.assert_allclose(TunedEncoder(out).encode(texts), unmerged.encode(texts), atol=1e-5)
    full = TransformersEncoder(tiny_bert)
    add_adapters(full.module, rank=2, alpha=settings.alpha)
    full.module.load_state_dict(read_tuned_encoder(out)["adapters"], strict=False)
    assert not np.allclose(TunedEncoder(out).encode(texts), full.encode(texts), atol=1e-4)
