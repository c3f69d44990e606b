"""The text side's figures (method.md §5): t-SNE of the text embeddings with the positive anchors marked,
and organ-organ correlation heatmaps of hard vs soft labels. PNGs, written atomically."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from text_pipeline.files import write_atomically
from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _new_figure(**kwargs: Any) -> Figure:
    """A figure on the Agg canvas, outside pyplot: no global backend switch, nothing left open."""
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path, dpi: int) -> Path:
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def plot_tsne(
    features: Any,
    organ_of_text: Any,
    anchors_pos: Any,
    path: str | Path,
    *,
    organs: Sequence[str] = ORGANS,
    perplexity: float = 30.0,
    random_state: int = 0,
    dpi: int = 150,
) -> Path:
    """t-SNE of the text embeddings coloured by organ, each positive anchor v+_i a labelled star.

    Texts and anchors are embedded together, on unit-normalised vectors, so that the anchors land among the
    texts they attract.

    Args:
        features: text embeddings f, [N, d].
        organ_of_text: each text's organ index, [N].
        anchors_pos: positive anchors v+, [O, d].
        path: the PNG to write.
        organs: organ names, by index.
        perplexity: t-SNE perplexity (lowered automatically for very few points).
        random_state: t-SNE seed.
        dpi: resolution.
    """
    features = _as_numpy(features).astype(np.float64)
    organ_of_text = _as_numpy(organ_of_text).astype(np.int64).reshape(-1)
    anchors_pos = _as_numpy(anchors_pos).astype(np.float64)
    if features.ndim != 2 or anchors_pos.ndim != 2 or features.shape[1] != anchors_pos.shape[1]:
        raise ValueError(f"features {features.shape} and anchors {anchors_pos.shape} must be [N, d] and [O, d]")
    if organ_of_text.shape[0] != features.shape[0]:
        raise ValueError(f"{features.shape[0]} texts but {organ_of_text.shape[0]} organ indices")
    if len(organs) < anchors_pos.shape[0]:
        raise ValueError(f"{anchors_pos.shape[0]} anchors but only {len(organs)} organ names")
    points = np.concatenate([features, anchors_pos])
    points /= np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    perplexity = min(perplexity, (points.shape[0] - 1) / 3)
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state).fit_transform(points)
    texts, anchors = embedded[: features.shape[0]], embedded[features.shape[0] :]

    colours = matplotlib.colormaps["tab10"]
    figure = _new_figure(figsize=(8, 7))
    axes = figure.subplots()
    for organ in range(anchors_pos.shape[0]):
        chosen = organ_of_text == organ
        axes.scatter(*texts[chosen].T, s=10, alpha=0.6, color=colours(organ % 10), label=organs[organ])
        axes.scatter(*anchors[organ], s=320, marker="*", color=colours(organ % 10), edgecolors="black", linewidths=1.2)
        axes.annotate(
            f"v+ {organs[organ]}", anchors[organ], xytext=(6, 6), textcoords="offset points", fontsize=9, weight="bold"
        )
    axes.set_title("t-SNE of the symptom text embeddings; stars: positive anchors v+")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(loc="best", fontsize=8, markerscale=2)
    return _save(figure, path, dpi)


def label_correlation(labels: Any) -> np.ndarray:
    """Pearson correlation between the organs' label columns, [O, O]; a constant column correlates 0 with
    the others (and 1 with itself)."""
    labels = _as_numpy(labels).astype(np.float64)
    centred = labels - labels.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    safe = np.where(norms > 0, norms, 1.0)
    correlation = (centred.T @ centred) / np.outer(safe, safe)
    np.fill_diagonal(correlation, 1.0)
    return np.clip(correlation, -1.0, 1.0)


def plot_label_correlation(
    hard_labels: Any, soft_labels: Any, path: str | Path, *, organs: Sequence[str] = ORGANS, dpi: int = 150
) -> Path:
    """Organ-organ correlation heatmaps of the hard (one-hot) and the soft labels side by side.

    Args:
        hard_labels: one-hot source-organ labels, [N, O].
        soft_labels: the anchors' soft labels of the same texts, [N, O].
        path: the PNG to write.
        organs: organ names for the axes.
        dpi: resolution.
    """
    matrices = {"hard labels": label_correlation(hard_labels), "soft labels": label_correlation(soft_labels)}
    num_organs = len(organs)
    for name, matrix in matrices.items():
        if matrix.shape != (num_organs, num_organs):
            raise ValueError(f"{name} have {matrix.shape[0]} columns, expected one per organ ({num_organs})")
    names = [organ.replace("_", " ") for organ in organs]
    figure = _new_figure(figsize=(13, 5.5), layout="constrained")
    all_axes = figure.subplots(1, 2)
    for axes, (name, matrix) in zip(all_axes, matrices.items()):
        image = axes.imshow(matrix, cmap="coolwarm", vmin=-1, vmax=1)
        axes.set_xticks(range(num_organs), names, rotation=45, ha="right")
        axes.set_yticks(range(num_organs), names)
        for row in range(num_organs):
            for column in range(num_organs):
                axes.text(column, row, f"{matrix[row, column]:.2f}", ha="center", va="center", fontsize=8)
        axes.set_title(f"organ-organ correlation, {name}")
    figure.colorbar(image, ax=all_axes, shrink=0.8)
    return _save(figure, path, dpi)
