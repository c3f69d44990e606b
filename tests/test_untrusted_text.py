"""Text is data, never code: symptoms and paths from the command line are scored or refused, never evaluated."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLE, run_inferring
from scripts.command_line import (
    as_typed,
    command_line_overrides,
    refuse_changed_text_overrides,
    refuse_config_syntax_in_text_overrides,
)
from scripts.phantom import write_phantom_dataset

from text_pipeline.corpus import read_queries


def code_writing(marker: Path) -> str:
    """A symptom that MONAI's config parser would run: it writes ``marker`` and evaluates to "pain"."""
    return f'$__import__("pathlib").Path("{marker}").write_text("ran") and "pain"'


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    (scan,) = write_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_cases=1, seed=11)
    return scan


def symptom_query(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "scripts/symptom_query.py", *arguments]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)


def test_the_plain_command_scores_config_syntax_as_the_text_it_is(phantom, tmp_path):
    marker = tmp_path / "marker"
    texts = [code_writing(marker), "@label", "%bundle_root", "None", "pain"]
    arguments = ["--image", phantom["image"], "--label", phantom["label"], "--label_convention", phantom["convention"]]
    arguments += [argument for text in texts for argument in ("--symptom", text)]
    arguments += ["--output_dir", str(tmp_path / "out"), "--feature_cache_dir", str(tmp_path / "cache")]
    result = symptom_query(*arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()  # nothing ran
    queries = json.loads((tmp_path / "out" / "scores.json").read_text())["queries"]
    assert [query["text"] for query in queries] == texts  # scored as typed
    code, pain = queries[0]["probabilities"], queries[-1]["probabilities"]
    assert code != pain  # had the expression run, the text scored would have been "pain"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--symptom={code}", r"--symptom starts with '\$': MONAI's bundle runner would run it as Python"),
        ("--symptom @label", "--symptom starts with '@': MONAI's bundle runner would read another config entry"),
        ("--symptom %bundle_root", "--symptom starts with '%'"),
        ("--symptom None", "--symptom 'None' is not a symptom"),
        ("--symptom null", "--symptom 'null' is not a symptom"),
        ("--output_dir {code}", r"--output_dir starts with '\$'"),
    ],
)
def test_inferring_refuses_config_syntax_in_a_text_override_before_anything_runs(tmp_path, override, message):
    marker = tmp_path / "marker"
    key, _, value = override.replace("=", " ", 1).partition(" ")
    value = value.format(code=code_writing(marker))
    out = tmp_path / "out"
    arguments = [f"{key}={value}"] if "=" in override else [key, value]
    if key != "--output_dir":
        arguments += ["--output_dir", str(out)]
    result = run_inferring(*arguments, "--dataset_dir", str(tmp_path / "example"))
    assert result.returncode != 0
    assert not marker.exists() and not out.exists()
    assert "refused" in result.stderr or "is not a symptom" in result.stderr
    assert "Traceback" not in result.stderr and "Failed to instantiate" not in result.stderr  # the message alone
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert "scripts/symptom_query.py" in result.stderr


def test_command_line_overrides_read_both_forms_as_typed():
    argv = ["run", "inferring", "--config_file", "x", "--symptom=$a b", "--image", "@c", "--flag", "--output_dir", "%d"]
    assert command_line_overrides(argv) == {"config_file": "x", "symptom": "$a b", "image": "@c", "output_dir": "%d"}
    refuse_config_syntax_in_text_overrides(argv=["run", "--symptom", "pain $5 co-pay", "--seed", "$1"])  # not text
    with pytest.raises(ValueError, match="--image starts with '@'"):
        refuse_config_syntax_in_text_overrides(argv=["--image", "@c"])


def test_a_queries_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "jaundice"}).encode() + b"\n")
    assert [query.text for query in read_queries(queries)] == ["jaundice"]


def test_inferring_scores_the_symptom_as_typed_where_monais_command_line_would_change_it(tmp_path):
    typed = "pain, nausea, vomiting # since Monday"  # fire alone reads this as the tuple ('pain', 'nausea', 'vomiting')
    out = tmp_path / "out"
    folders = {"--output_dir": out, "--dataset_dir": tmp_path / "example", "--feature_cache_dir": tmp_path / "cache"}
    result = run_inferring("--symptom", typed, *(str(part) for pair in folders.items() for part in pair))
    assert result.returncode == 0, result.stderr[-3000:]
    (query,) = json.loads((out / "scores.json").read_text())["queries"]
    assert query["text"] == typed


@pytest.mark.parametrize("typed", ["pain, nausea", "pain # after meals", "1", "True", "[pain]", "'dark urine'"])
def test_a_typed_symptom_wins_over_what_the_command_line_parser_made_of_it(typed):
    assert as_typed("symptom", object(), argv=["run", "inferring", "--symptom", typed]) == typed
    assert as_typed("symptom", object(), argv=["run", "inferring", f"--symptom={typed}"]) == typed
    assert as_typed("symptom", "the config's", argv=["run", "inferring", "--seed", "1"]) == "the config's"


@pytest.mark.parametrize(
    ("typed", "read"), [("scan#1.nii.gz", "'scan'"), ("2024", "2024"), ("a, b", r"\('a', 'b'\)"), ("True", "True")]
)
def test_a_path_the_command_line_parser_would_change_is_refused_naming_how_to_quote_it(typed, read):
    message = rf"--image '{re.escape(typed)}' would reach the bundle as {read}.*--image '\""
    with pytest.raises(ValueError, match=message) as error:
        refuse_changed_text_overrides(argv=["--image", typed])
    assert f"""'"{typed}"'""" in str(error.value)


def test_paths_typed_as_plain_names_or_as_literals_pass():
    argv = ["--image", "/data/ct 1.nii.gz", "--label", '"seg#1.nii.gz"', "--output_dir", "out/run-3"]
    refuse_changed_text_overrides(argv=argv + ["--queries_file", "['corpus:test','corpus:ood']", "--symptom", "a, b"])
