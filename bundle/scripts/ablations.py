"""Regenerate the paper's ablation table (method.md §5): train and evaluate the bundle once per variant.

    python scripts/ablations.py --output_dir eval/ablations [--num_epochs N] [--seed S]   (in the bundle's folder)
        [--variants full,anchor_labels,hard_labels,2d,3d,concat] [--set key=value ...] [--queries_file SOURCE ...]

Every variant is a set of config overrides of configs/train.yaml (``full``: the calibrated labels,
cross-attention fusion and L_text->image, the bundle's default; ``one_way_alignment``: the same without
L_text->image; ``anchor_labels``: the paper's anchor soft labels and its loss, the paper's full model;
``hard_labels``: the one-hot text MLP; ``2d``, ``3d``, ``concat``: another fusion).
For each one, in ``output_dir/<variant>/``, the script runs

    python -m monai.bundle run training   ... --ckpt_dir <variant>/models --output_dir <variant>/eval
    python -m monai.bundle run evaluating ... --ckpt_dir <variant>/models --output_dir <variant>/evaluate

from the bundle's folder, logging each to ``train.log`` and ``evaluate.log`` there, then collects
``evaluate/metrics.json`` into ``output_dir/ablations.md`` (a markdown table beside the paper's numbers) and
``output_dir/ablations.json``. A variant's earlier outputs are removed before it runs; a failing command stops
the script (exit status 1) with the variant, the command and the end of its log, and writes no table.

All variants train on the same data: the synthetic phantoms of one ``phantom_dir`` (``output_dir/phantoms``
unless set), or the ``dataset_dir`` / ``datalist`` given with ``--set``. ``--set key=value`` (repeatable) passes
an override to both commands of every variant, e.g. a small network for a quick run::

    python scripts/ablations.py --output_dir /tmp/ablations --variants full,2d --num_epochs 2 \\
        --set num_phantom_train=2 --set num_phantom_val=1 --set "image_size=[32,32,8]" --set hidden_size=32 \\
        --set mlp_dim=64 --set num_layers_2d=1 --set num_layers_3d=1 --set num_heads=2 --set learning_rate=0.001

Values are read by the bundle CLI (Python literals where they parse as one). Relative paths given to
``--output_dir``, ``--queries_file`` and to the path ids (dataset_dir, datalist, phantom_dir, vit_pretrained_dir,
text_artifacts) are relative to the current folder; other ``--set`` values are passed as they are, and the
commands run in the repository root.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a file from a clone without the project installed
    sys.path.append(str(REPO))

BUNDLE = REPO / "bundle"
if str(BUNDLE) not in sys.path:  # run as a file: the bundle's scripts package sits beside this one
    sys.path.append(str(BUNDLE))

from scripts.ablation_report import (  # noqa: E402
    ablation_table,
    data_info,
    queries_info,
    remove_stale_report,
    variant_row,
    write_report,
)

TRAIN_CONFIG = "configs/train.yaml"  # run in the bundle folder, as its README does
EVALUATE_CONFIGS = ["configs/train.yaml", "configs/evaluate.yaml"]
DEFAULT_QUERIES = ("corpus:test", "corpus:ood")
PATH_IDS = ("dataset_dir", "datalist", "phantom_dir", "vit_pretrained_dir", "text_artifacts")
RESERVED_IDS = {  # ids the script sets itself, with the option to use instead
    "ckpt_dir": "the script sets it per variant (output_dir/<variant>/models)",
    "output_dir": "use --output_dir",
    "queries_file": "use --queries_file",
    "seed": "use --seed",
    "num_epochs": "use --num_epochs",
    "fusion": "it defines the variants; choose them with --variants",
    "text_labels": "it defines the variants; choose them with --variants",
    "text_to_image_weight": "it defines the variants; choose them with --variants",
    "config_file": "the script runs the bundle's configs/train.yaml (and evaluate.yaml)",
    "bundle_root": "the script runs the bundle it is part of",
}
LOG_TAIL_LINES = 25
ERROR_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Interrupt)\b.*$", re.MULTILINE)


@dataclass(frozen=True)
class Variant:
    """One row of the paper's ablation table.

    Attributes:
        name: the row's name, also its folder under output_dir.
        overrides: the bundle config overrides that make it.
        paper: the paper's Rank-1/2/3 and mAP for it (method.md §5), in percent.
    """

    name: str
    overrides: dict[str, str]
    paper: dict[str, float]


def _paper(rank1: float, rank2: float, rank3: float, mean_ap: float) -> dict[str, float]:
    return {"rank1": rank1, "rank2": rank2, "rank3": rank3, "mAP": mean_ap}


VARIANTS: tuple[Variant, ...] = (
    Variant("full", {"text_labels": "calibrated", "fusion": "cross_attention"}, {}),
    Variant(
        "one_way_alignment", {"text_labels": "calibrated", "fusion": "cross_attention", "text_to_image_weight": "0"}, {}
    ),
    Variant(
        "anchor_labels",
        {"text_labels": "anchors", "fusion": "cross_attention", "text_to_image_weight": "0"},
        _paper(77.50, 89.64, 94.85, 73.46),
    ),
    Variant("hard_labels", {"text_labels": "hard", "fusion": "cross_attention"}, _paper(74.64, 82.14, 86.42, 67.53)),
    Variant("2d", {"text_labels": "calibrated", "fusion": "2d"}, _paper(75.00, 86.07, 94.29, 71.53)),
    Variant("3d", {"text_labels": "calibrated", "fusion": "3d"}, _paper(33.21, 60.00, 74.29, 39.60)),
    Variant("concat", {"text_labels": "calibrated", "fusion": "concat"}, _paper(76.43, 87.14, 94.64, 72.56)),
)
VARIANTS_BY_NAME = {variant.name: variant for variant in VARIANTS}


class AblationError(RuntimeError):
    """A variant's training or evaluation failed, or left no metrics."""


def parse_variants(text: str) -> list[Variant]:
    """The variants named in a comma-separated list, in the paper's order.

    Args:
        text: e.g. ``"full,2d"``.

    Raises:
        ValueError: a name is unknown or repeated, or none is given.
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS_BY_NAME)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"name each variant once, e.g. {','.join(VARIANTS_BY_NAME)} (got {text!r})")
    return [variant for variant in VARIANTS if variant.name in names]


def parse_overrides(items: Sequence[str], cwd: Path) -> dict[str, str]:
    """``--set key=value`` items as bundle overrides, path ids made absolute against ``cwd``.

    Args:
        items: ``key=value`` strings; the key is a bundle config id (``#`` separates nested ids).
        cwd: the folder relative paths of :data:`PATH_IDS` are relative to.

    Raises:
        ValueError: an item is not ``key=value``, or sets an id the script sets itself.
    """
    overrides: dict[str, str] = {}
    for item in items:
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator or not re.fullmatch(r"[A-Za-z_][\w#]*", key):
            raise ValueError(f"--set {item!r}: expected key=value with a bundle config id as key")
        if key in RESERVED_IDS:
            raise ValueError(f"--set {key}: {RESERVED_IDS[key]}")
        overrides[key] = _absolute_path(value, cwd) if key in PATH_IDS else value
    return overrides


def _absolute_path(value: str, cwd: Path) -> str:
    if not value or value[0] in "$@%" or value.lower() in ("none", "null") or Path(value).is_absolute():
        return value
    return str((cwd / value).resolve())


def query_sources(sources: Sequence[str] | None, cwd: Path) -> list[str]:
    """The queries to evaluate: ``corpus:<split>`` entries as they are, files made absolute.

    Args:
        sources: ``--queries_file`` values; None for the corpus' test split plus the out-of-domain queries.
        cwd: the folder relative file names are relative to.

    Raises:
        FileNotFoundError: a file does not exist.
    """
    if not sources:
        return list(DEFAULT_QUERIES)
    resolved = []
    for source in sources:
        if source.startswith("corpus:"):
            resolved.append(source)
            continue
        path = (cwd / source).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"--queries_file {source}: no such file")
        resolved.append(str(path))
    return resolved


def config_defaults(config: Path = BUNDLE / TRAIN_CONFIG) -> dict:
    """The top-level values of train.yaml (plain YAML; ``$`` expressions are left as strings)."""
    return yaml.safe_load(config.read_text(encoding="utf-8"))


def shared_settings(seed: int, num_epochs: int, output_dir: Path, overrides: dict[str, str]) -> dict[str, str]:
    """The overrides every command of every variant gets: seed, epochs, the data, then ``--set``.

    Without a dataset_dir or datalist the variants share one phantom_dir, ``output_dir/phantoms`` by default.
    """
    settings = {"seed": str(seed), "num_epochs": str(num_epochs)}
    if not overrides.get("dataset_dir") and not overrides.get("datalist"):
        settings["phantom_dir"] = str(output_dir / "phantoms")
    return {**settings, **overrides}


def bundle_command(
    run_id: str, variant: Variant, variant_dir: Path, settings: dict[str, str], queries: Sequence[str]
) -> list[str]:
    """The ``python -m monai.bundle run`` command of one step (``training`` or ``evaluating``) of a variant.

    Args:
        run_id: ``training`` or ``evaluating``.
        variant: the variant, whose overrides come first.
        variant_dir: ``output_dir/<variant>``.
        settings: the shared overrides (:func:`shared_settings`).
        queries: the query sources, for ``evaluating``.
    """
    if run_id == "training":
        config, output = TRAIN_CONFIG, variant_dir / "eval"
        extra: dict[str, str] = {}
    else:
        config, output = _literal_list(EVALUATE_CONFIGS), variant_dir / "evaluate"
        extra = {"queries_file": _literal_list(queries)}
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config]
    overrides = {
        "ckpt_dir": str(variant_dir / "models"),
        "output_dir": str(output),
        **extra,
        **variant.overrides,
        **settings,
    }
    return command + [f"--{key}={value}" for key, value in overrides.items()]


def _literal_list(items: Sequence[str]) -> str:
    """A list of strings as the bundle CLI reads one (a Python literal), e.g. ``["a.yaml","b.yaml"]``."""
    return json.dumps(list(items), separators=(",", ":"))


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def first_error(log: Path) -> str | None:
    """The first exception line of a log (in a chained traceback, the root cause), or None."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = ERROR_LINE.search(text)
    return match.group(0).strip() if match else None


def run_logged(command: list[str], log: Path, variant: str) -> None:
    """Run ``command`` in the repository root, its stdout and stderr into ``log``.

    Raises:
        AblationError: the command exits non-zero; the message names the variant, the command and the log.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as stream:
        stream.write(f"$ {shlex.join(command)}\n\n")
        stream.flush()
        returncode = subprocess.run(command, cwd=BUNDLE, stdout=stream, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        cause = first_error(log)
        raise AblationError(
            f"variant {variant}: the command failed with exit status {returncode}"
            + (f": {cause}" if cause else "")
            + f"\n  command: {shlex.join(command)}\n  log: {log}\n  last lines of the log:\n{log_tail(log)}"
        )


def clear_variant(variant_dir: Path) -> None:
    """Remove a variant's outputs of an earlier run, so that none of them is taken for this run's."""
    for name in ("models", "eval", "evaluate"):
        shutil.rmtree(variant_dir / name, ignore_errors=True)
    for name in ("train.log", "evaluate.log"):
        (variant_dir / name).unlink(missing_ok=True)


def read_metrics(path: Path, variant: str) -> dict:
    """A variant's ``evaluate/metrics.json``.

    Raises:
        AblationError: it is missing or not JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AblationError(f"variant {variant}: evaluation left no readable metrics at {path}: {error}") from error


def run_variant(variant: Variant, output_dir: Path, settings: dict[str, str], queries: Sequence[str]) -> dict:
    """Train and evaluate one variant in ``output_dir/<variant>``; its table row (:func:`variant_row`).

    Raises:
        AblationError: a command failed or left no metrics.
    """
    variant_dir = output_dir / variant.name
    clear_variant(variant_dir)
    commands = {}
    for run_id, log_name in (("training", "train.log"), ("evaluating", "evaluate.log")):
        commands[run_id] = bundle_command(run_id, variant, variant_dir, settings, queries)
        print(f"{variant.name}: {run_id} (log: {variant_dir / log_name})", flush=True)
        run_logged(commands[run_id], variant_dir / log_name, variant.name)
    metrics_file = variant_dir / "evaluate" / "metrics.json"
    row = variant_row(variant, read_metrics(metrics_file, variant.name), metrics_file)
    return {**row, "commands": {run_id: shlex.join(command) for run_id, command in commands.items()}}


def parse_args(argv: Sequence[str] | None, defaults: dict) -> argparse.Namespace:
    """The command line; ``defaults`` (train.yaml) gives the default seed and num_epochs."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, type=Path, help="where the variants and the table go")
    parser.add_argument("--num_epochs", type=int, default=defaults.get("num_epochs"), help="epochs per variant")
    parser.add_argument("--seed", type=int, default=defaults.get("seed"), help="seeds the phantoms and training")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS_BY_NAME),
        help=f"comma-separated, of {','.join(VARIANTS_BY_NAME)} (default: all)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a bundle override for every command of every variant (repeatable)",
    )
    parser.add_argument(
        "--queries_file",
        nargs="+",
        default=None,
        metavar="SOURCE",
        help=f"JSON-lines query files or corpus:<split> (default: {' '.join(DEFAULT_QUERIES)})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ablations and write the table; 0 on success, 1 when a variant fails, 2 on bad arguments."""
    defaults = config_defaults()
    args = parse_args(argv, defaults)
    cwd = Path.cwd()
    output_dir = args.output_dir.resolve()
    try:
        variants = parse_variants(args.variants)
        overrides = parse_overrides(args.overrides, cwd)
        queries = query_sources(args.queries_file, cwd)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = shared_settings(args.seed, args.num_epochs, output_dir, overrides)
    remove_stale_report(output_dir)
    try:
        rows = [run_variant(variant, output_dir, settings, queries) for variant in variants]
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    info = {
        "seed": args.seed,
        "num_epochs": args.num_epochs,
        "data": data_info(settings, defaults),
        "queries": queries_info(rows),
        "settings": settings,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    md_path, json_path = write_report(output_dir, rows, info)
    print(f"\n{ablation_table(rows)}\n\n{md_path}\n{json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
