"""Tests of the synthetic abdominal CT phantom (bundle/scripts/phantom.py)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scripts import phantom as phantom_module
from scripts import phantom_anatomy as A
from scripts.phantom import (
    BTCV_LABELS,
    CASE_SEED_STRIDE,
    PHANTOM_VERSION,
    Phantom,
    generate_phantom,
    write_phantom_dataset,
)

SEEDS = (0, 1, 2, 3)
REQUIRED = (
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "liver",
    "stomach",
    "pancreas",
    "right_adrenal_gland",
    "left_adrenal_gland",
)
# Portal-venous-phase mean HU over the whole label.
MEAN_HU = {
    "liver": (90, 110),
    "spleen": (100, 120),
    "right_kidney": (150, 200),
    "left_kidney": (150, 200),
    "pancreas": (80, 100),
    "gallbladder": (0, 20),
    "right_adrenal_gland": (30, 50),
    "left_adrenal_gland": (30, 50),
    "aorta": (150, 200),
    "inferior_vena_cava": (150, 200),
}
# The published adult ranges the generator draws from (sources in scripts.phantom_anatomy; the anatomy
# itself is tested in test_phantom_anatomy.py).
VOLUME_ML = {
    "liver": A.LIVER_ML,
    "spleen": A.SPLEEN_ML,
    "right_kidney": A.KIDNEY_ML,
    "left_kidney": A.KIDNEY_ML,
    "pancreas": A.PANCREAS_ML,
    "gallbladder": A.GALLBLADDER_ML,
    "right_adrenal_gland": A.ADRENAL_ML,
    "left_adrenal_gland": A.ADRENAL_ML,
    "stomach": A.STOMACH_ML,
}
SMALL = dict(num_cases=2, shape=(88, 72, 48), spacing=(3.2, 3.0, 5.5))  # quicker cases for the writer tests


@pytest.fixture(scope="module")
def phantoms() -> dict[int, Phantom]:
    return {seed: generate_phantom(seed) for seed in SEEDS}


def _mask(p: Phantom, organ: str) -> np.ndarray:
    return p.label == BTCV_LABELS[organ]


def _centroid(p: Phantom, organ: str) -> np.ndarray:
    """World (RAS+ mm) centroid of an organ."""
    idx = np.argwhere(_mask(p, organ)).mean(axis=0)
    return p.affine[:3, :3] @ idx + p.affine[:3, 3]


def _volume_ml(p: Phantom, organ: str) -> float:
    return float(_mask(p, organ).sum() * abs(np.linalg.det(p.affine[:3, :3])) / 1000.0)


def test_same_seed_same_phantom_and_different_seeds_differ():
    a, b, c = generate_phantom(5), generate_phantom(5), generate_phantom(6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.label, c.label)
    assert not np.array_equal(a.image, c.image)


def test_global_numpy_random_state_is_neither_used_nor_changed():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = generate_phantom(9)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.random.seed(456)
    np.testing.assert_array_equal(generate_phantom(9).image, first.image)


def test_dtypes_shapes_and_affine(phantoms):
    p = phantoms[0]
    assert p.image.dtype == np.int16 and p.label.dtype == np.uint8
    assert p.image.shape == p.label.shape == (112, 112, 56)
    assert p.affine.dtype == np.float64 and p.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(p.affine), (3.0, 3.0, 5.0, 1.0))
    centre = p.affine @ np.array([111 / 2, 111 / 2, 55 / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # volume centred on the world origin
    other = generate_phantom(0, shape=(96, 80, 50), spacing=(3.0, 2.5, 5.0))
    assert other.image.shape == other.label.shape == (96, 80, 50)
    np.testing.assert_allclose(np.diag(other.affine), (3.0, 2.5, 5.0, 1.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.image = None


def test_every_required_organ_present_and_only_btcv_ids(phantoms):
    for seed, p in phantoms.items():
        assert set(np.unique(p.label)) <= set(range(14))
        for organ in REQUIRED:
            assert _mask(p, organ).sum() >= 50, (seed, organ)


@pytest.mark.parametrize("organ", sorted(MEAN_HU))
def test_mean_hu_in_portal_venous_range(phantoms, organ):
    lo, hi = MEAN_HU[organ]
    for seed, p in phantoms.items():
        assert lo <= p.image[_mask(p, organ)].mean() <= hi, (seed, organ)


def test_tissue_texture_is_noisy_but_organ_specific(phantoms):
    p = phantoms[0]
    liver = p.image[_mask(p, "liver")].astype(float)
    assert 8.0 < liver.std() < 30.0  # white noise plus correlated texture, no other tissue mixed in
    core = ndimage.binary_erosion(_mask(p, "liver"), iterations=2)
    # 3x3x3 averaging leaves at most 15 / sqrt(27) = 2.9 HU of white noise; the correlated texture survives
    assert ndimage.uniform_filter(p.image.astype(np.float32), 3)[core].std() > 3.8


def test_kidney_cortex_brighter_than_medulla(phantoms):
    for p in phantoms.values():
        for organ in ("right_kidney", "left_kidney"):
            mask = _mask(p, organ)
            core = ndimage.binary_erosion(mask, iterations=2)
            rim = mask & ~ndimage.binary_erosion(mask)
            assert p.image[rim].mean() > p.image[core].mean() + 15.0


def test_stomach_wall_and_contents(phantoms):
    saw_gas = False
    for p in phantoms.values():
        mask = _mask(p, "stomach")
        wall = mask & ~ndimage.binary_erosion(mask)
        assert 60.0 <= np.median(p.image[wall]) <= 90.0
        content = p.image[ndimage.binary_erosion(mask, iterations=2)]
        assert np.mean((content > -30) & (content < 50)) > 0.3  # fluid
        saw_gas |= bool(np.any(content < -700))
    assert saw_gas


def test_body_fat_muscle_and_spine(phantoms):
    for p in phantoms.values():
        body = ndimage.binary_fill_holes(p.image > -500)
        background = p.image[body & (p.label == 0)]
        assert np.mean((background > -130) & (background < -70)) > 0.15  # subcutaneous and visceral fat
        assert np.mean((background > 20) & (background < 80)) > 0.05  # muscle wall, psoas, back muscles
        bone = np.argwhere(ndimage.binary_opening(p.image > 250) & (p.label == 0))
        assert len(bone) > 500
        x, y, _ = p.affine[:3, :3] @ bone.mean(axis=0) + p.affine[:3, 3]
        assert abs(x) < 10.0 and y < -20.0  # midline, posterior
        assert p.image.max() >= 500


def test_air_outside_body(phantoms):
    for p in phantoms.values():
        for corner in (p.image[:6, :6], p.image[-6:, :6], p.image[:6, -6:], p.image[-6:, -6:]):
            assert corner.max() < -900 and corner.mean() < -970
        assert not np.any(p.label[:6]) and not np.any(p.label[-6:])
        assert p.image[56, 56].mean() > -300  # the centre of the volume is inside the body


@pytest.mark.parametrize("organ", sorted(VOLUME_ML))
def test_organ_volumes(phantoms, organ):
    lo, hi = VOLUME_ML[organ]
    for seed, p in phantoms.items():
        assert lo <= _volume_ml(p, organ) <= hi, (seed, organ, _volume_ml(p, organ))


def test_volumes_vary_between_cases(phantoms):
    liver = [_volume_ml(p, "liver") for p in phantoms.values()]
    assert max(liver) - min(liver) > 30.0


def test_anatomical_sides_and_positions(phantoms):
    left_minus_right_z = []
    for seed, p in phantoms.items():
        c = {organ: _centroid(p, organ) for organ in (*REQUIRED, "aorta", "inferior_vena_cava")}
        # +x is the patient's right
        assert c["liver"][0] > 0 > c["spleen"][0], seed
        assert c["right_kidney"][0] > 0 > c["left_kidney"][0], seed
        assert c["liver"][0] > c["spleen"][0] and c["right_kidney"][0] > c["left_kidney"][0], seed
        assert c["gallbladder"][0] > 0 and c["stomach"][0] < 0, seed
        assert c["right_adrenal_gland"][0] > 0 > c["left_adrenal_gland"][0], seed
        assert c["inferior_vena_cava"][0] > c["aorta"][0], seed
        # +y is anterior: kidneys behind the pancreas, stomach in front of the kidneys
        for kidney in ("right_kidney", "left_kidney"):
            assert c[kidney][1] < c["pancreas"][1], seed
            assert c[kidney][1] < c["stomach"][1], seed
        # +z is superior: adrenals above their kidneys, liver above the kidneys
        assert c["right_adrenal_gland"][2] > c["right_kidney"][2], seed
        assert c["left_adrenal_gland"][2] > c["left_kidney"][2], seed
        assert c["liver"][2] > c["right_kidney"][2], seed
        assert c["spleen"][2] > c["left_kidney"][2], seed
        # pancreas head on the right near the duodenum, tail on the left towards the spleen
        pancreas = np.argwhere(_mask(p, "pancreas"))[:, 0] * p.affine[0, 0] + p.affine[0, 3]
        assert pancreas.max() > 15.0 and pancreas.min() < -50.0, seed
        left_minus_right_z.append(c["left_kidney"][2] - c["right_kidney"][2])
    assert np.mean(left_minus_right_z) > 5.0


def test_anatomy_depends_on_seed_not_on_grid():
    fine, coarse = generate_phantom(4), generate_phantom(4, shape=(72, 64, 40), spacing=(4.5, 4.5, 7.0))
    for organ in ("liver", "spleen", "right_kidney", "stomach"):
        assert _volume_ml(coarse, organ) == pytest.approx(_volume_ml(fine, organ), rel=0.1)
        np.testing.assert_allclose(_centroid(coarse, organ), _centroid(fine, organ), atol=4.0)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()}


def test_write_round_trip_and_manifest(tmp_path):
    entries = write_phantom_dataset(tmp_path / "ds", seed=3, **SMALL)
    root = (tmp_path / "ds").resolve()
    assert entries == [
        {
            "image": str(root / "imagesTr" / f"phantom_{i:04d}.nii.gz"),
            "label": str(root / "labelsTr" / f"phantom_{i:04d}.nii.gz"),
            "tissue": str(root / "tissuesTr" / f"phantom_{i:04d}.nii.gz"),
            "convention": "btcv",
        }
        for i in range(2)
    ]
    manifest = json.loads((root / "phantom.json").read_text())
    assert manifest["version"] == PHANTOM_VERSION
    assert (manifest["seed"], manifest["num_cases"]) == (3, 2)
    assert manifest["shape"] == list(SMALL["shape"]) and manifest["spacing"] == list(SMALL["spacing"])
    assert manifest["training"] == entries
    for i, entry in enumerate(entries):
        expected = generate_phantom(3 * CASE_SEED_STRIDE + i, SMALL["shape"], SMALL["spacing"])
        for key, dtype, array in (
            ("image", np.int16, expected.image),
            ("label", np.uint8, expected.label),
            ("tissue", np.uint8, expected.tissue),
        ):
            img = nib.load(entry[key])
            assert img.get_data_dtype() == dtype
            np.testing.assert_array_equal(np.asanyarray(img.dataobj), array)
            np.testing.assert_allclose(img.affine, expected.affine)
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
            assert img.header.get_xyzt_units()[0] == "mm"
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert sorted(_files(root)) == sorted(
        ["phantom.json"]
        + [f"{d}/phantom_{i:04d}.nii.gz" for d in ("imagesTr", "labelsTr", "tissuesTr") for i in range(2)]
    )


def test_write_is_idempotent_and_regenerates_on_change(tmp_path):
    out = tmp_path / "ds"
    first = write_phantom_dataset(out, seed=0, **SMALL)
    before = _files(out)
    assert write_phantom_dataset(out, seed=0, **SMALL) == first
    assert _files(out) == before  # nothing rewritten: same mtimes and inodes

    write_phantom_dataset(out, seed=1, **SMALL)
    after = _files(out)
    assert all(after[name] != before[name] for name in before)
    label = nib.load(out / "labelsTr" / "phantom_0001.nii.gz")
    np.testing.assert_array_equal(
        np.asanyarray(label.dataobj), generate_phantom(CASE_SEED_STRIDE + 1, SMALL["shape"], SMALL["spacing"]).label
    )

    fewer = write_phantom_dataset(out, seed=1, num_cases=1, shape=SMALL["shape"], spacing=SMALL["spacing"])
    assert len(fewer) == 1
    assert sorted(_files(out)) == [
        "imagesTr/phantom_0000.nii.gz",
        "labelsTr/phantom_0000.nii.gz",
        "phantom.json",
        "tissuesTr/phantom_0000.nii.gz",
    ]

    write_phantom_dataset(out, seed=1, num_cases=1, shape=SMALL["shape"], spacing=(3.2, 3.0, 6.0))
    assert nib.load(out / "imagesTr" / "phantom_0000.nii.gz").header.get_zooms() == pytest.approx((3.2, 3.0, 6.0))

    os.remove(out / "labelsTr" / "phantom_0000.nii.gz")
    write_phantom_dataset(out, seed=1, num_cases=1, shape=SMALL["shape"], spacing=(3.2, 3.0, 6.0))
    assert (out / "labelsTr" / "phantom_0000.nii.gz").is_file()


def test_interrupted_write_leaves_no_partial_files(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    write_phantom_dataset(out, seed=0, **SMALL)

    targets = []

    def broken_save(img, filename):
        targets.append(Path(filename))
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(phantom_module.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_phantom_dataset(out, seed=7, **SMALL)
    # written under a temporary name next to the final file (same file system, so the rename is atomic)
    assert targets[0].parent == (out / "imagesTr").resolve()
    assert targets[0].name.startswith(".") and targets[0].name.endswith(".nii.gz")
    assert not (out / "phantom.json").exists()  # the interrupted dataset is not mistaken for a complete one
    remaining = _files(out)
    assert all(not name.split("/")[-1].startswith(".") for name in remaining)  # no temporary files
    for name in remaining:  # the files still there are whole, previous ones
        assert np.asanyarray(nib.load(out / name).dataobj).shape == SMALL["shape"]
    monkeypatch.undo()
    write_phantom_dataset(out, seed=7, **SMALL)
    assert json.loads((out / "phantom.json").read_text())["seed"] == 7


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_cases": 0}, "num_cases"),
        ({"num_cases": -3}, "num_cases"),
        ({"num_cases": 2.5}, "num_cases"),
        ({"shape": (8, 112, 56)}, "shape"),
        ({"shape": (112, 112)}, "shape"),
        ({"spacing": (0.0, 3.0, 5.0)}, "spacing"),
        ({"spacing": (3.0, -1.0, 5.0)}, "spacing"),
        ({"spacing": (3.0, 3.0, float("nan"))}, "spacing"),
        ({"seed": -1}, "seed"),
        ({"shape": (64, 64, 32)}, "field of view"),
    ],
)
def test_argument_errors(tmp_path, kwargs, name):
    args = {"num_cases": 1, "seed": 0, "shape": (112, 112, 56), "spacing": (3.0, 3.0, 5.0), **kwargs}
    with pytest.raises(ValueError, match=name):
        write_phantom_dataset(tmp_path / "ds", **args)
    assert not (tmp_path / "ds").exists()
    if "num_cases" not in kwargs:
        with pytest.raises(ValueError, match=name):
            generate_phantom(args["seed"], args["shape"], args["spacing"])
