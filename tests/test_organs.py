"""The one organ vocabulary and its label conventions, checked on the real scans' label maps."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scripts.label_conventions import LABEL_CONVENTIONS, organ_lookup_table
from scripts.transforms import RemapOrgansd

from text_pipeline.organs import ORGANS, organ_index


def test_vocabulary_is_the_papers_seven_organs_in_order():
    assert ORGANS == ("liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland")
    assert [organ_index(name) for name in ORGANS] == list(range(7))
    with pytest.raises(ValueError, match="unknown organ 'colon'"):
        organ_index("colon")


def test_btcv_merges_sides_and_drops_vessels():
    lut = organ_lookup_table("btcv")
    kidney, adrenal = organ_index("kidney") + 1, organ_index("adrenal_gland") + 1
    assert lut[2] == lut[3] == kidney
    assert lut[12] == lut[13] == adrenal
    assert lut[6] == organ_index("liver") + 1 and lut[11] == organ_index("pancreas") + 1
    assert all(lut[vessel] == 0 for vessel in (5, 8, 9, 10))  # esophagus, aorta, IVC, portal/splenic veins
    assert sorted(set(lut[1:14]) - {0}) == list(range(1, 8))


@pytest.mark.parametrize("task", ["total", "total_mr"])
def test_totalsegmentator_tables_match_the_shipped_label_map(shared_ct, task):
    names = json.loads((shared_ct / "label_map_totalseg_v2.json").read_text())[task]
    convention = LABEL_CONVENTIONS[f"totalseg_{task}"]
    for source_id, organ in convention.items():
        source_name = names[str(source_id)]
        assert source_name.removesuffix("_left").removesuffix("_right") == organ
    # every id naming one of the organs (either side) is in the convention
    organ_ids = {int(i) for i, n in names.items() if n.removesuffix("_left").removesuffix("_right") in ORGANS}
    assert organ_ids == set(convention)


def test_unknown_convention_names_itself_and_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown label convention 'amos'.*btcv"):
        organ_lookup_table("amos")


@pytest.mark.parametrize(
    ("scan", "label_file", "convention"),
    [
        ("patient_a", "seg_totalseg.nii.gz", "totalseg_total"),
        ("patient_b", "seg_totalseg.nii.gz", "totalseg_total"),
        ("mr_sample", "seg_totalseg_mr.nii.gz", "totalseg_total_mr"),
    ],
)
def test_remap_on_real_label_maps_counts_every_voxel(shared_ct, scan, label_file, convention):
    source = np.asarray(nib.load(shared_ct / scan / label_file).dataobj).astype(np.int64)
    remapped = RemapOrgansd(keys="label")({"label": torch.from_numpy(source), "convention": convention})["label"]
    remapped = np.asarray(remapped)
    assert remapped.dtype == np.uint8 and remapped.shape == source.shape
    for source_id, organ in LABEL_CONVENTIONS[convention].items():
        assert np.all(remapped[source == source_id] == organ_index(organ) + 1)
    for organ in ORGANS:
        ids = [i for i, name in LABEL_CONVENTIONS[convention].items() if name == organ]
        assert (remapped == organ_index(organ) + 1).sum() == np.isin(source, ids).sum()
    assert np.all(remapped[~np.isin(source, list(LABEL_CONVENTIONS[convention]))] == 0)


def test_patient_a_has_all_seven_organs_and_patient_b_lacks_kidney_and_gallbladder(shared_ct):
    def present(scan: str) -> set[str]:
        source = np.asarray(nib.load(shared_ct / scan / "seg_totalseg.nii.gz").dataobj).astype(np.int64)
        remapped = np.asarray(
            RemapOrgansd()({"label": torch.from_numpy(source), "convention": "totalseg_total"})["label"]
        )
        return {ORGANS[value - 1] for value in np.unique(remapped) if value}

    assert present("patient_a") == set(ORGANS)
    assert present("patient_b") == set(ORGANS) - {"kidney", "gallbladder"}
