"""MONAI dictionary transforms that check a CT scan and its label map and split it into per-organ samples.

They sit between MONAI's own transforms and those of ``scripts.organ_view`` in the bundle's configs::

    LoadImaged -> EnsureChannelFirstd -> Orientationd -> ValidateScand -> RemapOrgansd -> Spacingd
    -> FindBodyCentred -> ScaleIntensityRanged -> SplitOrgansd -> CropAroundOrgand

``SplitOrgansd`` returns a list with one dictionary per organ present in the scan; MONAI's ``Compose``
applies every later transform to each of them, so each (scan, organ) pair becomes one sample.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from scripts.label_conventions import LARGEST_ID, organ_lookup_table
from scripts.scan_io import check_finite_voxels, check_scan_path
from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)


def source_name(data: Mapping[Hashable, object], key: Hashable) -> str:
    """The file or folder an item was loaded from, for error messages and logs."""
    value = data.get(key)
    if isinstance(value, MetaTensor):
        return str(value.meta.get("filename_or_obj", key))
    return str(value) if isinstance(value, (str, Path)) else str(key)


class ValidateScand(MapTransform):
    """Refuse a scan that real scanners and converters can produce but the model cannot read.

    In order, each refusal naming the file and what is wrong:

    - a DICOM folder (the item's ``filename_or_obj``) holding several series, of which the loader silently read
      one, or a series whose Modality is not CT (:func:`scripts.scan_io.check_dicom_folder`);
    - a label map not on its CT's voxel grid (shape or affine);
    - a CT or label map holding NaN or infinite voxels (how many);
    - a CT not in Hounsfield units: no air at about -1000 HU or no soft tissue, as an MR (arbitrary intensity
      units, no fixed value for air), an 8-bit picture or a CT stored without its HU rescaling.

    Apply after ``Orientationd`` so that two files storing the same grid with flipped axes (a DICOM series
    and a NIfTI label map, say) compare equal.

    Args:
        image_key: key of the CT.
        label_key: key of the label map.
        hu_below: a CT in Hounsfield units has air or gas voxels at or below this value.
        hu_above: and soft tissue or contrast at or above this value.
        atol_mm: tolerance in millimetres when comparing the two affines.
        check_dicom_series: check DICOM folders for several series and a non-CT modality.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        hu_below: float = -500.0,
        hu_above: float = 100.0,
        atol_mm: float = 1e-2,
        check_dicom_series: bool = True,
    ) -> None:
        super().__init__(keys=[image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.hu_below, self.hu_above, self.atol_mm = hu_below, hu_above, atol_mm
        self.check_dicom_series = check_dicom_series

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image, label = d[self.image_key], d[self.label_key]
        image_name, label_name = source_name(d, self.image_key), source_name(d, self.label_key)
        if self.check_dicom_series:
            check_scan_path(image_name, role="image", require_ct=True)
            check_scan_path(label_name, role="label", require_ct=False)
        if image.shape[1:] != label.shape[1:]:
            raise ValueError(
                f"label map {label_name} has shape {tuple(label.shape[1:])} but its CT {image_name} has "
                f"{tuple(image.shape[1:])}: the label map must be on the CT's voxel grid"
            )
        if isinstance(image, MetaTensor) and isinstance(label, MetaTensor):
            if not torch.allclose(image.affine.double(), label.affine.double(), atol=self.atol_mm):
                raise ValueError(
                    f"label map {label_name} is not aligned with its CT {image_name}: affines differ\n"
                    f"CT:\n{image.affine.numpy()}\nlabel map:\n{label.affine.numpy()}"
                )
        check_finite_voxels(image, image_name, what="CT")
        check_finite_voxels(label, label_name, what="label map")
        low, high = float(image.min()), float(image.max())
        if low > self.hu_below or high < self.hu_above:
            raise ValueError(
                f"{image_name} does not look like a CT in Hounsfield units: its values span [{low:g}, {high:g}], "
                f"expected air at or below {self.hu_below:g} HU and tissue at or above {self.hu_above:g} HU. "
                + self._diagnosis(low, high)
            )
        return d

    def _diagnosis(self, low: float, high: float) -> str:
        if low > self.hu_below:
            return (
                "It is most likely an MR (or another image that is not a CT) passed as a CT: a CT in Hounsfield "
                f"units has air, around the body and in the bowel, at about -1000 HU (its lowest value here is "
                f"{low:g}), while MR intensities are arbitrary scanner units with no fixed value for air. Check "
                "the scan's modality (DICOM tag Modality (0008,0060), or the scan the NIfTI was converted from); "
                "the model reads CT only. A CT stored without its HU rescaling (RescaleSlope and RescaleIntercept, "
                "typically 1 and -1024) looks the same: convert it to Hounsfield units first"
            )
        return (
            f"No voxel reaches soft tissue ({self.hu_above:g} HU): the CT may have been clipped, windowed or "
            "rescaled to another range; pass it in Hounsfield units"
        )


class RemapOrgansd(MapTransform):
    """Remap a label map of any known convention to this project's labels: 0 background, ``i + 1`` for ``ORGANS[i]``.

    Args:
        keys: keys of the label maps to remap.
        convention_key: key holding the item's convention name (a key of ``LABEL_CONVENTIONS``,
            ``scripts.label_conventions``).
        default_convention: convention used when an item has no ``convention_key``.
        voxels_prefix: each organ's voxel count in the label map as given (a long tensor [len(ORGANS)]) is stored
            under ``voxels_prefix + key``, for ``SplitOrgansd`` to tell an organ that resampling made too small
            from one the scan does not hold; None: not stored. (A prefix, not a postfix: MONAI's ``Spacingd``
            takes every key starting with ``label_`` for a metadata dictionary of ``label``.)
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        convention_key: str = "convention",
        default_convention: str | None = None,
        voxels_prefix: str | None = "organ_voxels_in_",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.convention_key, self.default_convention = convention_key, default_convention
        self.voxels_prefix = voxels_prefix

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        convention = d.get(self.convention_key, self.default_convention)
        for key in self.key_iterator(d):
            name = source_name(d, key)
            if convention is None:
                raise ValueError(f"label map {name} has no '{self.convention_key}' and no default convention is set")
            label = d[key]
            values = whole_label_values(torch.as_tensor(label), name)
            largest = LARGEST_ID.get(str(convention))
            if values.numel() and largest is not None and (values.min() < 0 or values.max() > largest):
                outside = torch.unique(values[(values < 0) | (values > largest)])
                shown = ", ".join(str(int(value)) for value in outside[:5]) + (", ..." if len(outside) > 5 else "")
                raise ValueError(
                    f"label map {name} holds ids {shown}, outside the {convention} convention's 0..{largest}: is "
                    "label_convention right, and is the file a label map?"
                )
            lut = torch.from_numpy(organ_lookup_table(str(convention), max_label=max(int(values.max()), 0)))
            remapped = lut[values]
            if not remapped.any():
                raise ValueError(f"label map {name} contains none of the organs {', '.join(ORGANS)} ({convention} ids)")
            d[key] = MetaTensor(remapped, meta=label.meta) if isinstance(label, MetaTensor) else remapped
            if self.voxels_prefix is not None:
                d[f"{self.voxels_prefix}{key}"] = organ_voxel_counts(remapped)
        return d


def whole_label_values(label: torch.Tensor, name: str, atol: float = 1e-3) -> torch.Tensor:
    """The label map's ids as integers, or an error naming the file if it holds values that are not whole numbers
    (a label map resampled with linear interpolation, say): rounding them would give organs other ids."""
    values = label.as_tensor() if isinstance(label, MetaTensor) else label
    if values.is_floating_point():
        off = (values - values.round()).abs() > atol
        if bool(off.any()):
            example = float(values[off].flatten()[0])
            raise ValueError(
                f"label map {name} holds values that are not whole numbers ({int(off.sum())} voxels, e.g. "
                f"{example:g}): a label map holds integer ids; was it resampled with linear interpolation? Resample "
                "it with nearest-neighbour interpolation"
            )
    return values.round().long()


def organ_voxel_counts(label: torch.Tensor) -> torch.Tensor:
    """Voxels of each organ (a long tensor [len(ORGANS)]) in a label map of this project's ids."""
    values = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
    values = values.reshape(-1).round().long().clamp(0, len(ORGANS) + 1)
    return torch.bincount(values, minlength=len(ORGANS) + 2)[1 : len(ORGANS) + 1].clone()


class SplitOrgansd(MapTransform):
    """Split one scan into one dictionary per organ present: the (scan, organ) samples of Med-SORA (method.md §3).

    Each output holds everything of the input, with ``mask_key`` set to the organ's binary mask, ``label_key``
    set to the organ's class index, ``scan_key`` to the CT's file name and ``voxels_key`` to the scan's organ
    voxel counts (see below). An organ gets a sample if it has at least ``min_voxels`` voxels on the grid the
    label map is on here (the network's, after ``Spacingd``). The others are skipped, in one of two ways:

    - not in the scan: the label map as given (before resampling) holds none of its voxels; logged as a note;
    - too small: the label map holds it, but it has fewer than ``min_voxels`` voxels after resampling (a small
      pancreas or adrenal on a coarse grid, or a series that only grazes an organ); logged as a warning with both
      counts, and reported by inference as too small (``organs_too_small``), not as absent.

    ``voxels_key`` holds a long tensor [2, len(ORGANS)]: row 0 each organ's voxels in the label map as given
    (``RemapOrgansd`` stores them under ``label_voxels_key``; without them, row 1 again), row 1 its voxels here.
    A fixed-size tensor rather than a dictionary, so batches of samples from different scans collate.

    Args:
        label_key: key of the remapped label map (0 background, ``i + 1`` for ``ORGANS[i]``).
        mask_key: key to store the organ's mask under.
        image_key: key of the CT, named in logs.
        scan_key: key to store the CT's file name under.
        min_voxels: organs with fewer voxels here are too small to be seen by the network (at least 1).
        label_voxels_key: key of the counts ``RemapOrgansd`` stored (popped); default ``"organ_voxels_in_"`` +
            ``label_key``.
        voxels_key: key to store the [2, len(ORGANS)] counts under in every sample; None: not stored.

    Raises:
        ValueError: no organ has ``min_voxels`` voxels (the message lists each organ's count).
    """

    def __init__(
        self,
        label_key: str = "label",
        mask_key: str = "mask",
        image_key: str = "image",
        scan_key: str = "scan",
        min_voxels: int = 1,
        label_voxels_key: str | None = None,
        voxels_key: str | None = "organ_voxels",
    ) -> None:
        super().__init__(keys=[label_key])
        if int(min_voxels) < 1:
            raise ValueError(f"min_voxels must be at least 1, got {min_voxels}")
        self.label_key, self.mask_key, self.image_key, self.scan_key = label_key, mask_key, image_key, scan_key
        self.min_voxels = int(min_voxels)
        self.label_voxels_key = label_voxels_key or f"organ_voxels_in_{label_key}"
        self.voxels_key = voxels_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        d = dict(data)
        label = d.pop(self.label_key)
        given = d.pop(self.label_voxels_key, None)
        scan = source_name(d, self.image_key)
        here = organ_voxel_counts(label)
        given = here.clone() if given is None else torch.as_tensor(given).long().reshape(-1).clone()
        if self.voxels_key is not None:
            d[self.voxels_key] = torch.stack([given, here])
        grid = _grid_description(label)
        samples, too_small = [], []
        for index, organ in enumerate(ORGANS):
            count, in_label_map = int(here[index]), int(given[index])
            if count >= self.min_voxels:
                mask = label == index + 1
                samples.append(
                    {**d, self.mask_key: mask.to(torch.uint8), self.label_key: torch.tensor(index), self.scan_key: scan}
                )
            elif in_label_map == 0 and count == 0:
                logger.info("%s: no %s in its label map, skipped", scan, organ)
            else:
                too_small.append(f"{organ} {count}")
                logger.warning(
                    "%s: %s too small to be seen, skipped and reported as too small: %d voxels in its label map, "
                    "%d on the network's grid%s, fewer than min_voxels %d",
                    scan, organ, in_label_map, count, grid, self.min_voxels,
                )  # fmt: skip
        if not samples:
            raise ValueError(
                f"{scan}: no organ has the {self.min_voxels} voxels needed on the network's grid{grid} "
                f"(voxels of the organs in its label map: {', '.join(too_small) or 'none'})"
            )
        return samples


def _grid_description(volume: torch.Tensor) -> str:
    if not isinstance(volume, MetaTensor):
        return ""
    spacing = np.linalg.norm(volume.affine.numpy()[:3, :3], axis=0)
    return " (" + " x ".join(f"{s:.3g}" for s in spacing) + " mm voxels)"
