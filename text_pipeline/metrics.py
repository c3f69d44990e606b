"""Evaluation of per-query organ scores (method.md §5): Rank-k accuracy, mAP over organs, OOD AUROC.

All metrics are percentages in [0, 100], as the paper reports them. ``scores`` is always [Q, O]: one
row per query, one column per organ in :data:`text_pipeline.organs.ORGANS` order; higher means more related.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from text_pipeline.organs import ORGANS, organ_index

METRIC_KEYS = ("rank1", "rank2", "rank3", "mAP", "ood_auroc", "n_queries")  # the summary of a run, in this order


def _scores_matrix(scores: Any) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be a non-empty [Q, O] matrix, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return scores


def primary_rank(scores: np.ndarray, primary_index: np.ndarray) -> np.ndarray:
    """1-based rank of each query's primary organ among the organs, ties counted against it.

    rank = 1 + the number of other organs scoring at least as high as the primary one, so a tie never
    earns credit (a constant score ranks the primary organ last) and the result does not depend on the
    organ order.
    """
    scores = _scores_matrix(scores)
    primary_index = np.asarray(primary_index, dtype=np.int64).reshape(-1)
    if primary_index.shape[0] != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {primary_index.shape[0]} primary organs")
    if primary_index.min() < 0 or primary_index.max() >= scores.shape[1]:
        raise ValueError(f"primary organ indices must lie in 0..{scores.shape[1] - 1}")
    primary_score = scores[np.arange(scores.shape[0]), primary_index][:, None]
    at_least_as_high = (scores >= primary_score).sum(axis=1) - 1
    return 1 + at_least_as_high


def rank_k_accuracy(scores: Any, primary_index: Any, k: int) -> float:
    """Rank-k accuracy (method.md §5): percent of queries whose primary organ is among the top ``k`` organs.

    Ties count against the primary organ (see :func:`primary_rank`).

    Args:
        scores: organ scores, [Q, O].
        primary_index: each query's primary organ index, [Q].
        k: how many top organs count as a hit (1 <= k <= O).
    """
    scores = _scores_matrix(scores)
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must lie in 1..{scores.shape[1]}, got {k}")
    return float(100.0 * np.mean(primary_rank(scores, primary_index) <= k))


def mean_average_precision(scores: Any, multi_hot: Any) -> float:
    """mAP over organs (method.md §5), in percent.

    For each organ, the queries are ranked by their score for that organ and the average precision of that
    ranking against the queries' multi-organ labels is taken; the mean runs over the organs that are a
    positive of at least one query. AP is scikit-learn's ``average_precision_score``: the sum over
    thresholds of precision times recall gain, tied scores forming one threshold (no interpolation).

    Args:
        scores: organ scores, [Q, O].
        multi_hot: 1 where the organ is one of the query's organs, [Q, O].
    """
    scores = _scores_matrix(scores)
    multi_hot = np.asarray(multi_hot)
    if multi_hot.shape != scores.shape:
        raise ValueError(f"labels of shape {multi_hot.shape} do not match scores of shape {scores.shape}")
    labels = multi_hot.astype(bool)
    organs = [organ for organ in range(scores.shape[1]) if labels[:, organ].any()]
    if not organs:
        raise ValueError("no organ is a positive of any query: mAP is undefined")
    return float(100.0 * np.mean([average_precision_score(labels[:, organ], scores[:, organ]) for organ in organs]))


def ood_auroc(scores: Any, is_ood: Any) -> float:
    """AUROC, in percent, of each query's top organ score separating in-domain (positive) from out-of-domain
    queries: 100 when every in-domain query scores higher than every out-of-domain one, 50 for chance.

    Ties between an in-domain and an out-of-domain query count one half.

    Args:
        scores: organ scores, [Q, O].
        is_ood: True for out-of-domain queries, [Q]; both kinds must occur.
    """
    scores = _scores_matrix(scores)
    is_ood = np.asarray(is_ood, dtype=bool).reshape(-1)
    if is_ood.shape[0] != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {is_ood.shape[0]} out-of-domain flags")
    if is_ood.all() or not is_ood.any():
        raise ValueError("OOD AUROC needs both in-domain and out-of-domain queries")
    return float(100.0 * roc_auc_score(~is_ood, scores.max(axis=1)))


def _field(query: Any, name: str, default: Any = None) -> Any:
    return query.get(name, default) if isinstance(query, Mapping) else getattr(query, name, default)


def evaluate_scores(scores: Any, queries: Sequence[Any]) -> dict[str, float | int]:
    """All metrics of organ scores against labelled queries (method.md §5).

    Args:
        scores: organ scores, [Q, len(ORGANS)], in the order of ``queries``.
        queries: objects (e.g. :class:`text_pipeline.corpus.Query`) or mappings with ``organs`` (organ names,
            empty for an out-of-domain query) and ``primary`` (the primary organ's name; default the first
            of ``organs``).

    Returns:
        ``rank1``, ``rank2``, ``rank3`` and ``mAP`` over the in-domain queries, ``n_queries`` (all of them),
        and, when there are out-of-domain queries, ``ood_auroc`` and ``n_out_of_domain``.
    """
    scores = _scores_matrix(scores)
    if scores.shape != (len(queries), len(ORGANS)):
        raise ValueError(f"scores of shape {scores.shape} for {len(queries)} queries and {len(ORGANS)} organs")
    organs = [tuple(_field(query, "organs", ())) for query in queries]
    is_ood = np.array([not query_organs for query_organs in organs])
    if is_ood.all():
        raise ValueError("every query is out of domain: Rank-k and mAP need in-domain queries")
    in_domain = np.flatnonzero(~is_ood)
    primary = np.array([organ_index(_field(queries[i], "primary") or organs[i][0]) for i in in_domain])
    multi_hot = np.zeros((len(in_domain), len(ORGANS)), dtype=bool)
    for row, i in enumerate(in_domain):
        multi_hot[row, [organ_index(name) for name in organs[i]]] = True
    in_domain_scores = scores[in_domain]
    result: dict[str, float | int] = {f"rank{k}": rank_k_accuracy(in_domain_scores, primary, k) for k in (1, 2, 3)}
    result["mAP"] = mean_average_precision(in_domain_scores, multi_hot)
    if is_ood.any():
        result["ood_auroc"] = ood_auroc(scores, is_ood)
        result["n_out_of_domain"] = int(is_ood.sum())
    result["n_queries"] = len(queries)
    return result


EXCLUDED_REASON = "none of the query's organs is among organs_evaluated (absent from every evaluation scan)"


def ranking_target(query: Any, organs_evaluated: Sequence[str]) -> str | None:
    """The organ a query's Rank-k counts when only ``organs_evaluated`` can be ranked.

    Its primary organ when that is evaluated; otherwise the first of its organs (listed primary first, in the
    order a clinician would consider them) that is; None for an out-of-domain query and for one none of
    whose organs is evaluated (it cannot be ranked).
    """
    organs = tuple(_field(query, "organs", ()))
    if not organs:
        return None
    primary = _field(query, "primary") or organs[0]
    candidates = [primary, *(organ for organ in organs if organ != primary)]
    return next((organ for organ in candidates if organ in organs_evaluated), None)


def evaluate_scores_on_organs(scores: Any, queries: Sequence[Any], organs_evaluated: Sequence[str]) -> dict[str, Any]:
    """The metrics of :func:`evaluate_scores` when only some organs can be scored (scans lacking organs).

    The rule, for a set of scans in which some of the 7 organs are absent (no image features, no score):

    - only the columns of ``organs_evaluated`` are read; the others may be NaN;
    - an in-domain query whose organs are all absent cannot be ranked: it is excluded from Rank-k, mAP and
      OOD AUROC, and counted in ``n_excluded`` (reason in ``excluded_reason``);
    - every other in-domain query is ranked among the evaluated organs, against its primary organ, or, when
      that is absent, the first of its organs that is present (:func:`ranking_target`; counted in
      ``n_primary_absent``); its mAP labels are its organs that are present;
    - Rank-k for k above the number of evaluated organs is undefined (``None``): every organ would be a hit;
    - out-of-domain queries (no organs) all stay: OOD AUROC separates them from the ranked in-domain queries by
      the top score over the evaluated organs.

    With every organ evaluated the values equal :func:`evaluate_scores`.

    Args:
        scores: organ scores, [Q, len(ORGANS)], in the order of ``queries``.
        queries: as for :func:`evaluate_scores`.
        organs_evaluated: the organs that have scores (at least one).

    Returns:
        ``rank1``, ``rank2``, ``rank3``, ``mAP`` over the ranked queries, ``ood_auroc`` and ``n_out_of_domain``
        when there are out-of-domain queries, ``n_queries`` (all), ``n_ranked``, ``n_excluded``,
        ``excluded_reason``, ``n_primary_absent``, ``organs_evaluated`` and ``organs_absent`` (ORGANS order).

    Raises:
        ValueError: no organ evaluated, an unknown organ, scores of the wrong shape or not finite where
            evaluated, every query out of domain, or no in-domain query left to rank.
    """
    unknown = [organ for organ in organs_evaluated if organ not in ORGANS]
    if unknown:
        raise ValueError(f"unknown organ(s) {', '.join(map(repr, unknown))}; known organs: {', '.join(ORGANS)}")
    evaluated = [organ for organ in ORGANS if organ in organs_evaluated]
    if not evaluated:
        raise ValueError("no organ to evaluate: the scans contain none of the organs")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (len(queries), len(ORGANS)):
        raise ValueError(f"scores of shape {scores.shape} for {len(queries)} queries and {len(ORGANS)} organs")
    columns = [organ_index(organ) for organ in evaluated]
    present_scores = _scores_matrix(scores[:, columns])
    organs = [tuple(_field(query, "organs", ())) for query in queries]
    is_ood = np.array([not query_organs for query_organs in organs])
    if is_ood.all():
        raise ValueError("every query is out of domain: Rank-k and mAP need in-domain queries")
    targets = [ranking_target(query, evaluated) for query in queries]
    ranked = [i for i in np.flatnonzero(~is_ood) if targets[i] is not None]
    excluded = int((~is_ood).sum()) - len(ranked)
    if not ranked:
        raise ValueError(
            f"none of the {int((~is_ood).sum())} in-domain queries names an organ present in the scans "
            f"({', '.join(evaluated)}): Rank-k and mAP cannot be computed"
        )
    primary = np.array([evaluated.index(targets[i]) for i in ranked])
    multi_hot = np.zeros((len(ranked), len(evaluated)), dtype=bool)
    for row, i in enumerate(ranked):
        multi_hot[row, [evaluated.index(name) for name in organs[i] if name in evaluated]] = True
    ranked_scores = present_scores[ranked]
    result: dict[str, Any] = {
        f"rank{k}": rank_k_accuracy(ranked_scores, primary, k) if k <= len(evaluated) else None for k in (1, 2, 3)
    }
    result["mAP"] = mean_average_precision(ranked_scores, multi_hot)
    if is_ood.any():
        kept = np.array(sorted([*ranked, *np.flatnonzero(is_ood)]))
        result["ood_auroc"] = ood_auroc(present_scores[kept], is_ood[kept])
        result["n_out_of_domain"] = int(is_ood.sum())
    primary_absent = sum(1 for i in ranked if (_field(queries[i], "primary") or organs[i][0]) != targets[i])
    result.update(
        n_queries=len(queries),
        n_ranked=len(ranked),
        n_excluded=excluded,
        excluded_reason=EXCLUDED_REASON,
        n_primary_absent=primary_absent,
        organs_evaluated=evaluated,
        organs_absent=[organ for organ in ORGANS if organ not in evaluated],
    )
    return result
