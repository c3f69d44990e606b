"""Where the scans come from: a BTCV folder, a datalist JSON, or the embedded synthetic phantoms.

Every source resolves to the same form, ``{"training": [...], "validation": [...]}`` with one
``{"image", "label", "convention"}`` dictionary per scan, which the bundle's preprocessing then expands
into (scan, organ) samples with :func:`organ_samples`. A datalist made only of scans to evaluate (a
``{"validation": [...]}`` object, or a plain list read with ``val_fraction`` 1.0, as ``evaluate.yaml`` sets)
has no training split: reading it raises a ``ValueError`` that says why, so ``training`` refuses such a
datalist while ``evaluating``, which reads only ``validation``, runs on it, down to a single scan.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from monai.data import load_decathlon_datalist

from scripts.label_conventions import LABEL_CONVENTIONS
from scripts.phantom import write_phantom_dataset
from scripts.transforms import source_name

logger = logging.getLogger(__name__)


class Datalist(dict):
    """``{"training": [...], "validation": [...]}``, one ``{"image", "label", "convention"}`` per scan.

    A split that the source does not provide is absent, and reading it (``datalist["training"]``, as
    train.yaml does) raises a ``ValueError`` naming the source and why, instead of a bare ``KeyError``.

    Args:
        splits: the splits the source provides.
        missing: for each split it does not provide, the reason, in words.
    """

    def __init__(self, splits: dict[str, list[dict[str, str]]], missing: dict[str, str] | None = None) -> None:
        super().__init__(splits)
        self.missing = dict(missing or {})

    def __missing__(self, split: str) -> list[dict[str, str]]:
        if split in self.missing:
            raise ValueError(self.missing[split])
        raise KeyError(split)


def resolve_datalist(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    phantom_dir: str = "data/phantom",
    num_phantom_train: int = 24,
    num_phantom_val: int = 8,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Datalist:
    """The training and validation scans of a run, from the first configured source.

    Args:
        dataset_dir: a BTCV folder as MONAI's tutorials keep it (``dataset_0.json``, ``imagesTr/``, ``labelsTr/``).
        datalist: a JSON file, either a list of ``{"image", "label", "convention"}`` items (split into training
            and validation by ``val_fraction``) or ``{"training": [...], "validation": [...]}`` (``"training"``
            may be left out: a datalist of scans to evaluate). Relative paths are relative to the file's
            folder. ``image`` is a NIfTI file or a DICOM series folder.
        phantom_dir: where the embedded default, synthetic phantoms, is written when neither is given.
        num_phantom_train: phantoms to train on.
        num_phantom_val: phantoms to validate on.
        val_fraction: share of a plain-list datalist held out for validation, in [0, 1]. Below 1 at least one
            scan is held out and at least one is kept for training (so the list needs 2 items); 1.0 makes every
            scan a validation scan and leaves no training split (``evaluating``; one scan is enough).
        seed: seeds the phantoms and the datalist split.

    Raises:
        ValueError: both or a malformed source; a plain list too short to split; ``val_fraction`` outside [0, 1].
            Reading a split the source does not provide raises ``ValueError`` too (see :class:`Datalist`).
        FileNotFoundError: a listed file or folder does not exist.
    """
    if dataset_dir and datalist:
        raise ValueError(f"set one of dataset_dir ({dataset_dir}) and datalist ({datalist}), not both")
    if dataset_dir:
        return _btcv_datalist(Path(dataset_dir))
    if datalist:
        return _json_datalist(Path(datalist), val_fraction, seed)
    scans = write_phantom_dataset(phantom_dir, num_cases=num_phantom_train + num_phantom_val, seed=seed)
    return {"training": scans[:num_phantom_train], "validation": scans[num_phantom_train:]}


def _btcv_datalist(dataset_dir: Path) -> Datalist:
    listing = dataset_dir / "dataset_0.json"
    if not listing.is_file():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} has no dataset_0.json (expected BTCV as MONAI keeps it)")
    splits = {}
    for split in ("training", "validation"):
        items = load_decathlon_datalist(str(listing), data_list_key=split, base_dir=str(dataset_dir))
        splits[split] = _checked_items([{**item, "convention": "btcv"} for item in items], f"{listing} [{split}]")
    return Datalist(splits)


def _json_datalist(path: Path, val_fraction: float, seed: int) -> Datalist:
    if not 0.0 <= float(val_fraction) <= 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1] (the share of a plain list held out), got {val_fraction}")
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"datalist {path} is not valid UTF-8 JSON: {error}") from error
    base = path.parent
    if isinstance(content, dict):
        if "validation" not in content:
            raise ValueError(
                f"datalist {path} is a JSON object without validation: list the scans to validate (or to evaluate) "
                "on under 'validation', and the scans to train on under 'training'"
            )
        splits = {
            split: _checked_items(content[split], f"datalist {path} [{split}]", base)
            for split in ("training", "validation")
            if split in content
        }
        missing = {
            "training": f"datalist {path} has no training scans (a JSON object with only 'validation'): training "
            "needs a 'training' list; a datalist of scans to evaluate is for the evaluating run (evaluate.yaml)"
        }
        return Datalist(splits, {} if "training" in splits else missing)
    if not isinstance(content, list):
        raise ValueError(f"datalist {path} must hold a JSON list or a {{'training', 'validation'}} object")
    items = _checked_items(content, f"datalist {path}", base)
    if float(val_fraction) >= 1.0:  # every scan is validated (evaluated): nothing to train on
        logger.info("datalist %s: val_fraction %s, all %d scan(s) are validation scans", path, val_fraction, len(items))
        return Datalist(
            {"validation": items},
            {
                "training": f"val_fraction {val_fraction} makes every scan of datalist {path} a validation scan: "
                "none is left to train on; training needs val_fraction below 1 (train.yaml sets 0.2)"
            },
        )
    if len(items) < 2:
        raise ValueError(
            f"datalist {path} has {len(items)} item(s); a plain list needs at least 2 to hold one out for validation "
            f"(val_fraction {val_fraction}). To evaluate it, run evaluating (evaluate.yaml sets val_fraction 1.0: "
            'every scan is evaluated) or write it as {"validation": [...]}'
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    num_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    held_out = set(order[:num_val])
    return Datalist(
        {
            "training": [item for i, item in enumerate(items) if i not in held_out],
            "validation": [item for i, item in enumerate(items) if i in held_out],
        }
    )


def _checked_items(items: object, where: str, base: Path | None = None) -> list[dict[str, str]]:
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where} is empty: it lists no scans")
    checked = []
    for number, item in enumerate(items):
        if not isinstance(item, dict) or not {"image", "label", "convention"} <= item.keys():
            raise ValueError(f"{where} item {number} must be an object with 'image', 'label' and 'convention'")
        if item["convention"] not in LABEL_CONVENTIONS:
            raise ValueError(
                f"{where} item {number}: unknown label convention {item['convention']!r}; "
                f"known conventions: {', '.join(LABEL_CONVENTIONS)}"
            )
        resolved = dict(item)
        for key in ("image", "label"):
            file = Path(item[key]) if base is None else base / item[key]
            if not file.exists():
                raise FileNotFoundError(f"{where} item {number}: {key} {file} does not exist")
            resolved[key] = str(file)
        checked.append(resolved)
    return checked


class ScanError(RuntimeError):
    """A scan that cannot be preprocessed; the message names the scan and the first cause."""


def preprocess_scan(scan: dict, transform: Callable) -> object:
    """``transform(scan)``; an error names the scan (its image and label files) and its first cause (ScanError)."""
    try:
        return transform(scan)
    except Exception as error:
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        image, label = source_name(scan, "image"), source_name(scan, "label")
        raise ScanError(f"cannot preprocess scan {image} (label {label}): {cause}") from error


def organ_samples(scans: Sequence[dict], transform: Callable, num_workers: int = 0) -> list[dict]:
    """Preprocess every scan once and flatten the result into one sample per (scan, organ) pair.

    Args:
        scans: ``{"image", "label", "convention"}`` dictionaries (or scans already loaded, for a ``transform``
            that starts from loaded ones).
        transform: the deterministic per-scan preprocessing, ending in per-organ lists (``SplitOrgansd``).
        num_workers: threads preprocessing scans side by side (0: one).
    """
    if not scans:
        raise ValueError("no scans to preprocess: the datalist split is empty")
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        per_scan = list(pool.map(lambda scan: preprocess_scan(scan, transform), scans))
    samples = [sample for scan_samples in per_scan for sample in scan_samples]
    logger.info("%d scans -> %d (scan, organ) samples", len(scans), len(samples))
    return samples
