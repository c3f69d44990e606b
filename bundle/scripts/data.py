"""Where the scans come from: a BTCV folder, a datalist JSON, or the embedded synthetic phantoms.

Every source resolves to the same form, ``{"training": [...], "validation": [...]}`` with one
``{"image", "label", "convention"}`` dictionary per scan, which the bundle's preprocessing then expands
into (scan, organ) samples with :func:`organ_samples`.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from monai.data import load_decathlon_datalist

from scripts.phantom import write_phantom_dataset
from text_pipeline.organs import LABEL_CONVENTIONS

logger = logging.getLogger(__name__)

Datalist = dict[str, list[dict[str, str]]]


def resolve_datalist(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    phantom_dir: str = "bundle/data/phantom",
    num_phantom_train: int = 24,
    num_phantom_val: int = 8,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Datalist:
    """The training and validation scans of a run, from the first configured source.

    Args:
        dataset_dir: a BTCV folder as MONAI's tutorials keep it (``dataset_0.json``, ``imagesTr/``, ``labelsTr/``).
        datalist: a JSON file, either a list of ``{"image", "label", "convention"}`` items (split into training
            and validation by ``val_fraction``) or ``{"training": [...], "validation": [...]}``. Relative paths
            are relative to the file's folder. ``image`` is a NIfTI file or a DICOM series folder.
        phantom_dir: where the embedded default, synthetic phantoms, is written when neither is given.
        num_phantom_train: phantoms to train on.
        num_phantom_val: phantoms to validate on.
        val_fraction: share of a plain-list datalist held out for validation.
        seed: seeds the phantoms and the datalist split.
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
    return splits


def _json_datalist(path: Path, val_fraction: float, seed: int) -> Datalist:
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"datalist {path} is not valid UTF-8 JSON: {error}") from error
    base = path.parent
    if isinstance(content, dict):
        missing = {"training", "validation"} - content.keys()
        if missing:
            raise ValueError(f"datalist {path} is a JSON object without {', '.join(sorted(missing))}")
        return {
            split: _checked_items(content[split], f"datalist {path} [{split}]", base)
            for split in ("training", "validation")
        }
    if not isinstance(content, list):
        raise ValueError(f"datalist {path} must hold a JSON list or a {{'training', 'validation'}} object")
    items = _checked_items(content, f"datalist {path}", base)
    if len(items) < 2:
        raise ValueError(f"datalist {path} has {len(items)} item(s); a plain list needs at least 2 to hold one out")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    num_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    held_out = set(order[:num_val])
    return {
        "training": [item for i, item in enumerate(items) if i not in held_out],
        "validation": [item for i, item in enumerate(items) if i in held_out],
    }


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


def organ_samples(scans: Sequence[dict], transform: Callable, num_workers: int = 0) -> list[dict]:
    """Preprocess every scan once and flatten the result into one sample per (scan, organ) pair.

    Args:
        scans: ``{"image", "label", "convention"}`` dictionaries.
        transform: the deterministic per-scan preprocessing, ending in per-organ lists (``SplitOrgansd``).
        num_workers: threads preprocessing scans side by side (0: one).
    """
    if not scans:
        raise ValueError("no scans to preprocess: the datalist split is empty")

    def preprocess(scan: dict) -> list[dict]:
        try:
            return transform(scan)
        except Exception as error:
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise ScanError(
                f"cannot preprocess scan {scan.get('image')} (label {scan.get('label')}): {cause}"
            ) from error

    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        per_scan = list(pool.map(preprocess, scans))
    samples = [sample for scan_samples in per_scan for sample in scan_samples]
    logger.info("%d scans -> %d (scan, organ) samples", len(scans), len(samples))
    return samples
