"""Shared fixtures: the bundle's scripts on sys.path, the real scans in ../shared, small run settings."""

from __future__ import annotations

import atexit
import json
import locale
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SHARED_CT = REPO.parent / "shared" / "data" / "ct"
TEXT_EMBEDDINGS = Path(tempfile.mkdtemp(prefix="medsora-test-embeddings-"))
"""The text encoder's embedding cache of every test and every bundle run they start: never the checkout's."""
atexit.register(shutil.rmtree, TEXT_EMBEDDINGS, True)
EXAMPLE_SCANS = Path(tempfile.mkdtemp(prefix="medsora-test-example-"))
"""inference.yaml's dataset_dir (its example phantom) for every parser the tests build: never the checkout's."""
atexit.register(shutil.rmtree, EXAMPLE_SCANS, True)

if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))

from scripts.label_conventions import organ_lookup_table  # noqa: E402

SMALL_NETWORK = {  # a small network and few phantoms, for tests of the wiring rather than of the model's skill
    "image_size": [32, 32, 8],
    "organ_field_of_view_mm": [112.0, 112.0, 64.0],  # the default voxels, 3.5 x 3.5 x 8 mm, in a smaller window
    "hidden_size": 32,
    "mlp_dim": 64,
    "mlp_dim_3d": 64,
    "num_layers_2d": 1,
    "num_layers_3d": 1,
    "num_heads": 2,
    "batch_size": 8,
}


def files_outside_git(root: Path) -> set[str]:
    """Every file under ``root`` that git does not track (ignored ones included), environments and caches aside."""
    command = ["git", "status", "--porcelain", "--ignored", "-uall", "--", "."]
    command += [f":(exclude){pattern}" for pattern in (".venv*", "*.egg-info", ".ruff_cache", ".pytest_cache")]
    listed = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
    return {line[3:] for line in listed if line[:2] in ("??", "!!") and "__pycache__" not in line}


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_checkout():
    """Tests write only to temporary folders: the session fails if it left a new file in the checkout."""
    if not (REPO / ".git").exists():
        yield
        return
    before = files_outside_git(REPO)
    yield
    written = sorted(files_outside_git(REPO) - before)
    assert not written, f"the tests wrote into the checkout: {written[:10]}"


@pytest.fixture(scope="session")
def shared_ct() -> Path:
    """The real scans of ../shared/data/ct; CI always has them, a user's clone may not."""
    if not SHARED_CT.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real scans at {SHARED_CT}")
        pytest.skip(f"real scans not found at {SHARED_CT}")
    return SHARED_CT


def bundle_parser(*config_files: str, **overrides) -> ConfigParser:
    """A parser of the bundle's configs (train.yaml first), as `python -m monai.bundle` reads them."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in ("train.yaml", *config_files)])
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE), "text_embedding_cache": str(TEXT_EMBEDDINGS), **overrides})
    return parser


INFERENCE_CONFIGS = "['configs/train.yaml','configs/inference.yaml']"  # inferring's --config_file, in the bundle


def inference_parser(**overrides) -> ConfigParser:
    """A parser of the bundle's inference configs (train.yaml, then inference.yaml), as `inferring` reads them."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in ("train.yaml", "inference.yaml")])
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(EXAMPLE_SCANS), **overrides})
    return parser


@pytest.fixture(scope="session")
def preprocessing():
    """The bundle's per-scan preprocessing, exactly as train.yaml declares it."""
    return bundle_parser().get_parsed_content("preprocessing")


def infer_on_scan(inference, image, label, label_convention, output_dir, symptom=None, queries_file=None) -> dict:
    """``inferring`` in process: the symptom or queries of a run, read and checked as ``run()`` does, on one scan."""
    from scripts.inference import read_symptoms

    symptoms = read_symptoms(symptom, queries_file, inference.reasoner.max_symptom_words)
    return inference.infer({"image": image, "label": label, "convention": label_convention}, symptoms, output_dir)


def write_queries(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return path


def organ_ids(label_file: Path, convention: str = "totalseg_total") -> np.ndarray:
    values = np.asarray(nib.load(label_file).dataobj).round().astype(np.int64)
    return organ_lookup_table(convention, max_label=int(values.max()))[values]


def tiny_bert_dir(folder: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) and a 14-word WordPiece tokenizer, saved locally."""
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yellow", "skin", "dark", "urine", "knee", "pain"]
    words += ["jaundice", "with", "and"]
    tokenizer = Tokenizer(WordPiece({word: index for index, word in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    special = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special).save_pretrained(folder)
    return folder


def run_inferring(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run inferring`` with the bundle's inference configs, from the bundle's folder."""
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", INFERENCE_CONFIGS, *arguments]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=timeout)


def write_dicom_copies(files: list[Path], out: Path, series_uid: str, description: str, modality: str | None = None):
    """Copies of DICOM slices as another series (new SeriesInstanceUID, SOPInstanceUIDs and description), written
    uncompressed by ITK's GDCM; the pixel data and geometry are the originals'."""
    import itk

    out.mkdir(parents=True, exist_ok=True)
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer leaves the C locale behind: Python would then
    try:  # read text files as ASCII (bundle configs hold UTF-8)
        _write_dicom_copies(itk, files, out, series_uid, description, modality)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_dicom_copies(itk, files, out, series_uid, description, modality) -> None:
    for number, file in enumerate(files, 1):
        image = itk.imread(str(file))
        reader = itk.GDCMImageIO.New()
        reader.SetFileName(str(file))
        reader.ReadImageInformation()
        source = reader.GetMetaDataDictionary()  # owned by reader: use it while reader lives
        header = itk.MetaDataDictionary()
        for key in source.GetKeys():  # the file meta group and SOP class are GDCM's to write
            if not key.startswith("0002|") and key not in ("0008|0016", "7fe0|0010"):
                header[key] = source[key]
        header["0020|000e"] = series_uid
        header["0008|0018"] = f"{series_uid}.{number}"
        header["0008|103e"] = description
        if modality is not None:
            header["0008|0060"] = modality
        image.SetMetaDataDictionary(header)
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        itk.imwrite(image, str(out / f"copy_{number:03d}.dcm"), imageio=io)
