"""Checks on a scan as real scanners write it, made before and after MONAI's loader reads it.

- A DICOM folder must hold exactly one series. MONAI's ``ITKReader`` groups a folder's files into series with
  GDCM and silently reads the first one (with only a warning), so a folder holding a localiser, a thin and a
  thick reconstruction would give an arbitrary one of them: :func:`check_dicom_folder` refuses such a folder and
  names every series in it (SeriesInstanceUID, description, slice count). It groups the files exactly as
  MONAI's reader does, so what it counts is what the reader would choose from.
- A DICOM series whose Modality says it is not a CT (an MR, a PET...) is refused, naming the modality.
- Every voxel of a CT must be finite: :func:`check_finite_voxels` refuses NaN and infinite values, naming the
  file and how many voxels hold them (NaN slips through min/max range checks, and inf poisons every
  resampled voxel near it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DicomSeries", "dicom_series", "check_dicom_folder", "check_scan_path", "check_finite_voxels"]

# GDCM's grouping, as monai.data.ITKReader sets it up: series details on, split by Series Date as well
_SERIES_RESTRICTIONS = ("0008|0021",)
_TAGS = {"uid": "0020|000e", "description": "0008|103e", "modality": "0008|0060", "number": "0020|0011"}
# acquisition modalities that are certainly not CT (DICOM PS3.3 C.7.3.1.1.1); anything else goes on to the HU check
NOT_CT_MODALITIES = {
    "MR": "magnetic resonance",
    "PT": "PET",
    "NM": "nuclear medicine",
    "US": "ultrasound",
    "CR": "computed radiography",
    "DX": "digital radiography",
    "MG": "mammography",
    "XA": "X-ray angiography",
    "RF": "radio fluoroscopy",
    "OP": "ophthalmic photography",
    "SM": "slide microscopy",
}


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder as GDCM (and so MONAI's ``ITKReader``) groups it.

    Attributes:
        identifier: GDCM's series identifier, the one ``ITKReader(series_name=...)`` selects by (the
            SeriesInstanceUID followed by details such as slice thickness, size and date).
        uid: the SeriesInstanceUID, "" when the files carry none (anonymised series often don't).
        description: the SeriesDescription, "" when absent.
        modality: the Modality ("CT", "MR", ...), "" when absent.
        number: the SeriesNumber, "" when absent.
        files: the series' files, in GDCM's slice order.
    """

    identifier: str
    uid: str
    description: str
    modality: str
    number: str
    files: tuple[str, ...]

    def describe(self) -> str:
        uid = self.uid or "none"
        parts = [f"SeriesInstanceUID {uid}"]
        if self.number:
            parts.append(f"number {self.number}")
        parts.append(f"description {self.description!r}" if self.description else "no description")
        if self.modality:
            parts.append(f"modality {self.modality}")
        parts.append(f"{len(self.files)} slice{'s' if len(self.files) != 1 else ''}")
        return f"{', '.join(parts)} (GDCM series {self.identifier!r})"


def _header(file: str) -> dict[str, str]:
    import itk

    io = itk.GDCMImageIO.New()
    io.SetFileName(file)
    io.ReadImageInformation()
    meta = io.GetMetaDataDictionary()
    return {name: str(meta[tag]).strip("\x00 ") if meta.HasKey(tag) else "" for name, tag in _TAGS.items()}


def dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM series of ``folder`` (not its subfolders), grouped as MONAI's ``ITKReader`` groups them."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    for tag in _SERIES_RESTRICTIONS:
        names.AddSeriesRestriction(tag)
    names.SetDirectory(str(folder))
    series = []
    for identifier in names.GetSeriesUIDs():
        files = tuple(str(file) for file in names.GetFileNames(identifier))
        if files:
            series.append(DicomSeries(identifier=str(identifier), files=files, **_header(files[0])))
    return series


def check_dicom_folder(folder: str | Path, role: str = "image", require_ct: bool = True) -> DicomSeries:
    """The one series of a DICOM folder, or an error naming the folder and what is wrong with it.

    Args:
        folder: the folder passed as the scan.
        role: how the folder is named in errors (``image``, ``label``).
        require_ct: refuse a series whose Modality is a known non-CT modality (MR, PT, ...).

    Raises:
        FileNotFoundError: the folder holds no DICOM series.
        ValueError: it holds several series (each is listed), or its series is not a CT.
    """
    series = dicom_series(folder)
    if not series:
        raise FileNotFoundError(f"{role} {folder} is a folder holding no DICOM series (no DICOMs in it)")
    if len(series) > 1:
        listing = "\n".join(f"  {number}. {one.describe()}" for number, one in enumerate(series, 1))
        raise ValueError(
            f"{role} {folder} is a DICOM folder holding {len(series)} series; MONAI's loader would silently read "
            f"only the first:\n{listing}\nput the series to use in a folder of its own and pass that folder"
        )
    (only,) = series
    modality = only.modality.upper()
    if require_ct and modality in NOT_CT_MODALITIES:
        raise ValueError(
            f"{role} {folder} is a DICOM series of modality {modality} ({NOT_CT_MODALITIES[modality]}), not CT: "
            f"{only.describe()}. The model reads CT in Hounsfield units only"
        )
    return only


def check_scan_path(path: str | Path, role: str = "image", require_ct: bool = True) -> None:
    """Check a scan's file or folder before it is loaded: a folder must hold exactly one DICOM (CT) series."""
    if Path(path).is_dir():
        check_dicom_folder(path, role=role, require_ct=require_ct)


def check_finite_voxels(volume: torch.Tensor | np.ndarray, name: str, what: str = "CT") -> None:
    """Refuse a volume holding NaN or infinite voxels, naming the file and how many there are.

    Args:
        volume: the loaded volume, any shape.
        name: the file or folder it was loaded from.
        what: what the volume is, for the message.
    """
    values = torch.as_tensor(volume)
    if not values.is_floating_point():  # integer voxels are always finite
        return
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(values).sum())
    positive, negative = int(torch.isposinf(values).sum()), int(torch.isneginf(values).sum())
    kinds = [f"{count} {kind}" for count, kind in ((nan, "NaN"), (positive, "+inf"), (negative, "-inf")) if count]
    bad = nan + positive + negative
    raise ValueError(
        f"{what} {name} holds {bad} non-finite voxel{'s' if bad != 1 else ''} ({', '.join(kinds)}) out of "
        f"{values.numel()}: every voxel must be a finite value "
        f"{'in Hounsfield units ' if what == 'CT' else ''}(a broken conversion or a failed reconstruction); "
        "fix or re-export the file"
    )
