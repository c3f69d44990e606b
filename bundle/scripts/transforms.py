"""MONAI dictionary transforms that turn a CT scan and its label map into per-organ slice stacks.

They sit between MONAI's own transforms in the bundle's configs::

    LoadImaged -> EnsureChannelFirstd -> Orientationd -> ValidateScand -> RemapOrgansd
    -> ScaleIntensityRanged -> Spacingd -> SplitOrgansd -> MaskIntensityd -> CropForegroundd
    -> SampleAxialSlicesd -> ResizeSlicesd

``SplitOrgansd`` returns a list with one dictionary per organ present in the scan; MONAI's ``Compose``
applies every later transform to each of them, so each (scan, organ) pair becomes one sample.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, SpatialPad
from monai.utils import InterpolateMode

from text_pipeline.organs import ORGANS, organ_lookup_table

logger = logging.getLogger(__name__)


def source_name(data: Mapping[Hashable, object], key: Hashable) -> str:
    """The file or folder an item was loaded from, for error messages and logs."""
    value = data.get(key)
    if isinstance(value, MetaTensor):
        return str(value.meta.get("filename_or_obj", key))
    return str(value) if isinstance(value, (str, Path)) else str(key)


class ValidateScand(MapTransform):
    """Refuse a scan whose label map is not aligned with its CT, or whose CT is not in Hounsfield units.

    Apply after ``Orientationd`` so that two files storing the same grid with flipped axes (a DICOM series
    and a NIfTI label map, say) compare equal.

    Args:
        image_key: key of the CT.
        label_key: key of the label map.
        hu_below: a CT in Hounsfield units has air or gas voxels at or below this value.
        hu_above: and soft tissue or contrast at or above this value.
        atol_mm: tolerance in millimetres when comparing the two affines.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        hu_below: float = -500.0,
        hu_above: float = 100.0,
        atol_mm: float = 1e-2,
    ) -> None:
        super().__init__(keys=[image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.hu_below, self.hu_above, self.atol_mm = hu_below, hu_above, atol_mm

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image, label = d[self.image_key], d[self.label_key]
        image_name, label_name = source_name(d, self.image_key), source_name(d, self.label_key)
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
        low, high = float(image.min()), float(image.max())
        if low > self.hu_below or high < self.hu_above:
            raise ValueError(
                f"{image_name} does not look like a CT in Hounsfield units: its values span [{low:g}, {high:g}], "
                f"expected air at or below {self.hu_below:g} HU and tissue at or above {self.hu_above:g} HU"
            )
        return d


class RemapOrgansd(MapTransform):
    """Remap a label map of any known convention to this project's labels: 0 background, ``i + 1`` for ``ORGANS[i]``.

    Args:
        keys: keys of the label maps to remap.
        convention_key: key holding the item's convention name (a key of ``text_pipeline.LABEL_CONVENTIONS``).
        default_convention: convention used when an item has no ``convention_key``.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        convention_key: str = "convention",
        default_convention: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.convention_key, self.default_convention = convention_key, default_convention

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        convention = d.get(self.convention_key, self.default_convention)
        for key in self.key_iterator(d):
            name = source_name(d, key)
            if convention is None:
                raise ValueError(f"label map {name} has no '{self.convention_key}' and no default convention is set")
            label = d[key]
            values = torch.as_tensor(label).round().long()
            if values.numel() and (values.min() < 0 or values.max() > 65535):
                raise ValueError(f"label map {name} holds values outside 0..65535; is it a label map?")
            lut = torch.from_numpy(organ_lookup_table(str(convention), max_label=max(int(values.max()), 0)))
            remapped = lut[values]
            if not remapped.any():
                raise ValueError(f"label map {name} contains none of the organs {', '.join(ORGANS)} ({convention} ids)")
            d[key] = MetaTensor(remapped, meta=label.meta) if isinstance(label, MetaTensor) else remapped
        return d


class SplitOrgansd(MapTransform):
    """Split one scan into one dictionary per organ present: the (scan, organ) samples of Med-SORA (method.md §3).

    Each output holds everything of the input, with ``mask_key`` set to the organ's binary mask, ``label_key``
    set to the organ's class index and ``scan_key`` to the CT's file name. Organs absent from the scan are
    skipped with a logged note.

    Args:
        label_key: key of the remapped label map (0 background, ``i + 1`` for ``ORGANS[i]``).
        mask_key: key to store the organ's mask under.
        image_key: key of the CT, named in logs.
        scan_key: key to store the CT's file name under.
        min_voxels: organs with fewer voxels are treated as absent.
    """

    def __init__(
        self,
        label_key: str = "label",
        mask_key: str = "mask",
        image_key: str = "image",
        scan_key: str = "scan",
        min_voxels: int = 1,
    ) -> None:
        super().__init__(keys=[label_key])
        self.label_key, self.mask_key, self.image_key, self.scan_key = label_key, mask_key, image_key, scan_key
        self.min_voxels = min_voxels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        d = dict(data)
        label = d.pop(self.label_key)
        scan = source_name(d, self.image_key)
        samples = []
        for index, organ in enumerate(ORGANS):
            mask = label == index + 1
            if int(mask.sum()) < self.min_voxels:
                logger.info("%s: no %s in its label map, skipped", scan, organ)
                continue
            samples.append(
                {**d, self.mask_key: mask.to(torch.uint8), self.label_key: torch.tensor(index), self.scan_key: scan}
            )
        return samples


class SampleAxialSlicesd(MapTransform):
    """Sample ``num_slices`` evenly spaced axial slices (last spatial axis) through a cropped organ.

    An organ spanning fewer slices than ``num_slices`` has some of them repeated.

    Args:
        keys: keys of the [C, H, W, Z] volumes to sample, cropped to the organ beforehand.
        num_slices: D, the number of slices per organ.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection, num_slices: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_slices < 1:
            raise ValueError(f"num_slices must be at least 1, got {num_slices}")
        self.num_slices = num_slices

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            depth = d[key].shape[-1]
            index = torch.from_numpy(np.linspace(0, depth - 1, self.num_slices).round().astype(np.int64))
            d[key] = torch.as_tensor(d[key]).index_select(-1, index)
        return d


class ResizeSlicesd(MapTransform):
    """Resize each axial slice to ``spatial_size`` (H, W), keeping its aspect ratio and padding the rest with 0.

    Args:
        keys: keys of the [C, H, W, D] slice stacks.
        spatial_size: (H, W) of every output slice.
        mode: interpolation mode per key, as in ``monai.transforms.Resize``.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: str | Sequence[str] = InterpolateMode.BILINEAR,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 2 or min(self.spatial_size) < 1:
            raise ValueError(f"spatial_size must be two positive sizes (H, W), got {spatial_size}")
        self.mode = (mode,) * len(self.keys) if isinstance(mode, str) else tuple(mode)
        self.pad = SpatialPad(self.spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            stack = torch.as_tensor(d[key])
            channels, height, width, depth = stack.shape
            scale = min(self.spatial_size[0] / height, self.spatial_size[1] / width)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            slices = stack.permute(0, 3, 1, 2).reshape(channels * depth, height, width).float()
            anti_aliasing = mode not in (InterpolateMode.NEAREST, InterpolateMode.NEAREST_EXACT) and scale < 1
            resized = Resize(size, mode=mode, anti_aliasing=anti_aliasing)(slices)
            padded = torch.as_tensor(self.pad(resized))
            d[key] = padded.reshape(channels, depth, *self.spatial_size).permute(0, 2, 3, 1).contiguous()
        return d
