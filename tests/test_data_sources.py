"""The three data sources resolve to the same training / validation scan lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripts.data import organ_samples, resolve_datalist
from scripts.phantom import write_phantom_dataset

from text_pipeline.organs import ORGANS


@pytest.fixture(scope="module")
def btcv_dir(tmp_path_factory) -> Path:
    """A BTCV folder as MONAI's tutorials keep it, filled with phantoms (they carry BTCV label ids)."""
    root = tmp_path_factory.mktemp("btcv")
    scans = write_phantom_dataset(root, num_cases=3, seed=5)
    relative = [{key: str(Path(scan[key]).relative_to(root)) for key in ("image", "label")} for scan in scans]
    listing = {"name": "BTCV", "training": relative[:2], "validation": relative[2:]}
    (root / "dataset_0.json").write_text(json.dumps(listing))
    return root


def test_btcv_dataset_dir(btcv_dir, preprocessing):
    scans = resolve_datalist(dataset_dir=str(btcv_dir))
    assert [len(scans["training"]), len(scans["validation"])] == [2, 1]
    for scan in scans["training"] + scans["validation"]:
        assert scan["convention"] == "btcv"
        assert Path(scan["image"]).is_absolute() and Path(scan["image"]).parent == btcv_dir / "imagesTr"
    samples = organ_samples(scans["training"], preprocessing)
    assert [int(s["label"]) for s in samples] == list(range(len(ORGANS))) * 2


def test_plain_list_datalist_is_split_deterministically_with_relative_paths(btcv_dir, tmp_path):
    items = [
        {
            "image": f"../{btcv_dir.name}/imagesTr/phantom_000{i}.nii.gz",
            "label": f"../{btcv_dir.name}/labelsTr/phantom_000{i}.nii.gz",
        }
        for i in range(3)
    ]
    datalist = btcv_dir.parent / "lists" / "datalist.json"
    datalist.parent.mkdir(exist_ok=True)
    datalist.write_text(json.dumps([{**item, "convention": "btcv"} for item in items]))
    first = resolve_datalist(datalist=str(datalist), val_fraction=0.34, seed=1)
    assert first == resolve_datalist(datalist=str(datalist), val_fraction=0.34, seed=1)
    assert [len(first["training"]), len(first["validation"])] == [2, 1]
    every = {scan["image"] for split in first.values() for scan in split}
    assert every == {str(datalist.parent / item["image"]) for item in items}
    assert all(Path(image).exists() for image in every)


def test_a_one_item_list_cannot_be_split(btcv_dir, tmp_path):
    datalist = tmp_path / "one.json"
    image, label = btcv_dir / "imagesTr" / "phantom_0000.nii.gz", btcv_dir / "labelsTr" / "phantom_0000.nii.gz"
    datalist.write_text(json.dumps([{"image": str(image), "label": str(label), "convention": "btcv"}]))
    with pytest.raises(ValueError, match="has 1 item"):
        resolve_datalist(datalist=str(datalist))


def test_dataset_dir_and_datalist_together_is_ambiguous(btcv_dir):
    with pytest.raises(ValueError, match="set one of dataset_dir .* and datalist"):
        resolve_datalist(dataset_dir=str(btcv_dir), datalist="list.json")


def test_embedded_default_writes_phantoms_when_no_data_is_configured(tmp_path):
    scans = resolve_datalist(phantom_dir=str(tmp_path / "phantom"), num_phantom_train=2, num_phantom_val=1, seed=3)
    assert [len(scans["training"]), len(scans["validation"])] == [2, 1]
    assert {scan["convention"] for split in scans.values() for scan in split} == {"btcv"}
    manifest = json.loads((tmp_path / "phantom" / "phantom.json").read_text())
    assert manifest["seed"] == 3 and manifest["num_cases"] == 3
