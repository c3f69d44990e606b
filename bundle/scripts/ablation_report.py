"""The ablation table of scripts/ablations.py: our metrics beside the paper's, with what they came from.

Rows come from :func:`variant_row` (one variant's ``metrics.json``); :func:`ablation_report` writes the whole
``ablations.md``: the markdown table, the seed, epochs, data, queries, commands and date.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from text_pipeline.files import write_atomically, write_json_atomically

METRICS = ("rank1", "rank2", "rank3", "mAP")
OUR_METRICS = (*METRICS, "ood_auroc")
METRIC_TITLES = {"rank1": "Rank-1", "rank2": "Rank-2", "rank3": "Rank-3", "mAP": "mAP", "ood_auroc": "OOD AUROC"}
PAPER_NOTE = (
    "The paper's numbers come from its private symptom corpus with BTCV images; ours come from this "
    "repository's corpus and the data above, so the columns are not expected to match. The paper's full model "
    "is our `anchor_labels` row (its anchor soft labels and its loss, L_image + L_align); our `full` row uses the "
    "calibrated labels and L_text->image, which the paper does not have (n/a), and `one_way_alignment` is `full` "
    "without L_text->image. Every row ends with this bundle's alignment refinement (W_align alone on the frozen "
    "image network, with the row's loss)."
)


class Variant(Protocol):
    """What a row needs of a variant (``scripts.ablations.Variant``)."""

    name: str
    overrides: dict[str, str]
    paper: dict[str, float]


def variant_row(variant: Variant, metrics: dict, metrics_file: Path | str | None = None) -> dict:
    """One row of the table: the variant, its overrides, our metrics (None where absent) and the paper's.

    Args:
        variant: the variant.
        metrics: its ``metrics.json`` (``rank1``, ``rank2``, ``rank3``, ``mAP``, maybe ``ood_auroc``, in percent).
        metrics_file: where they were read, recorded in the row.
    """
    ours = {key: (float(metrics[key]) if metrics.get(key) is not None else None) for key in OUR_METRICS}
    return {
        "variant": variant.name,
        "overrides": dict(variant.overrides),
        "ours": ours,
        "paper": dict(variant.paper),
        "n_queries": metrics.get("n_queries"),
        "n_out_of_domain": metrics.get("n_out_of_domain", 0),
        "queries_file": metrics.get("queries_file"),
        "metrics_file": None if metrics_file is None else str(metrics_file),
    }


def format_number(value: float | None) -> str:
    """Two decimals, or ``n/a``."""
    return "n/a" if value is None else f"{value:.2f}"


def ablation_table(rows: Sequence[dict]) -> str:
    """The markdown table of :func:`variant_row` rows: our metrics beside the paper's.

    Columns: variant | overrides | our Rank-1, Rank-2, Rank-3, mAP, OOD AUROC | paper Rank-1, Rank-2, Rank-3, mAP.
    """
    header = ["variant", "overrides"]
    header += [f"our {METRIC_TITLES[key]}" for key in OUR_METRICS]
    header += [f"paper {METRIC_TITLES[key]}" for key in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for row in rows:
        overrides = " ".join(f"`{key}={value}`" for key, value in row["overrides"].items())
        cells = [row["variant"], overrides]
        cells += [format_number(row["ours"].get(key)) for key in OUR_METRICS]
        cells += [format_number(row["paper"].get(key)) for key in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_info(settings: dict[str, str], defaults: dict) -> dict:
    """The data every variant used: a BTCV ``dataset_dir``, a ``datalist``, or the phantoms (counts and folder)."""
    if settings.get("dataset_dir"):
        return {"source": "dataset_dir", "dataset_dir": settings["dataset_dir"]}
    if settings.get("datalist"):
        return {"source": "datalist", "datalist": settings["datalist"]}
    counts = {key: _number(settings.get(key, defaults.get(key))) for key in ("num_phantom_train", "num_phantom_val")}
    return {"source": "phantoms", "phantom_dir": settings["phantom_dir"], **counts}


def _number(value: object) -> object:
    try:
        return int(str(value))
    except ValueError:
        return value


def describe_data(data: dict) -> str:
    """One line of :func:`data_info`."""
    if data["source"] == "dataset_dir":
        return f"BTCV folder `{data['dataset_dir']}`"
    if data["source"] == "datalist":
        return f"datalist `{data['datalist']}`"
    return (
        f"synthetic phantoms, {data['num_phantom_train']} training / {data['num_phantom_val']} validation scans "
        f"in `{data['phantom_dir']}`"
    )


def queries_info(rows: Sequence[dict]) -> dict:
    """The queries evaluated, as the first row's metrics.json records them (every variant gets the same)."""
    first = rows[0]
    return {
        "queries_file": list(first.get("queries_file") or []),
        "n_queries": first.get("n_queries"),
        "n_out_of_domain": first.get("n_out_of_domain") or 0,
    }


def describe_queries(queries: dict) -> str:
    """One line of :func:`queries_info`."""
    sources = ", ".join(f"`{source}`" for source in queries["queries_file"])
    return f"{sources}: {queries['n_queries']} queries, {queries['n_out_of_domain']} of them out of domain"


def ablation_report(rows: Sequence[dict], info: dict) -> str:
    """The whole ``ablations.md``: the table, then the seed, epochs, data, queries, commands, date and a caveat.

    Args:
        rows: :func:`run_variant` rows (``commands`` optional).
        info: ``seed``, ``num_epochs``, ``data`` (:func:`data_info`), ``queries`` (:func:`queries_info`),
            ``settings`` (the shared overrides) and ``date``.
    """
    shared = " ".join(f"--{key}={value}" for key, value in info["settings"].items())
    lines = [
        "# Med-SORA ablations (method.md §5)",
        "",
        ablation_table(rows),
        "",
        f"- seed: {info['seed']}",
        f"- num_epochs: {info['num_epochs']}",
        f"- data: {describe_data(info['data'])}",
        f"- queries: {describe_queries(info['queries'])}",
        f"- overrides of every command: `{shared}`",
        f"- date: {info['date']}",
        "",
        PAPER_NOTE,
    ]
    commands = [command for row in rows for command in row.get("commands", {}).values()]
    if commands:
        lines += ["", "Commands, run in the repository root:", "", "```sh", *commands, "```"]
    return "\n".join(lines) + "\n"


def write_report(output_dir: Path, rows: Sequence[dict], info: dict) -> tuple[Path, Path]:
    """Write ``ablations.md`` and ``ablations.json`` atomically; their paths."""
    markdown = ablation_report(rows, info)
    md_path = write_atomically(output_dir / "ablations.md", lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    json_path = write_json_atomically(output_dir / "ablations.json", {**info, "note": PAPER_NOTE, "rows": list(rows)})
    return md_path, json_path


def remove_stale_report(output_dir: Path) -> None:
    """Remove the table of an earlier run, whose variant folders this run replaces."""
    for name in ("ablations.md", "ablations.json"):
        (output_dir / name).unlink(missing_ok=True)
