"""Scans as real scanners and converters write them: each is refused with a clear error, or handled and reported.

- a CT holding NaN or infinite voxels is refused, naming the file and how many voxels;
- a CT stored in another orientation (LAS, LPS) gives a probability map aligned voxel for voxel with it;
- a DICOM folder holding several series is refused, naming them (a non-CT DICOM modality too);
- an MR passed as a CT is refused with a message that says it looks like an MR;
- organs of a handful of voxels on the network's grid are reported as too small, never as present without a score.

Every derived scan is written into tmp_path; the real scans of ../shared are only read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    bundle_parser,
    infer_on_scan,
    inference_parser,
    organ_ids,
    run_inferring,
    write_dicom_copies,
    write_queries,
)
from monai.data import MetaTensor, list_data_collate
from scripts.data import ScanError, organ_samples, preprocess_scan
from scripts.inference import to_file_grid
from scripts.organ_features import OrganFeatures
from scripts.scan_io import check_dicom_folder, dicom_series
from scripts.transforms import RemapOrgansd, SplitOrgansd, ValidateScand

from text_pipeline.organs import ORGANS, organ_index

QUERIES = ["dark urine and yellowing of the eyes", "vomiting blood and burning pain after eating"]


# helpers


def reoriented(image: nib.Nifti1Image, axcodes: str) -> nib.Nifti1Image:
    """The same scan stored with its array axes in ``axcodes`` order (nibabel's meaning: "LAS" = +x to the left)."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    return image.as_reoriented(transform)


def find_transform(transform, kind: type):
    """The first transform of class ``kind`` inside a (nested) MONAI Compose."""
    if isinstance(transform, kind):
        return transform
    for inner in getattr(transform, "transforms", ()):
        found = find_transform(inner, kind)
        if found is not None:
            return found
    return None


def assert_map_carries_scores(map_file: str, ct_file: Path, label_file: Path, probabilities: dict) -> None:
    """The probability map is on the CT file's grid (shape, affine) and organ k's voxels carry organ k's score."""
    ct = nib.load(ct_file)
    probability_map = nib.load(map_file)
    assert probability_map.shape == ct.shape
    np.testing.assert_allclose(probability_map.affine, ct.affine, atol=1e-5)
    values = np.asarray(probability_map.dataobj)
    labels = organ_ids(label_file)
    assert (values[labels == 0] == 0).all()
    for organ, p in probabilities.items():
        voxels = labels == organ_index(organ) + 1
        assert voxels.any()
        np.testing.assert_allclose(values[voxels], 0.0 if p is None else p, rtol=1e-6)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    """The reasoner and the parsed inference.yaml (the shipped weights), as `inferring` builds them."""
    parser = inference_parser(feature_cache_dir=str(tmp_path_factory.mktemp("feature_cache")))
    return parser.get_parsed_content("reasoner"), parser.get_parsed_content("evaluator"), parser


def run_infer(components, image: Path, label: Path, output_dir: Path, convention="totalseg_total", **kwargs):
    kwargs.setdefault("queries_file", write_queries(output_dir.parent / f"{output_dir.name}_queries.jsonl", QUERIES))
    kwargs.update(image=image, label=label, label_convention=convention, output_dir=output_dir)
    return infer_on_scan(components[1], **kwargs)


def load_scan(image: Path, label: Path, convention: str = "totalseg_total") -> dict:
    """The scan as ``inferring`` loads it once: the CT and its organ ids, checked, in RAS."""
    loading = inference_parser().get_parsed_content("scan_loading")
    return preprocess_scan({"image": str(image), "label": str(label), "convention": convention}, loading)


def organ_ids_on_ct_grid(image: Path, label: Path, convention: str = "totalseg_total") -> np.ndarray:
    """The label map's organ ids on the CT file's own voxel grid, where ``inferring`` writes its maps."""
    loaded = load_scan(image, label, convention)
    return to_file_grid(loaded["label"][0].numpy(), loaded["image"])[0]


# NaN and infinite voxels


def copy_with_nonfinite(shared_ct: Path, tmp_path: Path, value: float, count: int) -> Path:
    """patient_a as float32 with ``count`` voxels of the liver set to ``value``; the label map beside it."""
    ct = nib.load(shared_ct / "patient_a" / "ct.nii.gz")
    data = np.asarray(ct.dataobj).astype(np.float32)
    liver = np.argwhere(organ_ids(shared_ct / "patient_a" / "seg_totalseg.nii.gz") == organ_index("liver") + 1)
    for index in liver[np.linspace(0, len(liver) - 1, count).astype(int)]:
        data[tuple(index)] = value
    folder = tmp_path / "scan"
    folder.mkdir()
    nib.save(nib.Nifti1Image(data, ct.affine), folder / "ct.nii.gz")
    shutil.copyfile(shared_ct / "patient_a" / "seg_totalseg.nii.gz", folder / "seg_totalseg.nii.gz")
    return folder


@pytest.mark.parametrize(
    ("value", "count", "message"),
    [(np.nan, 5, r"holds 5 non-finite voxels \(5 NaN\)"), (np.inf, 1, r"holds 1 non-finite voxel \(1 \+inf\)")],
)
def test_non_finite_ct_is_refused_by_the_preprocessing(shared_ct, tmp_path, preprocessing, value, count, message):
    scan = copy_with_nonfinite(shared_ct, tmp_path, value, count)
    item = {"image": str(scan / "ct.nii.gz"), "label": str(scan / "seg_totalseg.nii.gz")}
    item["convention"] = "totalseg_total"
    with pytest.raises(ScanError, match=message) as caught:
        organ_samples([item], preprocessing)
    assert f"CT {scan / 'ct.nii.gz'} holds" in str(caught.value)
    with pytest.raises(ScanError, match=message):  # inference's one reading of the scan
        load_scan(scan / "ct.nii.gz", scan / "seg_totalseg.nii.gz")


def test_non_finite_ct_is_refused_by_inferring_before_anything_is_written(components, shared_ct, tmp_path):
    scan = copy_with_nonfinite(shared_ct, tmp_path, -np.inf, 3)
    with pytest.raises(ScanError, match=r"holds 3 non-finite voxels \(3 -inf\)") as caught:
        run_infer(components, scan / "ct.nii.gz", scan / "seg_totalseg.nii.gz", tmp_path / "out")
    assert str(scan / "ct.nii.gz") in str(caught.value)
    assert not (tmp_path / "out").exists()  # the folder the run created is gone with it


def test_validate_scan_refuses_non_finite_label_map():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.full((1, 8, 8, 8), -1000.0), affine=affine, meta={"filename_or_obj": "ct.nii.gz"})
    image[0, 2:6, 2:6, 2:6] = 40.0
    label = MetaTensor(torch.zeros(1, 8, 8, 8), affine=affine, meta={"filename_or_obj": "seg.nii.gz"})
    label[0, 3, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"label map seg.nii.gz holds 1 non-finite voxel \(1 NaN\)"):
        ValidateScand()({"image": image, "label": label})


# other orientations


@pytest.fixture(scope="module")
def orientation_runs(components, shared_ct, tmp_path_factory):
    """patient_a as stored (RAS) and rewritten in LAS and LPS, each run through `inferring`'s infer()."""
    root = tmp_path_factory.mktemp("orientations")
    original = shared_ct / "patient_a"
    runs = {}
    for axcodes in ("RAS", "LAS", "LPS"):
        folder = original if axcodes == "RAS" else root / axcodes
        ct_file, label_file = folder / "ct.nii.gz", folder / "seg_totalseg.nii.gz"
        if axcodes != "RAS":
            folder.mkdir()
            for name in ("ct.nii.gz", "seg_totalseg.nii.gz"):
                nib.save(reoriented(nib.load(original / name), axcodes), folder / name)
        report = run_infer(components, ct_file, label_file, root / f"out_{axcodes}")
        runs[axcodes] = ct_file, label_file, report
    return runs


@pytest.mark.parametrize("axcodes", ["LAS", "LPS"])
def test_scan_in_another_orientation_gives_an_aligned_probability_map(orientation_runs, axcodes):
    ct_file, label_file, report = orientation_runs[axcodes]
    assert nib.aff2axcodes(nib.load(ct_file).affine) == nib.aff2axcodes(nib.load(label_file).affine) == tuple(axcodes)
    for query in report["queries"]:
        assert_map_carries_scores(query["probability_map"], ct_file, label_file, query["probabilities"])
        assert Path(query["picture"]).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("axcodes", ["LAS", "LPS"])
def test_scan_in_another_orientation_scores_as_the_original(orientation_runs, axcodes):
    original, other = orientation_runs["RAS"][2], orientation_runs[axcodes][2]
    assert other["organs_not_in_scan"] == original["organs_not_in_scan"] == []
    for mine, theirs in zip(other["queries"], original["queries"]):
        assert mine["text"] == theirs["text"]
        for organ in ORGANS:
            assert mine["probabilities"][organ] == pytest.approx(theirs["probabilities"][organ], abs=1e-4)


def test_original_orientation_map_carries_scores(orientation_runs):
    ct_file, label_file, report = orientation_runs["RAS"]
    query = report["queries"][0]
    assert_map_carries_scores(query["probability_map"], ct_file, label_file, query["probabilities"])


# DICOM folders holding several series, or a series that is not a CT


@pytest.fixture(scope="module")
def two_series_folder(shared_ct, tmp_path_factory) -> Path:
    """patient_b's 20 slices and, beside them, 6 of them copied as a second series ("CT Body 1.0 copy")."""
    folder = tmp_path_factory.mktemp("two_series") / "dicom"
    folder.mkdir()
    originals = sorted((shared_ct / "patient_b" / "dicom").iterdir())
    for file in originals:
        shutil.copyfile(file, folder / file.name)
    write_dicom_copies(originals[:6], folder, "1.2.826.0.1.3680043.8.498.4242", "CT Body 1.0 copy")
    return folder


SECOND_SERIES = (
    "SeriesInstanceUID 1.2.826.0.1.3680043.8.498.4242, description 'CT Body 1.0 copy', modality CT, 6 slices"
)


def test_dicom_series_lists_each_series(two_series_folder):
    series = sorted(dicom_series(two_series_folder), key=lambda one: len(one.files))
    assert [len(one.files) for one in series] == [6, 20]
    assert [one.uid for one in series] == ["1.2.826.0.1.3680043.8.498.4242", ""]  # patient_b's UID is anonymised
    assert [one.description for one in series] == ["CT Body 1.0 copy", "CT Body 3.0"]


def test_dicom_folder_with_several_series_is_refused_by_the_preprocessing(shared_ct, two_series_folder, preprocessing):
    item = {"image": str(two_series_folder), "label": str(shared_ct / "patient_b" / "seg_totalseg.nii.gz")}
    with pytest.raises(ScanError) as caught:
        organ_samples([{**item, "convention": "totalseg_total"}], preprocessing)
    message = str(caught.value)
    assert f"image {two_series_folder} is a DICOM folder holding 2 series" in message
    assert SECOND_SERIES in message
    assert "SeriesInstanceUID none, description 'CT Body 3.0', modality CT, 20 slices" in message


def test_dicom_folder_with_several_series_is_refused_by_inferring_before_anything_is_written(
    components, shared_ct, two_series_folder, tmp_path
):
    with pytest.raises(ValueError, match="is a DICOM folder holding 2 series") as caught:
        run_infer(components, two_series_folder, shared_ct / "patient_b" / "seg_totalseg.nii.gz", tmp_path / "out")
    assert SECOND_SERIES in str(caught.value) and "in a folder of its own" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_dicom_series_of_another_modality_is_refused(shared_ct, tmp_path):
    folder = tmp_path / "mr_dicom"
    write_dicom_copies(
        sorted((shared_ct / "patient_b" / "dicom").iterdir())[:3], folder, "1.2.826.0.1.3680043.8.498.77", "t1", "MR"
    )
    with pytest.raises(ValueError, match=f"image {folder} is a DICOM series of modality MR .magnetic resonance.,"):
        check_dicom_folder(folder)


# an MR passed as a CT


def test_mr_passed_as_a_ct_is_refused_by_the_preprocessing(shared_ct, preprocessing):
    scan = shared_ct / "mr_sample"
    item = {"image": str(scan / "mr.nii.gz"), "label": str(scan / "seg_totalseg_mr.nii.gz")}
    with pytest.raises(ScanError) as caught:
        organ_samples([{**item, "convention": "totalseg_total_mr"}], preprocessing)
    message = str(caught.value)
    assert f"{scan / 'mr.nii.gz'} does not look like a CT in Hounsfield units: its values span [-47, 833]" in message
    assert "most likely an MR" in message and "about -1000 HU" in message


def test_mr_passed_as_a_ct_is_refused_by_the_inferring_command(shared_ct, tmp_path):
    scan = shared_ct / "mr_sample"
    result = run_inferring(
        "--image", str(scan / "mr.nii.gz"), "--label", str(scan / "seg_totalseg_mr.nii.gz"),
        "--label_convention", "totalseg_total_mr", "--symptom", "dark urine and yellowing of the eyes",
        "--output_dir", str(tmp_path / "out"), "--feature_cache_dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.returncode != 0
    assert f"{scan / 'mr.nii.gz'} does not look like a CT in Hounsfield units" in result.stderr
    assert "It is most likely an MR (or another image that is not a CT) passed as a CT" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# organs of a handful of voxels


def test_split_organs_reports_too_small_organs_apart_from_absent_ones(caplog):
    label = torch.zeros(1, 12, 12, 12)
    label[0, :6, :6, :6] = 1  # liver: 216 voxels
    label[0, 8, 8, 8:11] = 2  # pancreas: 3 voxels
    counts_given = torch.tensor([216, 3, 0, 0, 9, 0, 0])  # the spleen vanished in resampling
    item = {"image": torch.zeros(1, 12, 12, 12), "label": label, "organ_voxels_in_label": counts_given}
    with caplog.at_level("INFO", logger="scripts.transforms"):
        samples = SplitOrgansd(min_voxels=4)(item)
    assert [int(sample["label"]) for sample in samples] == [0]
    assert samples[0]["organ_voxels"].tolist() == [[216, 3, 0, 0, 9, 0, 0], [216, 3, 0, 0, 0, 0, 0]]
    assert "organ_voxels_in_label" not in samples[0]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 2
    assert "pancreas too small to be seen" in warnings[0]
    assert "3 voxels in its label map, 3 on the network's grid" in warnings[0]
    assert "spleen too small to be seen" in warnings[1] and "fewer than min_voxels 4" in warnings[1]
    assert any("no kidney in its label map" in record.getMessage() for record in caplog.records)
    counts = torch.tensor([1, 0, 0, 0, 0, 0, 0])
    features = OrganFeatures(torch.zeros(len(ORGANS), 4), counts, samples[0]["organ_voxels"])
    assert features.too_small_organs() == {"pancreas": 3, "spleen": 0}
    assert features.absent_organs() == ["kidney", "gallbladder", "stomach", "adrenal_gland"]


def test_split_organs_with_only_too_small_organs_is_a_clear_error():
    label = torch.zeros(1, 8, 8, 8)
    label[0, 1, 1, 1:3] = 2
    image = MetaTensor(torch.zeros(1, 8, 8, 8), meta={"filename_or_obj": "scan.nii.gz"})
    with pytest.raises(ValueError, match=r"scan.nii.gz: no organ has the 5 voxels needed .*pancreas 2"):
        SplitOrgansd(min_voxels=5)({"image": image, "label": label})
    with pytest.raises(ValueError, match="min_voxels must be at least 1"):
        SplitOrgansd(min_voxels=0)


def test_samples_of_scans_with_different_organs_still_collate():
    remap, split = RemapOrgansd(keys="label", default_convention="btcv"), SplitOrgansd(min_voxels=2)
    first, second = torch.zeros(1, 6, 6, 6), torch.zeros(1, 6, 6, 6)
    first[0, :3] = 6  # BTCV liver
    second[0, :3], second[0, 4, 4, 4] = 1, 11  # BTCV spleen, a 1-voxel pancreas
    samples = [split(remap({"image": torch.zeros(1, 6, 6, 6), "label": label}))[0] for label in (first, second)]
    batch = list_data_collate(samples)
    assert batch["organ_voxels"].shape == (2, 2, len(ORGANS))
    assert batch["organ_voxels"][1, :, organ_index("pancreas")].tolist() == [1, 1]


def test_tiny_organs_of_a_real_series_are_reported_too_small(components, shared_ct, tmp_path):
    """patient_b's pancreas (2.5 mL) and right adrenal (2.4 mL) with a min_voxels just above their voxel counts on
    the network's grid: both reported under organs_too_small with their counts, no probability, not absent."""
    scan = shared_ct / "patient_b"
    item = {"image": str(scan / "dicom"), "label": str(scan / "seg_totalseg.nii.gz"), "convention": "totalseg_total"}
    preprocessing = bundle_parser(min_organ_voxels=1).get_parsed_content("preprocessing")
    assert find_transform(preprocessing, SplitOrgansd).min_voxels == 1
    given, here = preprocessing(dict(item))[0]["organ_voxels"].tolist()
    small = {organ: here[organ_index(organ)] for organ in ("pancreas", "adrenal_gland")}
    assert all(0 < count for count in small.values()) and given[organ_index("pancreas")] > 1000
    min_voxels = max(small.values()) + 1
    assert all(here[organ_index(organ)] >= min_voxels for organ in ("liver", "spleen", "stomach"))

    inference = inference_parser(min_organ_voxels=min_voxels, feature_cache_dir=str(tmp_path / "cache"))
    report = infer_on_scan(
        inference.get_parsed_content("evaluator"), image=scan / "dicom", label=scan / "seg_totalseg.nii.gz",
        label_convention="totalseg_total", output_dir=tmp_path / "out",
        symptom="vomiting blood and burning pain after eating",
    )  # fmt: skip
    written = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert written["organs_too_small"] == report["organs_too_small"] == small
    assert written["organs_not_in_scan"] == ["kidney", "gallbladder"]
    (query,) = written["queries"]
    scored = [organ for organ, p in query["probabilities"].items() if p is not None]
    assert scored == ["liver", "spleen", "stomach"]  # every organ without a score is reported absent or too small
    assert [entry["organ"] for entry in query["ranking"]] == sorted(scored, key=lambda o: -query["probabilities"][o])
    values = np.asarray(nib.load(query["probability_map"]).dataobj)
    labels = organ_ids_on_ct_grid(scan / "dicom", scan / "seg_totalseg.nii.gz")
    assert values.shape == labels.shape
    for organ, p in query["probabilities"].items():  # too small organs: no probability painted on their voxels
        np.testing.assert_allclose(values[labels == organ_index(organ) + 1], 0.0 if p is None else p, rtol=1e-6)

    def refuse(_):
        raise AssertionError("the cached features should have been used")

    cached = inference_parser(min_organ_voxels=min_voxels, feature_cache_dir=str(tmp_path / "cache"))
    cache = cached.get_parsed_content("feature_cache")
    cache.preprocessing = refuse
    from_disk = cache(item)
    assert from_disk.too_small_organs() == small and from_disk.absent_organs() == ["kidney", "gallbladder"]
