"""Symptom-to-organ inference on one scan: organ probabilities, a probability map NIfTI and a picture per query."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation

from scripts.reasoning import OrganFeatureCache, SymptomOrganReasoner, ranked
from scripts.rendering import probability_map, render_probability_views, write_probability_map
from scripts.scan_io import check_finite_voxels, check_scan_path
from text_pipeline.corpus import read_query_sources
from text_pipeline.files import write_json_atomically
from text_pipeline.organs import LABEL_CONVENTIONS, ORGANS, organ_lookup_table


def writable_output_dir(output_dir: str | Path) -> Path:
    """``output_dir``, created if needed, after checking a file can be written there (before any work is done)."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PermissionError(f"output_dir {output_dir} cannot be written: {error.strerror or error}") from None
    return output_dir


def read_symptoms(symptom: object, queries_file: str | Path | None, reasoner: SymptomOrganReasoner) -> list[str]:
    """The queries of a run: one ``symptom`` or the texts of ``queries_file``, each checked, never both."""
    if (symptom is None) == (queries_file is None):
        raise ValueError("set exactly one of symptom (one text) and queries_file (a JSON-lines file of queries)")
    if symptom is not None:
        return reasoner.check([symptom], where=lambda _: "symptom")
    queries = read_query_sources([queries_file])
    return reasoner.check([query.text for query in queries], where=lambda index: f"{queries_file}: query {index + 1}")


AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's and MONAI's meaning of "RAS"


def load_scan_grid(image: str | Path, label: str | Path, convention: str) -> tuple[MetaTensor, MetaTensor]:
    """The CT [1, H, W, D] in HU as stored, and its label map in this project's organ ids on the CT's own voxel
    grid (reoriented if the two files store their axes in different orders), both with the CT's affine.

    Raises:
        ValueError: the CT or the label map holds NaN or infinite voxels, or the two are not on one grid.
    """
    load = LoadImage(image_only=True, ensure_channel_first=True)
    ct, seg = load(image), load(label)
    check_finite_voxels(ct, str(image), what="CT")
    check_finite_voxels(seg, str(label), what="label map")
    axcodes = "".join(nib.orientations.aff2axcodes(ct.affine.numpy(), labels=AXIS_LABELS))
    seg = Orientation(axcodes=axcodes, labels=AXIS_LABELS)(seg)
    if seg.shape != ct.shape or not torch.allclose(seg.affine.double(), ct.affine.double(), atol=1e-2):
        raise ValueError(f"label map {label} is not on the voxel grid of its CT {image}")
    values = seg.as_tensor().round().long()
    lookup = torch.from_numpy(organ_lookup_table(convention, max_label=max(int(values.max()), 0)))
    return ct, MetaTensor(lookup[values], affine=ct.affine.clone())


def picture_grid(ct: MetaTensor, organs: MetaTensor) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """CT and organ ids [H, W, D] reoriented to RAS for display, with the voxel spacing in mm."""
    to_ras = Orientation(axcodes="RAS", labels=AXIS_LABELS)
    ct_ras, organs_ras = to_ras(ct), to_ras(organs)
    spacing = tuple(float(s) for s in np.linalg.norm(ct_ras.affine.numpy()[:3, :3], axis=0))
    return ct_ras[0].numpy(), organs_ras[0].numpy(), spacing


def infer(
    reasoner: SymptomOrganReasoner,
    feature_cache: OrganFeatureCache,
    image: str | Path,
    label: str | Path,
    label_convention: str,
    output_dir: str | Path,
    symptom: object = None,
    queries_file: str | Path | None = None,
    top_k: int = 3,
    hu_window: Sequence[float] = (-175.0, 250.0),
) -> dict:
    """Organ probabilities of each query on one scan, written to ``output_dir``.

    Writes ``scores.json`` (per query: the 7 probabilities, ``null`` for organs without one, and the ranking;
    ``organs_not_in_scan``: organs the label map does not hold; ``organs_too_small``: organs it holds but with
    fewer than ``min_voxels`` voxels on the network's grid, each with its voxel count there), and per query
    ``query_<i>_probability_map.nii.gz`` (on the CT file's voxel grid and affine, whatever its orientation: each
    organ's voxels carry its probability, background 0) and ``query_<i>.png`` (orthogonal maximum-intensity views
    coloured by probability, the query and the top organs written on it). Every input is checked before anything
    is written, and every file is written whole or not at all: a DICOM folder must hold exactly one series, a CT
    (several series are listed by UID, description and slice count), and the CT must be finite and in Hounsfield
    units (``ValidateScand``; an MR is refused as such).

    Args:
        reasoner: the network, text encoder and text MLP.
        feature_cache: the organ image features of scans.
        image: the CT, a NIfTI file or a DICOM series folder.
        label: its organ label map, on the same voxel grid.
        label_convention: the label map's ids (``btcv``, ``totalseg_total``, ...).
        output_dir: where the results go.
        symptom: one symptom text; or
        queries_file: a JSON-lines file of ``{"text", ...}`` queries.
        top_k: organs written on the picture.
        hu_window: the CT window of the picture.
    """
    symptoms = read_symptoms(symptom, queries_file, reasoner)
    for name, path in (("image", image), ("label", label)):
        if path is None or not Path(path).exists():
            raise FileNotFoundError(f"{name} {path} does not exist")
    if label_convention not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown label_convention {label_convention!r}; known: {', '.join(LABEL_CONVENTIONS)}")
    check_scan_path(image, role="image", require_ct=True)  # before MONAI's loader silently picks one series
    check_scan_path(label, role="label", require_ct=False)
    output_dir = writable_output_dir(output_dir)
    scan = {"image": str(image), "label": str(label), "convention": label_convention}
    organs = feature_cache(scan)
    absent, too_small = organs.absent_organs(), organs.too_small_organs()
    probabilities = reasoner.probabilities(symptoms, organs)
    unexplained = sorted(
        {organ for row in probabilities for organ, p in zip(ORGANS, row) if not np.isfinite(p)}
        - set(absent)
        - set(too_small)
    )
    if unexplained:  # never report an organ as present with a null probability
        raise ValueError(f"no probability could be computed for {', '.join(unexplained)} in {image}")
    ct, organ_ids = load_scan_grid(image, label, label_convention)
    ct_ras, organs_ras, spacing = picture_grid(ct, organ_ids)
    affine = ct.affine.numpy()

    results = []
    for index, (text, row) in enumerate(zip(symptoms, probabilities)):
        values = [float(p) if np.isfinite(p) else None for p in row]
        stem = f"query_{index:03d}"
        map_path = write_probability_map(
            output_dir / f"{stem}_probability_map.nii.gz", probability_map(organ_ids[0].numpy(), values), affine
        )
        picture = render_probability_views(
            output_dir / f"{stem}.png", ct_ras, organs_ras, values, text, spacing, top_k=top_k, hu_window=hu_window
        )
        ranking = ranked(row)
        results.append(
            {
                "text": text,
                "probabilities": dict(zip(ORGANS, values)),
                "ranking": [{"organ": organ, "probability": p} for organ, p in ranking],
                "probability_map": str(map_path),
                "picture": str(picture),
            }
        )
        print(f"\n{text}\n" + "\n".join(f"  {rank}. {organ:<14} {p:.3f}" for rank, (organ, p) in enumerate(ranking, 1)))
        print(f"  picture: {picture}", flush=True)
    if absent or too_small:
        notes = [f"  not in the scan: {', '.join(absent)}"] if absent else []
        if too_small:
            small = ", ".join(f"{organ} ({count} voxels)" for organ, count in too_small.items())
            notes.append(f"  too small on the network's grid to be scored: {small}")
        print("\nno probability for:\n" + "\n".join(notes), flush=True)
    report = {
        "image": str(image),
        "label": str(label),
        "label_convention": label_convention,
        "organs_not_in_scan": absent,
        "organs_too_small": too_small,
        "queries": results,
    }
    write_json_atomically(output_dir / "scores.json", report)
    return report
