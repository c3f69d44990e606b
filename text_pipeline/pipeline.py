"""The offline stages, from the shipped corpus to the artifacts the bundle reads (method.md §2).

Artifacts, all in one folder (default ``bundle/models/text``):

- ``embeddings/``: the encoder's cache, by (encoder, text)
- ``anchors.pt``: positive and negative organ anchors, and the encoder they live with
- ``text_mlp_soft.pt`` / ``text_mlp_hard.pt``: the text MLP trained on soft labels / on one-hot labels
- ``manifest.json``: what was built from what, with counts and seeds
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from text_pipeline.anchors import fit_anchors, soft_labels
from text_pipeline.corpus import OOD_QUERIES, Query, read_corpus, read_queries
from text_pipeline.encoders import make_encoder
from text_pipeline.figures import plot_label_correlation, plot_tsne
from text_pipeline.files import write_json_atomically, write_torch_atomically
from text_pipeline.metrics import evaluate_scores
from text_pipeline.organs import ORGANS, organ_index
from text_pipeline.text_model import load_text_model, save_text_model, train_text_mlp

logger = logging.getLogger(__name__)

DEFAULT_ARTIFACTS = Path("bundle/models/text")


@dataclass(frozen=True)
class BuildSettings:
    """Hyperparameters of the offline build (paper values where method.md gives them)."""

    encoder: str = "minilm"
    margin: float = 0.8
    anchor_epochs: int = 200
    anchor_lr: float = 1e-2
    anchor_batch_size: int = 256
    mlp_epochs: int = 500
    mlp_batch_size: int = 32
    mlp_lr: float = 1e-3
    seed: int = 0


def embed(queries: list[Query], artifacts: Path, encoder_spec: str) -> np.ndarray:
    """Text embeddings f of every query, [N, d], cached in ``artifacts/embeddings`` by (encoder, text)."""
    encoder = make_encoder(encoder_spec, cache_dir=artifacts / "embeddings")
    return encoder.encode([query.text for query in queries])


def source_organs(queries: list[Query]) -> np.ndarray:
    """Class index of each corpus text's source organ (the organ whose passage it was expanded from)."""
    return np.array([organ_index(query.meta["organ"]) for query in queries], dtype=np.int64)


def build_anchors(features: np.ndarray, organs: np.ndarray, settings: BuildSettings, artifacts: Path) -> dict:
    """Fit the organ anchors on the training texts and save them with the encoder's name."""
    anchors = fit_anchors(
        torch.from_numpy(features),
        torch.from_numpy(organs),
        num_organs=len(ORGANS),
        margin=settings.margin,
        epochs=settings.anchor_epochs,
        lr=settings.anchor_lr,
        batch_size=settings.anchor_batch_size,
        seed=settings.seed,
    )
    state = {
        "v_pos": anchors.v_pos.detach().clone(),
        "v_neg": anchors.v_neg.detach().clone(),
        "organs": list(ORGANS),
        "encoder": settings.encoder,
        "margin": settings.margin,
    }
    write_torch_atomically(artifacts / "anchors.pt", state)
    return state


def check_encoder(saved_with: str | None, encoder_spec: str, path: Path) -> None:
    """Embeddings of one encoder mean nothing to artifacts fitted on another's: refuse the mix."""
    if saved_with != encoder_spec:
        raise ValueError(
            f"{path} was built with encoder {saved_with!r}, not {encoder_spec!r}: pass --encoder {saved_with}"
        )


def load_anchors(artifacts: Path, encoder_spec: str) -> dict:
    path = artifacts / "anchors.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m text_pipeline anchors` (or build) first")
    anchors = torch.load(path, map_location="cpu", weights_only=True)
    check_encoder(anchors["encoder"], encoder_spec, path)
    return anchors


def train_models(features: np.ndarray, organs: np.ndarray, anchors: dict, settings: BuildSettings, artifacts: Path):
    """Train the text MLP on soft labels (the method) and on one-hot labels (the baseline), and save both."""
    inputs = torch.from_numpy(features)
    targets = {
        "soft": soft_labels(anchors["v_pos"], inputs),
        "hard": torch.nn.functional.one_hot(torch.from_numpy(organs), len(ORGANS)).float(),
    }
    models = {}
    for kind, target in targets.items():
        logger.info("training the text MLP on %s labels", kind)
        model = train_text_mlp(
            inputs,
            target,
            epochs=settings.mlp_epochs,
            batch_size=settings.mlp_batch_size,
            lr=settings.mlp_lr,
            seed=settings.seed,
        )
        save_text_model(artifacts / f"text_mlp_{kind}.pt", model, extra={"encoder": settings.encoder, "labels": kind})
        models[kind] = model
    return models, targets


def score_queries(queries: list[Query], artifacts: Path, encoder_spec: str) -> dict[str, np.ndarray]:
    """Organ probabilities [Q, 7] of each query from the soft- and the hard-label text MLP."""
    features = torch.from_numpy(embed(queries, artifacts, encoder_spec))
    scores = {}
    for kind in ("soft", "hard"):
        path = artifacts / f"text_mlp_{kind}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `python -m text_pipeline train` (or build) first")
        model = load_text_model(path).eval()
        check_encoder(model.extra.get("encoder"), encoder_spec, path)
        with torch.no_grad():
            scores[kind] = model.predict_proba(features).numpy()
    return scores


def evaluate(queries: list[Query], artifacts: Path, encoder_spec: str, out_dir: Path) -> dict:
    """Rank-1/2/3, mAP and (with out-of-domain queries) OOD AUROC for soft and hard labels: out_dir/metrics.json."""
    scores = score_queries(queries, artifacts, encoder_spec)
    report = {kind: evaluate_scores(kind_scores, queries) for kind, kind_scores in scores.items()}
    per_query = [
        {
            "text": query.text,
            "organs": list(query.organs),
            "primary": query.primary,
            **{f"{kind}_scores": dict(zip(ORGANS, map(float, scores[kind][i]))) for kind in scores},
        }
        for i, query in enumerate(queries)
    ]
    metrics = {**report["soft"], "labels": "soft", "soft": report["soft"], "hard": report["hard"], "queries": per_query}
    write_json_atomically(out_dir / "metrics.json", metrics)
    return metrics


METRIC_KEYS = ("rank1", "rank2", "rank3", "mAP", "ood_auroc", "n_queries")


def metrics_table(metrics: dict) -> str:
    """Soft- and hard-label metrics side by side, as printed by ``evaluate`` and ``build``."""
    keys = [key for key in METRIC_KEYS if key in metrics["soft"]]
    rows = [f"{'labels':<8}" + "".join(f"{key:>11}" for key in keys)]
    for kind in ("soft", "hard"):
        rows.append(f"{kind:<8}" + "".join(f"{metrics[kind][key]:>11.2f}" for key in keys))
    return "\n".join(rows)


def figures(artifacts: Path, encoder_spec: str, out_dir: Path) -> list[Path]:
    """t-SNE of the training texts with the positive anchors; hard vs soft label correlation heatmaps."""
    train = read_corpus("train")
    features = embed(train, artifacts, encoder_spec)
    organs = source_organs(train)
    anchors = load_anchors(artifacts, encoder_spec)
    hard = np.eye(len(ORGANS), dtype=np.float32)[organs]
    soft = soft_labels(anchors["v_pos"], torch.from_numpy(features)).numpy()
    paths = [out_dir / "tsne_text_embeddings.png", out_dir / "label_correlation_hard_vs_soft.png"]
    plot_tsne(features, organs, anchors["v_pos"].numpy(), paths[0])
    plot_label_correlation(hard, soft, paths[1])
    return paths


def build(artifacts: Path = DEFAULT_ARTIFACTS, settings: BuildSettings = BuildSettings()) -> dict:
    """The offline path: shipped corpus -> embeddings -> anchors -> soft labels -> text MLPs -> evaluation.

    The evaluation runs on the test split plus the shipped out-of-domain queries (for OOD AUROC).
    """
    start = time.perf_counter()
    train = read_corpus("train")
    features = embed(train, artifacts, settings.encoder)
    organs = source_organs(train)
    anchors = build_anchors(features, organs, settings, artifacts)
    train_models(features, organs, anchors, settings, artifacts)
    queries = read_corpus("test") + read_queries(OOD_QUERIES)
    metrics = evaluate(queries, artifacts, settings.encoder, artifacts / "evaluation")
    figures(artifacts, settings.encoder, artifacts / "figures")
    manifest = {
        "corpus": {"train": len(train), "test_and_ood_queries": len(queries)},
        "settings": settings.__dict__,
        "evaluation": {kind: metrics[kind] for kind in ("soft", "hard")},
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomically(artifacts / "manifest.json", manifest)
    return manifest
