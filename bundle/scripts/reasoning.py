"""Med-SORA's inference rule: a symptom and a scan's organ image features in, 7 organ probabilities out.

The rule (bundle/docs/README.md, "How a symptom becomes organ probabilities"):

1. text side: symptom -> text encoder (f) -> text MLP body (f_bar) -> W_align: f_hat = W_align f_bar;
2. image side: each organ's samples -> per-slice image features -> unit length -> mean over the D slices
   (and over the scans, when several are matched against) -> unit length: g_i, computed once per scan, cached
   (``scripts.organ_features``);
3. evidence e_i = f_hat . g_i = |f_hat| cos(f_hat, g_i): the direction is what the alignment loss trained
   (avgSim, method.md §4), the length says how strongly the text MLP responds, which is weak for symptoms
   unlike any in the corpus;
4. p_i = sigmoid(a e_i + b) in [0, 1], a > 0 and b fitted by Platt scaling (scripts.calibration), one organ
   independently of the others (several may be high); an organ absent from the scan, or too small on the
   network's grid to be seen (``SplitOrgansd``'s ``min_voxels``), has no image features and no probability
   (NaN, ``null`` in JSON), and is reported as such.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from scripts.networks import MedSORANet
from scripts.organ_features import OrganFeatures
from text_pipeline.organs import ORGANS
from text_pipeline.text_model import load_text_model_and_encoder

MAX_SYMPTOM_WORDS = 200  # all-MiniLM-L6-v2 reads 256 word pieces, about 190 English words
SYMPTOMS_PER_BATCH = 256


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
    def probabilities(self, symptoms: Sequence[str], organs: OrganFeatures, progress: bool = False) -> np.ndarray:
        """Steps 1-4: organ probabilities [Q, O] in [0, 1], NaN for organs absent from the scan.

        The symptoms go through the text side ``SYMPTOMS_PER_BATCH`` at a time, so memory does not grow with Q
        beyond the [Q, O] result; ``progress`` shows a progress bar when there are several batches.
        """
        scale, bias = self.network.probability_scale.cpu(), self.network.probability_bias.cpu()
        result = np.empty((len(symptoms), len(ORGANS)), dtype=np.float32)
        show = progress and len(symptoms) > SYMPTOMS_PER_BATCH
        with tqdm(total=len(symptoms), desc="scoring symptoms", unit="symptom", disable=not show) as bar:
            for start in range(0, len(symptoms), SYMPTOMS_PER_BATCH):
                batch = symptoms[start : start + SYMPTOMS_PER_BATCH]
                evidence = self.text_features(batch) @ organs.features.T
                result[start : start + len(batch)] = organ_probability(evidence, scale, bias).numpy()
                bar.update(len(batch))
        return result


def ranked(probabilities: Sequence[float]) -> list[tuple[str, float]]:
    """(organ, probability) of the organs that have one, highest first."""
    scored = [(organ, float(p)) for organ, p in zip(ORGANS, probabilities) if np.isfinite(p)]
    return sorted(scored, key=lambda pair: -pair[1])
