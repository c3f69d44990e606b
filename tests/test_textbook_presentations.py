"""Textbook presentations get the organ a clinician would name first, text-only and end to end (shipped weights).

The ten presentations and the two unrelated symptoms are issue 9's; none of them is in the corpus (the corpus'
texts were written without them; their nearest corpus texts are measured in text_pipeline/data/README.md).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BUNDLE, bundle_parser, run_inferring, write_queries

from text_pipeline.organs import ORGANS
from text_pipeline.text_model import load_text_model_and_encoder

TEXTBOOK = {
    "yellow eyes, dark urine and pale stools": "liver",
    "sudden severe pain under the right ribs an hour after a fatty meal, spreading to the right shoulder blade": (
        "gallbladder"
    ),
    "feeling full after a few bites and a dragging ache under the left ribs": "spleen",
    "vomiting blood and black tarry stools after weeks of burning pain eased by food": "stomach",
    "severe upper abdominal pain boring through to the back after heavy drinking, lipase three times normal": (
        "pancreas"
    ),
    "colicky pain from the loin to the groin with blood in the urine": "kidney",
    "attacks of pounding headache, sweating and a racing heart with blood pressure 220/120": "adrenal_gland",
    "puffy eyes in the morning and foamy urine": "kidney",
    "swollen abdomen with shifting dullness and spider-like blood vessels on the chest": "liver",
    "round face, purple stretch marks on the belly and easy bruising": "adrenal_gland",
}
UNRELATED = ["pain in the knee joint when climbing stairs", "migraine with flashing lights"]
DEMO = "dark urine and yellowing of the eyes"  # the README's example symptom


def check_presentations(probabilities: dict[str, dict[str, float]]) -> None:
    """Each presentation's first organ, the unrelated symptoms below every presentation's top, the demo's liver."""
    top = {text: max(scores, key=scores.get) for text, scores in probabilities.items()}
    wrong = {text: (top[text], organ) for text, organ in TEXTBOOK.items() if top[text] != organ}
    assert not wrong, f"(ranked first, expected) of the presentations ranked wrong: {wrong}"
    lowest_top = min(max(probabilities[text].values()) for text in TEXTBOOK)
    for text in UNRELATED:
        assert max(probabilities[text].values()) < lowest_top, (text, probabilities[text], lowest_top)
    assert top[DEMO] == "liver", probabilities[DEMO]


def test_text_only_with_the_bundles_text_model():
    model, encoder = load_text_model_and_encoder(bundle_parser().get_parsed_content("text_model_path"))
    texts = [*TEXTBOOK, *UNRELATED, DEMO]
    scores = model.predict_proba(torch.from_numpy(encoder.encode(texts))).numpy()
    check_presentations({text: dict(zip(ORGANS, map(float, row))) for text, row in zip(texts, scores)})


@pytest.fixture(scope="module")
def inferred(tmp_path_factory) -> dict[str, dict[str, float]]:
    out = tmp_path_factory.mktemp("textbook")
    queries = write_queries(out / "queries.jsonl", [*TEXTBOOK, *UNRELATED, DEMO])
    result = run_inferring(
        "--queries_file", str(queries), "--output_dir", str(out / "out"), "--dataset_dir", str(out / "scan"),
        "--feature_cache_dir", str(out / "cache"), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    scores = json.loads((out / "out" / "scores.json").read_text())
    assert scores["organs_not_in_scan"] == [] and (BUNDLE / "models" / "model.pt").is_file()
    return {query["text"]: query["probabilities"] for query in scores["queries"]}


def test_end_to_end_inferring_against_a_phantom(inferred):
    check_presentations(inferred)
