"""A real MONAI Label app over the repository's bundle, its studies folder holding the real scan patient_a.

Run in the app's own environment (``bash monailabel_app/install.sh``):
``.venv-monailabel/bin/python -m pytest monailabel_app/tests``. Everything is written under temporary folders:
the app folder is copied there (MONAI Label writes its logs and datastore index beside the app and the studies).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1]
REPO = APP.parent
BUNDLE = REPO / "bundle"
SHARED_CT = REPO.parent / "shared" / "data" / "ct"
SYMPTOM = "dark urine and yellowing of the eyes"
CONVENTION = "totalseg_total"


@pytest.fixture(scope="session")
def patient_a() -> Path:
    folder = SHARED_CT / "patient_a"
    if not folder.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real scans at {SHARED_CT}")
        pytest.skip(f"real scans not found at {SHARED_CT}")
    return folder


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory) -> Path:
    """The app's files copied to a temporary folder, where MONAI Label may write its logs."""
    target = tmp_path_factory.mktemp("app") / "monailabel_app"
    shutil.copytree(APP, target, ignore=shutil.ignore_patterns("tests", "__pycache__", "logs"))
    (target / "logs").mkdir()
    (target / "logs" / "app.log").touch()
    return target


@pytest.fixture(scope="session")
def studies(tmp_path_factory, patient_a) -> Path:
    """A studies folder: patient_a with its organ label map (tag final), and a CT without any label."""
    folder = tmp_path_factory.mktemp("studies")
    shutil.copy(patient_a / "ct.nii.gz", folder / "patient_a.nii.gz")
    shutil.copy(patient_a / "ct.nii.gz", folder / "unlabelled.nii.gz")
    (folder / "labels" / "final").mkdir(parents=True)
    shutil.copy(patient_a / "seg_totalseg.nii.gz", folder / "labels" / "final" / "patient_a.nii.gz")
    return folder


@pytest.fixture(scope="session")
def client(app_dir, studies):
    """MONAI Label's FastAPI app in process (as its own endpoint tests drive it), serving this app."""
    from fastapi.testclient import TestClient
    from monailabel.config import settings

    settings.MONAI_LABEL_APP_DIR = str(app_dir)
    settings.MONAI_LABEL_STUDIES = str(studies)
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
    settings.MONAI_LABEL_APP_CONF = {"bundle": str(BUNDLE), "label_convention": CONVENTION}
    for key, value in settings.model_dump().items():
        os.environ[key] = json.dumps(value) if isinstance(value, list | dict) else str(value)

    from monailabel.app import app
    from monailabel.interfaces.utils.app import clear_cache

    clear_cache()
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def bundle_inferring(tmp_path_factory, patient_a) -> Path:
    """The bundle's own `inferring` on patient_a with SYMPTOM, run as its README says, from the bundle folder."""
    out = tmp_path_factory.mktemp("bundle_inferring")
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring"]
    command += ["--config_file", "['configs/train.yaml','configs/inference.yaml']"]
    command += ["--image", str(patient_a / "ct.nii.gz"), "--label", str(patient_a / "seg_totalseg.nii.gz")]
    command += ["--label_convention", CONVENTION, "--symptom", SYMPTOM]
    command += ["--output_dir", str(out / "out"), "--feature_cache_dir", str(out / "cache")]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return out / "out"
