"""The per-scan preprocessing of train.yaml on the real scans, and its custom transforms one by one."""

from __future__ import annotations

import logging

import torch
from scripts.data import organ_samples

from text_pipeline.organs import ORGANS, organ_index

HU_WINDOW = (-175.0, 250.0)


def scan(shared_ct, name: str) -> dict:
    image = shared_ct / name / ("ct.nii.gz" if name == "patient_a" else "dicom")
    return {"image": str(image), "label": str(shared_ct / name / "seg_totalseg.nii.gz"), "convention": "totalseg_total"}


def median_hu(sample: dict) -> float:
    """Median HU inside the organ (where the position channels are not 0), undoing the window."""
    image = sample["image"]
    inside = image[0][image[1] != 0]
    return float(inside.median()) * (HU_WINDOW[1] - HU_WINDOW[0]) + HU_WINDOW[0]


def test_patient_a_nifti_gives_one_sample_per_organ(shared_ct, preprocessing):
    samples = preprocessing(scan(shared_ct, "patient_a"))
    assert [int(s["label"]) for s in samples] == list(range(len(ORGANS)))
    for sample in samples:
        assert tuple(sample["image"].shape) == (3, 64, 64, 16)
        assert sample["image"].dtype == torch.float32
        assert 0.0 <= float(sample["image"][0].min()) and float(sample["image"][0].max()) <= 1.0
        assert "mask" not in sample and sample["scan"].endswith("patient_a/ct.nii.gz")
        # masked: the organ fills part of its fixed window, the rest is 0
        assert 0.0001 < float((sample["image"][1] != 0).float().mean()) < 0.5
    liver = samples[organ_index("liver")]
    assert 20 < median_hu(liver) < 80  # the fixture README measured about 44 HU


def test_patient_b_dicom_series_is_oriented_onto_its_label_map(shared_ct, preprocessing, caplog):
    with caplog.at_level(logging.INFO, logger="scripts.transforms"):
        samples = preprocessing(scan(shared_ct, "patient_b"))
    organs = [ORGANS[int(s["label"])] for s in samples]
    assert organs == ["liver", "pancreas", "spleen", "stomach", "adrenal_gland"]
    assert "no kidney in its label map, skipped" in caplog.text
    assert "no gallbladder in its label map, skipped" in caplog.text
    # a naive stack of the DICOM pixels is flipped along y: the spleen mask would then cover fat and air
    by_organ = dict(zip(organs, samples))
    assert 40 < median_hu(by_organ["spleen"]) < 160
    assert 40 < median_hu(by_organ["liver"]) < 160


def test_organ_samples_flattens_scans_into_scan_organ_pairs(shared_ct, preprocessing):
    samples = organ_samples([scan(shared_ct, "patient_a"), scan(shared_ct, "patient_b")], preprocessing, num_workers=2)
    assert len(samples) == 7 + 5
    assert {s["scan"].split("/")[-2] for s in samples[:7]} == {"patient_a"}
    batch = torch.utils.data.default_collate([{"image": s["image"], "label": s["label"]} for s in samples])
    assert tuple(batch["image"].shape) == (12, 3, 64, 64, 16) and tuple(batch["label"].shape) == (12,)
