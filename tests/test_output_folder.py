"""A run's outputs appear together or not at all, replace an earlier run's, and one output_dir serves one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import BUNDLE, SHARED_CT, run_inferring, write_queries
from scripts.output_folder import OutputFolder, OutputFolderInUse


def test_a_failed_run_leaves_the_folder_as_it_was(tmp_path):
    (tmp_path / "scores.json").write_text("an earlier run's")
    with pytest.raises(RuntimeError, match="boom"):
        with OutputFolder(tmp_path, ("scores.json", "query_*.png")) as folder:
            folder.staged("scores.json").write_text("this run's")
            raise RuntimeError("boom")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scores.json"]
    assert (tmp_path / "scores.json").read_text() == "an earlier run's"


def test_a_successful_run_replaces_the_earlier_runs_files_and_keeps_the_users(tmp_path):
    for name in ("query_000.png", "query_001.png", "scores.json", "notes.txt"):
        (tmp_path / name).write_text("earlier")
    with OutputFolder(tmp_path, ("scores.json", "query_*.png")) as folder:
        folder.staged("query_000.png").write_text("new")
        folder.staged("scores.json").write_text("new")
        assert folder.final("scores.json") == tmp_path / "scores.json"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt", "query_000.png", "scores.json"]
    assert (tmp_path / "query_000.png").read_text() == "new" and (tmp_path / "notes.txt").read_text() == "earlier"


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    holder = "import sys, time\nfrom scripts.output_folder import OutputFolder\n"
    holder += f"with OutputFolder({str(tmp_path)!r}, ()):\n    print('held', flush=True)\n    time.sleep(60)\n"
    first = subprocess.Popen([sys.executable, "-c", holder], cwd=BUNDLE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(OutputFolderInUse, match=rf"in use by another run \(process {first.pid}\)"):
            with OutputFolder(tmp_path, ()):
                pass
    finally:
        first.kill()
        first.wait()
    with OutputFolder(tmp_path, ()):  # free again once the first run is gone
        pass


@pytest.mark.skipif(not (SHARED_CT / "patient_a").is_dir(), reason="needs ../shared/data/ct")
def test_inferring_into_a_reused_output_dir_leaves_only_this_runs_files(tmp_path):
    out, scan = tmp_path / "out", SHARED_CT / "patient_a"
    arguments = ["--image", str(scan / "ct.nii.gz"), "--label", str(scan / "seg_totalseg.nii.gz")]
    arguments += ["--label_convention", "totalseg_total", "--output_dir", str(out)]
    arguments += ["--feature_cache_dir", str(tmp_path / "cache")]
    two = write_queries(tmp_path / "two.jsonl", ["jaundice", "blood in the urine"])
    assert run_inferring(*arguments, "--queries_file", str(two), "--query_files", "true").returncode == 0
    assert (out / "query_001.png").is_file()
    result = run_inferring(*arguments, "--symptom", "heartburn after meals")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["query_000.png", "query_000_probability_map.nii.gz", "scores.json"]
    assert [query["text"] for query in json.loads((out / "scores.json").read_text())["queries"]] == [
        "heartburn after meals"
    ]
