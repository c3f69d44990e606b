"""`python -m text_pipeline`: the offline build on the shipped corpus, evaluation, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from text_pipeline.corpus import read_corpus
from text_pipeline.labels import LABEL_KINDS
from text_pipeline.organs import ORGANS

TARGETS = {"rank1": 70.0, "rank3": 93.0, "mAP": 80.0, "ood_auroc": 93.0}  # issue 9, on the test split + OOD queries


def text_pipeline(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "text_pipeline", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The default build (fine-tuned encoder, every kind of label), as the shipped artifacts were made."""
    artifacts = tmp_path_factory.mktemp("text_artifacts")
    result = text_pipeline("build", "--artifacts", str(artifacts))
    assert result.returncode == 0, result.stderr[-4000:]
    return artifacts, result


@pytest.mark.slow
def test_build_writes_every_artifact_from_the_shipped_corpus(built):
    artifacts, result = built
    names = ["anchors.pt", "encoder_tuned.pt", "manifest.json", "evaluation/metrics.json"]
    for name in names + [f"text_mlp_{kind}.pt" for kind in LABEL_KINDS]:
        assert (artifacts / name).is_file(), name
    assert not (artifacts / "fine_tuning_checkpoint.pt").exists()
    for name in ("tsne_text_embeddings.png", "label_correlation_hard_vs_soft.png"):
        assert (artifacts / "figures" / name).read_bytes().startswith(b"\x89PNG")
    anchors = torch.load(artifacts / "anchors.pt", weights_only=True)
    assert tuple(anchors["v_pos"].shape) == tuple(anchors["v_neg"].shape) == (len(ORGANS), 384)
    assert anchors["encoder"] == "tuned:encoder_tuned.pt"
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["corpus"]["train"] == len(read_corpus("train"))
    assert manifest["fine_tuning"]["texts"] == manifest["corpus"]["train"] + manifest["corpus"]["out_of_domain_train"]
    assert manifest["default_labels"] == "calibrated" and set(manifest["seconds"]) >= {"fine_tune", "total"}
    assert "rank1" in result.stdout and all(kind in result.stdout for kind in LABEL_KINDS)


@pytest.mark.slow
def test_build_reaches_the_targets_and_its_labels_rank_better_than_hard_labels(built):
    artifacts, _ = built
    metrics = json.loads((artifacts / "evaluation" / "metrics.json").read_text())
    for kind in LABEL_KINDS:
        assert metrics[kind]["rank1"] > 3 * 100 / len(ORGANS)  # chance is 14.3 %
        assert metrics[kind]["rank3"] >= metrics[kind]["rank2"] >= metrics[kind]["rank1"]
        assert 50 < metrics[kind]["ood_auroc"] <= 100
    calibrated, hard = metrics["calibrated"], metrics["hard"]
    assert all(calibrated[key] >= target for key, target in TARGETS.items()), calibrated
    # Rank-1 of the two is within two points either way (the README's table); ranking all organs is where they differ
    assert calibrated["mAP"] > hard["mAP"] + 2 and calibrated["ood_auroc"] > hard["ood_auroc"] + 10
    assert metrics["labels"] == "calibrated" and metrics["n_queries"] == len(metrics["queries"])


@pytest.mark.slow
def test_evaluate_any_queries_file_with_out_of_domain_queries(built, tmp_path):
    artifacts, _ = built
    queries = tmp_path / "queries.jsonl"
    rows = [
        {"text": "dark urine and yellow eyes, pale stools", "organs": ["liver", "gallbladder"], "primary": "liver"},
        {"text": "vomiting blood after taking ibuprofen for a week", "organs": ["stomach"]},
        {"text": "pain in the knee joint", "organs": []},
        {"text": "migraine with aura", "organs": []},
    ]
    queries.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "eval"
    result = text_pipeline("evaluate", "--queries", str(queries), "--out", str(out), "--artifacts", str(artifacts))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_queries"] == 4 and all("ood_auroc" in metrics[kind] for kind in LABEL_KINDS)
    scores = metrics["queries"][0]["calibrated_scores"]
    assert set(scores) == set(ORGANS) and all(0.0 <= value <= 1.0 for value in scores.values())


@pytest.mark.slow
def test_malformed_queries_file_is_named_with_its_line_and_writes_nothing(built, tmp_path):
    artifacts, _ = built
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"text": "yellow eyes", "organs": ["liver"]}\n{"text": oops}\n')
    out = tmp_path / "eval"
    result = text_pipeline("evaluate", "--queries", str(queries), "--out", str(out), "--artifacts", str(artifacts))
    assert result.returncode == 2
    assert f"{queries}:2: not valid JSON" in result.stderr
    assert not out.exists()


def test_remote_stage_without_an_api_key_names_the_variable(tmp_path):
    chunks = tmp_path / "chunks.jsonl"
    chunks.write_text(json.dumps({"chunk_id": "c1", "text": "The patient had yellow eyes.", "organ": "liver"}) + "\n")
    env = {key: value for key, value in os.environ.items() if key != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "text_pipeline", "filter", "--chunks", str(chunks), "--out", str(tmp_path / "out.jsonl")]
        + ["--base-url", "http://127.0.0.1:9/v1", "--model", "any"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2 and "OPENAI_API_KEY" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_stages_one_by_one_reach_the_same_artifacts(tmp_path):
    artifacts = str(tmp_path / "artifacts")
    for stage in (["embed"], ["anchors"], ["train", "--epochs", "3"], ["figures"]):
        result = text_pipeline(*stage, "--artifacts", artifacts)
        assert result.returncode == 0, (stage, result.stderr[-3000:])
    names = ["anchors.pt", "figures/tsne_text_embeddings.png"] + [f"text_mlp_{kind}.pt" for kind in LABEL_KINDS]
    for name in names:
        assert (tmp_path / "artifacts" / name).is_file(), name
    assert torch.load(tmp_path / "artifacts" / "anchors.pt", weights_only=True)["encoder"] == "minilm"
    assert list((tmp_path / "artifacts" / "embeddings").iterdir())


def test_train_before_anchors_says_which_stage_is_missing(tmp_path):
    result = text_pipeline("train", "--epochs", "1", "--artifacts", str(tmp_path))
    assert result.returncode == 2 and "run `python -m text_pipeline anchors` (or build) first" in result.stderr


@pytest.mark.slow
def test_artifacts_refuse_embeddings_of_another_encoder(built):
    from text_pipeline.pipeline import load_anchors

    artifacts, _ = built
    assert load_anchors(artifacts, "tuned:encoder_tuned.pt")["encoder"] == "tuned:encoder_tuned.pt"
    with pytest.raises(ValueError, match="built with encoder 'tuned:encoder_tuned.pt', not 'minilm'"):
        load_anchors(artifacts, "minilm")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["build", "--epochs", "-5"], "argument --epochs: must be at least 1, got -5"),
        (["build", "--fine-tune-epochs", "0"], "argument --fine-tune-epochs: must be at least 1, got 0"),
        (["fine-tune", "--encoder", "openai:text-embedding-3-small"], "cannot be fine-tuned here"),
    ],
)
def test_bad_build_arguments_are_refused_before_anything_is_written(tmp_path, arguments, message):
    artifacts = tmp_path / "artifacts"
    result = text_pipeline(*arguments, "--artifacts", str(artifacts), env={"OPENAI_API_KEY": "sk-unused"})
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not artifacts.exists()
