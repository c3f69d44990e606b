"""Step 2 of Med-SORA's inference rule (``scripts.reasoning``), the image side: each organ's image feature g_i.

Each organ's samples -> per-slice image features -> unit length -> mean over the D slices (and over the scans,
when several are matched against) -> unit length: g_i. One scan's g_i are computed once and cached
(:class:`OrganFeatureCache`), so every further symptom on the scan costs only the text side.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.inferers import Inferer
from torch.nn import functional as F

from scripts.data import organ_samples
from scripts.networks import MedSORANet
from text_pipeline.files import write_torch_atomically
from text_pipeline.organs import ORGANS

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # of OrganFeatureCache's files; 2: with the organs' voxel counts (too small organs)


@dataclass(frozen=True)
class OrganFeatures:
    """g_i of every organ, unit rows [O, d_img] (NaN for organs without samples), and how many samples each was
    averaged over.

    ``organ_voxels`` (one scan's features only; None otherwise) is ``SplitOrgansd``'s [2, O] voxel counts: row
    0 each organ's voxels in the label map as given, row 1 on the network's grid. It tells the two kinds of
    organ without features apart: absent (not in the label map) and too small (in it, but with fewer than
    ``min_voxels`` voxels on the network's grid).
    """

    features: torch.Tensor
    counts: torch.Tensor
    organ_voxels: torch.Tensor | None = None

    @property
    def present(self) -> torch.Tensor:
        return self.counts > 0

    def too_small_organs(self) -> dict[str, int]:
        """Organs in the label map but without features because too small: their voxels on the network's grid."""
        if self.organ_voxels is None:
            return {}
        given, here = self.organ_voxels.long().tolist()
        return {
            organ: int(here[index])
            for index, (organ, present) in enumerate(zip(ORGANS, self.present.tolist()))
            if not present and given[index] > 0
        }

    def absent_organs(self) -> list[str]:
        """Organs without features because the scans do not hold them (too small ones excluded)."""
        too_small = self.too_small_organs()
        present = self.present.tolist()
        return [organ for organ, here in zip(ORGANS, present) if not here and organ not in too_small]


class OrganFeatureAccumulator:
    """Step 2 of the inference rule, fed batch by batch: per organ, the sum of its samples' mean unit slice
    features; :meth:`result` scales each sum to unit length."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.counts = torch.zeros(len(ORGANS), dtype=torch.long)

    @torch.no_grad()
    def add(self, slice_features: torch.Tensor, organs: torch.Tensor) -> None:
        """Add samples: their per-slice features [B, D, d_img] and organ indices [B]."""
        per_sample = F.normalize(slice_features.detach().float(), dim=-1).mean(dim=1).cpu()
        organs = organs.reshape(-1).long().cpu()
        if self.sums is None:
            self.sums = torch.zeros(len(ORGANS), per_sample.shape[1])
        self.sums.index_add_(0, organs, per_sample)
        self.counts += torch.bincount(organs, minlength=len(ORGANS))

    def result(self) -> OrganFeatures:
        if self.sums is None:
            raise ValueError("no organ samples to compute image features from")
        features = F.normalize(self.sums, dim=-1)
        features[self.counts == 0] = float("nan")
        return OrganFeatures(features, self.counts.clone())


@torch.no_grad()
def organ_image_features(
    network: MedSORANet,
    samples: Sequence[dict],
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    inferer: Inferer | None = None,
) -> OrganFeatures:
    """Step 2 of the inference rule: g_i = the unit mean, over organ i's samples, of their mean unit slice feature.

    Args:
        network: the trained network (put in eval mode here).
        samples: preprocessed (scan, organ) samples, ``{"image": [C, H, W, D], "label": organ index}``.
        device: where the network runs.
        batch_size: samples per forward pass.
        inferer: runs the image network's per-slice features on a batch (the bundle's ``inferer``); None: called
            directly.
    """
    network.eval()
    slice_features = network.image.slice_features
    accumulator = OrganFeatureAccumulator()
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = torch.stack([torch.as_tensor(sample["image"]) for sample in batch]).to(device)
        features = slice_features(images) if inferer is None else inferer(images, slice_features)
        accumulator.add(features, torch.tensor([int(sample["label"]) for sample in batch]))
    return accumulator.result()


def _file_stamp(path: Path) -> list:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return [[str(file), file.stat().st_size, file.stat().st_mtime_ns] for file in files if file.is_file()]


def _read_cache_entry(file: Path) -> OrganFeatures | None:
    """A cache file's organ features, or None (with a warning naming the file) if it cannot be read or is not a
    cache entry: a file cut short by a full disk, say. The caller computes the features anew and rewrites it."""
    try:
        stored = torch.load(file, map_location="cpu", weights_only=True)
        features = OrganFeatures(stored["features"], stored["counts"], stored.get("organ_voxels"))
        if features.features.shape[0] != len(ORGANS) or features.counts.shape != (len(ORGANS),):
            raise ValueError(f"shapes {tuple(features.features.shape)} and {tuple(features.counts.shape)}")
    except Exception as error:  # any unreadable entry is recomputed, never trusted
        logger.warning("organ feature cache entry %s is unreadable (%s): computing the features anew", file, error)
        return None
    return features


class OrganFeatureCache:
    """Organ image features of each scan, computed once: in memory, and on disk if ``cache_dir`` is set.

    A scan's entry is keyed by its files (paths, sizes, modification times), its label convention, the
    weights file and ``settings`` (the preprocessing parameters), so a changed scan, model or
    preprocessing is computed anew.

    Args:
        network: the trained network.
        preprocessing: the per-scan preprocessing of the bundle (ending in per-organ samples).
        model_path: the weights file ``network`` was loaded from (part of the key).
        settings: anything else the features depend on (image size, HU window, spacing...).
        cache_dir: folder for ``<key>.pt`` files, or None for memory only.
        device: where the network runs.
        inferer: runs the network on a batch of samples (see :func:`organ_image_features`).
    """

    def __init__(
        self,
        network: MedSORANet,
        preprocessing: Callable,
        model_path: str | Path,
        settings: dict | None = None,
        cache_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        inferer: Inferer | None = None,
    ) -> None:
        self.network, self.preprocessing, self.device, self.inferer = network, preprocessing, device, inferer
        self.model_stamp = _file_stamp(Path(model_path))
        self.settings = settings or {}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, OrganFeatures] = {}

    def key(self, scan: dict) -> str:
        content = {
            "image": _file_stamp(Path(scan["image"]).resolve()),
            "label": _file_stamp(Path(scan["label"]).resolve()),
            "convention": scan["convention"],
            "model": self.model_stamp,
            "settings": self.settings,
            "format": CACHE_FORMAT,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def __call__(self, scan: dict, samples: Callable[[], Sequence[dict]] | None = None) -> OrganFeatures:
        """The organ features of ``scan`` (``{"image", "label", "convention"}``).

        Args:
            scan: the scan's files and label convention (the cache key).
            samples: on a cache miss, gives the scan's preprocessed organ samples (for a caller that has loaded
                the scan already); None: ``preprocessing`` reads them from the files.
        """
        key = self.key(scan)
        if key in self._memory:
            return self._memory[key]
        file = self.cache_dir / f"{key}.pt" if self.cache_dir is not None else None
        features = _read_cache_entry(file) if file is not None and file.is_file() else None
        if features is not None:
            logger.info("organ features of %s read from the cache %s", scan["image"], file)
        else:
            scan_samples = organ_samples([scan], self.preprocessing) if samples is None else samples()
            computed = organ_image_features(self.network, scan_samples, self.device, inferer=self.inferer)
            voxels = scan_samples[0].get("organ_voxels") if scan_samples else None
            voxels = None if voxels is None else torch.as_tensor(voxels).long().reshape(2, len(ORGANS)).clone()
            features = OrganFeatures(computed.features, computed.counts, voxels)
            unusable = [
                organ
                for organ, present, row in zip(ORGANS, features.present.tolist(), features.features)
                if present and not bool(torch.isfinite(row).all())
            ]
            if unusable:
                raise ValueError(
                    f"the image features of {', '.join(unusable)} in {scan['image']} are not finite numbers, so no "
                    "probability can be given for them; is the scan or the model broken?"
                )
            if file is not None:
                stored = {"features": features.features, "counts": features.counts}
                if voxels is not None:
                    stored["organ_voxels"] = voxels
                write_torch_atomically(file, stored)
        self._memory[key] = features
        return features
