"""Domain-randomised CT synthesis from label maps, after SynthSeg (Billot et al., Medical Image Analysis 2023).

A network trained on one scanner's look learns that look. SynthSeg trains on images drawn from label maps
with every appearance parameter random, so that only shape and layout stay constant and the network learns
them. Here the label maps are the synthetic phantoms' tissue maps (``scripts.phantom``: organs with their
inner structure, fat, muscle, bone, vessels, bowel), cropped around each organ by the bundle's preprocessing;
every training step draws a new image for each crop:

- each tissue's mean HU uniformly from a range wide enough to cover non-contrast, arterial and portal-venous
  phases (``HU_RANGES``), and a correlated texture of random strength inside it;
- Gaussian noise of random strength, a random in-plane blur (reconstruction kernel) and a craniocaudal blur
  for a random slice thickness (``slice_thickness_mm``);
- a smooth multiplicative bias field;

while :class:`RandDeformd` deforms the anatomy (random affine plus a smooth elastic field) and
:class:`RandAxialSlabd` cuts the organ to a random slab, as a short series (20 slices of 2 mm) does.
Samples without a tissue map (real scans in a datalist) are deformed and cut, but keep their image.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage
from torch.nn import functional as F

from scripts.organ_view import voxel_spacing
from scripts.phantom import TISSUE_NAMES

__all__ = ["HU_RANGES", "RandSynthesizeCTd", "RandDeformd", "RandAxialSlabd"]

# Mean HU of each tissue, drawn uniformly per sample. Typical values of body CT across phases (unenhanced,
# arterial, portal-venous) as body-CT textbooks give them (e.g. Webb, Brant and Major, Fundamentals of Body CT,
# 5th ed., 2019; Brant and Helms, Fundamentals of Diagnostic Radiology, 5th ed., 2018), each widened by
# 10-20 HU on both sides so that unusual scanners, kernels and contrast timings are inside the range. Hollow
# organs' fluid reaches positive oral contrast (up to 300 HU).
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1024.0, -950.0),
    "subcutaneous_fat": (-140.0, -60.0),
    "visceral_fat": (-140.0, -60.0),
    "muscle": (25.0, 95.0),
    "psoas": (25.0, 95.0),
    "lung": (-960.0, -650.0),
    "cancellous_bone": (100.0, 450.0),
    "cortical_bone": (400.0, 1300.0),
    "disc": (40.0, 120.0),
    "spinal_canal": (0.0, 50.0),
    "bowel_wall": (20.0, 140.0),
    "bowel_fluid": (-10.0, 300.0),
    "bowel_gas": (-1000.0, -650.0),
    "iliac_vessel": (30.0, 450.0),
    "aorta": (30.0, 450.0),  # unenhanced ~40, portal-venous ~150-200, arterial 250-450
    "inferior_vena_cava": (30.0, 220.0),
    "portal_splenic_vein": (30.0, 240.0),
    "esophagus": (20.0, 100.0),
    "liver": (35.0, 160.0),  # unenhanced 50-70, arterial 60-90, portal-venous 100-140
    "spleen": (30.0, 190.0),  # unenhanced 40-60, arterial heterogeneous up to ~170, portal-venous 100-140
    "right_kidney_cortex": (20.0, 270.0),  # unenhanced 25-45, corticomedullary 150-250, nephrographic 150-200
    "left_kidney_cortex": (20.0, 270.0),
    "right_kidney_medulla": (20.0, 230.0),  # unenhanced 25-40, corticomedullary 60-120, nephrographic 150-200
    "left_kidney_medulla": (20.0, 230.0),
    "pancreas": (25.0, 170.0),  # unenhanced 35-55, pancreatic phase 100-150, portal-venous 80-120
    "gallbladder": (-15.0, 45.0),  # bile 0-25, does not enhance
    "stomach_wall": (20.0, 140.0),
    "stomach_fluid": (-10.0, 300.0),
    "stomach_gas": (-1000.0, -650.0),
    "right_adrenal_gland": (-10.0, 110.0),  # unenhanced 10-40, enhanced 40-90
    "left_adrenal_gland": (-10.0, 110.0),
}


def _ranges_by_tissue_id(ranges: Mapping[str, Sequence[float]]) -> np.ndarray:
    missing = [name for name in TISSUE_NAMES if name not in ranges]
    if missing:
        raise ValueError(f"no HU range for the phantom tissues {', '.join(missing)}")
    return np.array([ranges[name] for name in TISSUE_NAMES], dtype=np.float32)


class RandSynthesizeCTd(RandomizableTransform, MapTransform):
    """Draw a new CT image from a sample's tissue map, every appearance parameter random (SynthSeg).

    The image replaces ``image_key``, windowed to [0, 1] by ``hu_window`` as the bundle's preprocessing windows
    real scans. Samples without ``tissue_key`` are returned unchanged.

    Args:
        tissue_key: key of the tissue map [1, X, Y, Z] (ids index ``scripts.phantom.TISSUE_NAMES``).
        image_key: key to write the image to.
        hu_window: (min, max) HU mapped to [0, 1], clipped.
        hu_ranges: per tissue name, the (low, high) of its mean HU.
        texture_hu: the correlated texture's standard deviation inside each tissue is drawn from [0, texture_hu].
        texture_mm: correlation length of that texture.
        noise_hu: the white noise's standard deviation is drawn from this range (HU).
        blur_voxels: the in-plane Gaussian blur's sigma is drawn from this range (voxels).
        slice_thickness_mm: the slice thickness is drawn from this range; it blurs along z with FWHM = thickness.
        bias_strength: the log bias field's coefficients are drawn from [-bias_strength, bias_strength].
    """

    def __init__(
        self,
        tissue_key: str = "tissue",
        image_key: str = "image",
        hu_window: Sequence[float] = (-175.0, 250.0),
        hu_ranges: Mapping[str, Sequence[float]] | None = None,
        texture_hu: float = 15.0,
        texture_mm: float = 6.0,
        noise_hu: Sequence[float] = (0.0, 40.0),
        blur_voxels: Sequence[float] = (0.0, 0.8),
        slice_thickness_mm: Sequence[float] = (0.5, 6.0),
        bias_strength: float = 0.05,
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, keys=[tissue_key], allow_missing_keys=True)
        self.tissue_key, self.image_key = tissue_key, image_key
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        if self.hu_window[1] <= self.hu_window[0]:
            raise ValueError(f"hu_window must be (min, max) with min < max, got {hu_window}")
        self.hu_ranges = _ranges_by_tissue_id(hu_ranges or HU_RANGES)
        self.texture_hu, self.texture_mm = float(texture_hu), float(texture_mm)
        self.noise_hu, self.blur_voxels = tuple(noise_hu), tuple(blur_voxels)
        self.slice_thickness_mm, self.bias_strength = tuple(slice_thickness_mm), float(bias_strength)

    def render(self, tissue: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """A random HU image [X, Y, Z] of the tissue map [X, Y, Z] with voxels of ``spacing`` mm."""
        low, high = self.hu_ranges[:, 0], self.hu_ranges[:, 1]
        mean_hu = self.R.uniform(low, high).astype(np.float32)
        texture_hu = self.R.uniform(0.0, self.texture_hu, len(mean_hu)).astype(np.float32)
        texture = ndimage.gaussian_filter(
            self.R.standard_normal(tissue.shape).astype(np.float32), [self.texture_mm / s for s in spacing]
        )
        texture /= max(float(texture.std()), 1e-6)
        image = mean_hu[tissue] + texture_hu[tissue] * texture
        image += self.R.standard_normal(tissue.shape).astype(np.float32) * self.R.uniform(*self.noise_hu)
        thickness = self.R.uniform(*self.slice_thickness_mm)
        in_plane = self.R.uniform(*self.blur_voxels)
        image = ndimage.gaussian_filter(image, (in_plane, in_plane, thickness / 2.355 / spacing[2]))
        return (image + 1000.0) * self.bias_field(tissue.shape) - 1000.0

    def bias_field(self, shape: Sequence[int]) -> np.ndarray:
        """exp of a random second-order polynomial of the normalised coordinates: a smooth gain near 1."""
        x, y, z = np.meshgrid(*(np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape), indexing="ij")
        coefficients = self.R.uniform(-self.bias_strength, self.bias_strength, 6)
        terms = (x, y, z, x * x, y * y, x * y)
        return np.exp(sum(c * t for c, t in zip(coefficients, terms))).astype(np.float32)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.tissue_key not in d:
            return d
        tissue = _plain(d[self.tissue_key])[0].numpy().astype(np.int64)
        hu = self.render(tissue, voxel_spacing(d[self.tissue_key]))
        low, high = self.hu_window
        windowed = np.clip((hu - low) / (high - low), 0.0, 1.0)
        d[self.image_key] = torch.from_numpy(windowed[None].astype(np.float32))
        return d


class RandDeformd(RandomizableTransform, MapTransform):
    """Random affine plus elastic deformation of a sample, in millimetres, as one resampling.

    The output voxel at p (mm from the window's centre) takes the input at ``S^-1 R^-T p + u(p)``: R rotates
    by up to ``rotate_deg`` about each axis, S scales each axis by a factor in ``1 +- scale``, and u is a smooth
    displacement field, trilinear between ``control_points`` random vectors of up to ``elastic_mm`` per axis.
    MONAI's ``Rand3DElasticd`` does the same with Gaussian-smoothed dense fields, at about 200 times the cost
    on a 64 x 64 x 16 window.

    Args:
        keys: keys of [C, X, Y, Z] volumes on one grid (MetaTensors give the voxel size; 1 mm otherwise).
        mode: per key, ``"bilinear"`` (intensities) or ``"nearest"`` (masks and label maps).
        prob: probability of deforming.
        rotate_deg: largest rotation about x, y and z (z: in the axial plane).
        scale: largest relative change of size along each axis.
        elastic_mm: largest displacement of a control point along each axis.
        control_points: the elastic field's control grid.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str | Sequence[str] = "bilinear",
        prob: float = 0.8,
        rotate_deg: Sequence[float] = (5.0, 5.0, 15.0),
        scale: float = 0.12,
        elastic_mm: float = 6.0,
        control_points: Sequence[int] = (5, 5, 3),
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.mode = (mode,) * len(self.keys) if isinstance(mode, str) else tuple(mode)
        self.rotate_deg, self.scale = np.asarray(rotate_deg, dtype=np.float64), float(scale)
        self.elastic_mm, self.control_points = float(elastic_mm), tuple(int(n) for n in control_points)

    def sampling_grid(self, shape: Sequence[int], spacing: Sequence[float]) -> torch.Tensor:
        """grid_sample's grid [1, X, Y, Z, 3] for a volume [*, X, Y, Z] read as [*, D, H, W]."""
        half = torch.tensor([(n - 1) / 2.0 * s for n, s in zip(shape, spacing)], dtype=torch.float32)
        points = _voxel_positions_mm(tuple(shape), tuple(float(s) for s in spacing))
        angles = np.deg2rad(self.R.uniform(-self.rotate_deg, self.rotate_deg))
        rotation = torch.eye(3, dtype=torch.float32)
        for axis, angle in enumerate(angles):
            i, j = [k for k in range(3) if k != axis]
            turn = torch.eye(3, dtype=torch.float32)
            turn[i, i] = turn[j, j] = float(np.cos(angle))
            turn[i, j], turn[j, i] = -float(np.sin(angle)), float(np.sin(angle))
            rotation = rotation @ turn
        stretch = torch.from_numpy(1.0 + self.R.uniform(-self.scale, self.scale, 3)).float()
        source = (points @ rotation) / stretch
        control = torch.from_numpy(self.R.uniform(-1.0, 1.0, (1, 3, *self.control_points))).float()
        field = F.interpolate(control * self.elastic_mm, size=tuple(shape), mode="trilinear", align_corners=True)
        source = source + field[0].permute(1, 2, 3, 0)
        return (source / half).flip(-1)[None]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        present = list(self.key_iterator(d, self.mode))
        if not self._do_transform or not present:
            return d
        first = d[present[0][0]]
        grid = self.sampling_grid(first.shape[1:], voxel_spacing(first))
        for key, mode in present:
            volume = _plain(d[key])
            moved = F.grid_sample(volume[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
            d[key] = _like(d[key], moved.to(volume.dtype))
        return d


@functools.lru_cache(maxsize=4)
def _voxel_positions_mm(shape: tuple[int, ...], spacing: tuple[float, ...]) -> torch.Tensor:
    """[X, Y, Z, 3]: each voxel's position in mm from the centre of the grid."""
    axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


class RandAxialSlabd(RandomizableTransform, MapTransform):
    """Cut the organ to a random axial slab, as a scan with a short craniocaudal field of view does.

    With probability ``prob``, only ``num_slices`` (drawn from ``slab_slices``) consecutive slices of the mask
    are kept, at a random height that still holds some of the organ; the kept part is then moved to the centre
    of the window along z, where the preprocessing centres a cut organ of a real scan.

    Args:
        keys: keys moved with the mask ([C, X, Y, Z]: the image, a tissue map).
        mask_key: key of the organ's mask.
        slab_slices: (min, max) slices kept.
        prob: probability of cutting.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        slab_slices: Sequence[int] = (3, 10),
        prob: float = 0.3,
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.mask_key = mask_key
        self.slab_slices = (int(slab_slices[0]), int(slab_slices[1]))
        if not 1 <= self.slab_slices[0] <= self.slab_slices[1]:
            raise ValueError(f"slab_slices must be (min, max) with 1 <= min <= max, got {slab_slices}")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        mask = _plain(d[self.mask_key])
        occupied = torch.nonzero(mask.flatten(0, -2).any(0)).flatten()
        if not self._do_transform or occupied.numel() == 0:
            return d
        depth, first, last = mask.shape[-1], int(occupied[0]), int(occupied[-1])
        num_slices = int(self.R.randint(self.slab_slices[0], self.slab_slices[1] + 1))
        start = int(self.R.randint(first - num_slices + 1, last + 1))
        keep = torch.zeros(depth, dtype=torch.bool)
        keep[max(start, 0) : start + num_slices] = True
        cut = mask * keep
        kept = torch.nonzero(cut.flatten(0, -2).any(0)).flatten()
        shift = (depth - 1 - int(kept[0]) - int(kept[-1])) // 2
        d[self.mask_key] = _like(d[self.mask_key], _shift_z(cut, shift))
        for key in self.key_iterator(d):
            if key != self.mask_key:
                d[key] = _like(d[key], _shift_z(_plain(d[key]), shift))
        return d


def _plain(volume: torch.Tensor) -> torch.Tensor:
    """The array of a MetaTensor without its metadata (whose bookkeeping costs more than these small ops)."""
    return volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)


def _like(original: torch.Tensor, array: torch.Tensor) -> torch.Tensor:
    """``array`` with the metadata of ``original`` (same grid), when that is a MetaTensor."""
    return MetaTensor(array, meta=original.meta) if isinstance(original, MetaTensor) else array


def _shift_z(volume: torch.Tensor, shift: int) -> torch.Tensor:
    """``volume`` moved by ``shift`` slices along its last axis, 0 where nothing moved in."""
    out = torch.zeros_like(volume)
    depth = volume.shape[-1]
    if shift >= 0:
        out[..., shift:] = volume[..., : depth - shift]
    else:
        out[..., :shift] = volume[..., -shift:]
    return out
