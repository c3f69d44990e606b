"""Organ probability maps hold each organ's probability, are saved as NIfTI beside the scan and drawn as a picture."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from scripts.label_conventions import organ_lookup_table
from scripts.organ_maps import organ_rank_map, probability_map, write_probability_map
from scripts.rendering import OVERLAY_ALPHA, OVERLAY_COLORMAP, render_probability_views

from text_pipeline.organs import ORGANS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROBABILITIES = [0.9, 0.1, 0.3, None, 0.5, float("nan"), 0.0]
AIR = -1000.0  # below the default HU window: black in the pictures


def every_organ_labels() -> np.ndarray:
    """A small label map in which every id 0..7 occurs."""
    labels = np.random.default_rng(0).integers(0, len(ORGANS) + 1, size=(10, 9, 8)).astype(np.uint8)
    labels.flat[: len(ORGANS) + 1] = np.arange(len(ORGANS) + 1)
    return labels


def only(organ: str, probability: float | None) -> list[float | None]:
    """Probabilities with ``organ`` at ``probability`` and every other organ absent."""
    return [probability if name == organ else None for name in ORGANS]


def read_png(path: Path) -> np.ndarray:
    """The RGB pixels of a PNG, as floats in [0, 1]."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(path)[..., :3]


def overlay_colour(probability: float) -> np.ndarray:
    """The RGB the picture shows for ``probability`` over black CT."""
    from matplotlib import colormaps

    return OVERLAY_ALPHA * np.asarray(colormaps[OVERLAY_COLORMAP](probability)[:3])


def pixels_of(image: np.ndarray, colour: np.ndarray, tolerance: float = 0.02) -> np.ndarray:
    """Mask of the pixels within ``tolerance`` of ``colour`` in every channel."""
    return (np.abs(image - colour) <= tolerance).all(axis=-1)


@pytest.mark.parametrize(
    "as_labels",
    [
        lambda labels: labels,
        lambda labels: labels.astype(np.int64),
        lambda labels: labels.astype(np.float32),
        lambda labels: torch.from_numpy(labels.astype(np.int64)),
    ],
    ids=["uint8", "int64", "float32 whole numbers", "torch"],
)
def test_probability_map_paints_each_organ_with_its_probability(as_labels):
    labels = every_organ_labels()
    prob_map = probability_map(as_labels(labels), PROBABILITIES)
    assert prob_map.dtype == np.float32 and prob_map.shape == labels.shape
    assert (prob_map[labels == 0] == 0).all()
    for index, probability in enumerate(PROBABILITIES):
        expected = 0.0 if probability is None or np.isnan(probability) else np.float32(probability)
        assert (prob_map[labels == index + 1] == expected).all(), ORGANS[index]


def test_organ_rank_map_carries_each_organs_rank_by_probability():
    labels = every_organ_labels()
    probabilities = [0.2, 0.9, None, 0.9, 0.05, 0.6, float("nan")]  # pancreas and gallbladder tie: ORGANS order
    ranks = organ_rank_map(labels, probabilities)
    assert ranks.dtype == np.uint8 and ranks.shape == labels.shape
    expected = {"pancreas": 1, "gallbladder": 2, "stomach": 3, "liver": 4, "spleen": 5, "kidney": 0, "adrenal_gland": 0}
    for organ, rank in expected.items():
        assert (ranks[labels == ORGANS.index(organ) + 1] == rank).all(), organ
    assert (ranks[labels == 0] == 0).all()
    with pytest.raises(ValueError, match="one entry per organ"):
        organ_rank_map(labels, probabilities[:-1])


@pytest.mark.parametrize(
    ("labels", "probabilities", "message"),
    [
        (np.zeros((2, 2, 2), np.uint8), PROBABILITIES[:-1], r"one entry per organ \(7: liver, .*got 6"),
        (np.zeros((2, 2, 2), np.uint8), [*PROBABILITIES, 0.5], r"one entry per organ .*got 8"),
        (np.zeros((2, 2, 2), np.uint8), [1.2, *PROBABILITIES[1:]], r"in \[0, 1\].*got 1\.2 for liver"),
        (np.zeros((2, 2, 2), np.uint8), [*PROBABILITIES[:-1], -0.1], r"in \[0, 1\].*got -0\.1 for adrenal_gland"),
        (np.full((2, 2, 2), 8, np.int16), PROBABILITIES, r"organ ids 0\.\.7 .*found values 8\.\.8"),
        (np.full((2, 2, 2), -1, np.int16), PROBABILITIES, r"organ ids 0\.\.7 .*found values -1\.\.-1"),
        (np.full((2, 2, 2), 1.5, np.float32), PROBABILITIES, r"whole numbers .*found 1\.5"),
        (np.full((2, 2, 2), np.nan, np.float32), PROBABILITIES, r"whole numbers .*found nan"),
        (np.ones((2, 2, 2), bool), PROBABILITIES, r"integer organ ids; got dtype bool"),
    ],
    ids=["6 probabilities", "8 probabilities", "above 1", "below 0", "id 8", "id -1", "1.5", "nan", "bool"],
)
def test_probability_map_names_what_is_wrong(labels, probabilities, message):
    with pytest.raises(ValueError, match=message):
        probability_map(labels, probabilities)


def test_written_map_reads_back_with_its_affine_shape_and_values(tmp_path):
    affine = np.array([[-0.8, 0, 0, 120.5], [0, -0.8, 0, 95.0], [0, 0, 2.5, -310.0], [0, 0, 0, 1]])
    prob_map = probability_map(every_organ_labels(), PROBABILITIES)
    path = write_probability_map(tmp_path / "map.nii.gz", prob_map, affine)
    image = nib.load(path)
    assert np.allclose(image.affine, affine)
    assert image.shape == prob_map.shape and image.get_data_dtype() == np.float32
    assert np.array_equal(image.get_fdata(dtype=np.float32), prob_map)
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    assert [entry.name for entry in tmp_path.iterdir()] == ["map.nii.gz"]


@pytest.mark.parametrize(
    ("prob_map", "affine", "name", "message"),
    [
        (np.zeros((3, 3, 3)), np.eye(3), "map.nii.gz", r"affine must be a 4x4 matrix; got shape \(3, 3\)"),
        (np.zeros((3, 3, 3)), np.full((4, 4), np.nan), "map.nii.gz", r"affine must be finite"),
        (np.zeros((3, 3)), np.eye(4), "map.nii.gz", r"the volume must be 3D; got shape \(3, 3\)"),
        (np.zeros((3, 3, 3)), np.eye(4), "map.png", r"must end with \.nii or \.nii\.gz"),
    ],
    ids=["3x3 affine", "nan affine", "2D map", "png name"],
)
def test_bad_map_or_affine_raises_and_writes_nothing(tmp_path, prob_map, affine, name, message):
    with pytest.raises(ValueError, match=message):
        write_probability_map(tmp_path / name, prob_map, affine)
    assert not list(tmp_path.iterdir())


def test_render_writes_a_png_of_1400_by_600_pixels(tmp_path):
    ct = np.random.default_rng(1).normal(40, 30, size=(10, 9, 8)).astype(np.float32)
    path = render_probability_views(tmp_path / "views.png", ct, every_organ_labels(), PROBABILITIES, "pain")
    assert read_png(path).shape == (600, 1400, 3)
    assert [entry.name for entry in tmp_path.iterdir()] == ["views.png"]


def test_overlay_colour_follows_the_probability(tmp_path):
    ct = np.full((40, 40, 40), AIR, np.float32)
    labels = np.zeros(ct.shape, np.uint8)
    labels[10:30, 10:30, 10:30] = ORGANS.index("liver") + 1
    low, high = 0.05, 0.95
    images = {
        probability: read_png(
            render_probability_views(tmp_path / f"{probability}.png", ct, labels, only("liver", probability), "pain")
        )
        for probability in (low, high)
    }
    for shown, other in ((low, high), (high, low)):
        own_colour = pixels_of(images[shown], overlay_colour(shown)).sum()
        other_colour = pixels_of(images[shown], overlay_colour(other)).sum()
        assert own_colour > 10_000, f"p={shown}: only {own_colour} pixels of its colour"
        assert other_colour < own_colour / 20, f"p={shown}: {other_colour} pixels of the colour of p={other}"


def test_organs_without_probability_are_not_coloured(tmp_path):
    ct = np.full((20, 20, 20), AIR, np.float32)
    labels = np.zeros(ct.shape, np.uint8)
    labels[5:15, 5:15, 5:15] = ORGANS.index("liver") + 1
    probabilities = only("spleen", 0.7)
    with_liver = render_probability_views(tmp_path / "liver.png", ct, labels, probabilities, "pain")
    without = render_probability_views(tmp_path / "none.png", ct, np.zeros_like(labels), probabilities, "pain")
    assert np.array_equal(read_png(with_liver), read_png(without))


def test_views_keep_proportions_and_put_right_anterior_superior_at_the_top_left(tmp_path):
    """Liver in the patient's right-anterior-superior corner, spleen in the left-posterior-inferior one (RAS axes)."""
    spacing = (1.0, 2.0, 3.0)
    ct = np.full((40, 30, 25), AIR, np.float32)
    labels = np.zeros(ct.shape, np.uint8)
    labels[30:, 20:, 17:] = ORGANS.index("liver") + 1
    labels[:10, :10, :8] = ORGANS.index("spleen") + 1
    probabilities = [0.95 if organ == "liver" else 0.05 if organ == "spleen" else None for organ in ORGANS]
    image = read_png(render_probability_views(tmp_path / "v.png", ct, labels, probabilities, "pain", spacing))

    not_white = (image < 0.9).any(axis=-1)
    regions, _ = ndimage.label(not_white)
    views = sorted(ndimage.find_objects(regions), key=lambda box: -np.prod([s.stop - s.start for s in box]))[:3]
    views.sort(key=lambda box: box[1].start)
    extents_mm = {"axial": (40 * 1.0, 30 * 2.0), "coronal": (40 * 1.0, 25 * 3.0), "sagittal": (30 * 2.0, 25 * 3.0)}
    for (name, (width_mm, height_mm)), box in zip(extents_mm.items(), views):
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        assert height / width == pytest.approx(height_mm / width_mm, rel=0.03), name
        liver = np.argwhere(pixels_of(image[box], overlay_colour(0.95))).mean(axis=0)
        spleen = np.argwhere(pixels_of(image[box], overlay_colour(0.05))).mean(axis=0)
        assert liver[0] < spleen[0] and liver[1] < spleen[1], f"{name}: liver at {liver}, spleen at {spleen}"


@pytest.mark.parametrize(
    ("ct_shape", "labels_shape"), [((10, 9, 8), (10, 9, 7)), ((10, 9), (10, 9))], ids=["mismatch", "2D"]
)
def test_render_rejects_volumes_of_other_shapes_and_writes_nothing(tmp_path, ct_shape, labels_shape):
    message = rf"ct {tuple(ct_shape)}, organ_labels {tuple(labels_shape)}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=message):
        render_probability_views(
            tmp_path / "v.png", np.zeros(ct_shape), np.zeros(labels_shape, np.uint8), PROBABILITIES, "pain"
        )
    assert not list(tmp_path.iterdir())


def test_patient_a_map_lies_on_the_scan_and_renders(shared_ct, tmp_path):
    ct_image = nib.as_closest_canonical(nib.load(shared_ct / "patient_a" / "ct.nii.gz"))
    seg_image = nib.as_closest_canonical(nib.load(shared_ct / "patient_a" / "seg_totalseg.nii.gz"))
    seg = np.asarray(seg_image.dataobj)
    organ_labels = organ_lookup_table("totalseg_total", max_label=int(seg.max()))[seg]
    probabilities = [0.91, 0.4, 0.2, 0.05, 0.1, 0.6, None]

    map_path = write_probability_map(
        tmp_path / "prob.nii.gz", probability_map(organ_labels, probabilities), ct_image.affine
    )
    png_path = render_probability_views(
        tmp_path / "views.png",
        np.asarray(ct_image.dataobj),
        organ_labels,
        probabilities,
        "Pain in the right upper quadrant after fatty meals",
        spacing=ct_image.header.get_zooms()[:3],
    )

    written = nib.load(map_path)
    assert written.shape == ct_image.shape and np.allclose(written.affine, ct_image.affine)
    liver = organ_labels == ORGANS.index("liver") + 1
    assert liver.any() and np.allclose(written.get_fdata()[liver], 0.91)
    assert read_png(png_path).shape == (600, 1400, 3)
