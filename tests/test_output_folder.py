"""A run's outputs appear together or not at all, replace an earlier run's, and one folder serves one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLE, SHARED_CT, run_inferring, write_queries
from scripts.output_folder import (
    HOLDER_PREFIX,
    FolderLock,
    OutputFolder,
    OutputFolderInUse,
    hold_folders,
    release_folders,
)

EVALUATE_CONFIGS = "['configs/train.yaml','configs/evaluate.yaml']"


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


class Holder:
    """Another process holding ``folders`` (``{"output_dir": path}``) the way a bundle run does, until stopped."""

    def __init__(self, **folders: Path) -> None:
        code = "import time\nfrom scripts.output_folder import hold_folders\n"
        code += f"hold_folders(**{ {key: str(value) for key, value in folders.items()}!r})\n"
        code += "print('held', flush=True)\ntime.sleep(120)\n"
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=BUNDLE, stdout=subprocess.PIPE, text=True)
        self.pid = self.process.pid

    def __enter__(self) -> Holder:
        assert self.process.stdout.readline().strip() == "held"
        return self

    def __exit__(self, *_: object) -> None:
        self.process.kill()  # as a crash would: the system frees the lock, the marker stays behind
        self.process.wait()


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    with Holder(output_dir=tmp_path) as first:
        with pytest.raises(
            OutputFolderInUse, match=rf"output_dir {tmp_path} is in use by another run \(process {first.pid}\)"
        ):
            with OutputFolder(tmp_path, ()):
                pass
        assert not list(tmp_path.glob(".partial-*"))
    with OutputFolder(tmp_path, ()):  # free again once the first run is gone; its marker is cleared
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_process_holds_its_folders_once_and_frees_them_at_the_end_of_its_run(tmp_path):
    (tmp_path / f"{HOLDER_PREFIX}999999999").touch()  # left by a run that was killed
    held = hold_folders(output_dir=tmp_path / "eval", ckpt_dir=tmp_path / "models")
    try:
        assert held == [(tmp_path / "eval").resolve(), (tmp_path / "models").resolve()]
        assert hold_folders(output_dir=tmp_path / "eval") == held[:1]  # the same run again: nothing to do
        with pytest.raises(OutputFolderInUse, match=r"ckpt_dir .* is in use by another run \(process \d+\)"):
            FolderLock(tmp_path / "models", "ckpt_dir").acquire()  # another lock, as another process would take
    finally:
        release_folders()
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{HOLDER_PREFIX}999999999"]  # nothing written
    with FolderLock(tmp_path):
        assert [path.name for path in tmp_path.glob(f"{HOLDER_PREFIX}*")] == [f"{HOLDER_PREFIX}{os.getpid()}"]
    assert list(tmp_path.iterdir()) == []  # the stale marker is gone; the folder, not created by the lock, stays


def bundle_run(workflow: str, configs: str, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", configs, *arguments]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)


def test_training_and_evaluation_are_refused_while_another_run_writes_their_folder(tmp_path):
    out, models = tmp_path / "eval", tmp_path / "models"
    folders = ["--output_dir", str(out), "--ckpt_dir", str(models), "--phantom_dir", str(tmp_path / "phantoms")]
    with Holder(output_dir=out) as first:
        for workflow, configs in [("training", "configs/train.yaml"), ("evaluating", EVALUATE_CONFIGS)]:
            given = folders if workflow == "training" else folders[:2] + folders[4:]  # evaluation: the shipped weights
            result = bundle_run(workflow, configs, *given)
            assert result.returncode == 1, result.stderr[-2000:]
            assert f"error: output_dir {out} is in use by another run (process {first.pid})" in result.stderr
            assert "Traceback" not in result.stderr
            assert sorted(path.name for path in out.iterdir()) == [f"{HOLDER_PREFIX}{first.pid}"]
            assert not (tmp_path / "phantoms").exists()
    with Holder(ckpt_dir=models) as first:
        result = bundle_run("training", "configs/train.yaml", *folders)
        assert f"error: ckpt_dir {models} is in use by another run (process {first.pid})" in result.stderr


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
