"""Organ probability maps of a CT scan, as NIfTI volumes and as a picture for a reader.

:func:`probability_map` paints each organ of a label map (this project's ids: 0 = background, ``i + 1`` =
``ORGANS[i]``) with the model's probability for that organ; :func:`write_probability_map` saves such a map as a
NIfTI volume beside the scan. :func:`render_probability_views` draws the picture in the spirit of the Med-SORA
paper's Fig. 7: maximum-intensity projections of the CT in three orthogonal views with the organs coloured by
probability, the query as title and the most likely organs listed beside the views.

Volumes are in RAS+ orientation (as MONAI's ``Orientation(axcodes="RAS")`` and ``nibabel.as_closest_canonical``
give them): axis 0 increases towards the patient's right, axis 1 towards anterior, axis 2 towards superior.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch

from text_pipeline.files import write_atomically
from text_pipeline.organs import ORGANS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["probability_map", "write_probability_map", "render_probability_views"]

OVERLAY_COLORMAP = "plasma"
OVERLAY_ALPHA = 0.75
FIGURE_SIZE = (14.0, 6.0)
FIGURE_DPI = 100

_TITLE_CHARS = 120
_TITLE_LINES = 3
_TITLE_LINE_HEIGHT = 0.04
_NO_ORGAN = -1.0
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_CONVENTION_NOTE = (
    "Radiological convention: patient's right on the image left (axial, coronal), anterior at the top (axial) "
    "and on the left (sagittal), superior at the top (coronal, sagittal)."
)


@dataclass(frozen=True)
class _ViewSpec:
    """One orthogonal view: the RAS axis its rays run along and the patient directions at its edges."""

    name: str
    ray_axis: int
    edges: tuple[str, str, str, str]  # left, right, top, bottom


_VIEWS = (
    _ViewSpec("axial", ray_axis=2, edges=("R", "L", "A", "P")),
    _ViewSpec("coronal", ray_axis=1, edges=("R", "L", "S", "I")),
    _ViewSpec("sagittal", ray_axis=0, edges=("A", "P", "S", "I")),
)


@dataclass(frozen=True)
class _View:
    """A view ready to draw: the CT projection, the probability projection (masked off organs) and its aspect."""

    spec: _ViewSpec
    ct: np.ndarray
    overlay: np.ma.MaskedArray
    aspect: float
    width_mm: float


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
    table = _voxel_values(_checked_probabilities(probabilities), missing=0.0)
    return table[_checked_organ_ids(organ_labels)]


def organ_rank_map(organ_labels: np.ndarray | torch.Tensor, probabilities: Sequence[float | None]) -> np.ndarray:
    """A label map in which each organ's voxels carry the organ's rank by probability (1: the most probable, ties
    in ``ORGANS`` order), for viewers that show label maps rather than values (3D Slicer's MONAI Label module).

    Args:
        organ_labels: integer organ ids, as for :func:`probability_map`.
        probabilities: one probability per organ, as for :func:`probability_map`.

    Returns:
        uint8 array of ``organ_labels``' shape: ranks 1..n on the n organs with a probability, 0 elsewhere.
    """
    probs = _checked_probabilities(probabilities)
    scored = sorted((index for index in range(len(ORGANS)) if not np.isnan(probs[index])), key=lambda i: -probs[i])
    table = np.zeros(len(ORGANS) + 1, dtype=np.uint8)
    for rank, index in enumerate(scored, start=1):
        table[index + 1] = rank
    return table[_checked_organ_ids(organ_labels)]


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
    return write_volume(path, np.asarray(_as_numpy(prob_map), dtype=np.float32), affine)


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


def render_probability_views(
    path: str | Path,
    ct: np.ndarray | torch.Tensor,
    organ_labels: np.ndarray | torch.Tensor,
    probabilities: Sequence[float | None],
    query: str,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    top_k: int = 3,
    hu_window: Sequence[float] = (-175.0, 250.0),
) -> Path:
    """Draw axial, coronal and sagittal maximum-intensity views of a CT with its organs coloured by probability.

    Each view shows the CT's maximum intensity along its rays in grey (windowed to ``hu_window``) and, where a
    ray meets an organ that has a probability, the highest such probability on the ray, in one colour map from
    0 to 1 shared by all views. The query is the title; the ``top_k`` most likely organs and the organs absent
    from the scan are listed beside the views.

    Args:
        path: the ``.png`` file to create or replace (written atomically).
        ct: 3D CT volume in Hounsfield units, RAS+ orientation.
        organ_labels: organ ids of ``ct``'s shape, as for :func:`probability_map`.
        probabilities: as for :func:`probability_map`.
        query: the symptom text the probabilities answer.
        spacing: voxel size in mm along each axis, which keeps the anatomy's proportions in every view.
        top_k: how many of the most likely organs to list.
        hu_window: the Hounsfield units shown from black to white.

    Returns:
        ``path``.

    Raises:
        ValueError: if ``ct`` is not 3D or ``organ_labels`` has another shape, for bad probabilities or labels
            (see :func:`probability_map`), a spacing that is not 3 positive sizes, an empty ``hu_window``,
            ``top_k`` below 1 or a ``path`` not ending with ``.png``.
    """
    path = Path(path)
    volume = _as_numpy(ct)
    labels = _as_numpy(organ_labels)
    _check_volumes(volume, labels)
    organ_ids = _checked_organ_ids(labels)
    probs = _checked_probabilities(probabilities)
    voxel_size = _checked_spacing(spacing)
    window = _checked_window(hu_window)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1; got {top_k}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end with .png; got {path.name!r}")

    ray_values = _voxel_values(probs, missing=_NO_ORGAN)[organ_ids]
    views = [_project(volume, ray_values, spec, voxel_size) for spec in _VIEWS]
    figure = _draw(views, _title(query), _organ_lines(probs, top_k), window)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=FIGURE_DPI))


def _as_numpy(values: Any) -> np.ndarray:
    """``values`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _checked_probabilities(probabilities: Sequence[float | None]) -> np.ndarray:
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


def _checked_organ_ids(organ_labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """The labels as an integer array, after checking they are organ ids ``0..len(ORGANS)``."""
    labels = _as_numpy(organ_labels)
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


def _voxel_values(probs: np.ndarray, missing: float) -> np.ndarray:
    """Lookup table from organ id to voxel value: the organ's probability, ``missing`` for background and NaN."""
    table = np.concatenate([[np.nan], probs])
    return np.where(np.isnan(table), missing, table).astype(np.float32)


def _check_affine(matrix: np.ndarray) -> None:
    """Raise ValueError unless ``matrix`` is a finite 4x4 affine matrix (last row 0 0 0 1)."""
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix; got shape {matrix.shape}")
    if not np.isfinite(matrix).all() or not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0)):
        raise ValueError(f"affine must be finite with last row 0 0 0 1; got\n{matrix}")


def _check_volumes(ct: np.ndarray, organ_labels: np.ndarray) -> None:
    """Raise ValueError unless the CT is 3D and the labels have its shape."""
    if ct.ndim != 3 or ct.shape != organ_labels.shape:
        raise ValueError(
            f"ct and organ_labels must be 3D volumes of the same shape; got ct {ct.shape}, "
            f"organ_labels {organ_labels.shape}"
        )


def _checked_spacing(spacing: Sequence[float]) -> np.ndarray:
    """The voxel size as 3 positive finite floats."""
    sizes = np.asarray(spacing, dtype=np.float64)
    if sizes.shape != (3,) or not np.isfinite(sizes).all() or (sizes <= 0).any():
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm; got {spacing}")
    return sizes


def _checked_window(hu_window: Sequence[float]) -> tuple[float, float]:
    """The HU window as (low, high) with low < high."""
    low, high = (float(value) for value in hu_window)
    if not low < high:
        raise ValueError(f"hu_window must be (low, high) with low < high; got {tuple(hu_window)}")
    return low, high


def _project(volume: np.ndarray, ray_values: np.ndarray, spec: _ViewSpec, spacing: np.ndarray) -> _View:
    """Maximum-intensity projections along ``spec.ray_axis``, turned so the view's edges face ``spec.edges``.

    Both in-plane RAS axes increase towards the image's top-left (right/anterior/superior), so the projection's
    transpose, flipped in both directions, puts the higher axis on the rows and the lower one on the columns.
    """
    column_axis, row_axis = (axis for axis in range(3) if axis != spec.ray_axis)
    overlay = _screen(ray_values.max(axis=spec.ray_axis))
    return _View(
        spec=spec,
        ct=_screen(volume.max(axis=spec.ray_axis)),
        overlay=np.ma.masked_less(overlay, 0.0),
        aspect=float(spacing[row_axis] / spacing[column_axis]),
        width_mm=float(volume.shape[column_axis] * spacing[column_axis]),
    )


def _screen(projection: np.ndarray) -> np.ndarray:
    """A projection indexed (lower axis, higher axis) as an image with both axes decreasing along rows, columns."""
    return projection.T[::-1, ::-1]


def _title(query: str) -> str:
    """The query wrapped to the figure's width, cut with "..." after a few lines."""
    lines = textwrap.wrap(" ".join(query.split()), width=_TITLE_CHARS, max_lines=_TITLE_LINES, placeholder="...")
    return "\n".join(lines)


def _organ_lines(probs: np.ndarray, top_k: int) -> list[str]:
    """The text beside the views: the ``top_k`` most likely organs, then the organs absent from the scan."""
    present = [(organ, prob) for organ, prob in zip(ORGANS, probs) if not np.isnan(prob)]
    ranked = sorted(present, key=lambda item: item[1], reverse=True)[:top_k]
    lines = ["most likely organs"]
    lines += [f"{rank}. {organ} {prob:.2f}" for rank, (organ, prob) in enumerate(ranked, start=1)] or ["(none)"]
    absent = [organ for organ, prob in zip(ORGANS, probs) if np.isnan(prob)]
    if absent:
        lines += ["", *(f"{organ}: not in this scan" for organ in absent)]
    return lines


def _draw(views: list[_View], title: str, organ_lines: list[str], window: tuple[float, float]) -> Figure:
    """The figure: title, the three views, and beside them the organ list above a colour bar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
    figure.suptitle(title, fontsize=13, y=0.98, va="top", parse_math=False)
    widths = [view.width_mm for view in views]
    top = 0.9 - _TITLE_LINE_HEIGHT * title.count("\n")
    grid = figure.add_gridspec(
        1, 4, width_ratios=[*widths, 0.55 * sum(widths)], left=0.02, right=0.98, top=top, bottom=0.1, wspace=0.1
    )
    colormap = colormaps[OVERLAY_COLORMAP].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    norm = Normalize(vmin=0.0, vmax=1.0)
    for index, view in enumerate(views):
        _draw_view(figure.add_subplot(grid[0, index]), view, colormap, norm, window)
    panel = grid[0, 3].subgridspec(2, 1, height_ratios=[1.0, 0.06], hspace=0.3)
    _draw_organ_list(figure.add_subplot(panel[0, 0]), organ_lines)
    colorbar = figure.colorbar(
        ScalarMappable(norm=norm, cmap=colormap), cax=figure.add_subplot(panel[1, 0]), orientation="horizontal"
    )
    colorbar.set_label("probability")
    figure.text(0.01, 0.015, _figure_note(window), fontsize=8, color="0.3", va="bottom")
    return figure


def _figure_note(window: tuple[float, float]) -> str:
    """The small print under the views: orientation convention and what grey and colour show."""
    return (
        f"{_CONVENTION_NOTE}\nGrey: CT maximum intensity along each ray, window {window[0]:g}..{window[1]:g} HU. "
        "Colour: highest organ probability along each ray; no colour where no organ lies."
    )


def _draw_view(axes: Axes, view: _View, colormap: Any, norm: Any, window: tuple[float, float]) -> None:
    """One view: the grey CT projection, the probability overlay and the patient directions at its edges."""
    axes.imshow(view.ct, cmap="gray", vmin=window[0], vmax=window[1], aspect=view.aspect, interpolation="nearest")
    axes.imshow(
        view.overlay, cmap=colormap, norm=norm, alpha=OVERLAY_ALPHA, aspect=view.aspect, interpolation="nearest"
    )
    axes.set_title(view.spec.name, fontsize=11)
    axes.set_axis_off()
    places = (
        (0.02, 0.5, "left", "center"),
        (0.98, 0.5, "right", "center"),
        (0.5, 0.98, "center", "top"),
        (0.5, 0.02, "center", "bottom"),
    )
    for letter, (x, y, horizontal, vertical) in zip(view.spec.edges, places):
        axes.text(
            x,
            y,
            letter,
            transform=axes.transAxes,
            ha=horizontal,
            va=vertical,
            fontsize=9,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.5, "edgecolor": "none", "pad": 1.5},
        )


def _draw_organ_list(axes: Axes, lines: list[str]) -> None:
    """The organ list as text at the top left of an empty axes."""
    axes.set_axis_off()
    axes.text(
        0.0,
        1.0,
        "\n".join(lines),
        transform=axes.transAxes,
        ha="left",
        va="top",
        fontsize=12,
        family="monospace",
        parse_math=False,
        linespacing=1.5,
    )
