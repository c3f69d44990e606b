"""Organ maps of a CT scan as volumes: each organ's voxels painted with its probability, or with its rank.

:func:`probability_map` paints each organ of a label map (this project's ids: 0 = background, ``i + 1`` =
``ORGANS[i]``) with the model's probability for that organ; :func:`organ_rank_map` with the organ's rank, for viewers
that show label maps; :func:`write_probability_map` and :func:`write_volume` save them as NIfTI volumes beside the
scan. The checks of probabilities and organ ids are shared with the pictures (``scripts.rendering``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from text_pipeline.files import write_atomically
from text_pipeline.organs import ORGANS

__all__ = ["probability_map", "organ_rank_map", "write_probability_map", "write_volume"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def probability_map(organ_labels: np.ndarray | torch.Tensor, probabilities: Sequence[float | None]) -> np.ndarray:
    """A volume in which each organ's voxels carry the probability of that organ.

    Args:
        organ_labels: integer organ ids of any shape, 0 = background and ``i + 1`` = ``ORGANS[i]`` (a float
            array holding whole numbers, as MONAI loads label maps, is accepted too).
        probabilities: one probability in [0, 1] per organ, in ``ORGANS`` order; None or NaN for an organ absent
            from the scan.

    Returns:
        float32 array of ``organ_labels``' shape: each organ's probability on its voxels, 0 on background and on
        the voxels of organs without a probability.

    Raises:
        ValueError: if there is not one probability per organ, a probability is outside [0, 1], or the labels are
            not integers in ``0..len(ORGANS)``.
    """
    table = voxel_values(checked_probabilities(probabilities), missing=0.0)
    return table[checked_organ_ids(organ_labels)]


def organ_rank_map(organ_labels: np.ndarray | torch.Tensor, probabilities: Sequence[float | None]) -> np.ndarray:
    """A label map in which each organ's voxels carry the organ's rank by probability (1: the most probable, ties
    in ``ORGANS`` order), for viewers that show label maps rather than values (3D Slicer's MONAI Label module).

    Args:
        organ_labels: integer organ ids, as for :func:`probability_map`.
        probabilities: one probability per organ, as for :func:`probability_map`.

    Returns:
        uint8 array of ``organ_labels``' shape: ranks 1..n on the n organs with a probability, 0 elsewhere.
    """
    probs = checked_probabilities(probabilities)
    scored = sorted((index for index in range(len(ORGANS)) if not np.isnan(probs[index])), key=lambda i: -probs[i])
    table = np.zeros(len(ORGANS) + 1, dtype=np.uint8)
    for rank, index in enumerate(scored, start=1):
        table[index + 1] = rank
    return table[checked_organ_ids(organ_labels)]


def write_probability_map(path: str | Path, prob_map: np.ndarray, affine: np.ndarray) -> Path:
    """Write a probability map as a float32 NIfTI volume, atomically.

    Both the qform and the sform hold ``affine`` with code 1 (scanner), so every reader places the map as the scan.

    Args:
        path: the ``.nii`` or ``.nii.gz`` file to create or replace.
        prob_map: a 3D map, e.g. from :func:`probability_map`.
        affine: the 4x4 voxel-to-world matrix of the scan the map belongs to.

    Returns:
        ``path``.

    Raises:
        ValueError: if ``prob_map`` is not 3D, ``affine`` is not a finite 4x4 affine matrix or ``path`` does not
            name a NIfTI file; nothing is written then.
    """
    return write_volume(path, np.asarray(as_numpy(prob_map), dtype=np.float32), affine)


def write_volume(path: str | Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D volume as NIfTI with its own dtype, atomically; the qform and the sform both hold ``affine``
    with code 1 (scanner).

    Raises:
        ValueError: if ``volume`` is not 3D, ``affine`` is not a finite 4x4 affine matrix or ``path`` does not
            name a NIfTI file; nothing is written then.
    """
    path = Path(path)
    data = np.asarray(volume)
    matrix = np.asarray(affine, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"the volume must be 3D; got shape {data.shape}")
    _check_affine(matrix)
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"path must end with .nii or .nii.gz to be written as NIfTI; got {path.name!r}")
    image = nib.Nifti1Image(data, matrix)
    image.set_qform(matrix, code=1)
    image.set_sform(matrix, code=1)
    return write_atomically(path, lambda tmp: nib.save(image, tmp))


def as_numpy(values: Any) -> np.ndarray:
    """``values`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def checked_probabilities(probabilities: Sequence[float | None]) -> np.ndarray:
    """The probabilities as a float64 array in ``ORGANS`` order, NaN for organs without one."""
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.tolist()
    values = list(probabilities)
    if len(values) != len(ORGANS):
        raise ValueError(
            f"probabilities must have one entry per organ ({len(ORGANS)}: {', '.join(ORGANS)}); got {len(values)}"
        )
    probs = np.array([np.nan if value is None else float(value) for value in values], dtype=np.float64)
    for organ, prob in zip(ORGANS, probs):
        if not np.isnan(prob) and not 0.0 <= prob <= 1.0:
            raise ValueError(
                f"probabilities must be in [0, 1] (None or NaN for an organ absent from the scan); "
                f"got {prob} for {organ}"
            )
    return probs


def checked_organ_ids(organ_labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """The labels as an integer array, after checking they are organ ids ``0..len(ORGANS)``."""
    labels = as_numpy(organ_labels)
    if labels.dtype.kind not in "iuf":
        raise ValueError(f"organ_labels must hold integer organ ids; got dtype {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.intp)
    if labels.dtype.kind == "f":
        whole = labels == np.floor(labels)
        if not whole.all():
            raise ValueError(f"organ_labels must be whole numbers (organ ids); found {labels[~whole].flat[0]}")
    low, high = labels.min(), labels.max()
    if low < 0 or high > len(ORGANS):
        raise ValueError(
            f"organ_labels must be organ ids 0..{len(ORGANS)} (0 = background, i + 1 = ORGANS[i]); "
            f"found values {low}..{high}"
        )
    return labels if labels.dtype.kind in "iu" else labels.astype(np.intp)


def voxel_values(probs: np.ndarray, missing: float) -> np.ndarray:
    """Lookup table from organ id to voxel value: the organ's probability, ``missing`` for background and NaN."""
    table = np.concatenate([[np.nan], probs])
    return np.where(np.isnan(table), missing, table).astype(np.float32)


def _check_affine(matrix: np.ndarray) -> None:
    """Raise ValueError unless ``matrix`` is a finite 4x4 affine matrix (last row 0 0 0 1)."""
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix; got shape {matrix.shape}")
    if not np.isfinite(matrix).all() or not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0)):
        raise ValueError(f"affine must be finite with last row 0 0 0 1; got\n{matrix}")
