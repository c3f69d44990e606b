"""Bad input gets an error naming the file or config id and the problem, before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE
from scripts.data import ScanError, organ_samples, resolve_datalist
from scripts.phantom import generate_phantom


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(7)


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def scan_item(tmp_path: Path, image: np.ndarray, label: np.ndarray, affine, label_affine=None, convention="btcv"):
    return {
        "image": save(tmp_path / "ct.nii.gz", image, affine),
        "label": save(tmp_path / "seg.nii.gz", label, affine if label_affine is None else label_affine),
        "convention": convention,
    }


def preprocess_error(preprocessing, item: dict) -> str:
    with pytest.raises(ScanError) as caught:
        organ_samples([item], preprocessing)
    return str(caught.value)


def test_missing_nifti_named_by_the_datalist(tmp_path, phantom):
    datalist = tmp_path / "datalist.json"
    label = save(tmp_path / "seg.nii.gz", phantom.label, phantom.affine)
    items = [{"image": str(tmp_path / "gone.nii.gz"), "label": label, "convention": "btcv"}] * 2
    datalist.write_text(json.dumps(items))
    with pytest.raises(FileNotFoundError, match=r"datalist .*datalist.json item 0: image .*gone.nii.gz does not exist"):
        resolve_datalist(datalist=str(datalist))


def test_corrupt_nifti(tmp_path, phantom, preprocessing):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)
    label = save(tmp_path / "seg.nii.gz", phantom.label, phantom.affine)
    message = preprocess_error(preprocessing, {"image": str(corrupt), "label": label, "convention": "btcv"})
    assert f"cannot preprocess scan {corrupt}" in message


def test_unreadable_dicom_folder(tmp_path, phantom, preprocessing):
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "IM0001").write_bytes(b"not a dicom file" * 64)
    label = save(tmp_path / "seg.nii.gz", phantom.label, phantom.affine)
    message = preprocess_error(preprocessing, {"image": str(folder), "label": label, "convention": "btcv"})
    assert f"cannot preprocess scan {folder}" in message and "no DICOMs" in message


def test_label_map_of_another_shape(tmp_path, phantom, preprocessing):
    item = scan_item(tmp_path, phantom.image, phantom.label[:, :, :40], phantom.affine)
    message = preprocess_error(preprocessing, item)
    assert "seg.nii.gz has shape (112, 112, 40)" in message and "ct.nii.gz has (112, 112, 56)" in message


def test_label_map_not_aligned_with_its_ct(tmp_path, phantom, preprocessing):
    shifted = phantom.affine.copy()
    shifted[:3, 3] += (9.0, 0.0, 0.0)
    message = preprocess_error(
        preprocessing, scan_item(tmp_path, phantom.image, phantom.label, phantom.affine, shifted)
    )
    assert "seg.nii.gz is not aligned with its CT" in message and "affines differ" in message


def test_label_map_without_any_of_the_seven_organs(tmp_path, phantom, preprocessing):
    vessels_only = np.where(np.isin(phantom.label, (8, 9)), phantom.label, 0).astype(np.uint8)  # aorta, IVC
    message = preprocess_error(preprocessing, scan_item(tmp_path, phantom.image, vessels_only, phantom.affine))
    assert "seg.nii.gz contains none of the organs liver, pancreas" in message and "(btcv ids)" in message


def test_unknown_convention_named_by_the_datalist(tmp_path, phantom):
    item = scan_item(tmp_path, phantom.image, phantom.label, phantom.affine, convention="amos22")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [item], "validation": [item]}))
    with pytest.raises(
        ValueError, match=r"\[training\] item 0: unknown label convention 'amos22'; known conventions: btcv"
    ):
        resolve_datalist(datalist=str(datalist))


def test_eight_bit_volume_is_not_a_ct(tmp_path, phantom, preprocessing):
    png_like = ((phantom.image.clip(-1000, 1000) + 1000) / 2000 * 255).astype(np.uint8)
    message = preprocess_error(preprocessing, scan_item(tmp_path, png_like, phantom.label, phantom.affine))
    assert "ct.nii.gz does not look like a CT in Hounsfield units: its values span [0, " in message


@pytest.mark.parametrize("content", [[], {"training": [], "validation": []}])
def test_empty_datalist(tmp_path, content):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="datalist .*datalist.json.* is empty: it lists no scans"):
        resolve_datalist(datalist=str(datalist))


def test_btcv_folder_without_its_listing(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"dataset_dir {tmp_path} has no dataset_0.json"):
        resolve_datalist(dataset_dir=str(tmp_path))


def test_training_run_on_bad_input_stops_before_writing_anything(tmp_path, phantom):
    png_like = ((phantom.image.clip(-1000, 1000) + 1000) / 2000 * 255).astype(np.uint8)
    good = scan_item(tmp_path, phantom.image, phantom.label, phantom.affine)
    (tmp_path / "bad").mkdir()
    bad = scan_item(tmp_path / "bad", png_like, phantom.label, phantom.affine)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [good, bad], "validation": [good]}))
    outputs = tmp_path / "models", tmp_path / "eval"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    command += ["--datalist", str(datalist), "--ckpt_dir", str(outputs[0]), "--output_dir", str(outputs[1])]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"cannot preprocess scan {bad['image']}" in result.stderr
    assert "does not look like a CT in Hounsfield units" in result.stderr
    assert not any(path.exists() and any(path.iterdir()) for path in outputs)
