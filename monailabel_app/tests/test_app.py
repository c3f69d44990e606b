"""The Med-SORA MONAI Label app, driven through MONAI Label's own FastAPI app and as a real server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE, CONVENTION, SYMPTOM
from requests_toolbelt.multipart.decoder import MultipartDecoder

ORGANS = ["liver", "pancreas", "kidney", "gallbladder", "spleen", "stomach", "adrenal_gland"]
MODEL = "medsora_symptom"


def infer(client, image: str = "patient_a", params: object = None, files: dict | None = None, output: str = "all"):
    data = {"params": params if isinstance(params, str) else json.dumps(params if params is not None else {})}
    return client.post(f"/infer/{MODEL}", params={"image": image, "output": output}, data=data, files=files)


def result_of(response) -> tuple[dict, np.ndarray, np.ndarray]:
    """The JSON and the probability map (with its affine) of an `output=all` answer."""
    assert response.status_code == 200, response.text[:2000]
    parts = MultipartDecoder(response.content, response.headers["content-type"]).parts
    fields = {part.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]: part for part in parts}
    result = json.loads(fields["params"].content)
    image = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(fields["image"].content))
    return result, np.asarray(image.dataobj), image.affine


def test_info_describes_the_model_its_organs_and_parameters(client):
    info = client.get("/info/").json()
    model = info["models"][MODEL]
    assert model["labels"] == {organ: index + 1 for index, organ in enumerate(ORGANS)}
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["config"]["symptom"] == "" and model["config"]["label_convention"][0] == CONVENTION
    assert "symptom" in model["description"] and "not for clinical" in model["description"]
    assert (
        info["name"] == "Med-SORA"
        and info["version"] == json.loads((BUNDLE / "configs/metadata.json").read_text())["version"]
    )


def test_a_symptom_on_a_study_matches_the_bundles_own_inferring(client, bundle_inferring, patient_a):
    result, probability_map, affine = result_of(infer(client, params={"symptom": SYMPTOM}))
    expected = json.loads((bundle_inferring / "scores.json").read_text())["queries"][0]
    assert result["symptom"] == SYMPTOM and result["label_convention"] == CONVENTION
    assert [entry["organ"] for entry in result["ranking"]] == [entry["organ"] for entry in expected["ranking"]]
    assert len(result["ranking"]) == 7
    for organ in ORGANS:
        assert result["probabilities"][organ] == pytest.approx(expected["probabilities"][organ], abs=1e-5)
    assert [p["probability"] for p in result["ranking"]] == sorted(result["probabilities"].values(), reverse=True)
    bundle_map = nib.load(expected["probability_map"])
    ct = nib.load(patient_a / "ct.nii.gz")
    assert probability_map.shape == ct.shape and np.allclose(affine, ct.affine, atol=1e-4)
    np.testing.assert_array_equal(probability_map, np.asarray(bundle_map.dataobj))


def test_an_uploaded_ct_and_label_map_give_the_same_answer(client, patient_a):
    files = {
        "file": ("ct.nii.gz", (patient_a / "ct.nii.gz").read_bytes()),
        "label": ("seg.nii.gz", (patient_a / "seg_totalseg.nii.gz").read_bytes()),
    }
    uploaded, uploaded_map, _ = result_of(infer(client, image="", params={"symptom": SYMPTOM}, files=files))
    study, study_map, _ = result_of(infer(client, params={"symptom": SYMPTOM}))
    assert uploaded["probabilities"] == pytest.approx(study["probabilities"], abs=1e-6)
    np.testing.assert_array_equal(uploaded_map, study_map)


def test_slicers_uint8_request_gets_the_organs_ranked_as_named_segments(client, patient_a):
    """3D Slicer's module asks for uint8 results and names segments by label_names: the organ rank map."""
    params = {"symptom": SYMPTOM, "label_convention": CONVENTION, "result_dtype": "uint8", "result_extension": ".nrrd"}
    result, ranks, affine = result_of(infer(client, params=params))
    _, probability_map, _ = result_of(infer(client, params={"symptom": SYMPTOM}))
    assert ranks.dtype == np.uint8 and result["image"] == "organ_ranks"
    assert np.allclose(affine, nib.load(patient_a / "ct.nii.gz").affine, atol=1e-4)
    names = sorted(result["label_names"], key=result["label_names"].get)
    assert [name.split()[1] for name in names] == [entry["organ"] for entry in result["ranking"]]
    top = result["ranking"][0]["organ"]
    assert names[0] == f"1. {top} {result['probabilities'][top]:.3f}"
    for rank, entry in enumerate(result["ranking"], start=1):  # each organ's voxels carry its rank
        np.testing.assert_allclose(probability_map[ranks == rank], entry["probability"], rtol=1e-6)
    assert set(np.unique(ranks)) == set(range(8))


def test_a_symptom_is_scored_as_the_text_it_is(client):
    """Text a config parser would evaluate ($...) or resolve (@...) reaches the model as typed."""
    marker = Path(os.environ.get("TMPDIR", "/tmp")) / "medsora_label_should_not_exist"
    for text in (f'$__import__("pathlib").Path("{marker}").write_text("1") and "pain"', "@label", "%bundle_root"):
        result = infer(client, params={"symptom": text}, output="json").json()
        assert result["symptom"] == text
        assert len(result["ranking"]) == 7
    assert not marker.exists()


@pytest.mark.parametrize(
    ("image", "params", "status", "message"),
    [
        ("no_such_study", {"symptom": SYMPTOM}, 404, "'no_such_study' is not in the studies folder"),
        ("unlabelled", {"symptom": SYMPTOM}, 400, "no organ label map for this image"),
        ("patient_a", {"symptom": ""}, 400, "symptom is empty or only whitespace"),
        ("patient_a", {"symptom": "pain " * 10_000}, 400, "symptom has 10000 words; at most 200"),
        ("patient_a", {"symptom": 42}, 400, "symptom must be text, got int"),
        ("patient_a", {}, 400, "params has no symptom"),
        ("patient_a", "{'symptom': 'pain'", 400, "params is not valid JSON"),
        ("patient_a", '["pain"]', 400, "params must be a JSON object, got list"),
        ("patient_a", {"symptom": SYMPTOM, "label_convention": "amos"}, 400, "label_convention 'amos' is not one of"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(client, image, params, status, message):
    response = infer(client, image=image, params=params, output="json")
    assert response.status_code == status, response.text[:500]
    assert message in response.json()["detail"]


def test_a_scan_the_model_cannot_read_gets_422(client, patient_a, tmp_path):
    ct = nib.load(patient_a / "ct.nii.gz")
    not_hu = nib.Nifti1Image((np.asarray(ct.dataobj) * 0 + 500).astype(np.int16), ct.affine)  # no air: not a CT in HU
    files = {
        "file": ("ct.nii.gz", io.BytesIO(not_hu.to_bytes()).getvalue() and _gz(not_hu)),
        "label": ("seg.nii.gz", (patient_a / "seg_totalseg.nii.gz").read_bytes()),
    }
    response = infer(client, image="", params={"symptom": SYMPTOM}, files=files, output="json")
    assert response.status_code == 422
    assert "does not look like a CT in Hounsfield units" in response.json()["detail"]


def _gz(image: nib.Nifti1Image) -> bytes:
    import gzip

    return gzip.compress(image.to_bytes())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_real_server_answers_the_curl_request_of_the_readme(app_dir, studies, bundle_inferring, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir)]
    command += ["--studies", str(studies), "--conf", "bundle", str(BUNDLE), "--conf", "label_convention", CONVENTION]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /info/ within 180 s"
            time.sleep(1)
        # curl -X POST "$URL/infer/medsora_symptom?image=patient_a&output=json" -F 'params={"symptom": "..."}'
        response = httpx.post(
            f"{url}/infer/{MODEL}",
            params={"image": "patient_a", "output": "json"},
            files={"params": (None, json.dumps({"symptom": SYMPTOM}))},
            timeout=180,
        )
        assert response.status_code == 200, response.text[:2000]
        expected = json.loads((bundle_inferring / "scores.json").read_text())["queries"][0]
        answer = response.json()
        assert [entry["organ"] for entry in answer["ranking"]] == [entry["organ"] for entry in expected["ranking"]]
        assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        malformed = {"params": (None, "{")}
        bad = httpx.post(f"{url}/infer/{MODEL}", params={"image": "patient_a"}, files=malformed, timeout=60)
        assert bad.status_code == 400 and "params is not valid JSON" in bad.json()["detail"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
