"""Symptom-to-organ evaluation of the bundle (method.md §5): labelled queries against the organ image
features of a set of scans, with the metrics of ``text_pipeline.metrics``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scripts.reasoning import SymptomOrganReasoner, organ_image_features
from text_pipeline.corpus import read_query_sources
from text_pipeline.files import write_json_atomically
from text_pipeline.metrics import evaluate_scores
from text_pipeline.organs import ORGANS
from text_pipeline.pipeline import METRIC_KEYS


def symptom_metrics_table(metrics: dict) -> str:
    """One row of Rank-1/2/3, mAP and (with out-of-domain queries) OOD AUROC, in percent."""
    keys = [key for key in METRIC_KEYS if key in metrics]
    return "\n".join(["".join(f"{key:>11}" for key in keys), "".join(f"{float(metrics[key]):>11.2f}" for key in keys)])


def evaluate_symptoms(
    reasoner: SymptomOrganReasoner,
    samples: Sequence[dict],
    queries_file: str | Path | list[str | Path],
    output_dir: str | Path,
    device: str = "cpu",
) -> dict:
    """Score every query against the organs of ``samples`` and write ``output_dir/metrics.json``.

    Each organ's image features g_i are averaged over all its samples (so over every scan that has it),
    and each query's 7 probabilities follow the inference rule of :mod:`scripts.reasoning`. The metrics are
    ``text_pipeline.metrics.evaluate_scores``: ``rank1``, ``rank2``, ``rank3``, ``mAP`` (percent), ``ood_auroc``
    when out-of-domain queries (``"organs": []``) are present, and ``n_queries``; per-query probabilities
    follow under ``queries``.

    Args:
        reasoner: the network, text encoder and text MLP.
        samples: the preprocessed (scan, organ) samples to match against.
        queries_file: a JSON-lines file of ``{"text", "organs", "primary"}``, ``"corpus:test"``, or a list of them.
        output_dir: where ``metrics.json`` goes.
        device: where the network runs.

    Raises:
        ValueError: an organ has no sample among the scans (no probability can be given for it), or a query
            is malformed (the message names the file and line).
    """
    sources = [queries_file] if isinstance(queries_file, str | Path) else list(queries_file)
    queries = read_query_sources(sources)
    reasoner.check(
        (query.text for query in queries), where=lambda index: f"query {index + 1} of {', '.join(map(str, sources))}"
    )
    organs = organ_image_features(reasoner.network, samples, device)
    absent = organs.absent_organs()
    if absent:
        raise ValueError(f"the evaluation scans contain no {', '.join(absent)}: every organ needs image features")
    scores = reasoner.probabilities([query.text for query in queries], organs)
    metrics = evaluate_scores(scores, queries)
    report = {
        **metrics,
        "queries_file": [str(source) for source in sources],
        "samples_per_organ": dict(zip(ORGANS, organs.counts.tolist())),
        "queries": [
            {
                "text": query.text,
                "organs": list(query.organs),
                "primary": query.primary,
                "scores": dict(zip(ORGANS, map(float, row))),
            }
            for query, row in zip(queries, scores)
        ],
    }
    path = write_json_atomically(Path(output_dir) / "metrics.json", report)
    print(f"\nsymptom-to-organ evaluation, {metrics['n_queries']} queries ({path})\n{symptom_metrics_table(metrics)}")
    return report
