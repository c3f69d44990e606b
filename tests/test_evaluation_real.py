"""Evaluation on scans as users have them: one scan, and scans lacking organs (the real scans of ../shared).

The rule under test (scripts/evaluation.py, text_pipeline.metrics.evaluate_scores_on_organs): only the organs
present in the evaluation scans are ranked; a query none of whose organs is present is excluded from Rank-k,
mAP and OOD AUROC and counted; out-of-domain queries stay. validation_metrics.json carries per-scan, per-organ
accuracy with entries only for the organs each scan has. No test depends on the weights' accuracy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE, bundle_parser
from ignite.engine import Engine
from ignite.metrics import ConfusionMatrix
from scripts.data import resolve_datalist
from scripts.evaluation import symptom_metrics_table
from scripts.handlers import ImageLogits, OrganValidationReport, scan_accuracy_table

from text_pipeline.corpus import Query, read_query_sources
from text_pipeline.metrics import evaluate_scores, evaluate_scores_on_organs, ranking_target
from text_pipeline.organs import ORGANS, organ_index

CONFIGS = "['configs/train.yaml','configs/evaluate.yaml']"
QUERIES = ["corpus:test", "corpus:ood"]
NAN = float("nan")


# --- the metric rule on present organs, on a small synthetic score matrix -------------------------------------


def scores_row(**by_organ: float) -> list[float]:
    return [by_organ.get(organ, NAN) for organ in ORGANS]


def test_only_present_organs_are_ranked_and_unrankable_queries_are_excluded():
    present = ["liver", "pancreas", "spleen"]  # kidney, gallbladder, stomach, adrenal_gland absent: NaN
    queries = [
        Query("a", ("liver",), "liver"),  # ranked 1st: 0.9 > 0.5 > 0.1
        Query("b", ("pancreas", "kidney"), "pancreas"),  # ranked 2nd: liver 0.8 > pancreas 0.6
        Query("c", ("gallbladder", "liver"), "gallbladder"),  # primary absent: ranked against liver, 3rd
        Query("d", ("kidney",), "kidney"),  # nothing present: excluded
        Query("e", ("kidney", "adrenal_gland"), "kidney"),  # nothing present: excluded
        Query("f", ()),  # out of domain, top score 0.3
        Query("g", ()),  # out of domain, top score 0.95
    ]
    scores = np.array(
        [
            scores_row(liver=0.9, pancreas=0.5, spleen=0.1),
            scores_row(liver=0.8, pancreas=0.6, spleen=0.2),
            scores_row(liver=0.1, pancreas=0.7, spleen=0.4),
            scores_row(liver=0.9, pancreas=0.1, spleen=0.1),  # would count if not excluded
            scores_row(liver=0.9, pancreas=0.1, spleen=0.1),
            scores_row(liver=0.3, pancreas=0.2, spleen=0.1),
            scores_row(liver=0.2, pancreas=0.95, spleen=0.1),
        ]
    )
    result = evaluate_scores_on_organs(scores, queries, present)
    assert result["organs_evaluated"] == ["liver", "pancreas", "spleen"]  # ORGANS order
    assert result["organs_absent"] == ["kidney", "gallbladder", "stomach", "adrenal_gland"]
    assert result["n_queries"] == 7 and result["n_out_of_domain"] == 2
    assert result["n_ranked"] == 3 and result["n_excluded"] == 2 and result["n_primary_absent"] == 1
    assert "none of the query's organs" in result["excluded_reason"]
    targets = [ranking_target(query, present) for query in queries]
    assert targets == ["liver", "pancreas", "liver", None, None, None, None]
    # ranks of the 3 ranked queries among the 3 present organs: 1, 2, 3
    assert result["rank1"] == pytest.approx(100 / 3) and result["rank2"] == pytest.approx(200 / 3)
    assert result["rank3"] == pytest.approx(100.0)
    # mAP over the present organs that are a positive of a ranked query: liver (a, c), pancreas (b)
    liver_ap = (1 / 1 + 2 / 3) / 2  # liver scores 0.9 (a+), 0.8 (b-), 0.1 (c+)
    pancreas_ap = 1 / 2  # pancreas scores 0.5 (a-), 0.6 (b+), 0.7 (c-)
    assert result["mAP"] == pytest.approx(100 * (liver_ap + pancreas_ap) / 2)
    # OOD AUROC: ranked tops 0.9, 0.8, 0.7 against OOD tops 0.3, 0.95 (the excluded queries' 0.9 not counted)
    assert result["ood_auroc"] == pytest.approx(100 * 3 / 6)


def test_rank_k_beyond_the_present_organs_is_undefined():
    queries = [Query("a", ("liver",), "liver"), Query("b", ("spleen", "kidney"), "spleen")]
    scores = np.array([scores_row(liver=0.9, spleen=0.1), scores_row(liver=0.9, spleen=0.1)])
    result = evaluate_scores_on_organs(scores, queries, ["spleen", "liver"])
    assert result["rank1"] == 50.0 and result["rank2"] == 100.0 and result["rank3"] is None
    assert "ood_auroc" not in result and result["n_excluded"] == 0
    assert symptom_metrics_table(result).splitlines()[1].split()[2] == "n/a"


def test_with_every_organ_present_the_rule_is_evaluate_scores():
    queries = read_query_sources(QUERIES)
    scores = np.random.default_rng(0).random((len(queries), len(ORGANS)))
    expected = evaluate_scores(scores, queries)
    result = evaluate_scores_on_organs(scores, queries, ORGANS)
    assert {key: result[key] for key in expected} == pytest.approx(expected)
    assert result["n_excluded"] == 0 and result["organs_absent"] == []


def test_no_rankable_query_and_no_organ_are_errors():
    scores = np.array([scores_row(liver=0.5), scores_row(liver=0.5)])
    with pytest.raises(ValueError, match="none of the 1 in-domain queries names an organ present in the scans"):
        evaluate_scores_on_organs(scores, [Query("a", ("kidney",), "kidney"), Query("b", ())], ["liver"])
    with pytest.raises(ValueError, match="no organ to evaluate"):
        evaluate_scores_on_organs(scores, [Query("a", ("liver",), "liver"), Query("b", ())], [])
    with pytest.raises(ValueError, match="NaN"):  # a present organ must have a score
        evaluate_scores_on_organs(scores, [Query("a", ("liver",), "liver"), Query("b", ())], ["liver", "spleen"])


# --- datalists of the scans to evaluate ---------------------------------------------------------------------------


def scan_files(folder: Path, count: int) -> list[dict]:
    items = []
    for i in range(count):
        for kind in ("ct", "seg"):
            (folder / f"{kind}_{i}.nii.gz").touch()  # only existence is checked when the datalist is resolved
        items.append({"image": f"ct_{i}.nii.gz", "label": f"seg_{i}.nii.gz", "convention": "totalseg_total"})
    return items


def test_a_validation_only_datalist_has_no_training_split(tmp_path):
    datalist = tmp_path / "evaluate.json"
    datalist.write_text(json.dumps({"validation": scan_files(tmp_path, 1)}))
    scans = resolve_datalist(datalist=str(datalist))
    assert [scan["image"] for scan in scans["validation"]] == [str(tmp_path / "ct_0.nii.gz")]
    assert "training" not in scans
    with pytest.raises(ValueError, match=r"evaluate.json has no training scans .*training needs a 'training' list"):
        scans["training"]
    datalist.write_text(json.dumps({"training": scan_files(tmp_path, 1)}))
    with pytest.raises(ValueError, match="a JSON object without validation"):
        resolve_datalist(datalist=str(datalist))


def test_a_plain_list_is_all_validation_with_val_fraction_one(tmp_path):
    datalist = tmp_path / "scans.json"
    datalist.write_text(json.dumps(scan_files(tmp_path, 1)))
    with pytest.raises(ValueError, match=r"has 1 item\(s\); a plain list needs at least 2 .* val_fraction 1.0"):
        resolve_datalist(datalist=str(datalist))  # training's default, 0.2: one scan cannot be split
    scans = resolve_datalist(datalist=str(datalist), val_fraction=1.0)
    assert len(scans["validation"]) == 1 and "training" not in scans
    with pytest.raises(ValueError, match="makes every scan of datalist .* a validation scan: none is left to train"):
        scans["training"]
    datalist.write_text(json.dumps(scan_files(tmp_path, 3)))
    assert len(resolve_datalist(datalist=str(datalist), val_fraction=1.0)["validation"]) == 3
    with pytest.raises(ValueError, match=r"val_fraction must lie in \[0, 1\]"):
        resolve_datalist(datalist=str(datalist), val_fraction=1.5)


def test_evaluate_yaml_evaluates_every_scan_of_a_plain_list_and_training_refuses_it(tmp_path):
    datalist = tmp_path / "scans.json"
    datalist.write_text(json.dumps(scan_files(tmp_path, 2)))
    evaluating = bundle_parser("evaluate.yaml", datalist=str(datalist))
    assert len(evaluating.get_parsed_content("scans")["validation"]) == 2
    training = bundle_parser(datalist=str(datalist), val_fraction=1.0)
    with pytest.raises(RuntimeError) as caught:  # what `training` resolves for its samples
        training.get_parsed_content("train#samples#scans")
    assert "none is left to train on; training needs val_fraction below 1" in str(caught.value.__cause__)


# --- per-scan accuracy in validation_metrics.json (an Ignite engine, no network) ---------------------------------


def test_validation_report_gives_per_organ_accuracy_per_scan(tmp_path):
    # (scan, true organ, predicted organ); scan_b has no kidney and no gallbladder
    samples = [
        ("scan_a", "liver", "liver"), ("scan_a", "kidney", "kidney"), ("scan_a", "gallbladder", "liver"),
        ("scan_b", "liver", "liver"), ("scan_b", "spleen", "stomach"), ("scan_b", "stomach", "stomach"),
    ]  # fmt: skip
    batches = [samples[:4], samples[4:]]  # scan_b's liver shares a batch with scan_a

    def step(engine, batch):
        labels = torch.tensor([organ_index(organ) for _, organ, _ in batch["items"]])
        predicted = torch.tensor([organ_index(guess) for *_, guess in batch["items"]])
        logits = torch.nn.functional.one_hot(predicted, len(ORGANS)).float()
        return {"pred": {"logits": logits}, "label": labels}

    engine = Engine(step)
    ConfusionMatrix(len(ORGANS), output_transform=ImageLogits()).attach(engine, "confusion")
    report = OrganValidationReport(tmp_path)
    report.attach(engine)
    engine.run([{"scan": [scan for scan, *_ in batch], "items": batch} for batch in batches], max_epochs=2)

    metrics = json.loads((tmp_path / "validation_metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["n_liver"] == 2 and metrics["accuracy"] == pytest.approx(4 / 6)
    per_scan = metrics["per_scan"]  # counted once per epoch, not accumulated across epochs
    assert list(per_scan) == ["scan_a", "scan_b"]
    assert set(per_scan["scan_a"]["organs"]) == {"liver", "kidney", "gallbladder"}
    assert set(per_scan["scan_b"]["organs"]) == {"liver", "spleen", "stomach"}  # no kidney entry, not 0
    assert per_scan["scan_a"]["organs"]["gallbladder"] == {"accuracy": 0.0, "n": 1, "predicted": {"liver": 1}}
    assert per_scan["scan_b"]["organs"]["stomach"] == {"accuracy": 1.0, "n": 1, "predicted": {"stomach": 1}}
    assert per_scan["scan_a"]["accuracy"] == pytest.approx(2 / 3) and per_scan["scan_b"]["n"] == 3
    table = scan_accuracy_table(per_scan).splitlines()
    assert table[2].split() == ["1.000", "-", "-", "-", "0.000", "1.000", "-", "0.667", "scan_b"]


# --- the evaluating run on the real scans -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory) -> Path:
    """One text embedding cache for the module's runs, outside the checkout."""
    return tmp_path_factory.mktemp("text_embeddings")


def evaluate_real(scan: dict, datalist_content, tmp_path: Path, text_cache: Path) -> tuple[Path, str]:
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(datalist_content([scan])))
    output_dir = tmp_path / "eval"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", CONFIGS,
        f"--datalist={datalist}", f"--queries_file={str(QUERIES).replace(' ', '')}", f"--output_dir={output_dir}",
        f"--text_embedding_cache={text_cache}",
        f"--phantom_dir={tmp_path / 'phantoms'}", "--num_workers=1",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert not (tmp_path / "phantoms").exists()  # the datalist, not the phantoms, was evaluated
    return output_dir, result.stdout


def check_evaluation(output_dir: Path, scan_image: str) -> tuple[dict, dict]:
    """The structure and rules every real-scan evaluation obeys, whatever the weights' accuracy."""
    metrics = json.loads((output_dir / "metrics.json").read_text())
    validation = json.loads((output_dir / "validation_metrics.json").read_text())
    present = metrics["organs_evaluated"]
    assert present == [organ for organ in ORGANS if metrics["samples_per_organ"][organ] > 0]
    assert metrics["organs_absent"] == [organ for organ in ORGANS if organ not in present]
    assert metrics["scans"] == [scan_image]

    queries = read_query_sources(QUERIES)
    assert metrics["n_queries"] == len(queries) == len(metrics["queries"])
    excluded = [query for query in queries if query.organs and not set(query.organs) & set(present)]
    out_of_domain = [query for query in queries if not query.organs]
    assert metrics["n_excluded"] == len(excluded)
    assert metrics["n_ranked"] == len(queries) - len(excluded) - len(out_of_domain)
    assert metrics["n_out_of_domain"] == len(out_of_domain) and 0 <= metrics["ood_auroc"] <= 100
    for query, entry in zip(queries, metrics["queries"]):
        assert entry["text"] == query.text
        assert [organ for organ, p in entry["scores"].items() if p is not None] == present  # absent ones null
        assert all(0.0 <= entry["scores"][organ] <= 1.0 for organ in present)
        expected_status = "out_of_domain" if not query.organs else "excluded" if query in excluded else "ranked"
        assert entry["status"] == expected_status
    for key in ("rank1", "rank2", "rank3", "mAP"):
        assert 0 <= metrics[key] <= 100
    # the metrics are the rule applied to the written scores
    scores = np.array([[NAN if (p := q["scores"][o]) is None else p for o in ORGANS] for q in metrics["queries"]])
    expected = evaluate_scores_on_organs(scores, queries, present)
    assert {key: metrics[key] for key in ("rank1", "rank2", "rank3", "mAP", "ood_auroc")} == pytest.approx(
        {key: expected[key] for key in ("rank1", "rank2", "rank3", "mAP", "ood_auroc")}
    )

    # validation_metrics.json: the existing keys, and one per-scan entry with exactly the organs present
    assert validation["organs"] == list(ORGANS) and len(validation["confusion_matrix"]) == len(ORGANS)
    assert [validation[f"n_{organ}"] for organ in ORGANS] == [int(organ in present) for organ in ORGANS]
    assert list(validation["per_scan"]) == [scan_image]
    scan_entry = validation["per_scan"][scan_image]
    assert list(scan_entry["organs"]) == present
    for organ, entry in scan_entry["organs"].items():
        assert entry["n"] == 1 and entry["accuracy"] in (0.0, 1.0)
        assert entry["accuracy"] == validation[f"acc_{organ}"]  # one scan: per scan equals overall
        assert sum(entry["predicted"].values()) == 1 and set(entry["predicted"]) <= set(ORGANS)
    assert scan_entry["n"] == len(present) and math.isclose(scan_entry["accuracy"], validation["accuracy"])
    return metrics, validation


@pytest.mark.slow
def test_evaluating_a_single_nifti_scan(shared_ct, tmp_path, text_cache):
    scan = {
        "image": str(shared_ct / "patient_a" / "ct.nii.gz"),
        "label": str(shared_ct / "patient_a" / "seg_totalseg.nii.gz"),
        "convention": "totalseg_total",
    }
    output_dir, stdout = evaluate_real(scan, lambda scans: scans, tmp_path, text_cache)  # a plain list of one
    metrics, _ = check_evaluation(output_dir, scan["image"])
    assert metrics["organs_evaluated"] == list(ORGANS) and metrics["organs_absent"] == []  # all 7 in patient_a
    assert metrics["n_excluded"] == 0 and metrics["n_primary_absent"] == 0
    assert "per-organ evaluation results" in stdout and "per scan (-: organ not in the scan)" in stdout


@pytest.mark.slow
def test_evaluating_a_dicom_scan_lacking_kidneys_and_gallbladder(shared_ct, tmp_path, text_cache):
    scan = {
        "image": str(shared_ct / "patient_b" / "dicom"),
        "label": str(shared_ct / "patient_b" / "seg_totalseg.nii.gz"),
        "convention": "totalseg_total",
    }
    output_dir, stdout = evaluate_real(scan, lambda scans: {"validation": scans}, tmp_path, text_cache)
    metrics, validation = check_evaluation(output_dir, scan["image"])
    assert {"kidney", "gallbladder"} <= set(metrics["organs_absent"])
    assert {"liver", "spleen", "stomach"} <= set(metrics["organs_evaluated"])  # the large organs of patient_b
    assert "kidney" not in validation["per_scan"][scan["image"]]["organs"]
    assert metrics["n_excluded"] > 0  # kidney-only and gallbladder-only queries of the test split
    assert f"{metrics['n_excluded']} in-domain queries excluded, none of their organs is present" in stdout
    assert "absent from every scan: " in stdout
