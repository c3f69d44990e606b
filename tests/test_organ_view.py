"""The network's view of an organ keeps its physical size and its place in the body (bundle/scripts/organ_view.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bundle_parser
from monai.data import MetaTensor
from scripts.organ_view import CropAroundOrgand, FindBodyCentred

from text_pipeline.organs import ORGANS


def ball_scan(spacing_mm: float, radius_mm: float, centre_mm=(60.0, 0.0, 0.0), fov_mm: float = 360.0) -> dict:
    """A body (a 150 mm cylinder of 40 HU in air) holding a ball-shaped organ, on a grid of ``spacing_mm``."""
    n = int(round(fov_mm / spacing_mm))
    axis = (np.arange(n) - (n - 1) / 2.0) * spacing_mm
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    image = np.where(np.hypot(x, y) < 150.0, 40.0, -1000.0).astype(np.float32)
    ball = (x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2 <= radius_mm**2
    affine = torch.diag(torch.tensor([spacing_mm] * 3 + [1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([float(axis[0]), float(axis[0]), float(axis[0])])  # world 0 at the grid's centre
    return {
        "image": MetaTensor(torch.from_numpy(image)[None], affine=affine),
        "mask": MetaTensor(torch.from_numpy(ball.astype(np.uint8))[None], affine=affine),
    }


def parsed_view(config_id: str, **overrides):
    return bundle_parser(**overrides).get_parsed_content(config_id)


def extent_mm(mask: torch.Tensor, spacing: float) -> float:
    along_x = torch.nonzero(torch.as_tensor(mask)[0].any(dim=2).any(dim=1)).flatten()
    return float(along_x[-1] - along_x[0] + 1) * spacing


def test_an_organ_keeps_its_physical_size_whatever_the_scan_resolution():
    crop = CropAroundOrgand(keys=["image", "mask"], roi_size=(64, 64, 16))
    sizes = {}
    for spacing in (2.0, 4.0):
        for radius in (15.0, 30.0):
            scan = ball_scan(spacing, radius)
            view = crop(FindBodyCentred()(scan))
            assert view["mask"].shape == (1, 64, 64, 16)
            sizes[spacing, radius] = extent_mm(view["mask"], spacing)
    # the same ball spans the same millimetres on either grid; twice the radius spans twice as many
    assert sizes[2.0, 30.0] == pytest.approx(sizes[4.0, 30.0], abs=4.0)
    assert sizes[2.0, 30.0] == pytest.approx(2 * sizes[2.0, 15.0], abs=4.0)


def test_the_bundle_preprocessing_resamples_to_a_fixed_field_of_view(tmp_path):
    """The declared preprocessing: 64 x 64 voxels of 3.5 mm whatever the scan's own voxel size."""
    parser = bundle_parser()
    assert parser.get_parsed_content("pixdim") == pytest.approx([3.5, 3.5, 8.0])
    assert [f / n for f, n in zip(parser["organ_field_of_view_mm"], parser["image_size"])] == pytest.approx(
        parser.get_parsed_content("pixdim")
    )


def test_position_channels_say_where_the_organ_lies_in_the_body():
    view = CropAroundOrgand(keys=["image", "mask"], roi_size=(32, 32, 8), position_scale_mm=100.0)
    right = view(FindBodyCentred()(ball_scan(4.0, 20.0, centre_mm=(80.0, -40.0, 0.0))))
    left = view(FindBodyCentred()(ball_scan(4.0, 20.0, centre_mm=(-80.0, -40.0, 0.0))))
    inside = right["mask"][0].bool()
    # RAS: +x is the patient's right, +y anterior; the ball sits 80 mm right of and 40 mm behind the centre
    assert float(right["position"][0][inside].mean()) == pytest.approx(0.8, abs=0.03)
    assert float(right["position"][1][inside].mean()) == pytest.approx(-0.4, abs=0.03)
    assert float(left["position"][0][left["mask"][0].bool()].mean()) == pytest.approx(-0.8, abs=0.03)


def test_the_body_centre_ignores_the_patient_table():
    scan = ball_scan(4.0, 20.0)
    image = scan["image"].clone()
    image[0, :, :4, :] = 200.0  # a dense table along the back, apart from the body
    with_table = FindBodyCentred()({**scan, "image": image})["body_centre"]
    without = FindBodyCentred()(scan)["body_centre"]
    torch.testing.assert_close(with_table, without)


def test_a_window_reaching_past_the_scan_is_padded_and_keeps_its_affine():
    scan = ball_scan(4.0, 20.0, centre_mm=(160.0, 0.0, 0.0))  # at the scan's right edge
    view = CropAroundOrgand(keys=["image", "mask"], roi_size=(64, 64, 16))(FindBodyCentred()(scan))
    assert view["image"].shape == (1, 64, 64, 16) and view["mask"].sum() > 0
    # the affine moved with the window: the ball's voxels still map to its place in the world
    centre_voxel = torch.nonzero(view["mask"][0]).float().mean(0)
    world = view["mask"].affine[:3, :3].float() @ centre_voxel + view["mask"].affine[:3, 3].float()
    assert float(world[0]) == pytest.approx(160.0, abs=6.0)


def test_an_empty_body_is_refused_naming_the_scan():
    scan = ball_scan(8.0, 20.0)
    scan["image"] = MetaTensor(torch.full_like(scan["image"], -1000.0), meta={"filename_or_obj": "air.nii.gz"})
    with pytest.raises(ValueError, match="air.nii.gz: no voxel above -500 HU"):
        FindBodyCentred()(scan)


def test_real_ct_organ_views_put_the_liver_right_and_the_spleen_left(shared_ct):
    """On patient_a: every organ's view holds the organ, in the input layout, on the same side as in the body."""
    samples = parsed_view("preprocessing")(
        {
            "image": str(shared_ct / "patient_a" / "ct.nii.gz"),
            "label": str(shared_ct / "patient_a" / "seg_totalseg.nii.gz"),
            "convention": "totalseg_total",
        }
    )
    views = {ORGANS[int(sample["label"])]: sample["image"] for sample in samples}
    assert set(views) == set(ORGANS)
    for organ, image in views.items():
        assert image.shape == (3, 64, 64, 16), organ
        inside = image[1] != 0
        assert inside.any(), organ
        assert float(image[0][~inside].abs().max()) == 0.0  # the CT is masked to the organ

    def mean_x(organ: str) -> float:
        return float(views[organ][1][views[organ][1] != 0].mean())

    assert mean_x("liver") > 0.3 and mean_x("gallbladder") > 0.1  # patient's right
    assert mean_x("spleen") < -0.3 and mean_x("stomach") < 0.0  # patient's left
    # an adrenal is far smaller than the liver on the same grid: sizes are kept
    assert int((views["adrenal_gland"][1] != 0).sum()) * 50 < int((views["liver"][1] != 0).sum())
