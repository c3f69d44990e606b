"""The default weights shipped in bundle/models: small, loadable by every config, and recording their origin."""

from __future__ import annotations

import json
import subprocess

import torch
from conftest import BUNDLE, REPO, bundle_parser, inference_parser

from text_pipeline.labels import LABEL_KINDS
from text_pipeline.text_model import load_text_model

SHIPPED = ["model.pt", "text/anchors.pt", "text/encoder_tuned.pt", "text/manifest.json"]
SHIPPED += [f"text/text_mlp_{kind}.pt" for kind in LABEL_KINDS]
MAX_BYTES = 16 * 1024 * 1024


def test_shipped_files_are_in_the_repository_and_at_most_16_mb():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "bundle/models"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert {f"bundle/models/{name}" for name in SHIPPED} <= set(listed)
    assert sum((REPO / path).stat().st_size for path in listed) <= MAX_BYTES


def test_model_weights_fit_the_network_of_training_and_of_inference():
    weights = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    training = bundle_parser().get_parsed_content("network_def")
    training.load_state_dict(weights)  # strict
    network = inference_parser().get_parsed_content("network")
    assert {k: v.shape for k, v in network.state_dict().items()} == {k: v.shape for k, v in weights.items()}
    assert float(network.probability_scale) > 0


def test_text_artifacts_record_their_encoder_and_labels():
    for kind in LABEL_KINDS:
        model = load_text_model(BUNDLE / "models" / "text" / f"text_mlp_{kind}.pt")
        assert model.extra == {"encoder": "tuned:encoder_tuned.pt", "labels": kind}
        assert model.config["hidden_dim"] == bundle_parser()["text_feature_size"]
    manifest = json.loads((BUNDLE / "models" / "text" / "manifest.json").read_text())
    assert manifest["settings"]["encoder"] == "minilm" and manifest["settings"]["fine_tune"]
    assert manifest["encoder"] == "tuned:encoder_tuned.pt" and manifest["corpus"]["train"] >= 0.8 * 7 * 400
    assert bundle_parser()["text_labels"] == manifest["default_labels"] == "calibrated"


def test_the_shipped_image_network_names_every_organ_of_real_scans_it_never_saw(shared_ct):
    """Regression on real CT: patient_a (NIfTI, all 7 organs) and patient_b (DICOM, 5 organs), never trained on."""
    from scripts.data import organ_samples

    parser = bundle_parser()
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    preprocessing = parser.get_parsed_content("preprocessing")
    for name, image, expected in (("patient_a", "ct.nii.gz", 7), ("patient_b", "dicom", 5)):
        scan = {
            "image": str(shared_ct / name / image),
            "label": str(shared_ct / name / "seg_totalseg.nii.gz"),
            "convention": "totalseg_total",
        }
        samples = organ_samples([scan], preprocessing)
        with torch.no_grad():
            named = network.eval().image(torch.stack([sample["image"] for sample in samples])).argmax(dim=1)
        truth = [int(sample["label"]) for sample in samples]
        assert len(truth) == expected
        assert named.tolist() == truth, f"{name}: organs {truth} named {named.tolist()}"
