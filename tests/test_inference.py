"""`inferring`: a symptom and a scan in, organ probabilities, a probability map and a picture out (shipped weights)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE, INFERENCE_CONFIGS, infer_on_scan, inference_parser, organ_ids, write_queries
from monai.transforms import LoadImage
from scripts.organ_features import OrganFeatureCache, organ_image_features
from scripts.reasoning import check_symptom, organ_probability

from text_pipeline.organs import ORGANS, organ_index

INFERENCE = INFERENCE_CONFIGS
IN_DOMAIN = [  # clear cases, each naming no organ
    "dark urine and yellowing of the eyes",
    "blood in the urine with colicky pain in the flank",
    "vomiting blood and burning pain after eating",
    "pain in the upper right abdomen after fatty meals",
]
OUT_OF_DOMAIN = [
    "pain in the knee joint",
    "migraine with flashing lights before the headache",
    "sore throat and runny nose",
    "toothache when drinking something cold",
]


def run_inferring(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", INFERENCE, *arguments]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def patient_a_run(shared_ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("patient_a")
    queries = write_queries(out.parent / "patient_a_queries.jsonl", IN_DOMAIN + OUT_OF_DOMAIN)
    scan = shared_ct / "patient_a"
    result = run_inferring(
        "--image", str(scan / "ct.nii.gz"), "--label", str(scan / "seg_totalseg.nii.gz"),
        "--label_convention", "totalseg_total", "--queries_file", str(queries), "--output_dir", str(out),
        "--query_files", "true", "--feature_cache_dir", str(out.parent / "cache_a"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return scan, out, json.loads((out / "scores.json").read_text()), result.stdout.decode()


def test_scores_hold_seven_ranked_probabilities_per_query(patient_a_run):
    _, out, scores, stdout = patient_a_run
    assert [query["text"] for query in scores["queries"]] == IN_DOMAIN + OUT_OF_DOMAIN
    assert scores["organs_not_in_scan"] == []
    for query in scores["queries"]:
        probabilities = query["probabilities"]
        assert list(probabilities) == list(ORGANS) and all(0.0 <= p <= 1.0 for p in probabilities.values())
        ranking = [entry["probability"] for entry in query["ranking"]]
        assert ranking == sorted(probabilities.values(), reverse=True)
        top = query["ranking"][0]
        assert f"1. {top['organ']:<14} {top['probability']:.3f}" in stdout
        assert Path(query["picture"]).read_bytes().startswith(b"\x89PNG")
        assert f"picture: {query['picture']}" in stdout


def test_probability_map_is_on_the_ct_grid_and_carries_each_organs_score(patient_a_run):
    scan, _, scores, _ = patient_a_run
    ct = nib.load(scan / "ct.nii.gz")
    labels = organ_ids(scan / "seg_totalseg.nii.gz")
    for query in scores["queries"][:2]:
        probability_map = nib.load(query["probability_map"])
        assert probability_map.shape == ct.shape
        np.testing.assert_allclose(probability_map.affine, ct.affine, atol=1e-5)
        values = np.asarray(probability_map.dataobj)
        assert (values[labels == 0] == 0).all()
        for organ, p in query["probabilities"].items():
            np.testing.assert_allclose(values[labels == organ_index(organ) + 1], p, rtol=1e-6)


def test_out_of_domain_symptoms_score_lower_than_in_domain_ones(patient_a_run):
    _, _, scores, _ = patient_a_run
    top = {query["text"]: max(query["probabilities"].values()) for query in scores["queries"]}
    assert max(top[text] for text in OUT_OF_DOMAIN) < min(top[text] for text in IN_DOMAIN)


def test_dicom_series_with_missing_organs(shared_ct, tmp_path):
    scan = shared_ct / "patient_b"
    result = run_inferring(
        "--image", str(scan / "dicom"), "--label", str(scan / "seg_totalseg.nii.gz"),
        "--label_convention", "totalseg_total", "--output_dir", str(tmp_path),
        "--symptom", "vomiting blood and burning pain after eating", "--feature_cache_dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["organs_not_in_scan"] == ["kidney", "gallbladder"]
    (query,) = scores["queries"]
    assert query["probabilities"]["kidney"] is None and query["probabilities"]["gallbladder"] is None
    assert [entry["organ"] for entry in query["ranking"]] == sorted(
        ["liver", "pancreas", "spleen", "stomach", "adrenal_gland"], key=lambda organ: -query["probabilities"][organ]
    )
    ct = LoadImage(image_only=True)(str(scan / "dicom"))
    probability_map = nib.load(query["probability_map"])
    assert probability_map.shape == tuple(ct.shape) == (512, 512, 20)
    np.testing.assert_allclose(probability_map.affine, ct.affine.numpy(), atol=1e-4)
    values = np.asarray(probability_map.dataobj)
    assert np.isclose(values, query["probabilities"]["liver"]).sum() > 10_000  # the liver's voxels
    assert "organ_ranks" not in query  # written only when asked (rank_maps)


def test_rank_maps_carry_each_organs_rank_on_the_ct_grid(shared_ct, tmp_path):
    scan = shared_ct / "patient_b"
    result = run_inferring(
        "--image", str(scan / "dicom"), "--label", str(scan / "seg_totalseg.nii.gz"), "--rank_maps", "true",
        "--label_convention", "totalseg_total", "--output_dir", str(tmp_path), "--symptom", "jaundice",
        "--feature_cache_dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    (query,) = json.loads((tmp_path / "scores.json").read_text())["queries"]
    ranks = nib.load(query["organ_ranks"])
    probabilities = np.asarray(nib.load(query["probability_map"]).dataobj)
    assert ranks.get_data_dtype() == np.uint8 and ranks.shape == probabilities.shape
    np.testing.assert_allclose(ranks.affine, nib.load(query["probability_map"]).affine)
    ranks = np.asarray(ranks.dataobj)
    assert set(np.unique(ranks)) == {0, 1, 2, 3, 4, 5}  # patient_b holds 5 of the organs
    for rank, entry in enumerate(query["ranking"], start=1):
        np.testing.assert_allclose(probabilities[ranks == rank], entry["probability"], rtol=1e-6)


def test_a_queries_file_gets_its_scores_alone_unless_files_are_asked_for(shared_ct, tmp_path):
    queries = write_queries(tmp_path / "queries.jsonl", IN_DOMAIN)
    scan = shared_ct / "patient_a"
    result = run_inferring(
        "--image", str(scan / "ct.nii.gz"), "--label", str(scan / "seg_totalseg.nii.gz"),
        "--label_convention", "totalseg_total", "--queries_file", str(queries), "--output_dir", str(tmp_path / "out"),
        "--feature_cache_dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["scores.json"]
    assert f"the scores of {len(IN_DOMAIN)} queries are in" in result.stdout.decode()
    queries = json.loads((tmp_path / "out" / "scores.json").read_text())["queries"]
    assert [query["text"] for query in queries] == IN_DOMAIN and "picture" not in queries[0]


def test_default_run_works_right_after_install(tmp_path):
    out = tmp_path / "out"
    result = run_inferring(
        "--output_dir", str(out), "--dataset_dir", str(tmp_path / "example"), "--feature_cache_dir", str(tmp_path / "c")
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    scores = json.loads((out / "scores.json").read_text())
    (query,) = scores["queries"]
    assert query["text"] == "dark urine and yellowing of the eyes"
    assert Path(scores["image"]).is_relative_to(tmp_path / "example")  # the example scan, written to dataset_dir
    assert (out / "query_000.png").is_file() and (out / "query_000_probability_map.nii.gz").is_file()


def test_undecodable_symptom_on_the_command_line(tmp_path):
    example = ("--dataset_dir", str(tmp_path / "example"))  # the default scan, written to a temporary folder
    result = run_inferring("--symptom", b"pain \xff\xfe in the belly", "--output_dir", str(tmp_path / "out"), *example)
    assert result.returncode != 0
    assert b"symptom is not valid UTF-8 text" in result.stderr
    assert not (tmp_path / "out").exists()


# in-process: the same code path as the command, without a process start per case


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    parser = inference_parser(feature_cache_dir=str(tmp_path_factory.mktemp("feature_cache")))
    return parser.get_parsed_content("reasoner"), parser.get_parsed_content("evaluator"), parser


def run_infer(components, scan_dir: Path, output_dir: Path, **kwargs):
    arguments = dict(image=scan_dir / "ct.nii.gz", label=scan_dir / "seg_totalseg.nii.gz")
    arguments.update(label_convention="totalseg_total", output_dir=output_dir)
    arguments.update(kwargs)
    return infer_on_scan(components[1], **arguments)


@pytest.mark.parametrize(
    ("symptom", "message"),
    [
        ("", "symptom is empty or only whitespace"),
        (" \t\n ", "symptom is empty or only whitespace"),
        ("pain " * 10_000, "symptom has 10000 words; at most 200"),
        (b"pain \xff in the belly", r"symptom is not valid UTF-8 text \(byte 5\)"),
        ("pain \udcff in the belly", "symptom is not valid UTF-8 text"),
    ],
)
def test_bad_symptoms_are_refused_before_anything_is_written(components, shared_ct, tmp_path, symptom, message):
    with pytest.raises(ValueError, match=message):
        run_infer(components, shared_ct / "patient_a", tmp_path / "out", symptom=symptom)
    assert not (tmp_path / "out").exists()


def test_malformed_queries_line_is_named(components, shared_ct, tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"text": "jaundice"}\n{"text": "dark urine",\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"queries.jsonl:2: not valid JSON"):
        run_infer(components, shared_ct / "patient_a", tmp_path / "out", queries_file=queries)
    long_query = tmp_path / "long.jsonl"
    write_queries(long_query, ["jaundice", "itch " * 500])
    with pytest.raises(ValueError, match=r"long.jsonl: query 2 has 500 words"):
        run_infer(components, shared_ct / "patient_a", tmp_path / "out", queries_file=long_query)
    with pytest.raises(ValueError, match="exactly one of symptom"):
        run_infer(components, shared_ct / "patient_a", tmp_path / "out", symptom="jaundice", queries_file=queries)
    assert not (tmp_path / "out").exists()


def test_missing_scan_and_unknown_convention_are_refused_before_anything_is_written(components, shared_ct, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image {tmp_path / 'nowhere' / 'ct.nii.gz'} does not exist"):
        run_infer(components, tmp_path / "nowhere", tmp_path / "out", symptom="jaundice")
    with pytest.raises(ValueError, match="unknown label_convention 'btvc'"):
        run_infer(components, shared_ct / "patient_a", tmp_path / "out", symptom="jaundice", label_convention="btvc")
    assert not (tmp_path / "out").exists()


def copy_with_label(scan_dir: Path, tmp_path: Path, label: np.ndarray, affine: np.ndarray) -> Path:
    (tmp_path / "scan").mkdir()
    nib.save(nib.load(scan_dir / "ct.nii.gz"), tmp_path / "scan" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.int16), affine), tmp_path / "scan" / "seg_totalseg.nii.gz")
    return tmp_path / "scan"


def test_scan_with_none_of_the_organs(components, shared_ct, tmp_path):
    ct = nib.load(shared_ct / "patient_a" / "ct.nii.gz")
    scan = copy_with_label(shared_ct / "patient_a", tmp_path, np.zeros(ct.shape), ct.affine)
    with pytest.raises(Exception, match="contains none of the organs") as caught:
        run_infer(components, scan, tmp_path / "out", symptom="jaundice")
    assert str(scan / "seg_totalseg.nii.gz") in str(caught.value)
    assert not (tmp_path / "out").exists()  # the folder the run created is gone with it


def test_label_map_not_aligned_with_its_ct(components, shared_ct, tmp_path):
    seg = nib.load(shared_ct / "patient_a" / "seg_totalseg.nii.gz")
    shifted = seg.affine.copy()
    shifted[:3, 3] += 30.0
    scan = copy_with_label(shared_ct / "patient_a", tmp_path, np.asarray(seg.dataobj), shifted)
    with pytest.raises(Exception, match="is not aligned with its CT"):
        run_infer(components, scan, tmp_path / "out", symptom="jaundice")
    assert not (tmp_path / "out").exists()  # the folder the run created is gone with it


def test_output_dir_that_cannot_be_written(components, shared_ct, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match=f"output_dir {blocker / 'out'} cannot be written"):
        run_infer(components, shared_ct / "patient_a", blocker / "out", symptom="jaundice")


def test_organ_features_of_a_scan_are_computed_once(components, shared_ct, tmp_path):
    reasoner, _, parser = components
    calls = []

    def counted(scan):
        calls.append(scan["image"])
        return parser.get_parsed_content("preprocessing")(scan)

    def refuse(scan):
        raise AssertionError("the cached features should have been used")

    settings = dict(network=reasoner.network, model_path=parser["model_path"], cache_dir=tmp_path / "cache")
    scan = {"image": str(shared_ct / "patient_a" / "ct.nii.gz"), "convention": "totalseg_total"}
    scan["label"] = str(shared_ct / "patient_a" / "seg_totalseg.nii.gz")
    cache = OrganFeatureCache(preprocessing=counted, **settings)
    first = cache(scan)
    assert cache(scan) is first and len(calls) == 1  # in memory
    from_disk = OrganFeatureCache(preprocessing=refuse, **settings)(scan)
    assert torch.equal(from_disk.features, first.features)
    OrganFeatureCache(preprocessing=counted, settings={"hu_window": [-100, 200]}, **settings)(scan)
    assert len(calls) == 2  # other preprocessing, other key
    probabilities = reasoner.probabilities(IN_DOMAIN, first)
    assert probabilities.shape == (len(IN_DOMAIN), len(ORGANS)) and ((0 <= probabilities) & (probabilities <= 1)).all()


def test_a_corrupt_feature_cache_entry_is_named_and_computed_anew(components, shared_ct, tmp_path, caplog):
    reasoner, _, parser = components
    preprocessing = parser.get_parsed_content("preprocessing")
    settings = dict(network=reasoner.network, model_path=parser["model_path"], cache_dir=tmp_path / "cache")
    scan = {"image": str(shared_ct / "patient_a" / "ct.nii.gz"), "convention": "totalseg_total"}
    scan["label"] = str(shared_ct / "patient_a" / "seg_totalseg.nii.gz")
    first = OrganFeatureCache(preprocessing=preprocessing, **settings)(scan)
    (entry,) = (tmp_path / "cache").glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # cut short, as by a full disk
    again = OrganFeatureCache(preprocessing=preprocessing, **settings)(scan)
    assert torch.allclose(again.features, first.features, atol=1e-6) and torch.equal(again.counts, first.counts)
    assert f"organ feature cache entry {entry} is unreadable" in caplog.text
    reread = OrganFeatureCache(preprocessing=lambda _: pytest.fail("the rewritten entry should be read"), **settings)
    assert torch.equal(reread(scan).features, again.features)


def test_organ_image_features_are_unit_means_per_organ(components):
    reasoner, _, _ = components
    generator = torch.Generator().manual_seed(0)
    samples = [{"image": torch.rand(3, 64, 64, 16, generator=generator), "label": label} for label in (0, 0, 2)]
    organs = organ_image_features(reasoner.network, samples)
    assert organs.counts.tolist() == [2, 0, 1, 0, 0, 0, 0]
    assert organs.absent_organs() == ["pancreas", "gallbladder", "spleen", "stomach", "adrenal_gland"]
    assert torch.allclose(organs.features[[0, 2]].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.isnan(organs.features[1]).all()
    with torch.no_grad():
        slices = torch.nn.functional.normalize(reasoner.network.image.slice_features(samples[2]["image"][None]), dim=-1)
    expected = torch.nn.functional.normalize(slices.mean(dim=1)[0], dim=0)
    assert torch.allclose(organs.features[2], expected, atol=1e-5)


def test_probability_is_monotone_in_the_evidence():
    evidence = torch.linspace(-3, 3, 50)
    p = organ_probability(evidence, scale=5.0, bias=-1.5)
    assert ((p >= 0) & (p <= 1)).all() and (p.diff() > 0).all()
    assert torch.isclose(organ_probability(torch.tensor(0.3), 5.0, -1.5), torch.sigmoid(torch.tensor(0.0)))


def test_check_symptom_strips_and_accepts_utf8():
    assert check_symptom("  jaundice and itching  ") == "jaundice and itching"
    assert check_symptom("douleur épigastrique".encode()) == "douleur épigastrique"
    with pytest.raises(ValueError, match="must be text"):
        check_symptom(42)
