"""Careless and hostile input, each case of the catalogue (``hostile_inputs.py``) tried as a user would (issue 11).

Every case runs its command in a fresh process, as typed in a shell, and is checked for its outcome and, whatever
the outcome, for partial output: a failed run leaves its folders (output, checkpoints, caches, example scan) as
they were before it, and no case touches the shipped artifacts. The README's table is the catalogue.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE, REPO, SHARED_CT, write_dicom_copies
from hostile_inputs import CASES, CLEAR_ERROR, HANDLED, Case, run_case, table

SHIPPED = BUNDLE / "models"  # the shipped weights and text artifacts: no case may change them


# the scans the cases read


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def prepare_scans(root: Path) -> dict:
    """The example phantom and broken copies of it; with ../shared, a two-series DICOM folder and the MR."""
    from scripts.phantom import write_phantom_dataset

    (phantom,) = write_phantom_dataset(root / "phantom", num_cases=1, seed=13)
    ct_file, label_file = nib.load(phantom["image"]), nib.load(phantom["label"])
    ct, label, affine = np.asarray(ct_file.dataobj), np.asarray(label_file.dataobj), ct_file.affine
    scans = {"phantom": phantom}

    def variant(name: str, image: np.ndarray = ct, labels: np.ndarray = label, label_affine=affine) -> None:
        folder = root / name
        folder.mkdir()
        scans[name] = {
            "image": save(folder / f"{name}_ct.nii.gz", image, affine),
            "label": save(folder / f"{name}.nii.gz", labels, label_affine),
            "convention": "btcv",
        }

    scans["missing_ct"] = {**phantom, "image": str(root / "nowhere.nii.gz")}
    scans["unknown_convention"] = {**phantom, "convention": "nnunet"}
    variant("swapped", image=label, labels=ct)
    variant("half_ids", labels=np.where(label > 0, label + 0.5, 0).astype(np.float32))
    variant("id_99", labels=np.where(label == label.max(), 99, label).astype(np.uint8))
    tiny = np.zeros_like(label)
    for organ_id in np.unique(label[label > 0]):
        tiny[tuple(np.argwhere(label == organ_id)[0])] = organ_id  # one voxel of each organ
    variant("tiny_organs", labels=tiny)
    variant("no_organs", labels=np.zeros_like(label))
    shifted = affine.copy()
    shifted[:3, 3] += 40.0
    variant("shifted", label_affine=shifted)
    broken = ct.astype(np.float32)
    broken[tuple(np.argwhere(label > 0)[len(np.argwhere(label > 0)) // 2])] = np.nan
    broken[tuple(np.argwhere(label > 0)[0])] = np.inf
    variant("nan_ct", image=broken)
    variant("eight_bit", image=np.clip((ct + 1024) / 8, 0, 255).astype(np.uint8))
    variant("truncated")
    image = Path(scans["truncated"]["image"])
    image.write_bytes(image.read_bytes()[:2000])
    if (SHARED_CT / "patient_b").is_dir():
        folder = root / "two_series" / "dicom"
        folder.mkdir(parents=True)
        originals = sorted((SHARED_CT / "patient_b" / "dicom").iterdir())
        for file in originals:
            (folder / file.name).write_bytes(file.read_bytes())
        write_dicom_copies(originals[:6], folder, "1.2.826.0.1.3680043.8.498.4243", "CT Body 1.0 copy")
        seg = str(SHARED_CT / "patient_b" / "seg_totalseg.nii.gz")
        scans["two_series"] = {"image": str(folder), "label": seg, "convention": "totalseg_total"}
        mr = SHARED_CT / "mr_sample"
        mr_label = next(iter(sorted(mr.glob("*seg*.nii.gz"))), None)
        mr_image = next(path for path in sorted(mr.glob("*.nii.gz")) if path != mr_label)
        scans["mr"] = {"image": str(mr_image), "label": str(mr_label or mr_image), "convention": "totalseg_total"}
    return scans


# running the cases


def listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a digest of its content."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@dataclass
class Outcome:
    result: subprocess.CompletedProcess
    before: dict[str, str]
    after: dict[str, str]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Every case run once, two at a time; the shipped artifacts checked before and after."""
    root = tmp_path_factory.mktemp("hostile_inputs")
    scans = prepare_scans(root / "scans")
    shipped = listing(SHIPPED)

    def run(case: Case) -> tuple[str, Outcome]:
        case_dir = root / f"case_{case.id}"
        case_dir.mkdir()
        stop = case.before(case_dir, scans) if case.before else None
        before = listing(case_dir)
        try:
            result = run_case(case, case_dir, scans)
        finally:
            if stop:
                stop()
        return case.id, Outcome(result, before, listing(case_dir))

    runnable = [case for case in CASES if "two_series" in scans or not case.needs_shared]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(run, runnable))
    assert listing(SHIPPED) == shipped, "a case changed the shipped weights or text artifacts"
    return {**results, "_root": root}


MAX_ERROR_LINES = 12  # the message, with what it names one a line (two affines, a DICOM folder's series)


def error_report(stderr: str) -> str:
    """The end of ``stderr`` from its last line holding ``error:`` (the bundle's and argparse's form)."""
    lines = stderr.rstrip().splitlines()
    starts = [number for number, line in enumerate(lines) if "error: " in line]
    return "\n".join(lines[starts[-1] :]) if starts else ""


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.id}-{case.entry}")
def test_each_input_gets_what_the_readme_says(case, outcomes):
    if case.needs_shared and case.id not in outcomes:
        pytest.skip("needs ../shared/data/ct")
    outcome = outcomes[case.id]
    result, case_dir = outcome.result, outcomes["_root"] / f"case_{case.id}"
    if case.outcome == HANDLED:
        assert result.returncode == 0, result.stderr[-3000:]
        case.expect(result, case_dir)
        return
    assert result.returncode != 0
    if case.outcome == CLEAR_ERROR:
        report = error_report(result.stderr)
        assert report and len(report.splitlines()) <= MAX_ERROR_LINES, result.stderr[-3000:]
        assert re.search(case.expect, report, re.DOTALL), f"expected {case.expect!r} in the error:\n{report}"
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    else:  # a limit: pinned down, so that a change is noticed
        assert re.search(case.expect, result.stderr.rstrip().splitlines()[-1]), result.stderr[-3000:]
    assert outcome.after == outcome.before, "the failed run left partial output"  # nothing written, nothing changed


def test_the_readme_table_is_the_catalogue():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- hostile-inputs:begin -->\n", "\n<!-- hostile-inputs:end -->"
    assert begin in readme and end in readme, "the README lost its table of inputs"
    written = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert written.strip() == table(), "README table out of date: `python tests/hostile_inputs.py` prints it"
