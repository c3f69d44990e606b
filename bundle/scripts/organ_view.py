"""The network's view of one organ: a fixed physical field of view around it, and where it lies in the body.

Why not the paper's crop-and-resize: cropping each organ to its mask and resizing the crop to H x W throws
away the organ's physical size and its place in the body, the two things that tell a kidney from a spleen on
any scanner. Here every voxel of the network's input is the same size in millimetres (the scan is resampled
to ``pixdim`` first), the window is centred on the organ and spans a fixed ``field of view`` (a small adrenal
fills a few voxels, the liver fills the window), and two position channels give each organ voxel its
left-right and front-back distance from the centre of the body in the axial plane. Intensities are masked to
the organ as in the paper (method.md §3). The channels are::

    0: the CT windowed to [0, 1], masked to the organ
    1: (x - body centre x) / position_scale_mm inside the organ, 0 outside
    2: (y - body centre y) / position_scale_mm inside the organ, 0 outside

with x and y in mm along the first two array axes after ``Orientationd(axcodes="RAS")``: towards the
patient's right and towards anterior.

Craniocaudal position is not given: a partial field of view (a 20-slice series) leaves no reference for it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from scripts.transforms import source_name

__all__ = ["FindBodyCentred", "CropAroundOrgand", "voxel_spacing"]


def voxel_spacing(image: torch.Tensor) -> np.ndarray:
    """Voxel size in mm along each spatial axis of a MetaTensor (1 mm for a plain tensor)."""
    if isinstance(image, MetaTensor):
        return np.linalg.norm(image.affine.numpy()[:3, :3], axis=0)
    return np.ones(image.ndim - 1)


class FindBodyCentred(MapTransform):
    """Store the centre of the patient's body in the axial plane, in voxels of the image's grid.

    The body is the largest connected region above ``threshold_hu`` (the patient table and air are not part of
    it, nor the lungs and bowel gas, which the body surrounds); its centre is the mean of its voxels' array
    indices along the first two spatial axes (x, y), over all slices.

    Args:
        image_key: key of the CT in Hounsfield units, [1, X, Y, Z].
        body_key: key to store the centre under (a float tensor [2]: x, y voxel indices).
        threshold_hu: voxels above it are tissue (fat is about -100 HU, air -1000 HU).
    """

    def __init__(self, image_key: str = "image", body_key: str = "body_centre", threshold_hu: float = -500.0) -> None:
        super().__init__(keys=[image_key])
        self.image_key, self.body_key, self.threshold_hu = image_key, body_key, threshold_hu

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        tissue = torch.as_tensor(d[self.image_key])[0].numpy() > self.threshold_hu
        components, count = ndimage.label(tissue)
        if count == 0:
            raise ValueError(
                f"{source_name(d, self.image_key)}: no voxel above {self.threshold_hu:g} HU, so no body to find"
            )
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        x, y, _ = np.nonzero(components == sizes.argmax())
        d[self.body_key] = torch.tensor([x.mean(), y.mean()], dtype=torch.float32)
        return d


class CropAroundOrgand(MapTransform):
    """Crop a fixed-size window centred on the organ, and add the position channels of its voxels.

    The window is ``roi_size`` voxels centred on the centre of the mask's bounding box; where it reaches past
    the scan it is padded with 0. ``position_key`` receives [2, *roi_size]: for each voxel of the window, its
    distance from the body centre along x and y in units of ``position_scale_mm`` (not yet masked to the organ).

    Args:
        keys: keys to crop, [C, X, Y, Z] on the grid of ``mask_key`` (the CT, the mask, a tissue map).
        roi_size: the window in voxels; with the scan resampled to ``pixdim`` the field of view is
            ``roi_size * pixdim`` mm.
        mask_key: key of the organ's mask.
        body_key: key of the body centre of :class:`FindBodyCentred`.
        position_key: key to store the position channels under.
        position_scale_mm: millimetres per unit of the position channels.
        allow_missing_keys: don't raise if a key is absent (a tissue map exists only for synthetic scans).
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int],
        mask_key: str = "mask",
        body_key: str = "body_centre",
        position_key: str = "position",
        position_scale_mm: float = 100.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.roi_size = tuple(int(n) for n in roi_size)
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ValueError(f"roi_size must be three positive sizes, got {roi_size}")
        if position_scale_mm <= 0:
            raise ValueError(f"position_scale_mm must be positive, got {position_scale_mm}")
        self.mask_key, self.body_key, self.position_key = mask_key, body_key, position_key
        self.position_scale_mm = float(position_scale_mm)

    def window(self, mask: torch.Tensor) -> list[tuple[int, int]]:
        """Per spatial axis, the [start, stop) of the window in the scan's voxels (may reach past the scan)."""
        nonzero = torch.nonzero(torch.as_tensor(mask)[0])
        if nonzero.numel() == 0:
            raise ValueError("the organ's mask is empty")
        low, high = nonzero.min(0).values.tolist(), nonzero.max(0).values.tolist()
        starts = [(lo + hi + 1 - size) // 2 for lo, hi, size in zip(low, high, self.roi_size)]
        return [(start, start + size) for start, size in zip(starts, self.roi_size)]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        window = self.window(d[self.mask_key])
        spacing = voxel_spacing(d[self.mask_key])
        for key in self.key_iterator(d):
            d[key] = _crop_padded(d[key], window)
        centre = torch.as_tensor(d[self.body_key], dtype=torch.float32)
        mm_per_unit = self.position_scale_mm
        axes = [
            (torch.arange(start, stop, dtype=torch.float32) - centre[axis]) * float(spacing[axis]) / mm_per_unit
            for axis, (start, stop) in enumerate(window[:2])
        ]
        x, y = torch.meshgrid(*axes, indexing="ij")
        depth = self.roi_size[2]
        d[self.position_key] = torch.stack([x, y])[..., None].expand(2, *self.roi_size[:2], depth).contiguous()
        return d


def _crop_padded(volume: torch.Tensor, window: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``volume[:, window]`` where the window may reach past the volume; voxels outside it are 0. A MetaTensor
    keeps its metadata, with the affine moved to the window's first voxel."""
    out = torch.zeros((volume.shape[0], *(stop - start for start, stop in window)), dtype=volume.dtype)
    source, target = [slice(None)], [slice(None)]
    for (start, stop), size in zip(window, volume.shape[1:]):
        lo, hi = max(start, 0), min(stop, size)
        source.append(slice(lo, max(hi, lo)))
        target.append(slice(lo - start, max(hi, lo) - start))
    out[tuple(target)] = torch.as_tensor(volume)[tuple(source)]
    if not isinstance(volume, MetaTensor):
        return out
    affine = volume.affine.clone()
    affine[:3, 3] += affine[:3, :3] @ torch.tensor([start for start, _ in window], dtype=affine.dtype)
    return MetaTensor(out, affine=affine, meta={k: v for k, v in volume.meta.items() if k != "affine"})
