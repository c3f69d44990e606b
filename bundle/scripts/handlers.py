"""Ignite handlers and metric inputs reporting the model's validation per organ."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as IgniteProgressBar

from scripts.losses import alignment_logits
from text_pipeline.files import write_atomically, write_json_atomically
from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)


class ImageLogits:
    """Metric input ``(logits, organ)`` of the image network's main head, from an engine's output with
    ``pred`` = the dict of ``MedSORANet(x, organ_texts)``."""

    def __call__(self, output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return output["pred"]["logits"], output["label"].reshape(-1).long()


class AlignmentLogits:
    """Metric input ``(logits, organ)``: each organ sample's alignment logits (avgSim / tau) over the organs'
    texts and the out-of-domain texts (method.md §4), the input of InfoNCE (a cross-entropy ``Loss`` metric)
    and of alignment ``Accuracy`` (an out-of-domain text closest counts as wrong).

    Args:
        temperature: tau of the alignment loss.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        self.temperature = temperature

    def __call__(self, output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        pred = output["pred"]
        logits = alignment_logits(
            pred["slice_features"], pred["text_features"], pred.get("other_text_features"), self.temperature
        )
        return logits, output["label"].reshape(-1).long()


def organ_accuracy_table(metrics: Mapping[str, object], organs: Sequence[str] = ORGANS) -> str:
    """A plain-text table of per-organ validation accuracy from an evaluator's metrics."""
    rows = [f"{'organ':<15}{'accuracy':>10}{'samples':>9}"]
    for organ in organs:
        rows.append(f"{organ:<15}{metrics[f'acc_{organ}']:>10.3f}{int(metrics[f'n_{organ}']):>9d}")
    rows.append(f"{'all':<15}{metrics['accuracy']:>10.3f}{int(sum(metrics[f'n_{o}'] for o in organs)):>9d}")
    return "\n".join(rows)


class OrganValidationReport:
    """After each validation: per-organ accuracy, a confusion-matrix PNG and a JSON summary.

    Reads an Ignite ``ConfusionMatrix`` metric (rows: true organ, columns: predicted organ; synchronised
    across DDP ranks by Ignite), adds ``acc_<organ>``, ``n_<organ>`` and ``accuracy`` to the engine's
    metrics (so Stats and TensorBoard handlers attached after it log them) and writes
    ``output_dir/confusion_matrix.png`` and ``output_dir/validation_metrics.json``.

    Args:
        output_dir: folder for the PNG and the JSON.
        confusion_metric: name of the ``ConfusionMatrix`` metric on the engine.
        organs: class names, in class-index order.
    """

    def __init__(self, output_dir: str | Path, confusion_metric: str = "confusion", organs: Sequence[str] = ORGANS):
        self.output_dir = Path(output_dir)
        self.confusion_metric = confusion_metric
        self.organs = tuple(organs)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        # popped: Stats and TensorBoard handlers log scalars; the matrix goes to the PNG and the JSON instead
        confusion = torch.as_tensor(engine.state.metrics.pop(self.confusion_metric)).double().cpu().numpy()
        counts = confusion.sum(axis=1)
        for index, organ in enumerate(self.organs):
            engine.state.metrics[f"acc_{organ}"] = (
                float(confusion[index, index] / counts[index]) if counts[index] else 0.0
            )
            engine.state.metrics[f"n_{organ}"] = int(counts[index])
        engine.state.metrics["accuracy"] = float(np.trace(confusion) / max(confusion.sum(), 1))
        epoch = engine.state.epoch if engine.state.epoch is not None else 0
        write_json_atomically(
            self.output_dir / "validation_metrics.json",
            {
                "epoch": epoch,
                "organs": list(self.organs),
                "confusion_matrix": confusion.astype(int).tolist(),
                **engine.state.metrics,
            },
        )
        write_atomically(self.output_dir / "confusion_matrix.png", lambda tmp: self._plot(confusion, tmp))
        logger.info("per-organ validation accuracy:\n%s", organ_accuracy_table(engine.state.metrics, self.organs))

    def _plot(self, confusion: np.ndarray, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
        figure, axes = plt.subplots(figsize=(6.4, 5.6), dpi=100)
        image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        for (row, column), count in np.ndenumerate(confusion):
            colour = "white" if rates[row, column] > 0.5 else "black"
            axes.text(column, row, f"{int(count)}", ha="center", va="center", color=colour, fontsize=9)
        axes.set_xticks(range(len(self.organs)), self.organs, rotation=45, ha="right")
        axes.set_yticks(range(len(self.organs)), self.organs)
        axes.set_xlabel("predicted organ")
        axes.set_ylabel("true organ")
        axes.set_title("validation confusion matrix (colour: row-normalised)")
        figure.colorbar(image, ax=axes, fraction=0.046)
        figure.tight_layout()
        figure.savefig(path, format="png")
        plt.close(figure)


def print_organ_accuracy(metrics: Mapping[str, object], title: str = "per-organ validation results") -> None:
    """Print :func:`organ_accuracy_table` of an evaluator's final metrics: the last line of a training run."""
    if "accuracy" not in metrics:
        raise RuntimeError("no validation ran: the evaluator has no per-organ metrics to print")
    print(f"\n{title}\n{organ_accuracy_table(metrics)}", flush=True)


class ProgressBar(IgniteProgressBar):
    """Ignite's tqdm progress bar, showing the loss, attachable by MONAI engines (``attach(engine)`` only).

    Args:
        output_transform: maps the engine's output to the values shown, e.g. ``{"loss": ...}``.
        kwargs: passed to ``ignite.handlers.ProgressBar`` (``persist``, ``bar_format``, ...).
    """

    def __init__(self, output_transform: Callable | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._output_transform = output_transform

    def attach(self, engine: Engine) -> None:  # type: ignore[override]
        super().attach(engine, output_transform=self._output_transform)
