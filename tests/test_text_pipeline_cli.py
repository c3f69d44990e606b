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
from text_pipeline.organs import ORGANS


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
    artifacts = tmp_path_factory.mktemp("text_artifacts")
    result = text_pipeline("build", "--artifacts", str(artifacts))
    assert result.returncode == 0, result.stderr[-4000:]
    return artifacts, result


def test_build_writes_every_artifact_from_the_shipped_corpus(built):
    artifacts, result = built
    for name in ("anchors.pt", "text_mlp_soft.pt", "text_mlp_hard.pt", "manifest.json", "evaluation/metrics.json"):
        assert (artifacts / name).is_file(), name
    for name in ("tsne_text_embeddings.png", "label_correlation_hard_vs_soft.png"):
        assert (artifacts / "figures" / name).read_bytes().startswith(b"\x89PNG")
    anchors = torch.load(artifacts / "anchors.pt", weights_only=True)
    assert tuple(anchors["v_pos"].shape) == tuple(anchors["v_neg"].shape) == (len(ORGANS), 384)
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["corpus"]["train"] == len(read_corpus("train"))
    assert "rank1" in result.stdout and "soft" in result.stdout and "hard" in result.stdout


def test_build_learns_the_test_split_far_above_chance(built):
    artifacts, _ = built
    metrics = json.loads((artifacts / "evaluation" / "metrics.json").read_text())
    for kind in ("soft", "hard"):
        assert metrics[kind]["rank1"] > 3 * 100 / len(ORGANS)  # chance is 14.3 %
        assert metrics[kind]["rank3"] >= metrics[kind]["rank2"] >= metrics[kind]["rank1"]
        assert 50 < metrics[kind]["ood_auroc"] <= 100
    assert metrics["n_queries"] == len(metrics["queries"])


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
    assert metrics["n_queries"] == 4 and "ood_auroc" in metrics["soft"] and "ood_auroc" in metrics["hard"]
    scores = metrics["queries"][0]["soft_scores"]
    assert set(scores) == set(ORGANS) and all(0.0 <= value <= 1.0 for value in scores.values())


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
    for name in ("anchors.pt", "text_mlp_soft.pt", "text_mlp_hard.pt", "figures/tsne_text_embeddings.png"):
        assert (tmp_path / "artifacts" / name).is_file(), name
    assert list((tmp_path / "artifacts" / "embeddings").iterdir())


def test_train_before_anchors_says_which_stage_is_missing(tmp_path):
    result = text_pipeline("train", "--epochs", "1", "--artifacts", str(tmp_path))
    assert result.returncode == 2 and "run `python -m text_pipeline anchors` (or build) first" in result.stderr


def test_artifacts_refuse_embeddings_of_another_encoder(built):
    from text_pipeline.pipeline import load_anchors

    artifacts, _ = built
    assert load_anchors(artifacts, "minilm")["encoder"] == "minilm"
    with pytest.raises(ValueError, match="built with encoder 'minilm', not 'openai:text-embedding-3-small'"):
        load_anchors(artifacts, "openai:text-embedding-3-small")
