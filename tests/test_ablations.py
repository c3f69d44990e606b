"""The ablation script (ablations.py, ablation_report.py): the table alone, then runs on tiny settings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from scripts.ablation_report import ablation_report, ablation_table, variant_row
from scripts.ablations import (
    VARIANTS,
    bundle_command,
    main,
    parse_overrides,
    parse_variants,
    shared_settings,
)

SCRIPT = REPO / "bundle" / "scripts" / "ablations.py"
TINY = [  # a tiny network on 2 + 1 phantoms: the wiring is under test, not the model's skill
    "num_phantom_train=2",
    "num_phantom_val=1",
    "image_size=[32,32,8]",
    "hidden_size=32",
    "mlp_dim=64",
    "num_layers_2d=1",
    "num_layers_3d=1",
    "num_heads=2",
    "batch_size=8",
    "learning_rate=0.001",  # with 2 epochs, enough for the alignment to learn (calibration needs it)
]
PAPER = {  # method.md §5; the paper has no calibrated labels nor L_text->image, its full model is our anchor_labels row
    "full": ["n/a", "n/a", "n/a", "n/a"],
    "one_way_alignment": ["n/a", "n/a", "n/a", "n/a"],
    "anchor_labels": ["77.50", "89.64", "94.85", "73.46"],
    "hard_labels": ["74.64", "82.14", "86.42", "67.53"],
    "2d": ["75.00", "86.07", "94.29", "71.53"],
    "3d": ["33.21", "60.00", "74.29", "39.60"],
    "concat": ["76.43", "87.14", "94.64", "72.56"],
}
OURS = ("rank1", "rank2", "rank3", "mAP", "ood_auroc")


def tiny_settings(tmp_path: Path, settings: list[str] = TINY) -> list[str]:
    """``settings`` as ``--set`` arguments, with the text embeddings cached in ``tmp_path``, not in the checkout."""
    settings = [*settings, f"text_embedding_cache={tmp_path / 'embeddings'}"]
    return [item for setting in settings for item in ("--set", setting)]


def run_script(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The cells of the table's body rows, by variant."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]  # without the header
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in cells}


def test_table_has_every_variant_with_the_papers_numbers_and_ours():
    rows = []
    for index, variant in enumerate(VARIANTS):
        metrics = {"rank1": 10 + index + 0.123, "rank2": 50.0, "rank3": 99.996, "mAP": 1 / 3 * 100, "n_queries": 9}
        if variant.name != "3d":
            metrics["ood_auroc"] = 61.5
        rows.append(variant_row(variant, metrics))
    table = table_rows(ablation_table(rows))
    assert list(table) == ["full", "one_way_alignment", "anchor_labels", "hard_labels", "2d", "3d", "concat"]
    for index, (name, cells) in enumerate(table.items()):
        overrides, ours, paper = cells[0], cells[1:6], cells[6:]
        assert paper == PAPER[name]
        assert ours == [f"{10 + index + 0.123:.2f}", "50.00", "100.00", "33.33", "n/a" if name == "3d" else "61.50"]
        labels = {"hard_labels": "hard", "anchor_labels": "anchors"}.get(name, "calibrated")
        assert f"`text_labels={labels}`" in overrides
    assert "`fusion=cross_attention`" in table["full"][0] and "`fusion=concat`" in table["concat"][0]
    for name in ("one_way_alignment", "anchor_labels"):  # the paper's loss, L_image + L_align
        assert "`text_to_image_weight=0`" in table[name][0]
    assert "text_to_image_weight" not in table["full"][0]
    assert table["3d"][6] == "33.21"
    header = ablation_table(rows).splitlines()[0]
    assert "our OOD AUROC" in header and "paper mAP" in header and "paper OOD AUROC" not in header


def test_report_states_the_run_and_that_the_paper_used_other_data():
    rows = [variant_row(VARIANTS[0], {"rank1": 1, "rank2": 2, "rank3": 3, "mAP": 4, "n_queries": 5})]
    info = {
        "seed": 7,
        "num_epochs": 3,
        "data": {"source": "phantoms", "phantom_dir": "/p", "num_phantom_train": 2, "num_phantom_val": 1},
        "queries": {"queries_file": ["corpus:test"], "n_queries": 5, "n_out_of_domain": 0},
        "settings": {"seed": "7"},
        "date": "2026-01-01",
    }
    report = ablation_report(rows, info)
    assert "seed: 7" in report and "num_epochs: 3" in report and "2026-01-01" in report
    assert "2 training / 1 validation scans in `/p`" in report
    assert "`corpus:test`: 5 queries, 0 of them out of domain" in report
    assert "not expected to match" in report and "BTCV" in report


def test_arguments_are_checked_before_anything_runs(tmp_path, capsys):
    assert [variant.name for variant in parse_variants("concat, full")] == ["full", "concat"]  # the paper's order
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variants("full,4d")
    with pytest.raises(ValueError, match="--variants"):
        parse_overrides(["fusion=concat"], tmp_path)
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["hidden_size"], tmp_path)
    assert parse_overrides(["datalist=lists/d.json", "hidden_size=32"], tmp_path) == {
        "datalist": str(tmp_path / "lists" / "d.json"),
        "hidden_size": "32",
    }
    assert main(["--output_dir", str(tmp_path / "out"), "--variants", "full,bogus"]) == 2
    assert "unknown variant(s) bogus" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_commands_share_the_data_and_give_each_variant_its_folder(tmp_path):
    settings = shared_settings(3, 5, tmp_path, {"hidden_size": "32"})
    hard = next(variant for variant in VARIANTS if variant.name == "hard_labels")
    train = bundle_command("training", hard, tmp_path / "hard_labels", settings, ["corpus:test"])
    evaluate = bundle_command("evaluating", hard, tmp_path / "hard_labels", settings, ["corpus:test"])
    assert train[:5] == [sys.executable, "-m", "monai.bundle", "run", "training"]
    for command in (train, evaluate):
        assert f"--phantom_dir={tmp_path / 'phantoms'}" in command
        assert f"--ckpt_dir={tmp_path / 'hard_labels' / 'models'}" in command
        assert {"--text_labels=hard", "--seed=3", "--num_epochs=5", "--hidden_size=32"} <= set(command)
    assert f"--output_dir={tmp_path / 'hard_labels' / 'eval'}" in train
    assert f"--output_dir={tmp_path / 'hard_labels' / 'evaluate'}" in evaluate
    assert '--queries_file=["corpus:test"]' in evaluate
    btcv = shared_settings(0, 1, tmp_path, {"dataset_dir": "/data/btcv"})
    assert "phantom_dir" not in btcv and btcv["dataset_dir"] == "/data/btcv"


@pytest.mark.slow
def test_script_trains_and_evaluates_two_variants_into_one_table(tmp_path):
    args = ["--output_dir", "out", "--variants", "2d,full", "--num_epochs", "2", "--seed", "0"]
    result = run_script(*args, *tiny_settings(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    markdown = (out / "ablations.md").read_text()
    table = table_rows(markdown)
    assert list(table) == ["full", "2d"]
    assert table_rows(result.stdout) == table  # printed at the end
    report = json.loads((out / "ablations.json").read_text())
    assert [row["variant"] for row in report["rows"]] == ["full", "2d"]
    for row in report["rows"]:
        name = row["variant"]
        metrics = json.loads((out / name / "evaluate" / "metrics.json").read_text())
        ours = [float(cell) for cell in table[name][1:6]]
        assert ours == [round(metrics[key], 2) for key in OURS]
        assert all(0 <= value <= 100 for value in ours)
        assert table[name][6:] == PAPER[name]
        assert row["ours"] == {key: metrics[key] for key in OURS}
        assert row["n_queries"] == metrics["n_queries"] and row["n_out_of_domain"] == metrics["n_out_of_domain"] > 0
        assert (out / name / "models" / "model.pt").is_file()
        for log in ("train.log", "evaluate.log"):
            assert f"--phantom_dir={out / 'phantoms'}" in (out / name / log).read_text()  # one dataset for all
    assert "`fusion=2d`" in table["2d"][0]
    assert report["seed"] == 0 and report["num_epochs"] == 2
    assert report["data"] == {
        "source": "phantoms",
        "phantom_dir": str(out / "phantoms"),
        "num_phantom_train": 2,
        "num_phantom_val": 1,
    }
    assert report["queries"]["queries_file"] == ["corpus:test", "corpus:ood"]
    assert f"{report['queries']['n_queries']} queries, {report['queries']['n_out_of_domain']} of them" in markdown
    assert "- seed: 0" in markdown and "- num_epochs: 2" in markdown and "not expected to match" in markdown
    assert re.search(r"monai\.bundle run evaluating .*--fusion=2d", markdown)


@pytest.mark.slow
def test_a_failing_variant_stops_the_script_and_writes_no_table(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ablations.md").write_text("a table of an earlier run\n")
    tiny = [setting for setting in TINY if not setting.startswith("num_heads")] + ["num_heads=3"]  # 32 % 3 != 0
    args = ["--output_dir", str(out), "--variants", "hard_labels,2d", "--num_epochs", "2"]
    result = run_script(*args, *tiny_settings(tmp_path, tiny), cwd=tmp_path)
    assert result.returncode == 1
    assert "variant hard_labels: the command failed" in result.stderr
    assert "hidden_size should be divisible by num_heads" in result.stderr  # the root cause, from the log
    assert f"log: {out / 'hard_labels' / 'train.log'}" in result.stderr
    assert "monai.bundle run training" in result.stderr and "--num_heads=3" in result.stderr
    assert not (out / "ablations.md").exists() and not (out / "ablations.json").exists()
    assert not (out / "2d").exists()  # nothing runs after the failure
