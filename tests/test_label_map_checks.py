"""Label maps that would give a silent wrong answer are refused, naming the file and the problem."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import run_inferring
from scripts.label_conventions import LABEL_CONVENTIONS, LARGEST_ID
from scripts.transforms import RemapOrgansd

from text_pipeline.organs import ORGANS


def remap(label: np.ndarray, convention: str) -> torch.Tensor:
    return RemapOrgansd(keys="label")({"label": torch.from_numpy(label), "convention": convention})["label"]


def test_non_integer_label_values_are_refused_not_rounded():
    label = np.zeros((4, 4, 4), np.float32)
    label[:2] = 5.0  # TotalSegmentator's liver
    label[2:] = 1.5  # between spleen (1) and kidney (2): a linearly resampled edge
    with pytest.raises(ValueError, match=r"not whole numbers \(32 voxels, e\.g\. 1\.5\).*nearest-neighbour"):
        remap(label, "totalseg_total")
    label[2:] = 1.0000001  # float storage error is not a different id
    remapped = remap(label, "totalseg_total")
    assert set(torch.unique(remapped).tolist()) == {ORGANS.index("liver") + 1, ORGANS.index("spleen") + 1}


def test_every_convention_has_its_id_range():
    assert set(LARGEST_ID) == set(LABEL_CONVENTIONS)
    assert all(max(LABEL_CONVENTIONS[name]) <= LARGEST_ID[name] for name in LABEL_CONVENTIONS)


@pytest.mark.parametrize("convention", sorted(LARGEST_ID))
def test_ids_outside_the_convention_are_refused(convention):
    largest = LARGEST_ID[convention]
    label = np.zeros((4, 4, 4), np.int16)
    label[0] = 1
    label[1] = largest
    remap(label, convention)  # every id of the convention is accepted
    label[2] = largest + 1
    expected = rf"holds ids {largest + 1}, outside the {convention} convention's 0\.\.{largest}"
    with pytest.raises(ValueError, match=expected):
        remap(label, convention)
    label[2] = -1
    with pytest.raises(ValueError, match="holds ids -1, outside"):
        remap(label, convention)


def test_a_totalsegmentator_label_map_read_as_medsora_ids_is_refused(shared_ct, tmp_path):
    """The wrong convention on a real label map: patient_a's TotalSegmentator ids go up to 117, medsora's to 7."""
    scan = shared_ct / "patient_a"
    result = run_inferring(
        "--image", str(scan / "ct.nii.gz"), "--label", str(scan / "seg_totalseg.nii.gz"),
        "--label_convention", "medsora", "--output_dir", str(tmp_path / "out"),
        "--feature_cache_dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert result.returncode != 0
    assert "outside the medsora convention's 0..7: is label_convention right" in result.stderr
    assert "seg_totalseg.nii.gz" in result.stderr
    assert not (tmp_path / "out" / "scores.json").exists()


def test_a_label_map_saved_as_float_with_whole_ids_is_read(shared_ct, tmp_path):
    """Many tools save label maps as float32: whole-number values are ids like any other."""
    seg = nib.load(shared_ct / "patient_a" / "seg_totalseg.nii.gz")
    as_float = nib.Nifti1Image(np.asarray(seg.dataobj).astype(np.float32), seg.affine)
    remapped = remap(np.asarray(as_float.dataobj), "totalseg_total")
    assert (remapped > 0).sum() == np.isin(np.asarray(seg.dataobj), list(range(1, 10))).sum()
