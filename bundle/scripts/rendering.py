"""Organ probabilities of a CT scan as a picture for a reader (the volumes: ``scripts.organ_maps``).

:func:`render_probability_views` draws the picture in the spirit of the Med-SORA
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

import numpy as np
import torch

from scripts.organ_maps import as_numpy, checked_organ_ids, checked_probabilities, voxel_values
from text_pipeline.files import write_atomically
from text_pipeline.organs import ORGANS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["render_probability_views"]

OVERLAY_COLORMAP = "plasma"
OVERLAY_ALPHA = 0.75
FIGURE_SIZE = (14.0, 6.0)
FIGURE_DPI = 100

_TITLE_CHARS = 120
_TITLE_LINES = 3
_TITLE_LINE_HEIGHT = 0.04
_NO_ORGAN = -1.0
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
    volume = as_numpy(ct)
    labels = as_numpy(organ_labels)
    _check_volumes(volume, labels)
    organ_ids = checked_organ_ids(labels)
    probs = checked_probabilities(probabilities)
    voxel_size = _checked_spacing(spacing)
    window = _checked_window(hu_window)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1; got {top_k}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end with .png; got {path.name!r}")

    ray_values = voxel_values(probs, missing=_NO_ORGAN)[organ_ids]
    views = [_project(volume, ray_values, spec, voxel_size) for spec in _VIEWS]
    figure = _draw(views, _title(query), _organ_lines(probs, top_k), window)
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=FIGURE_DPI))


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
