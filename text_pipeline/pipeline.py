"""The offline stages, from the shipped corpus to the artifacts the bundle reads (method.md §2).

Artifacts, all in one folder (default ``bundle/models/text``):

- ``embeddings/``: the encoder's cache, by (encoder, text)
- ``encoder_tuned.pt``: the fine-tuned encoder's adapters, when built with fine-tuning (text_pipeline.fine_tuning)
- ``anchors.pt``: positive and negative organ anchors, and the encoder they live with
- ``text_mlp_<labels>.pt``: the text MLP trained on each kind of label (text_pipeline.labels: hard, anchors,
  calibrated); each records its encoder, so the bundle needs no other setting
- ``manifest.json``: what was built from what, with counts, seeds, seconds per stage and the evaluation
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from text_pipeline.anchors import fit_anchors, soft_labels
from text_pipeline.corpus import OOD_QUERIES, OOD_TRAINING_TEXTS, Query, read_corpus, read_queries
from text_pipeline.encoders import make_encoder
from text_pipeline.figures import plot_label_correlation, plot_tsne
from text_pipeline.files import write_json_atomically, write_torch_atomically
from text_pipeline.fine_tuning import TUNED_ENCODER_FILE, FineTuneSettings, fine_tune_encoder
from text_pipeline.labels import (
    LABEL_KINDS,
    SECONDARY_ORGAN_WEIGHT,
    SET_WEIGHT,
    anchor_similarities,
    calibrated_labels,
    fit_anchor_calibration,
    hard_labels,
    organ_sets,
    ranked_organ_sets,
)
from text_pipeline.metrics import METRIC_KEYS, evaluate_scores
from text_pipeline.organs import ORGANS, organ_index
from text_pipeline.text_model import load_text_model, save_text_model, train_text_mlp

logger = logging.getLogger(__name__)

DEFAULT_ARTIFACTS = Path("bundle/models/text")
DEFAULT_LABELS = "calibrated"  # the labels that measure best (README, "The text pipeline"); the bundle's text_labels
TUNED_ENCODER = f"tuned:{TUNED_ENCODER_FILE}"  # the spec of the fine-tuned encoder, relative to the artifacts


@dataclass(frozen=True)
class BuildSettings:
    """Hyperparameters of the offline build (paper values where method.md gives them).

    ``encoder`` is the pretrained encoder; with ``fine_tune`` it is first fine-tuned on the training split
    (``fine_tune_epochs``) and the tuned encoder is the one every later stage uses.
    """

    encoder: str = "minilm"
    fine_tune: bool = True
    fine_tune_epochs: int = 3
    margin: float = 0.8
    anchor_epochs: int = 200
    anchor_lr: float = 1e-2
    anchor_batch_size: int = 256
    mlp_epochs: int = 200  # the paper's 500 take 2.5 times as long for no gain measured (model card)
    mlp_batch_size: int = 32
    mlp_lr: float = 1e-3
    set_weight: float = SET_WEIGHT
    seed: int = 0

    def check(self) -> None:
        """Refuse settings no stage could run with, before anything is written."""
        for name in ("fine_tune_epochs", "anchor_epochs", "anchor_batch_size", "mlp_epochs", "mlp_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("margin", "anchor_lr", "mlp_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.set_weight <= 1.0:
            raise ValueError(f"set_weight must lie in [0, 1], got {self.set_weight}")

    @property
    def text_encoder(self) -> str:
        """The encoder spec of the artifacts: the tuned encoder, or the pretrained one."""
        return TUNED_ENCODER if self.fine_tune else self.encoder


def embed(queries: list[Query], artifacts: Path, encoder_spec: str) -> np.ndarray:
    """Text embeddings f of every query, [N, d], cached in ``artifacts/embeddings`` by (encoder, text)."""
    encoder = make_encoder(encoder_spec, cache_dir=artifacts / "embeddings", relative_to=artifacts)
    return encoder.encode([query.text for query in queries])


def source_organs(queries: list[Query]) -> np.ndarray:
    """Class index of each corpus text's source organ (the organ whose passage it was expanded from)."""
    return np.array([organ_index(query.meta["organ"]) for query in queries], dtype=np.int64)


def fine_tune(artifacts: Path, settings: BuildSettings) -> dict:
    """Fine-tune ``settings.encoder`` on the training texts and the out-of-domain training texts, against their
    known organ sets: ``artifacts/encoder_tuned.pt`` (text_pipeline.fine_tuning)."""
    texts = read_corpus("train") + read_queries(OOD_TRAINING_TEXTS)
    tuning = FineTuneSettings(epochs=settings.fine_tune_epochs, seed=settings.seed)
    start = time.perf_counter()
    summary = fine_tune_encoder(
        settings.encoder, [query.text for query in texts], organ_sets(texts), artifacts / TUNED_ENCODER_FILE, tuning
    )
    return {**summary, "seconds": round(time.perf_counter() - start, 1)}


def build_anchors(
    features: np.ndarray, organs: np.ndarray, settings: BuildSettings, artifacts: Path, encoder_spec: str
) -> dict:
    """Fit the organ anchors on the training texts and save them with the encoder's spec."""
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
        "encoder": encoder_spec,
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


def load_anchors(artifacts: Path, encoder_spec: str | None = None) -> dict:
    """The anchors of ``artifacts``; ``encoder_spec``, when given, must be the encoder they were fitted with."""
    path = artifacts / "anchors.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m text_pipeline anchors` (or build) first")
    anchors = torch.load(path, map_location="cpu", weights_only=True)
    if encoder_spec is not None:
        check_encoder(anchors["encoder"], encoder_spec, path)
    return anchors


def training_targets(
    kind: str, train: list[Query], features: np.ndarray, ood_features: np.ndarray, anchors: dict, set_weight: float
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The text MLP's inputs [N, d] and targets [N, O] for one kind of label (text_pipeline.labels), and what the
    targets were made with.

    ``hard`` and ``anchors`` train on the corpus' training texts as the paper does; ``calibrated`` also trains on
    the out-of-domain training texts, whose known organ set is empty.
    """
    inputs = torch.from_numpy(features)
    if kind == "hard":
        return inputs, hard_labels(source_organs(train)), {}
    if kind == "anchors":
        return inputs, soft_labels(anchors["v_pos"], inputs), {}
    if kind != "calibrated":
        raise ValueError(f"unknown labels {kind!r}; expected one of {', '.join(LABEL_KINDS)}")
    others = torch.from_numpy(ood_features)
    all_inputs = torch.cat([inputs, others])
    all_similarities = anchor_similarities(anchors["v_pos"], all_inputs)
    no_organ = torch.zeros(len(others), len(ORGANS))
    calibration = fit_anchor_calibration(all_similarities, torch.cat([organ_sets(train), no_organ]))
    known_sets = torch.cat([ranked_organ_sets(train), no_organ])
    targets = calibrated_labels(all_similarities, known_sets, calibration, set_weight)
    made_with = {
        "set_weight": set_weight,
        "secondary_organ_weight": SECONDARY_ORGAN_WEIGHT,
        "calibration_scale": calibration.scale.tolist(),
        "calibration_bias": calibration.bias.tolist(),
        "out_of_domain_texts": len(others),
    }
    return all_inputs, targets, made_with


def train_models(
    train: list[Query],
    features: np.ndarray,
    ood_features: np.ndarray,
    anchors: dict,
    settings: BuildSettings,
    artifacts: Path,
) -> dict[str, dict]:
    """Train the text MLP on every kind of label and save each as ``text_mlp_<kind>.pt``; returns what each
    kind's targets were made with."""
    made = {}
    for kind in LABEL_KINDS:
        inputs, targets, made[kind] = training_targets(
            kind, train, features, ood_features, anchors, settings.set_weight
        )
        logger.info("training the text MLP on %s labels (%d texts)", kind, len(inputs))
        model = train_text_mlp(
            inputs,
            targets,
            epochs=settings.mlp_epochs,
            batch_size=settings.mlp_batch_size,
            lr=settings.mlp_lr,
            seed=settings.seed,
        )
        save_text_model(artifacts / f"text_mlp_{kind}.pt", model, extra={"encoder": anchors["encoder"], "labels": kind})
    return made


def score_queries(queries: list[Query], artifacts: Path) -> dict[str, np.ndarray]:
    """Organ probabilities [Q, 7] of each query from the text MLP of every kind of label, with the encoder each
    records."""
    scores, features = {}, {}  # the kinds share their encoder: each encoder embeds the queries once
    for kind in LABEL_KINDS:
        path = artifacts / f"text_mlp_{kind}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `python -m text_pipeline train` (or build) first")
        model = load_text_model(path).eval()
        spec = model.extra["encoder"]
        if spec not in features:
            features[spec] = torch.from_numpy(embed(queries, artifacts, spec))
        with torch.no_grad():
            scores[kind] = model.predict_proba(features[spec]).numpy()
    return scores


def evaluate(queries: list[Query], artifacts: Path, out_dir: Path) -> dict:
    """Rank-1/2/3, mAP and (with out-of-domain queries) OOD AUROC for every kind of label: out_dir/metrics.json.

    The top-level metrics are those of :data:`DEFAULT_LABELS`.
    """
    scores = score_queries(queries, artifacts)
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
    metrics = {**report[DEFAULT_LABELS], "labels": DEFAULT_LABELS, **report, "queries": per_query}
    write_json_atomically(out_dir / "metrics.json", metrics)
    return metrics


def metrics_table(metrics: dict) -> str:
    """The metrics of every kind of label, one row each, as printed by ``evaluate`` and ``build``."""
    keys = [key for key in METRIC_KEYS if key in metrics[DEFAULT_LABELS]]
    rows = [f"{'labels':<12}" + "".join(f"{key:>11}" for key in keys)]
    for kind in LABEL_KINDS:
        rows.append(f"{kind:<12}" + "".join(f"{metrics[kind][key]:>11.2f}" for key in keys))
    return "\n".join(rows)


def figures(artifacts: Path, out_dir: Path) -> list[Path]:
    """t-SNE of the training texts with the positive anchors; hard vs the paper's soft label correlation heatmaps."""
    anchors = load_anchors(artifacts)
    train = read_corpus("train")
    features = embed(train, artifacts, anchors["encoder"])
    organs = source_organs(train)
    hard = hard_labels(organs).numpy()
    soft = soft_labels(anchors["v_pos"], torch.from_numpy(features)).numpy()
    paths = [out_dir / "tsne_text_embeddings.png", out_dir / "label_correlation_hard_vs_soft.png"]
    plot_tsne(features, organs, anchors["v_pos"].numpy(), paths[0])
    plot_label_correlation(hard, soft, paths[1])
    return paths


def build(artifacts: Path = DEFAULT_ARTIFACTS, settings: BuildSettings = BuildSettings()) -> dict:
    """The offline path: shipped corpus -> (fine-tuned encoder) -> embeddings -> anchors -> labels -> text MLPs
    -> evaluation -> figures.

    The evaluation runs on the test split plus the shipped out-of-domain queries (for OOD AUROC).
    """
    settings.check()
    start = time.perf_counter()
    seconds = {}
    tuning = fine_tune(artifacts, settings) if settings.fine_tune else None
    if tuning is not None:
        seconds["fine_tune"] = tuning["seconds"]
    stage_start = time.perf_counter()
    train, ood_train = read_corpus("train"), read_queries(OOD_TRAINING_TEXTS)
    features = embed(train, artifacts, settings.text_encoder)
    ood_features = embed(ood_train, artifacts, settings.text_encoder)
    anchors = build_anchors(features, source_organs(train), settings, artifacts, settings.text_encoder)
    labels = train_models(train, features, ood_features, anchors, settings, artifacts)
    queries = read_corpus("test") + read_queries(OOD_QUERIES)
    metrics = evaluate(queries, artifacts, artifacts / "evaluation")
    figures(artifacts, artifacts / "figures")
    seconds["build_after_fine_tune"] = round(time.perf_counter() - stage_start, 1)
    manifest = {
        "corpus": {
            "train": len(train),
            "out_of_domain_train": len(ood_train),
            "test_and_ood_queries": len(queries),
        },
        "settings": asdict(settings),
        "encoder": settings.text_encoder,
        "fine_tuning": tuning,
        "labels": labels,
        "default_labels": DEFAULT_LABELS,
        "evaluation": {kind: metrics[kind] for kind in LABEL_KINDS},
        "seconds": {**seconds, "total": round(time.perf_counter() - start, 1)},
    }
    write_json_atomically(artifacts / "manifest.json", manifest)
    return manifest
