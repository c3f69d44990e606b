"""Many queries at once: scored in batches with a progress bar, the entries of scores.json made one at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import inference_parser, run_inferring, write_queries
from scripts import reasoning
from scripts.inference import PRINTED_QUERIES, QueryScores, print_rankings
from scripts.organ_features import OrganFeatures

from text_pipeline.files import write_json_atomically
from text_pipeline.organs import ORGANS

SYMPTOMS = ["jaundice", "dark urine", "heartburn after meals", "blood in the urine", "left upper quadrant pain"]


@pytest.fixture(scope="module")
def reasoner():
    return inference_parser().get_parsed_content("reasoner")


def organ_features(dim: int) -> OrganFeatures:
    """Unit features of six organs; the seventh has none (absent from the scan)."""
    features = torch.nn.functional.normalize(torch.randn(len(ORGANS), dim, generator=torch.Generator().manual_seed(0)))
    features[-1] = float("nan")
    return OrganFeatures(features, torch.tensor([4] * (len(ORGANS) - 1) + [0]))


def test_symptoms_scored_in_batches_get_the_probabilities_of_one_batch(reasoner, monkeypatch, capsys):
    organs = organ_features(reasoner.network.align.out_features)
    whole = reasoner.probabilities(SYMPTOMS, organs)
    monkeypatch.setattr(reasoning, "SYMPTOMS_PER_BATCH", 2)
    batched = reasoner.probabilities(SYMPTOMS, organs, progress=True)
    np.testing.assert_allclose(batched, whole, atol=1e-6)
    assert batched.shape == (len(SYMPTOMS), len(ORGANS)) and np.isnan(batched[:, -1]).all()
    progress = capsys.readouterr().err
    assert "scoring symptoms: 100%" in progress and f"{len(SYMPTOMS)}/{len(SYMPTOMS)}" in progress


def test_each_entry_is_made_from_its_row_when_read():
    probabilities = np.array([[0.2, 0.9, np.nan], [0.5, 0.1, 0.7]], dtype=np.float32)
    files = [{"picture": "a.png"}, {"picture": "b.png"}]
    queries = QueryScores(["first", "second"], np.pad(probabilities, ((0, 0), (0, len(ORGANS) - 3))), files)
    assert len(queries) == 2 and queries[-1]["text"] == "second"
    first = queries[0]
    assert first["probabilities"][ORGANS[2]] is None and first["picture"] == "a.png"
    assert [item["organ"] for item in first["ranking"][:2]] == [ORGANS[1], ORGANS[0]]
    assert ORGANS[2] not in [item["organ"] for item in first["ranking"]]
    assert [entry["text"] for entry in queries] == ["first", "second"]  # iteration stops at the end
    with pytest.raises(IndexError):
        queries[2]


def test_scores_json_written_entry_by_entry_is_the_same_file(tmp_path):
    probabilities = np.random.default_rng(0).random((3, len(ORGANS))).astype(np.float32)
    queries = QueryScores(["a", "b", "c"], probabilities)
    report = {"image": "ct.nii.gz", "organs_not_in_scan": [], "organs_too_small": {}, "queries": queries}
    streamed = write_json_atomically(tmp_path / "streamed.json", report, stream=("queries",)).read_text()
    assert streamed == json.dumps({**report, "queries": list(queries)}, indent=2) + "\n"
    no_queries = {"queries": QueryScores([], probabilities[:0])}
    empty = write_json_atomically(tmp_path / "empty.json", no_queries, stream=("queries",))
    assert json.loads(empty.read_text()) == {"queries": []}


def test_only_the_first_rankings_are_printed(capsys):
    count = PRINTED_QUERIES + 5
    print_rankings(QueryScores([f"symptom {i}" for i in range(count)], np.full((count, len(ORGANS)), 0.5)))
    printed = capsys.readouterr().out
    assert f"symptom {PRINTED_QUERIES - 1}\n" in printed and f"symptom {PRINTED_QUERIES}\n" not in printed
    assert printed.rstrip().endswith("... and 5 more queries: all rankings are in scores.json")


def test_inferring_many_queries_shows_progress_and_writes_each_score(tmp_path):
    texts = [f"pain number {i} in the upper abdomen" for i in range(reasoning.SYMPTOMS_PER_BATCH + 44)]
    queries = write_queries(tmp_path / "queries.jsonl", texts)
    out = tmp_path / "out"
    folders = ["--dataset_dir", str(tmp_path / "example"), "--feature_cache_dir", str(tmp_path / "cache")]
    result = run_inferring("--queries_file", str(queries), "--output_dir", str(out), *folders)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scoring symptoms: 100%" in result.stderr and f"{len(texts)}/{len(texts)}" in result.stderr
    assert f"... and {len(texts) - PRINTED_QUERIES} more queries" in result.stdout
    scores = json.loads((out / "scores.json").read_text())
    assert [query["text"] for query in scores["queries"]] == texts
    assert sorted(path.name for path in out.iterdir()) == ["scores.json"]
