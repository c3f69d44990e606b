"""Ignite handlers and metric inputs reporting the model's validation per organ."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as IgniteProgressBar

from scripts.losses import MedSORALoss, alignment_logits
from text_pipeline.files import write_atomically, write_json_atomically
from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)


class ImageLogits:
    """Metric input ``(logits, organ)`` of the image network's main head, from an engine's output with
    ``pred`` = the dict of ``MedSORANet(x, organ_texts)``."""

    def __call__(self, output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return output["pred"]["logits"], output["label"].reshape(-1).long()


class LossTerms:
    """TensorBoard's values of one training iteration: L_total (``loss``) and each term of ``loss`` (a
    :class:`scripts.losses.MedSORALoss`), ``loss_align``, ``loss_image``, ``loss_image_2d``, ...

    Args:
        loss: the trainer's loss function, which keeps the terms of its latest call.
    """

    def __init__(self, loss: MedSORALoss) -> None:
        self.loss = loss

    def __call__(self, output: Mapping[str, Any]) -> dict[str, float]:
        terms = {f"loss_{name}": float(value) for name, value in self.loss.last_terms.items()}
        return {"loss": float(output["loss"]), **terms}


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
    """A plain-text table of per-organ validation accuracy from an evaluator's metrics (``-``: no samples)."""
    rows = [f"{'organ':<15}{'accuracy':>10}{'samples':>9}"]
    for organ in organs:
        count = int(metrics[f"n_{organ}"])
        accuracy = f"{metrics[f'acc_{organ}']:>10.3f}" if count else f"{'-':>10}"
        rows.append(f"{organ:<15}{accuracy}{count:>9d}")
    rows.append(f"{'all':<15}{metrics['accuracy']:>10.3f}{int(sum(metrics[f'n_{o}'] for o in organs)):>9d}")
    return "\n".join(rows)


def scan_accuracy_table(per_scan: Mapping[str, Mapping[str, Any]], organs: Sequence[str] = ORGANS) -> str:
    """A plain-text table of per-scan, per-organ accuracy (``per_scan`` of ``validation_metrics.json``): one row
    per scan, ``-`` where the scan has no such organ."""
    width = max(len(organ) for organ in organs) + 1
    rows = ["".join(f"{organ:>{width}}" for organ in organs) + f"{'all':>{width}}  scan"]
    for scan, entry in per_scan.items():
        cells = [
            f"{entry['organs'][organ]['accuracy']:>{width}.3f}" if organ in entry["organs"] else f"{'-':>{width}}"
            for organ in organs
        ]
        rows.append("".join(cells) + f"{entry['accuracy']:>{width}.3f}  {scan}")
    return "\n".join(rows)


class OrganValidationReport:
    """After each validation: per-organ accuracy, overall and per scan, a confusion-matrix PNG and a JSON summary.

    Reads an Ignite ``ConfusionMatrix`` metric (rows: true organ, columns: predicted organ; synchronised
    across DDP ranks by Ignite), adds ``acc_<organ>``, ``n_<organ>`` and ``accuracy`` to the engine's
    metrics (so Stats and TensorBoard handlers attached after it log them; ``acc_<organ>`` is 0.0 where
    ``n_<organ>`` is 0) and writes ``output_dir/confusion_matrix.png`` and ``output_dir/validation_metrics.json``.

    Per scan: every iteration, the image head's prediction for each sample is recorded under the sample's
    scan (its ``scan_key``, the CT's file name set by ``SplitOrgansd``) and organ. ``validation_metrics.json``
    then holds, besides ``epoch``, ``organs``, ``confusion_matrix`` and the engine's metrics, ``per_scan``:
    ``{scan: {"accuracy", "n", "organs": {organ: {"accuracy", "n", "predicted": {organ: count}}}}}``, scans
    sorted by name. A scan lacking an organ has no entry for it (not an accuracy of 0). In a multi-process
    (DDP) validation each process sees only its share of the samples, so ``per_scan`` is left out there (with
    a logged note); the overall values, gathered by Ignite, are complete.

    Args:
        output_dir: folder for the PNG and the JSON.
        confusion_metric: name of the ``ConfusionMatrix`` metric on the engine.
        organs: class names, in class-index order.
        scan_key: key of the batch holding each sample's scan name.
    """

    def __init__(
        self,
        output_dir: str | Path,
        confusion_metric: str = "confusion",
        organs: Sequence[str] = ORGANS,
        scan_key: str = "scan",
    ):
        self.output_dir = Path(output_dir)
        self.confusion_metric = confusion_metric
        self.organs = tuple(organs)
        self.scan_key = scan_key
        self._records: dict[str, np.ndarray] = {}  # scan -> [true organ, predicted organ] counts
        self._scan_names_missing = False
        self.per_scan: dict[str, dict] | None = None  # the last validation's per-scan report

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._records = {}
        self._scan_names_missing = False

    def _record(self, engine: Engine) -> None:
        batch = engine.state.batch
        scans = batch.get(self.scan_key) if isinstance(batch, Mapping) else None
        if scans is None:
            self._scan_names_missing = True
            return
        logits, labels = ImageLogits()(engine.state.output)
        predicted = logits.detach().argmax(dim=-1).reshape(-1).cpu().tolist()
        labels = labels.detach().cpu().tolist()
        scans = [scans] if isinstance(scans, str) else list(scans)
        if not len(scans) == len(labels) == len(predicted):
            raise ValueError(
                f"batch key {self.scan_key!r} names {len(scans)} scans for {len(labels)} samples: "
                "each sample must carry its scan's name"
            )
        size = len(self.organs)
        for scan, true, guess in zip(scans, labels, predicted):
            self._records.setdefault(str(scan), np.zeros((size, size), dtype=np.int64))[true, guess] += 1

    def _per_scan_report(self) -> dict[str, dict]:
        report = {}
        for scan in sorted(self._records):
            confusion = self._records[scan]
            organs = {}
            for index, organ in enumerate(self.organs):
                count = int(confusion[index].sum())
                if not count:
                    continue  # the scan has no such organ: no entry, not an accuracy of 0
                predicted = {self.organs[j]: int(n) for j, n in enumerate(confusion[index]) if n}
                organs[organ] = {"accuracy": float(confusion[index, index] / count), "n": count, "predicted": predicted}
            report[scan] = {
                "accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
                "n": int(confusion.sum()),
                "organs": organs,
            }
        return report

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
        per_scan: dict[str, dict] = {}
        if idist.get_world_size() > 1:
            logger.info("per-scan accuracy left out of validation_metrics.json: each process validates a share")
        elif self._scan_names_missing:
            logger.warning("per-scan accuracy left out: the validation batches carry no %r key", self.scan_key)
        else:
            per_scan = self._per_scan_report()
        self.per_scan = per_scan or None
        write_json_atomically(
            self.output_dir / "validation_metrics.json",
            {
                "epoch": epoch,
                "organs": list(self.organs),
                "confusion_matrix": confusion.astype(int).tolist(),
                **engine.state.metrics,
                **({"per_scan": per_scan} if per_scan else {}),
            },
        )
        write_atomically(self.output_dir / "confusion_matrix.png", lambda tmp: self._plot(confusion, tmp))
        logger.info("per-organ validation accuracy:\n%s", organ_accuracy_table(engine.state.metrics, self.organs))
        if per_scan:
            logger.debug("per-scan validation accuracy:\n%s", scan_accuracy_table(per_scan, self.organs))

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


def print_organ_accuracy(
    metrics: Mapping[str, object],
    title: str = "per-organ validation results",
    report: OrganValidationReport | None = None,
) -> None:
    """Print :func:`organ_accuracy_table` of an evaluator's final metrics: the last line of a training run.

    Args:
        metrics: the evaluator's final metrics.
        title: printed above the table.
        report: the validation's :class:`OrganValidationReport`; when given, its per-scan table follows.
    """
    if "accuracy" not in metrics:
        raise RuntimeError("no validation ran: the evaluator has no per-organ metrics to print")
    text = f"\n{title}\n{organ_accuracy_table(metrics)}"
    if report is not None and report.per_scan:
        text += f"\n\nper scan (-: organ not in the scan)\n{scan_accuracy_table(report.per_scan)}"
    print(text, flush=True)


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
