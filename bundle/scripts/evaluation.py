"""Symptom-to-organ evaluation of the bundle (method.md §5): labelled queries against the organ image
features of a set of scans, with the metrics of ``text_pipeline.metrics``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scripts.organ_features import organ_image_features
from scripts.reasoning import MAX_SYMPTOM_WORDS, SymptomOrganReasoner, check_symptom
from text_pipeline.corpus import Query, read_query_sources
from text_pipeline.files import write_json_atomically
from text_pipeline.metrics import METRIC_KEYS, evaluate_scores_on_organs, ranking_target
from text_pipeline.organs import ORGANS


def symptom_metrics_table(metrics: dict) -> str:
    """One row of Rank-1/2/3, mAP and (with out-of-domain queries) OOD AUROC, in percent ("n/a": undefined)."""
    keys = [key for key in METRIC_KEYS if key in metrics]

    def cell(value: object) -> str:
        return f"{'n/a':>11}" if value is None else f"{float(value):>11.2f}"

    return "\n".join(["".join(f"{key:>11}" for key in keys), "".join(cell(metrics[key]) for key in keys)])


def _query_status(query, target: str | None) -> str:
    if not query.organs:
        return "out_of_domain"
    return "ranked" if target is not None else "excluded"


def read_checked_queries(
    queries_file: str | Path | list[str | Path], max_symptom_words: int = MAX_SYMPTOM_WORDS
) -> list[Query]:
    """The queries of ``queries_file`` (a JSON-lines file, ``corpus:test``, ``corpus:ood`` or a list of them), each
    text checked as a symptom: ``evaluating`` reads them before its image half runs and writes anything.

    Raises:
        ValueError: a malformed query or a text that is no symptom (the message names the file and line or query).
    """
    sources = _sources(queries_file)
    queries = read_query_sources(sources)
    named = ", ".join(map(str, sources))
    for index, query in enumerate(queries):
        check_symptom(query.text, f"query {index + 1} of {named}", max_symptom_words)
    return queries


def _sources(queries_file: str | Path | list[str | Path]) -> list[str | Path]:
    return [queries_file] if isinstance(queries_file, str | Path) else list(queries_file)


def evaluate_symptoms(
    reasoner: SymptomOrganReasoner,
    samples: Sequence[dict],
    queries_file: str | Path | list[str | Path],
    output_dir: str | Path,
    device: str = "cpu",
    queries: Sequence[Query] | None = None,
) -> dict:
    """Score every query against the organs of ``samples`` and write ``output_dir/metrics.json``.

    Each organ's image features g_i are averaged over all its samples (so over every scan that has it),
    and each query's probabilities follow the inference rule of :mod:`scripts.reasoning`.

    Scans lacking organs (a real scan cropped above the kidneys, a patient after cholecystectomy, a single
    scan): only the organs present in at least one scan (``organs_evaluated``) have image features and are
    ranked; the others (``organs_absent``) get no probability (``null``). The metrics are
    ``text_pipeline.metrics.evaluate_scores_on_organs``, whose rule is:

    - a query is ranked among the organs evaluated, against its primary organ, or, when that one is absent,
      against the first of its organs that is present (``n_primary_absent`` counts these);
    - an in-domain query none of whose organs is present cannot be ranked: it is left out of Rank-k, mAP and
      OOD AUROC and counted in ``n_excluded`` (``excluded_reason``);
    - out-of-domain queries (``"organs": []``) all stay for OOD AUROC;
    - Rank-k with k above the number of organs evaluated is ``null`` (every organ would count as a hit).

    With all 7 organs present this is exactly ``text_pipeline.metrics.evaluate_scores``.

    ``metrics.json`` holds ``rank1``, ``rank2``, ``rank3``, ``mAP`` (percent), ``ood_auroc`` and
    ``n_out_of_domain`` when out-of-domain queries are present, ``n_queries``, ``n_ranked``, ``n_excluded``,
    ``excluded_reason``, ``n_primary_absent``, ``organs_evaluated``, ``organs_absent``, ``queries_file``,
    ``scans`` (the scans' names), ``samples_per_organ`` and, under ``queries``, each query with its
    probabilities (``null`` for absent organs), ``status`` (``ranked``, ``excluded`` or ``out_of_domain``) and
    ``rank_target`` (the organ its Rank-k counted, or ``null``).

    Args:
        reasoner: the network, text encoder and text MLP.
        samples: the preprocessed (scan, organ) samples to match against.
        queries_file: a JSON-lines file of ``{"text", "organs", "primary"}``, ``"corpus:test"``, or a list of them.
        output_dir: where ``metrics.json`` goes.
        device: where the network runs.
        queries: the queries of ``queries_file``, already read with :func:`read_checked_queries`; None: read here.

    Raises:
        ValueError: no samples at all, a malformed query (the message names the file and line), or no
            in-domain query that names an organ present in the scans.
    """
    sources = _sources(queries_file)
    queries = read_checked_queries(queries_file, reasoner.max_symptom_words) if queries is None else list(queries)
    organs = organ_image_features(reasoner.network, samples, device)
    evaluated = [organ for organ, present in zip(ORGANS, organs.present.tolist()) if present]
    scores = reasoner.probabilities([query.text for query in queries], organs)
    metrics = evaluate_scores_on_organs(scores, queries, evaluated)
    report = {
        **metrics,
        "queries_file": [str(source) for source in sources],
        "scans": sorted({str(sample["scan"]) for sample in samples if "scan" in sample}),
        "samples_per_organ": dict(zip(ORGANS, organs.counts.tolist())),
        "queries": [
            {
                "text": query.text,
                "organs": list(query.organs),
                "primary": query.primary,
                "scores": {organ: (float(p) if np.isfinite(p) else None) for organ, p in zip(ORGANS, row)},
                "status": _query_status(query, target),
                "rank_target": target,
            }
            for query, row in zip(queries, scores)
            for target in [ranking_target(query, evaluated)]
        ],
    }
    path = write_json_atomically(Path(output_dir) / "metrics.json", report)
    ranked_on = f"{len(evaluated)} organs present" + (
        f" (absent from every scan: {', '.join(metrics['organs_absent'])})" if metrics["organs_absent"] else ""
    )
    excluded = (
        f"; {metrics['n_excluded']} in-domain queries excluded, none of their organs is present"
        if metrics["n_excluded"]
        else ""
    )
    print(
        f"\nsymptom-to-organ evaluation, {metrics['n_queries']} queries ranked on {ranked_on}{excluded} ({path})\n"
        f"{symptom_metrics_table(metrics)}"
    )
    return report
