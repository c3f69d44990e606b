"""Med-SORA's inference rule: a symptom and a scan's organ image features in, 7 organ probabilities out.

The rule (bundle/docs/README.md, "How a symptom becomes organ probabilities"):

1. text side: symptom -> text encoder (f) -> text MLP body (f_bar) -> W_align: f_hat = W_align f_bar;
2. image side: each organ's samples -> per-slice image features -> unit length -> mean over the D slices
   (and over the scans, when several are matched against) -> unit length: g_i, computed once per scan, cached;
3. evidence e_i = f_hat . g_i = |f_hat| cos(f_hat, g_i): the direction is what the alignment loss trained
   (avgSim, method.md §4), the length says how strongly the text MLP responds, which is weak for symptoms
   unlike any in the corpus;
4. p_i = sigmoid(a e_i + b) in [0, 1], a > 0 and b fitted by Platt scaling (scripts.calibration), one organ
   independently of the others (several may be high); an organ absent from the scan, or too small on the
   network's grid to be seen (``SplitOrgansd``'s ``min_voxels``), has no image features and no probability
   (NaN, ``null`` in JSON), and is reported as such.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from scripts.data import organ_samples
from scripts.networks import MedSORANet
from text_pipeline.files import write_torch_atomically
from text_pipeline.organs import ORGANS
from text_pipeline.text_model import load_text_model_and_encoder

logger = logging.getLogger(__name__)

MAX_SYMPTOM_WORDS = 200  # all-MiniLM-L6-v2 reads 256 word pieces, about 190 English words
CACHE_FORMAT = 2  # of OrganFeatureCache's files; 2: with the organs' voxel counts (too small organs)


def check_symptom(text: object, where: str = "symptom", max_words: int = MAX_SYMPTOM_WORDS) -> str:
    """The symptom, stripped, or an error naming ``where`` and what is wrong with it.

    Raises:
        ValueError: not text, not valid UTF-8 (e.g. undecodable bytes on the command line), empty or whitespace,
            or longer than ``max_words`` words (the encoder would silently read only its beginning).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{where} is not valid UTF-8 text (byte {error.start})") from None
    if not isinstance(text, str):
        raise ValueError(f"{where} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{where} is not valid UTF-8 text (character {error.start} is an undecodable byte)") from None
    if not text.strip():
        raise ValueError(f"{where} is empty or only whitespace: describe a symptom")
    words = len(text.split())
    if words > max_words:
        raise ValueError(
            f"{where} has {words} words; at most {max_words} are accepted (the text encoder reads only about "
            f"{max_words} words): shorten it to the symptom itself"
        )
    return text.strip()


def organ_probability(evidence: torch.Tensor, scale: torch.Tensor | float, bias: torch.Tensor | float) -> torch.Tensor:
    """Step 4 of the inference rule: p_i = sigmoid(a e_i + b), with the network's fitted a and b."""
    return torch.sigmoid(scale * evidence + bias)


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
    network: MedSORANet, samples: Sequence[dict], device: torch.device | str = "cpu", batch_size: int = 16
) -> OrganFeatures:
    """Step 2 of the inference rule: g_i = the unit mean, over organ i's samples, of their mean unit slice feature.

    Args:
        network: the trained network (put in eval mode here).
        samples: preprocessed (scan, organ) samples, ``{"image": [C, H, W, D], "label": organ index}``.
        device: where the network runs.
        batch_size: samples per forward pass.
    """
    network.eval()
    accumulator = OrganFeatureAccumulator()
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = torch.stack([torch.as_tensor(sample["image"]) for sample in batch]).to(device)
        accumulator.add(network.image.organ_features(images), torch.tensor([int(sample["label"]) for sample in batch]))
    return accumulator.result()


class SymptomOrganReasoner:
    """Steps 1, 3 and 4 of the inference rule: symptoms against organ image features -> probabilities.

    The text encoder and the text MLP are the ones ``text_pipeline`` trained (the MLP records its encoder).

    Args:
        network: the trained network (its W_align and image network).
        text_model_path: the text MLP (``text_mlp_calibrated.pt`` by default).
        device: where the network runs.
        max_symptom_words: longer symptoms are refused.
        encoder_cache_dir: embedding cache of the encoder, or None.
    """

    def __init__(
        self,
        network: MedSORANet,
        text_model_path: str | Path,
        device: torch.device | str = "cpu",
        max_symptom_words: int = MAX_SYMPTOM_WORDS,
        encoder_cache_dir: str | Path | None = None,
    ) -> None:
        if not bool(network.probability_fitted):
            raise ValueError(
                "the network's organ probabilities were never fitted (its weights come from before the alignment "
                "learned, or from an image-only model): train it longer, or pick another model_path"
            )
        self.network = network.eval()
        self.device = torch.device(device)
        self.text_model, self.encoder = load_text_model_and_encoder(text_model_path, encoder_cache_dir)
        self.max_symptom_words = max_symptom_words

    def check(self, symptoms: Iterable[object], where: Callable[[int], str] | None = None) -> list[str]:
        """Every symptom checked by :func:`check_symptom`; ``where(i)`` names the i-th in errors."""
        name = where or (lambda index: f"symptom {index + 1}")
        return [check_symptom(text, name(index), self.max_symptom_words) for index, text in enumerate(symptoms)]

    @torch.no_grad()
    def text_features(self, symptoms: Sequence[str]) -> torch.Tensor:
        """Step 1: f_hat = W_align f_bar of each symptom, [Q, d_img]."""
        f = torch.from_numpy(self.encoder.encode(self.check(symptoms)))
        f_bar = self.text_model.embed(f).to(self.device)
        return self.network.project_texts(f_bar).cpu()

    @torch.no_grad()
    def probabilities(self, symptoms: Sequence[str], organs: OrganFeatures) -> np.ndarray:
        """Steps 1-4: organ probabilities [Q, O] in [0, 1], NaN for organs absent from the scan."""
        evidence = self.text_features(symptoms) @ organs.features.T
        scale, bias = self.network.probability_scale.cpu(), self.network.probability_bias.cpu()
        return organ_probability(evidence, scale, bias).numpy()


def ranked(probabilities: Sequence[float]) -> list[tuple[str, float]]:
    """(organ, probability) of the organs that have one, highest first."""
    scored = [(organ, float(p)) for organ, p in zip(ORGANS, probabilities) if np.isfinite(p)]
    return sorted(scored, key=lambda pair: -pair[1])


def _file_stamp(path: Path) -> list:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return [[str(file), file.stat().st_size, file.stat().st_mtime_ns] for file in files if file.is_file()]


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
    """

    def __init__(
        self,
        network: MedSORANet,
        preprocessing: Callable,
        model_path: str | Path,
        settings: dict | None = None,
        cache_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.network, self.preprocessing, self.device = network, preprocessing, device
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

    def __call__(self, scan: dict) -> OrganFeatures:
        """The organ features of ``scan`` (``{"image", "label", "convention"}``)."""
        key = self.key(scan)
        if key in self._memory:
            return self._memory[key]
        file = self.cache_dir / f"{key}.pt" if self.cache_dir is not None else None
        if file is not None and file.is_file():
            stored = torch.load(file, map_location="cpu", weights_only=True)
            features = OrganFeatures(stored["features"], stored["counts"], stored.get("organ_voxels"))
            logger.info("organ features of %s read from the cache %s", scan["image"], file)
        else:
            samples = organ_samples([scan], self.preprocessing)
            computed = organ_image_features(self.network, samples, self.device)
            voxels = samples[0].get("organ_voxels") if samples else None
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
