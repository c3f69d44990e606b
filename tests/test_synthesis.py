"""Domain-randomised synthesis (bundle/scripts/synthesis.py): appearance really varies, anatomy stays aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bundle_parser
from monai.data import MetaTensor
from scripts.phantom import TISSUE_NAMES, generate_phantom
from scripts.synthesis import HU_RANGES, RandAxialSlabd, RandDeformd, RandSynthesizeCTd

LIVER = TISSUE_NAMES.index("liver")
HU_WINDOW = (-1024.0, 3071.0)  # wide enough that windowing loses nothing in these tests


@pytest.fixture(scope="module")
def tissue_crop() -> MetaTensor:
    """A phantom's tissue map around its liver, 3.5 x 3.5 x 8 mm voxels as in the bundle."""
    phantom = generate_phantom(11, shape=(96, 72, 40), spacing=(3.5, 3.5, 8.0))
    return MetaTensor(
        torch.from_numpy(phantom.tissue[16:80, 4:68, 12:28].copy())[None],
        affine=torch.diag(torch.tensor([3.5, 3.5, 8.0, 1.0], dtype=torch.float64)),
    )


def to_hu(windowed: torch.Tensor) -> np.ndarray:
    low, high = HU_WINDOW
    return windowed[0].numpy() * (high - low) + low


def test_every_phantom_tissue_has_an_intensity_range_covering_its_contrast_phases():
    assert set(TISSUE_NAMES) <= set(HU_RANGES)
    for name, (low, high) in HU_RANGES.items():
        assert low < high, name
    # unenhanced and portal-venous liver, unenhanced and arterial aorta, fat and gas are all inside
    assert HU_RANGES["liver"][0] <= 55 and HU_RANGES["liver"][1] >= 130
    assert HU_RANGES["aorta"][0] <= 40 and HU_RANGES["aorta"][1] >= 350
    assert HU_RANGES["visceral_fat"][0] <= -120 and HU_RANGES["stomach_gas"][0] <= -950


def test_each_draw_gives_the_organs_new_intensities(tissue_crop):
    synthesize = RandSynthesizeCTd(hu_window=HU_WINDOW)
    synthesize.set_random_state(0)
    liver = tissue_crop[0].numpy() == LIVER
    means = [float(to_hu(synthesize({"tissue": tissue_crop})["image"])[liver].mean()) for _ in range(40)]
    low, high = HU_RANGES["liver"]
    assert min(means) > low - 40 and max(means) < high + 40
    assert max(means) - min(means) > 0.6 * (high - low)  # the draws spread over the range, not one value
    assert len({round(m) for m in means}) > 30


def test_without_noise_blur_or_bias_the_image_is_the_tissue_map(tissue_crop):
    """Label and image aligned: each tissue's voxels, and only they, carry that tissue's intensity."""
    synthesize = RandSynthesizeCTd(
        hu_window=HU_WINDOW,
        texture_hu=0.0,
        noise_hu=(0.0, 0.0),
        blur_voxels=(0.0, 0.0),
        slice_thickness_mm=(0.0, 0.0),
        bias_strength=0.0,
    )
    image = to_hu(synthesize({"tissue": tissue_crop})["image"])
    tissue = tissue_crop[0].numpy()
    for tissue_id in np.unique(tissue):
        values = image[tissue == tissue_id]
        assert values.max() - values.min() < 1e-2, TISSUE_NAMES[tissue_id]
        low, high = HU_RANGES[TISSUE_NAMES[tissue_id]]
        assert low - 1e-2 <= values.mean() <= high + 1e-2


def test_noise_blur_and_bias_vary_the_appearance_inside_one_tissue(tissue_crop):
    synthesize = RandSynthesizeCTd(hu_window=HU_WINDOW, texture_hu=0.0, noise_hu=(30.0, 30.0))
    synthesize.set_random_state(1)
    image = to_hu(synthesize({"tissue": tissue_crop})["image"])
    liver = tissue_crop[0].numpy() == LIVER
    assert 5.0 < image[liver].std() < 40.0


def test_a_sample_without_a_tissue_map_keeps_its_image():
    image = torch.rand(1, 8, 8, 4)
    assert RandSynthesizeCTd()({"image": image})["image"] is image


def test_the_bundle_draws_a_new_image_every_training_step(tissue_crop):
    augmentation = bundle_parser().get_parsed_content("train#augmentation")
    mask = (tissue_crop == LIVER).to(torch.uint8)
    sample = {
        "image": torch.zeros(1, 64, 64, 16),
        "mask": mask,
        "tissue": tissue_crop,
        "position": torch.ones(2, 64, 64, 16),
        "label": torch.tensor(0),
    }
    first, second = augmentation(dict(sample)), augmentation(dict(sample))
    assert first["image"].shape == (3, 64, 64, 16)
    assert not torch.equal(first["image"][0], second["image"][0])


def test_deformation_with_no_change_is_the_identity_and_keeps_label_values(tissue_crop):
    keep = RandDeformd(["tissue"], mode="nearest", prob=1.0, rotate_deg=(0, 0, 0), scale=0.0, elastic_mm=0.0)
    torch.testing.assert_close(keep({"tissue": tissue_crop})["tissue"], tissue_crop)
    deform = RandDeformd(["tissue"], mode="nearest", prob=1.0)
    deform.set_random_state(3)
    moved = deform({"tissue": tissue_crop})["tissue"]
    assert moved.dtype == tissue_crop.dtype and not torch.equal(moved, tissue_crop)
    assert set(moved.unique().tolist()) <= set(tissue_crop.unique().tolist())  # no new, interpolated ids
    # a 12 % scale and 6 mm of elastic displacement change the liver's volume by less than half
    ratio = float((moved == LIVER).sum()) / float((tissue_crop == LIVER).sum())
    assert 0.5 < ratio < 1.6


def test_a_slab_cuts_the_organ_and_centres_what_is_left():
    mask = torch.zeros(1, 8, 8, 16, dtype=torch.uint8)
    mask[0, 2:6, 2:6, 1:15] = 1
    image = mask.float() * 0.5
    slab = RandAxialSlabd(["image"], prob=1.0, slab_slices=(3, 5))
    for seed in range(20):
        slab.set_random_state(seed)
        cut = slab({"mask": mask, "image": image})
        kept = torch.nonzero(cut["mask"][0].any(0).any(0)).flatten()
        assert 1 <= len(kept) <= 5 and int(kept[-1] - kept[0]) + 1 == len(kept)
        assert abs((int(kept[0]) + int(kept[-1])) / 2 - 7.5) <= 1.0  # centred along z
        # the image moved with the mask: the organ's intensity lies under every kept mask voxel
        torch.testing.assert_close(cut["image"] * cut["mask"], cut["mask"].float() * 0.5)
