"""The bundle folder stands alone: copied without the rest of the repository, its runs work from inside it.

As a Model Zoo user, Model Zoo's CI and MONAI Label load a bundle: the folder alone, commands run from it, the
Python it needs installed as packages (this project's ``medsora`` package for ``text_pipeline``, plus the
packages of metadata.json). Nothing may reach back into the repository by a relative path.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BUNDLE, SMALL_NETWORK

from text_pipeline.organs import ORGANS

GENERATED = ("data", "eval", "__pycache__", "embeddings", "evaluation", "figures", "checkpoint*.pt")


@pytest.fixture(scope="module")
def copied_bundle(tmp_path_factory) -> Path:
    """bundle/ copied alone (without what runs generate) into a folder with nothing of the repository beside it."""
    target = tmp_path_factory.mktemp("elsewhere") / "medsora_bundle"
    shutil.copytree(BUNDLE, target, ignore=shutil.ignore_patterns(*GENERATED))
    return target


def run_in(folder: Path, run_id: str, configs: list[str], *arguments: str, timeout: int = 300):
    """``python -m monai.bundle run`` from ``folder``, with no path of the repository importable."""
    config = configs[0] if len(configs) == 1 else str(configs)
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *arguments]
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def config_values(value: object):
    if isinstance(value, dict):
        for item in value.values():
            yield from config_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from config_values(item)
    elif isinstance(value, str):
        yield value


def code_strings(tree: ast.AST):
    """The string literals of a module that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def test_the_bundle_reaches_no_path_outside_itself_nor_the_text_pipelines_orchestrator():
    configs = [yaml.safe_load(file.read_text()) for file in BUNDLE.glob("configs/*.yaml")]
    strings = [value for config in configs for value in config_values(config)]
    for file in BUNDLE.glob("scripts/**/*.py"):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        strings += list(code_strings(tree))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {"text_pipeline.pipeline", "text_pipeline.cli"} & imported, file
    assert len(strings) > 200
    assert not [value for value in strings if "../" in value or "bundle/" in value or "text_pipeline/" in value]


def test_inferring_runs_in_the_copied_bundle(copied_bundle):
    result = run_in(copied_bundle, "inferring", ["configs/train.yaml", "configs/inference.yaml"])
    scores = json.loads((copied_bundle / "eval" / "inference" / "scores.json").read_text())
    (query,) = scores["queries"]
    assert query["text"] == "dark urine and yellowing of the eyes"
    assert query["ranking"][0]["organ"] == "liver"
    assert (copied_bundle / scores["image"]).resolve().is_relative_to(copied_bundle)  # the example scan, in the copy
    assert (copied_bundle / query["picture"]).resolve() == copied_bundle / "eval" / "inference" / "query_000.png"
    assert "1. liver" in result.stdout


def test_inferring_runs_from_the_repository_root_with_the_bundles_root(tmp_path):
    """The README's other form: the configs' paths from the repository root, and --bundle_root bundle."""
    configs = ["bundle/configs/train.yaml", "bundle/configs/inference.yaml"]
    arguments = ["--bundle_root", "bundle", "--output_dir", str(tmp_path / "out")]
    arguments += ["--dataset_dir", str(tmp_path / "example"), "--feature_cache_dir", str(tmp_path / "cache")]
    run_in(BUNDLE.parent, "inferring", configs, *arguments)
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["queries"][0]["ranking"][0]["organ"] == "liver"
    assert Path(scores["image"]).is_relative_to(tmp_path / "example")


@pytest.mark.slow
def test_evaluating_runs_in_the_copied_bundle(copied_bundle):
    run_in(
        copied_bundle, "evaluating", ["configs/train.yaml", "configs/evaluate.yaml"],
        "--num_phantom_train", "1", "--num_phantom_val", "1", "--queries_file", "['corpus:test','corpus:ood']",
    )  # fmt: skip
    metrics = json.loads((copied_bundle / "eval" / "metrics.json").read_text())
    assert metrics["n_queries"] > 600 and 0 <= metrics["rank1"] <= 100
    validation = json.loads((copied_bundle / "eval" / "validation_metrics.json").read_text())
    assert sum(validation[f"n_{organ}"] for organ in ORGANS) == len(ORGANS)


@pytest.mark.slow
def test_training_runs_in_the_copied_bundle_with_its_shipped_text_artifacts(copied_bundle, tmp_path):
    small = {**SMALL_NETWORK, "num_phantom_train": 2, "num_phantom_val": 1, "num_epochs": 1, "refinement_steps": 5}
    arguments = [f"--{key}={str(value).replace(' ', '')}" for key, value in small.items()]
    arguments += ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")]
    result = run_in(copied_bundle, "training", ["configs/train.yaml"], *arguments)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "per-organ validation results" in result.stdout
    assert (copied_bundle / "models" / "text" / "embeddings").is_dir()  # the text encoder's cache, in the copy
