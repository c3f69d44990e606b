"""A user error ends a bundle run with its message alone, before anything is created or written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import BUNDLE, run_inferring


def test_a_user_error_ends_with_its_message_alone(tmp_path):
    arguments = ["--image", str(tmp_path / "nowhere.nii.gz"), "--label", str(tmp_path / "seg.nii.gz")]
    result = run_inferring(*arguments, "--label_convention", "btcv", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-2:] == [
        f"error: image {tmp_path / 'nowhere.nii.gz'} does not exist",
        "(the full traceback: set MEDSORA_DEBUG=1)",
    ]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_medsora_debug_keeps_the_traceback(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring"]
    command += ["--config_file", "['configs/train.yaml','configs/inference.yaml']", "--image", str(tmp_path / "x")]
    command += ["--label", str(tmp_path / "y"), "--label_convention", "btcv"]
    environment = {**os.environ, "MEDSORA_DEBUG": "1"}
    result = subprocess.run(command, cwd=BUNDLE, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "Failed to evaluate ConfigExpression" in result.stderr
    assert f"image {tmp_path / 'x'} does not exist" in result.stderr


@pytest.mark.parametrize("setting", ["num_epochs", "batch_size"])
def test_training_refuses_a_setting_below_one_by_name_before_writing(tmp_path, setting):
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    command += [f"--{setting}", "-1", "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")]
    command += ["--phantom_dir", str(tmp_path / "phantoms")]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"error: {setting} must be a whole number of at least 1, got -1" in result.stderr
    assert "max_epochs" not in result.stderr
    assert not any(tmp_path.iterdir())  # no TensorBoard file, checkpoint or phantom


def test_evaluating_checks_its_queries_before_the_image_half_writes_anything(tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"text": "jaundice", "organs": ["liver"]}\n{"text": "dark urine",\n', encoding="utf-8")
    command = [sys.executable, "-m", "monai.bundle", "run", "evaluating"]
    command += ["--config_file", "['configs/train.yaml','configs/evaluate.yaml']", "--queries_file", str(queries)]
    command += ["--output_dir", str(tmp_path / "eval"), "--phantom_dir", str(tmp_path / "phantoms")]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"error: {queries}:2: not valid JSON" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["queries.jsonl"]  # no phantoms, no metrics, no logs


def test_a_ct_without_its_label_map_is_refused_before_the_example_scan_is_written(tmp_path):
    result = run_inferring("--image", str(tmp_path / "ct.nii.gz"), "--dataset_dir", str(tmp_path / "example"))
    assert result.returncode == 1
    assert "error: --image given without --label, --label_convention: give them together" in result.stderr
    assert not (tmp_path / "example").exists()
