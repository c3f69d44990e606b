"""Shared fixtures: the bundle's scripts on sys.path, the real scans in ../shared, small run settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SHARED_CT = REPO.parent / "shared" / "data" / "ct"

if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))


@pytest.fixture(scope="session")
def shared_ct() -> Path:
    """The real scans of ../shared/data/ct; CI always has them, a user's clone may not."""
    if not SHARED_CT.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real scans at {SHARED_CT}")
        pytest.skip(f"real scans not found at {SHARED_CT}")
    return SHARED_CT


def bundle_parser(*config_files: str, **overrides) -> ConfigParser:
    """A parser of the bundle's configs (train.yaml first), as `python -m monai.bundle` reads them."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in ("train.yaml", *config_files)])
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update(overrides)
    return parser


@pytest.fixture(scope="session")
def preprocessing():
    """The bundle's per-scan preprocessing, exactly as train.yaml declares it."""
    return bundle_parser().get_parsed_content("preprocessing")
