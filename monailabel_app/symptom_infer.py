"""MONAI Label infer task: a symptom on a CT with its organ label map -> the organ probability map and the 7
organ probabilities, ranked. It runs the Med-SORA bundle's own inference (its ``evaluator``, built from the
bundle's configs as ``python -m monai.bundle run inferring`` builds it), so the two give the same answer."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)

INFERENCE_CONFIGS = ("configs/train.yaml", "configs/inference.yaml")


class SymptomInferTask(InferTask):
    """Scores the request's ``symptom`` on its image and label map with the bundle at ``bundle_dir``.

    The request (MONAI Label merges the ``params`` form field into it) holds ``image`` (a file: from the
    datastore or uploaded), ``label`` (the organ label map on the CT's grid: the datastore's label or an
    uploaded ``label`` field; the app resolves it), ``symptom`` (the text, taken as data) and
    ``label_convention`` (the label map's ids, or the server's ``label_convention`` conf). Bad requests raise
    ``HTTPException`` with a 4xx status and a message; nothing is written but the answer's temporary files.

    The answer's image is the probability map (float32, on the CT's grid). A request for a ``uint8`` result, as
    3D Slicer's MONAI Label module makes (``result_dtype``), cannot carry probabilities in its voxels: it gets the
    organ rank map instead (each organ's voxels carry its rank, 1 = the most probable) and ``label_names`` naming
    each rank with its organ and probability, so Slicer lists the organs, ranked, as segments.

    Args:
        bundle_dir: the bundle folder (its configs, scripts and models).
        label_convention: the default convention of the label maps, None: every request names its own.
        device: where the network runs ("cpu", "cuda:0").
        feature_cache_dir: where the organ features of scans are cached on disk, or None (memory only).
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        label_convention: str | None = None,
        device: str = "cpu",
        feature_cache_dir: str | Path | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        if not (self.bundle_dir / "configs" / "inference.yaml").is_file():
            raise ValueError(f"bundle {self.bundle_dir} has no configs/inference.yaml: pass the Med-SORA bundle folder")
        if str(self.bundle_dir) not in sys.path:  # as `monai.bundle run` does: the bundle's scripts importable
            sys.path.insert(1, str(self.bundle_dir))
        from monai.bundle import ConfigParser
        from scripts.label_conventions import LABEL_CONVENTIONS
        from scripts.reasoning import MAX_SYMPTOM_WORDS

        from text_pipeline.organs import ORGANS

        if label_convention is not None and label_convention not in LABEL_CONVENTIONS:
            raise ValueError(f"unknown label_convention {label_convention!r}; known: {', '.join(LABEL_CONVENTIONS)}")
        parser = ConfigParser()
        parser.read_config([str(self.bundle_dir / name) for name in INFERENCE_CONFIGS])
        parser.read_meta(str(self.bundle_dir / "configs" / "metadata.json"))
        parser.update({"bundle_root": str(self.bundle_dir), "device": device, "feature_cache_dir": feature_cache_dir})
        parser["dataset"] = parser["symptoms"] = []  # each request brings its scan and symptom
        parser["rank_maps"] = parser["query_files"] = True
        self.inference = parser.get_parsed_content("evaluator")
        self.conventions, self.default_convention = tuple(LABEL_CONVENTIONS), label_convention
        self.version = parser.get_parsed_content("_meta_#version")
        self._lock = threading.Lock()
        conventions = [label_convention] if label_convention else []
        conventions += [name for name in LABEL_CONVENTIONS if name != label_convention]
        super().__init__(
            type=InferType.SEGMENTATION,
            labels={organ: index + 1 for index, organ in enumerate(ORGANS)},
            dimension=3,
            description=(
                f"Med-SORA {self.version}: a free-text symptom (params: symptom, at most {MAX_SYMPTOM_WORDS} words) on "
                "a CT with its organ label map -> the probability of each of the 7 organs and a map of the CT in "
                "which each organ's voxels carry its probability. Research use only, not for clinical decisions."
            ),
            config={"symptom": "", "label_convention": conventions, "label_tag": "final"},
        )

    def is_valid(self) -> bool:
        return (self.bundle_dir / "models" / "model.pt").is_file()

    def get_path(self, validate: bool = True) -> str | None:
        return str(self.bundle_dir / "models" / "model.pt")

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from scripts.data import ScanError

        image, label = request.get("image"), request.get("label")
        if not image or not Path(str(image)).exists():
            raise HTTPException(status_code=404, detail=f"image {request.get('image_id', image)!r} not found")
        if not label or not Path(str(label)).exists():
            raise HTTPException(
                status_code=400,
                detail="no organ label map for this image: upload one as the `label` field, or use an image of the "
                "studies folder that has a label (tag `label_tag`, default final)",
            )
        convention = request.get("label_convention") or self.default_convention
        if isinstance(convention, list):  # the options table's list, unedited: its first entry
            convention = convention[0] if convention else None
        if convention not in self.conventions:
            known = ", ".join(self.conventions)
            raise HTTPException(status_code=400, detail=f"label_convention {convention!r} is not one of: {known}")
        if "symptom" not in request:
            raise HTTPException(status_code=400, detail='params has no symptom: send {"symptom": "..."}')
        scan = {"image": str(image), "label": str(label), "convention": convention}
        output_dir = Path(tempfile.mkdtemp(prefix="medsora-infer-"))
        try:
            with self._lock:
                symptoms = self._checked_symptom(request["symptom"])
                report = self.inference.infer(scan, symptoms, output_dir)
            (query,) = report["queries"]
            ranks = request.get("result_dtype") == "uint8"
            produced = query["organ_ranks"] if ranks else query["probability_map"]
            suffix = "_organ_ranks.nii.gz" if ranks else "_probability_map.nii.gz"
            result = tempfile.NamedTemporaryFile(suffix=suffix, delete=False).name
            shutil.move(produced, result)
        except (ValueError, FileNotFoundError, ScanError) as error:
            raise HTTPException(status_code=422, detail=f"cannot score this scan: {error}") from None
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)
        answer = {
            "symptom": query["text"],
            "label_convention": convention,
            "ranking": query["ranking"],
            "probabilities": query["probabilities"],
            "organs_not_in_scan": report["organs_not_in_scan"],
            "organs_too_small": report["organs_too_small"],
            "model_version": self.version,
            "image": "organ_ranks" if ranks else "probability_map",
        }
        if ranks:
            answer["label_names"] = {
                f"{rank}. {entry['organ']} {entry['probability']:.3f}": rank
                for rank, entry in enumerate(query["ranking"], start=1)
            }
        return result, answer

    def _checked_symptom(self, symptom: object) -> list[str]:
        try:
            return self.inference.reasoner.check([symptom], where=lambda _: "symptom")
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
