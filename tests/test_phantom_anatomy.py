"""Anatomy of the synthetic phantom (bundle/scripts/phantom.py, bundle/scripts/phantom_anatomy.py).

The phantoms are the anatomy source for domain-randomised training, so their organs must have adult
shapes, sizes and positions: these tests read them back from the label and tissue maps of a handful of
cases, against the published ranges written in ``scripts.phantom_anatomy`` (RAS+: +x is the patient's
right, +y anterior, +z superior).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull
from scripts import phantom_anatomy as A
from scripts.phantom import BTCV_LABELS, MIN_FIELD_OF_VIEW_MM, TISSUE_NAMES, Phantom, generate_phantom

SEEDS = (0, 1, 2, 3, 4, 5)
TID = {name: i for i, name in enumerate(TISSUE_NAMES)}
PUBLISHED_ML = {
    "liver": A.LIVER_ML,
    "spleen": A.SPLEEN_ML,
    "right_kidney": A.KIDNEY_ML,
    "left_kidney": A.KIDNEY_ML,
    "gallbladder": A.GALLBLADDER_ML,
    "pancreas": A.PANCREAS_ML,
    "stomach": A.STOMACH_ML,
    "right_adrenal_gland": A.ADRENAL_ML,
    "left_adrenal_gland": A.ADRENAL_ML,
}
# Adult values from the literature (the task's brief and the references in phantom_anatomy): the written
# ranges must stay inside these, so that nobody widens them to make a test pass.
LITERATURE_ML = {
    "liver": (1200.0, 2000.0),
    "spleen": (100.0, 300.0),
    "right_kidney": (110.0, 230.0),
    "left_kidney": (110.0, 230.0),
    "gallbladder": (30.0, 50.0),
    "pancreas": (55.0, 100.0),
    "stomach": (100.0, 600.0),
    "right_adrenal_gland": (2.5, 7.0),
    "left_adrenal_gland": (2.5, 7.0),
}


@pytest.fixture(scope="module")
def phantoms() -> dict[int, Phantom]:
    return {seed: generate_phantom(seed) for seed in SEEDS}


def _mask(p: Phantom, organ: str) -> np.ndarray:
    return p.label == BTCV_LABELS[organ]


def _world(p: Phantom, idx: np.ndarray) -> np.ndarray:
    """World (RAS+ mm) positions of voxel indices (N, 3)."""
    return idx @ p.affine[:3, :3].T + p.affine[:3, 3]


def _points(p: Phantom, organ: str) -> np.ndarray:
    return _world(p, np.argwhere(_mask(p, organ)))


def _centroid(p: Phantom, organ: str) -> np.ndarray:
    return _points(p, organ).mean(axis=0)


def _volume_ml(p: Phantom, mask: np.ndarray) -> float:
    return float(mask.sum() * abs(np.linalg.det(p.affine[:3, :3])) / 1000.0)


def _axes(p: Phantom) -> list[np.ndarray]:
    return [p.affine[i, 3] + p.affine[i, i] * np.arange(n) for i, n in enumerate(p.label.shape)]


def _concavity_offset(p: Phantom, organ: str) -> np.ndarray:
    """Offset (mm) from the organ's centroid to the centroid of what its convex hull holds beyond it: where
    a bean's hilum or a crescent's hollow faces."""
    mask = _mask(p, organ)
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    gap = grid[_in_hull(idx, grid) & ~mask[tuple(grid.T)]]
    assert len(gap) > 0.01 * len(idx), organ  # not convex
    return _world(p, gap).mean(axis=0) - _world(p, idx).mean(axis=0)


def _in_hull(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Whether each query point lies in the convex hull of ``points`` (any dimension)."""
    equations = ConvexHull(points).equations
    return np.all(queries @ equations[:, :-1].T + equations[:, -1] <= 1e-9, axis=1)


def _principal_extent(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Length (mm) along the first principal axis, the axis, and each point's coordinate along it."""
    centred = points - points.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    along = centred @ axis
    return float(along.max() - along.min()), axis, along


def test_written_ranges_are_adult_ranges():
    for organ, (lo, hi) in PUBLISHED_ML.items():
        ref_lo, ref_hi = LITERATURE_ML[organ]
        assert ref_lo <= lo < hi <= ref_hi, organ
    assert 10.0 <= A.RIGHT_KIDNEY_DROP[0] < A.RIGHT_KIDNEY_DROP[1] <= 20.0  # right kidney 1-2 cm lower


@pytest.mark.parametrize("organ", sorted(PUBLISHED_ML))
def test_organ_volume_within_published_range(phantoms, organ):
    lo, hi = PUBLISHED_ML[organ]
    volumes = [_volume_ml(p, _mask(p, organ)) for p in phantoms.values()]
    assert all(lo <= v <= hi for v in volumes), (organ, volumes)
    assert max(volumes) - min(volumes) > 0.05 * (hi - lo), (organ, volumes)  # sizes vary per case


def test_organs_inside_min_field_of_view(phantoms):
    half = np.asarray(MIN_FIELD_OF_VIEW_MM) / 2.0
    for seed, p in phantoms.items():
        world = _world(
            p,
            np.argwhere(
                (p.label > 0)
                & (p.label != BTCV_LABELS["aorta"])
                & (p.label != BTCV_LABELS["inferior_vena_cava"])
                & (p.label != BTCV_LABELS["esophagus"])
            ),
        )
        assert np.all(np.abs(world) <= half), (seed, world.min(axis=0), world.max(axis=0))


def test_liver_large_right_lobe_thin_left_lobe_across_midline(phantoms):
    for seed, p in phantoms.items():
        liver = _points(p, "liver")
        centre = liver.mean(axis=0)
        assert centre[0] > 20.0, seed  # mostly right of the midline
        left = liver[liver[:, 0] < -20.0]
        assert _volume_ml(p, np.ones(len(left), bool)) > 60.0, seed  # the left lobe crosses the midline
        assert liver[:, 0].min() < -50.0, seed
        assert left[:, 1].mean() > centre[1] + 15.0, seed  # in front, over the stomach
        # thin left lobe: its mean antero-posterior depth is well under the right lobe's
        mask, (x, _, _) = _mask(p, "liver"), _axes(p)
        depth = mask.sum(axis=1) * p.affine[1, 1]  # (x, z) columns
        left_depth = depth[(x > -60) & (x < -30)]
        right_depth = depth[(x > 40) & (x < 80)]
        assert left_depth[left_depth > 0].mean() < 0.6 * right_depth[right_depth > 0].mean(), seed
        # craniocaudal span: 14.0 +- 1.7 cm at the midclavicular line [Kratzer]; whole organ somewhat more
        assert 110.0 <= np.ptp(liver[:, 2]) <= 220.0, seed


def test_spleen_crescent_against_left_posterior_ribs(phantoms):
    for seed, p in phantoms.items():
        spleen = _centroid(p, "spleen")
        assert spleen[0] < -60.0 and spleen[1] < -10.0, seed  # left and posterior
        assert spleen[2] > _centroid(p, "left_kidney")[2], seed
        hollow = _concavity_offset(p, "spleen")
        assert hollow @ np.array([1.0, 0.5, 0.0]) / np.sqrt(1.25) > 4.0, seed  # concave side faces medially, forwards
        to_wall = ndimage.distance_transform_edt(p.tissue != TID["muscle"], sampling=np.diag(p.affine)[:3])
        assert to_wall[_mask(p, "spleen")].min() <= 10.0, seed  # against the body wall
        length, _, _ = _principal_extent(_points(p, "spleen"))
        assert 90.0 <= length <= 150.0, seed  # ~11-12 cm long


def test_kidneys_bean_shaped_right_lower_than_left(phantoms):
    for seed, p in phantoms.items():
        right, left = _centroid(p, "right_kidney"), _centroid(p, "left_kidney")
        assert right[0] > 30.0 and left[0] < -30.0, seed
        assert 5.0 <= left[2] - right[2] <= 30.0, seed  # the right kidney lies 1-2 cm lower
        for organ, medial in (("right_kidney", -1.0), ("left_kidney", 1.0)):
            hilum = _concavity_offset(p, organ)
            assert medial * hilum[0] > max(5.0, -hilum[1]), (seed, organ, hilum)  # faces (antero-)medially
            length, axis, _ = _principal_extent(_points(p, organ))
            assert 90.0 <= length <= 140.0, (seed, organ, length)  # 10-12 cm [Glodny]
            assert abs(axis[2]) > 0.8, (seed, organ)  # long axis roughly craniocaudal


def test_stomach_j_shape_with_gas_in_the_fundus(phantoms):
    for seed, p in phantoms.items():
        stomach = _mask(p, "stomach")
        points = _points(p, "stomach")
        z_lo, z_hi = points[:, 2].min(), points[:, 2].max()
        top = points[points[:, 2] > z_hi - 0.25 * (z_hi - z_lo)]
        assert top[:, 0].mean() < -20.0, seed  # fundus on the left, under the left hemidiaphragm
        # gas in the top quarter
        k = np.searchsorted(_axes(p)[2], z_hi - 0.25 * (z_hi - z_lo))
        assert (stomach[:, :, k:] & (p.tissue[:, :, k:] == TID["stomach_gas"])).sum() > 10, seed
        # J: the body runs down the left, the antrum crosses to the right of the lowest point and rises to
        # the pylorus right of the midline
        pylorus = points[points[:, 0] > points[:, 0].max() - 15.0]
        assert points[:, 0].max() > 0.0, seed
        assert pylorus[:, 2].mean() > z_lo + 15.0, seed
        lowest = points[points[:, 2] < z_lo + 10.0]
        assert lowest[:, 0].mean() < pylorus[:, 0].mean() - 20.0, seed


def test_pancreas_head_in_duodenal_curve_tail_at_splenic_hilum(phantoms):
    for seed, p in phantoms.items():
        pancreas = _points(p, "pancreas")
        head = pancreas[pancreas[:, 0] > pancreas[:, 0].max() - 20.0]
        tail = pancreas[pancreas[:, 0] < pancreas[:, 0].min() + 15.0]
        assert head[:, 0].mean() > 10.0 and tail[:, 0].mean() < -50.0, seed
        assert np.ptp(pancreas[:, 0]) >= 100.0, seed  # 12-15 cm along its curve [Simpson]
        assert tail[:, 2].mean() > head[:, 2].mean() + 10.0, seed  # tail rises to the splenic hilum
        gap = np.sqrt(((_points(p, "spleen")[:, None, :] - tail[None, :, :]) ** 2).sum(-1)).min()
        assert gap < 20.0, (seed, gap)
        # duodenum (bowel) just lateral to the head, at the head's level
        x, y, z = _axes(p)
        c = head.mean(axis=0)
        j, k = np.argmin(np.abs(y - c[1])), np.argmin(np.abs(z - c[2]))
        row = p.tissue[:, j, k]
        start = np.searchsorted(x, head[:, 0].max())
        lateral = row[start : np.searchsorted(x, head[:, 0].max() + 30.0)]
        bowel = {TID["bowel_wall"], TID["bowel_fluid"], TID["bowel_gas"]}
        assert any(t in bowel for t in lateral), seed


def test_pear_shaped_gallbladder_under_the_liver(phantoms):
    for seed, p in phantoms.items():
        gb, liver = _centroid(p, "gallbladder"), _centroid(p, "liver")
        assert gb[2] < liver[2] - 20.0 and gb[1] > liver[1], seed  # below and in front of the liver's centre
        assert gb[0] > 0.0, seed
        touching = ndimage.binary_dilation(_mask(p, "gallbladder")) & _mask(p, "liver")
        assert touching.sum() > 20, seed  # in its fossa on the liver's visceral surface
        length, axis, along = _principal_extent(_points(p, "gallbladder"))
        assert 60.0 <= length <= 110.0, seed  # 7-10 cm [Moore]
        along = along if axis[2] > 0 else -along  # from the fundus (low) to the neck (high)
        third = length / 3.0
        fundus, neck = (along < along.min() + third).sum(), (along > along.max() - third).sum()
        assert fundus > 1.5 * neck, (seed, fundus, neck)  # wide fundus, narrow neck


def test_small_v_or_y_shaped_adrenals_above_and_medial_to_the_kidneys(phantoms):
    cross = ndimage.generate_binary_structure(3, 1)
    for seed, p in phantoms.items():
        for side in ("right", "left"):
            adrenal, kidney = _centroid(p, f"{side}_adrenal_gland"), _centroid(p, f"{side}_kidney")
            assert adrenal[2] > kidney[2] + 20.0, (seed, side)  # above
            assert abs(adrenal[0]) < abs(kidney[0]) - 10.0, (seed, side)  # medial
            mask = _mask(p, f"{side}_adrenal_gland")
            assert ndimage.binary_erosion(mask, cross).sum() < 0.15 * mask.sum(), (seed, side)  # thin limbs
            # limbs diverge: the gland fills much less of its convex hull than a blob would (kidney ~0.95)
            idx = np.argwhere(mask)
            lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
            grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
            assert len(idx) < 0.8 * _in_hull(idx, grid).sum(), (seed, side)
            assert 15.0 <= np.ptp(_points(p, f"{side}_adrenal_gland")[:, 2]) <= 50.0, (seed, side)  # 2-4 cm high


def test_positions_vary_between_cases(phantoms):
    for organ in ("liver", "spleen", "right_kidney", "left_kidney", "gallbladder", "pancreas", "stomach"):
        centres = np.array([_centroid(p, organ) for p in phantoms.values()])
        assert centres.std(axis=0).max() > 2.0, organ


def test_label_tissue_and_image_agree(phantoms):
    lut = np.array([A.TISSUES[name].label for name in TISSUE_NAMES], np.uint8)
    for seed, p in phantoms.items():
        assert p.tissue.dtype == np.uint8 and p.tissue.shape == p.label.shape
        assert int(p.tissue.max()) < len(TISSUE_NAMES)
        np.testing.assert_array_equal(p.label, lut[p.tissue])
        for name, tissue in A.TISSUES.items():
            voxels = p.image[p.tissue == TID[name]]
            if tissue.label == 0 or len(voxels) < 30:
                continue
            assert abs(np.median(voxels) - tissue.hu) <= tissue.jitter + 12.0, (seed, name, np.median(voxels))


def test_generation_stays_fast():
    generate_phantom(11)
    times = []
    for seed in (12, 13, 14):
        start = time.process_time()
        generate_phantom(seed)
        times.append(time.process_time() - start)
    assert np.median(times) < 1.5, times  # ~0.3 s on the 2-core development machine
