"""Symptom-to-organ inference on one scan: organ probabilities, a probability map NIfTI and a picture per query."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation
from tqdm.auto import tqdm

from scripts.data import preprocess_scan
from scripts.label_conventions import LABEL_CONVENTIONS
from scripts.organ_features import OrganFeatureCache
from scripts.organ_maps import organ_rank_map, probability_map, write_probability_map, write_volume
from scripts.output_folder import OutputFolder
from scripts.reasoning import MAX_SYMPTOM_WORDS, SymptomOrganReasoner, check_symptom, ranked
from scripts.rendering import render_probability_views
from scripts.scan_io import check_scan_path
from text_pipeline.corpus import read_query_sources
from text_pipeline.files import write_json_atomically
from text_pipeline.organs import ORGANS


def read_symptoms(
    symptom: object = None, queries_file: str | Path | None = None, max_words: int = MAX_SYMPTOM_WORDS
) -> list[str]:
    """The queries of a run: one ``symptom`` or the texts of ``queries_file``, never both, each checked
    (:func:`~scripts.reasoning.check_symptom`) before a scan is read or anything is written."""
    if (symptom is None) == (queries_file is None):
        raise ValueError("set exactly one of symptom (one text) and queries_file (a JSON-lines file of queries)")
    if symptom is not None:
        return [check_symptom(symptom, "symptom", max_words)]
    texts = [query.text for query in read_query_sources([queries_file])]
    return [check_symptom(text, f"{queries_file}: query {index}", max_words) for index, text in enumerate(texts, 1)]


AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's and MONAI's meaning of "RAS"
INFERENCE_OUTPUTS = ("scores.json", "query_*.png", "query_*_probability_map.nii.gz", "query_*_organ_ranks.nii.gz")


def to_file_grid(volume_ras: np.ndarray, ct: MetaTensor) -> tuple[np.ndarray, np.ndarray]:
    """A volume [H, W, D] on the grid of ``ct`` as loaded and reoriented to RAS, put back on the CT file's own
    grid (axis order and directions as stored); returns it with the file's affine."""
    file_affine = np.asarray(ct.meta["original_affine"], dtype=np.float64)
    axcodes = "".join(nib.orientations.aff2axcodes(file_affine, labels=AXIS_LABELS))
    volume = MetaTensor(torch.as_tensor(volume_ras)[None], affine=ct.affine.clone())
    on_file_grid = Orientation(axcodes=axcodes, labels=AXIS_LABELS)(volume)
    if not np.allclose(on_file_grid.affine.numpy(), file_affine, atol=1e-3):  # an oblique grid, say
        raise ValueError(f"cannot put the result back on the grid of {ct.meta.get('filename_or_obj')}")
    return on_file_grid[0].numpy(), file_affine


def voxel_spacing(ct: MetaTensor) -> tuple[float, ...]:
    """The voxel spacing in mm along the three axes of ``ct``."""
    return tuple(float(s) for s in np.linalg.norm(ct.affine.numpy()[:3, :3], axis=0))


class QueryScores(Sequence[dict]):
    """The ``queries`` of scores.json, each entry made when it is read, so that a run with 50,000 queries holds
    their texts and a [Q, O] array, not 50,000 dictionaries.

    Entry ``i``: ``text``, ``probabilities`` (organ -> p, ``None`` for organs without one), ``ranking`` (the organs
    that have one, highest first) and, if the query's files were written, their paths (``probability_map``,
    ``picture``, ``organ_ranks``).
    """

    def __init__(
        self, texts: Sequence[str], probabilities: np.ndarray, files: Sequence[dict[str, str]] | None = None
    ) -> None:
        self.texts, self.probabilities, self.files = texts, probabilities, files

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        row = self.probabilities[index]
        entry = {
            "text": self.texts[index],
            "probabilities": dict(zip(ORGANS, [float(p) if np.isfinite(p) else None for p in row])),
            "ranking": [{"organ": organ, "probability": p} for organ, p in ranked(row)],
        }
        return entry if self.files is None else {**entry, **self.files[index]}


PRINTED_QUERIES = 10  # rankings printed; all are in scores.json


def print_rankings(queries: Sequence[dict], limit: int = PRINTED_QUERIES) -> None:
    """The ranking of each of the first ``limit`` queries (and its picture, if written); how many more there are."""
    for index in range(min(limit, len(queries))):
        entry = queries[index]
        ranking = enumerate(entry["ranking"], 1)
        lines = [f"  {rank}. {item['organ']:<14} {item['probability']:.3f}" for rank, item in ranking]
        if "picture" in entry:
            lines.append(f"  picture: {entry['picture']}")
        print(f"\n{entry['text']}\n" + "\n".join(lines), flush=True)
    if len(queries) > limit:
        print(f"\n... and {len(queries) - limit} more queries: all rankings are in scores.json", flush=True)


class SymptomInference:
    """Symptoms on one scan: organ probabilities, a probability map NIfTI and a picture per query.

    The bundle's inference engine (inference.yaml's ``evaluator``): :meth:`run` scores the configured symptoms
    on the scan of ``dataset``; :meth:`infer` does it for any scan, e.g. one per request of the MONAI Label app.
    Each scan is loaded and its labels remapped once (``scan_loading``); its organ image features are computed
    from that (``organ_preprocessing``) unless ``feature_cache`` holds them.

    Args:
        reasoner: the network, text encoder and text MLP.
        feature_cache: the organ image features of scans.
        scan_loading: a scan's files -> the CT and its organ ids, checked, in RAS (train.yaml's ``scan_loading``).
        organ_preprocessing: a loaded scan -> the network's organ samples.
        dataset: the scans :meth:`run` infers on, ``{"image", "label", "convention"}`` each (one).
        output_dir: where :meth:`run` writes.
        symptoms: the texts :meth:`run` scores (inference.yaml's ``symptoms``: ``--symptom`` or the queries file).
        top_k: organs written on each picture.
        hu_window: the CT window of the pictures.
        rank_maps: also write per query ``query_<i>_organ_ranks.nii.gz``, each organ's voxels carrying its rank
            (uint8, 1 = the most probable), for viewers that show label maps, not values.
        query_files: write each query's probability map and picture (False: scores.json alone, for many queries).
    """

    def __init__(
        self,
        reasoner: SymptomOrganReasoner,
        feature_cache: OrganFeatureCache,
        scan_loading: Callable,
        organ_preprocessing: Callable,
        dataset: Sequence[dict] = (),
        output_dir: str | Path | None = None,
        symptoms: Sequence[str] = (),
        top_k: int = 3,
        hu_window: Sequence[float] = (-175.0, 250.0),
        rank_maps: bool = False,
        query_files: bool = True,
    ) -> None:
        self.reasoner, self.feature_cache = reasoner, feature_cache
        self.scan_loading, self.organ_preprocessing = scan_loading, organ_preprocessing
        self.dataset, self.output_dir = dataset, output_dir
        self.symptoms = symptoms
        self.top_k, self.hu_window, self.rank_maps, self.query_files = top_k, hu_window, rank_maps, query_files

    def run(self) -> dict:
        """Score ``symptoms`` on the scan of ``dataset``, written to ``output_dir``."""
        scans = list(getattr(self.dataset, "data", self.dataset))
        if len(scans) != 1:
            raise ValueError(f"inferring takes one scan at a time; its dataset holds {len(scans)}")
        return self.infer(scans[0], self.symptoms, self.output_dir)

    def infer(self, scan: dict, symptoms: Sequence[object], output_dir: str | Path) -> dict:
        """Organ probabilities of each symptom on ``scan``, written to ``output_dir``.

        Writes ``scores.json`` (per query: the 7 probabilities, ``null`` for organs without one, and the ranking;
        ``organs_not_in_scan``: organs the label map does not hold; ``organs_too_small``: organs it holds but with
        fewer than ``min_voxels`` voxels on the network's grid, each with its voxel count there), and per query
        ``query_<i>_probability_map.nii.gz`` (on the CT file's voxel grid and affine, whatever its orientation:
        each organ's voxels carry its probability, background 0) and ``query_<i>.png`` (orthogonal
        maximum-intensity views coloured by probability, the query and the top organs written on it).

        Every input is checked before anything is written: a DICOM folder must hold exactly one series, a CT
        (several series are listed by UID, description and slice count), and the CT must be finite and in
        Hounsfield units (``ValidateScand``; an MR is refused as such). The run's files appear together or not at
        all: staged, then moved in, replacing the files an earlier run left in ``output_dir``; a second run on the
        same ``output_dir`` at the same time is refused (``scripts.output_folder``).

        Args:
            scan: ``{"image": CT (NIfTI file or DICOM series folder), "label": its organ label map on the same
                voxel grid, "convention": the label map's ids (btcv, totalseg_total, ...)}``.
            symptoms: the symptom texts, each checked.
            output_dir: where the results go.
        """
        symptoms = self.reasoner.check(symptoms, where=lambda index: f"symptom {index + 1}")
        image, label, convention = scan.get("image"), scan.get("label"), scan.get("convention")
        for name, path in (("image", image), ("label", label)):
            if path is None or not Path(path).exists():
                raise FileNotFoundError(f"{name} {path} does not exist")
        if convention not in LABEL_CONVENTIONS:
            raise ValueError(f"unknown label_convention {convention!r}; known: {', '.join(LABEL_CONVENTIONS)}")
        check_scan_path(image, role="image", require_ct=True)  # before MONAI's loader silently picks one series
        check_scan_path(label, role="label", require_ct=False)
        output_dir = Path(output_dir)
        scan = {"image": str(image), "label": str(label), "convention": convention}
        with OutputFolder(output_dir, INFERENCE_OUTPUTS) as folder:
            loaded = preprocess_scan(scan, self.scan_loading)
            ct, organs_ras = loaded["image"], loaded["label"][0].numpy().copy()
            organs = self.feature_cache(scan, samples=lambda: preprocess_scan(loaded, self.organ_preprocessing))
            absent, too_small = organs.absent_organs(), organs.too_small_organs()
            probabilities = self.reasoner.probabilities(symptoms, organs, progress=True)
            without = {ORGANS[index] for index in np.flatnonzero(~np.isfinite(probabilities).all(axis=0))}
            unexplained = sorted(without - set(absent) - set(too_small))
            if unexplained:  # never report an organ as present with a null probability
                raise ValueError(f"no probability could be computed for {', '.join(unexplained)} in {image}")
            files = None
            if self.query_files:
                if len(symptoms) > 1:
                    print(f"writing {len(symptoms)} probability maps and pictures to {output_dir}", flush=True)
                rows = tqdm(zip(symptoms, probabilities), total=len(symptoms), unit="query", disable=len(symptoms) < 2)
                files = [
                    self._write_query_files(folder, f"query_{index:03d}", text, row, ct, organs_ras)
                    for index, (text, row) in enumerate(rows)
                ]
            queries = QueryScores(symptoms, probabilities, files)
            print_rankings(queries)
            if not self.query_files:
                print(
                    f"the scores of {len(symptoms)} queries are in {output_dir / 'scores.json'}; no probability maps "
                    "or pictures were written (query_files false: set --query_files true to write them)",
                    flush=True,
                )
            if absent or too_small:
                notes = [f"  not in the scan: {', '.join(absent)}"] if absent else []
                if too_small:
                    small = ", ".join(f"{organ} ({count} voxels)" for organ, count in too_small.items())
                    notes.append(f"  too small on the network's grid to be scored: {small}")
                print("\nno probability for:\n" + "\n".join(notes), flush=True)
            report = {
                "image": str(image),
                "label": str(label),
                "label_convention": convention,
                "organs_not_in_scan": absent,
                "organs_too_small": too_small,
                "queries": queries,
            }
            write_json_atomically(folder.staged("scores.json"), report, stream=("queries",))
        return report

    def _write_query_files(
        self, folder: OutputFolder, stem: str, text: str, row: np.ndarray, ct: MetaTensor, organs_ras: np.ndarray
    ) -> dict[str, str]:
        """One query's probability map, picture (and rank map), staged in ``folder``; their final paths."""
        values = [float(p) if np.isfinite(p) else None for p in row]
        map_on_file_grid, file_affine = to_file_grid(probability_map(organs_ras, values), ct)
        write_probability_map(folder.staged(f"{stem}_probability_map.nii.gz"), map_on_file_grid, file_affine)
        render_probability_views(
            folder.staged(f"{stem}.png"),
            ct[0].numpy(),
            organs_ras,
            values,
            text,
            voxel_spacing(ct),
            self.top_k,
            self.hu_window,
        )
        files = {"probability_map": f"{stem}_probability_map.nii.gz", "picture": f"{stem}.png"}
        if self.rank_maps:
            ranks, _ = to_file_grid(organ_rank_map(organs_ras, values), ct)
            write_volume(folder.staged(f"{stem}_organ_ranks.nii.gz"), ranks, file_affine)
            files["organ_ranks"] = f"{stem}_organ_ranks.nii.gz"
        return {kind: str(folder.final(name)) for kind, name in files.items()}
