"""The bundle in Model Zoo's format, checked offline, each check as Model Zoo's CI or a user runs it from bundle/.

metadata.json against the shipped schema (and the schema's own teeth), the packages it names against what the
bundle imports and what is installed, the network's shapes, the TorchScript export against the checkpoint, the
large files' hashes, MONAI's inference-workflow properties, and the licence and README files.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys

import jsonschema
import pytest
import torch
import yaml
from conftest import BUNDLE, REPO, TEXT_EMBEDDINGS, bundle_parser, inference_parser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from text_pipeline.organs import ORGANS

MONAI_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
METADATA = BUNDLE / "configs" / "metadata.json"
SCHEMA_ARG = "docs/metadata_schema.json"  # verify_metadata's --filepath, from the bundle's folder
SCHEMA = BUNDLE / SCHEMA_ARG
MODEL_ZOO_FIELDS = (  # what Model Zoo's CI requires, then the optional fields this bundle promises
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "task", "description", "authors", "copyright", "network_data_format",
    "name", "intended_use", "data_source", "data_type", "references", "eval_metrics",
)  # fmt: skip
BASE_PACKAGES = {"monai", "torch", "numpy"}  # metadata.json's own *_version fields
TRACE_TOLERANCE = 1e-5  # absolute, on the logits: the traced graph runs the same float32 operations
README_SECTIONS = (
    "Model Overview", "Data", "Preprocessing", "Training configuration", "Input and output formats",
    "Performance", "MONAI Bundle Commands", "Limitations", "References", "License",
)  # fmt: skip


def bundle_command(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ...`` from the bundle's folder, as Model Zoo bundles are run."""
    command = [sys.executable, "-m", "monai.bundle", *arguments]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=timeout)


def metadata() -> dict:
    return json.loads(METADATA.read_text(encoding="utf-8"))


def schema() -> dict:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def installed_version(distribution: str) -> str:
    """The installed version without a local build tag (torch's ``2.13.0+cpu`` is PyTorch 2.13.0)."""
    return Version(importlib.metadata.version(distribution)).public


# (a) verify_metadata, offline, against the shipped schema


def test_metadata_validates_against_the_shipped_schema():
    result = bundle_command("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", SCHEMA_ARG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr
    assert metadata()["schema"] == MONAI_SCHEMA_URL


def test_metadata_has_every_model_zoo_field_and_a_changelog_entry_for_its_version():
    meta = metadata()
    assert [field for field in MODEL_ZOO_FIELDS if field not in meta] == []
    assert set(MODEL_ZOO_FIELDS) <= set(schema()["required"])
    assert meta["version"] in meta["changelog"]
    assert next(iter(meta["changelog"])) == meta["version"]  # newest first
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert [pred["channel_def"][str(index)] for index in range(len(ORGANS))] == list(ORGANS)
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == len(image["channel_def"]) == bundle_parser()["in_channels"]
    assert image["spatial_shape"] == bundle_parser()["image_size"]


# (b) the shipped schema rejects what it should


def broken_metadata(change) -> dict:
    meta = copy.deepcopy(metadata())
    change(meta)
    return meta


BROKEN_CHANNEL_DEFS = {
    "an organ renamed": lambda channels: channels.update({"2": "kidneys"}),
    "two organs swapped": lambda channels: channels.update({"0": "pancreas", "1": "liver"}),
    "an organ missing": lambda channels: channels.pop("6"),
    "an eighth channel": lambda channels: channels.update({"7": "bladder"}),
}


@pytest.mark.parametrize("field", MODEL_ZOO_FIELDS)
def test_the_schema_rejects_metadata_missing_a_required_field(field, tmp_path):
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(broken_metadata(lambda meta: meta.pop(field))))
    with pytest.raises(jsonschema.ValidationError, match=re.escape(repr(field))):
        jsonschema.validate(json.loads(broken.read_text()), schema())


@pytest.mark.parametrize("breakage", BROKEN_CHANNEL_DEFS)
def test_the_schema_rejects_a_channel_def_not_naming_the_7_organs(breakage, tmp_path):
    def change(meta):
        BROKEN_CHANNEL_DEFS[breakage](meta["network_data_format"]["outputs"]["pred"]["channel_def"])

    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(broken_metadata(change)))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(broken.read_text()), schema())


OTHER_BREAKAGES = {
    "schema not MONAI's": lambda meta: meta.update(schema="https://example.org/my_schema.json"),
    "version not x.y.z": lambda meta: meta.update(version="0.6"),
    "a package without a version": lambda meta: meta["required_packages_version"].update(nibabel=""),
    "a figure without its command": lambda meta: next(iter(meta["eval_metrics"].values())).pop("command"),
    "7 input channels": lambda meta: meta["network_data_format"]["inputs"]["image"].update(num_channels=7),
    "an output without dtype": lambda meta: meta["network_data_format"]["outputs"]["pred"].pop("dtype"),
}  # fmt: skip


@pytest.mark.parametrize("breakage", OTHER_BREAKAGES)
def test_the_schema_rejects_other_broken_metadata(breakage):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken_metadata(OTHER_BREAKAGES[breakage]), schema())


def test_verify_metadata_refuses_a_broken_copy(tmp_path):
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(broken_metadata(lambda meta: meta.pop("copyright"))))
    result = bundle_command("verify_metadata", "--meta_file", str(broken), "--filepath", SCHEMA_ARG)
    assert result.returncode != 0
    assert "'copyright' is a required property" in result.stderr


# (c) the packages metadata.json names: every third-party import of the bundle, at the installed versions


def bundle_imports() -> dict[str, set[str]]:
    """Top-level module -> the files of bundle/scripts and bundle/configs importing it (absolute imports only)."""
    modules: dict[str, set[str]] = {}
    for file in sorted(BUNDLE.glob("scripts/**/*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                modules.setdefault(name.split(".")[0], set()).add(str(file.relative_to(BUNDLE)))

    def visit(value, file):
        if isinstance(value, dict):
            target = value.get("_target_")
            if isinstance(target, str) and "." in target:
                modules.setdefault(target.split(".")[0], set()).add(file)
            for item in value.values():
                visit(item, file)
        elif isinstance(value, list):
            for item in value:
                visit(item, file)
        elif isinstance(value, str):
            for match in re.finditer(r"\$\s*import\s+([A-Za-z_][\w.]*)|\$\s*from\s+([A-Za-z_][\w.]*)\s+import", value):
                modules.setdefault((match[1] or match[2]).split(".")[0], set()).add(file)

    for file in sorted(BUNDLE.glob("configs/*.yaml")):
        visit(yaml.safe_load(file.read_text(encoding="utf-8")), str(file.relative_to(BUNDLE)))
    local = {path.name for path in BUNDLE.iterdir() if path.is_dir()}  # scripts (the bundle's own package)
    return {module: files for module, files in modules.items() if module not in sys.stdlib_module_names | local}


def distributions_covering(distribution: str) -> set[str]:
    """A distribution and those it requires (``itk`` installs the ``itk-*`` distributions its module lives in)."""
    requirements = importlib.metadata.requires(distribution) or []
    required = {canonicalize_name(Requirement(line).name) for line in requirements if "extra ==" not in line}
    return {canonicalize_name(distribution)} | required


def test_required_packages_cover_every_third_party_import_of_the_bundle():
    required = {canonicalize_name(name) for name in metadata()["required_packages_version"]}
    covered = set().union(*(distributions_covering(name) for name in required)) | BASE_PACKAGES
    module_distributions = importlib.metadata.packages_distributions()
    imports = bundle_imports()
    assert {"ignite", "nibabel", "itk", "text_pipeline"} <= set(imports)  # the parse finds what is there
    uncovered = {}
    for module, files in imports.items():
        distributions = {canonicalize_name(name) for name in module_distributions.get(module, [])}
        assert distributions, f"{module} (imported by {sorted(files)}) is not installed"
        if not distributions & covered:
            uncovered[module] = (sorted(distributions), sorted(files))
    assert uncovered == {}, f"imported by the bundle but not in required_packages_version: {uncovered}"
    assert "medsora" in required  # text_pipeline: this project's own package, installed from the repository


def test_metadata_versions_name_installed_packages_and_this_projects_version():
    """The versions the bundle was verified with. They are not compared with what is installed (a fresh install
    takes the index's newest releases, so CI would fail on any release elsewhere), except this project's own."""
    meta = metadata()
    for field, name in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        Version(meta[field])
        installed_version(name)  # installed, so the bundle's imports can have been checked against it
    packages = meta["required_packages_version"]
    for name, version in packages.items():
        Version(version)
        installed_version(name)
    assert not BASE_PACKAGES & {canonicalize_name(name) for name in packages}  # they have their own fields
    project = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    assert packages["medsora"] == project == installed_version("medsora") == meta["version"]


# (d) verify_net_in_out


@pytest.mark.parametrize("fusion", ["2d", "3d", "concat", "cross_attention"])
def test_verify_net_in_out_with_metadata_shapes(fusion):
    result = bundle_command(
        "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/train.yaml", "--fusion", fusion, "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


# (e) ckpt_export: a TorchScript file that gives the checkpoint's logits


@pytest.fixture(scope="module")
def organ_batch(tmp_path_factory, preprocessing) -> torch.Tensor:
    """The 7 organs of a freshly written phantom, through the bundle's own preprocessing: [7, 3, 64, 64, 16]."""
    from scripts.data import organ_samples
    from scripts.phantom import write_phantom_dataset

    (item,) = write_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_cases=1, seed=5)
    samples = sorted(organ_samples([item], preprocessing), key=lambda sample: int(sample["label"]))
    assert [int(sample["label"]) for sample in samples] == list(range(len(ORGANS)))
    images = torch.stack([torch.as_tensor(sample["image"]) for sample in samples]).float()
    assert tuple(images.shape[1:]) == (3, 64, 64, 16)
    assert (images[:, 0].flatten(1).amax(1) > 0).all()  # every organ's masked CT holds the organ
    return images


def test_ckpt_export_gives_torchscript_with_the_checkpoints_logits(tmp_path, organ_batch):
    exported = tmp_path / "model.ts"
    result = bundle_command(
        "ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file", "models/model.pt",
        "--meta_file", "configs/metadata.json", "--config_file", "['configs/train.yaml','configs/inference.yaml']",
        "--use_trace", "True", "--input_shape", "[1, 3, 64, 64, 16]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"exported to file: {exported}" in result.stdout + result.stderr

    extra_files = {"metadata.json": ""}
    traced = torch.jit.load(str(exported), map_location="cpu", _extra_files=extra_files).eval()
    assert json.loads(extra_files["metadata.json"])["version"] == metadata()["version"]
    parser = inference_parser(device="$torch.device('cpu')", text_embedding_cache=str(TEXT_EMBEDDINGS))
    network = parser.get_parsed_content("network").eval()
    with torch.no_grad():
        for batch in (organ_batch, organ_batch[2:5]):  # all 7 organs, then 3 of them
            expected = network(batch)
            assert expected.shape == (len(batch), len(ORGANS))
            torch.testing.assert_close(traced(batch), expected, atol=TRACE_TOLERANCE, rtol=0)
        assert traced(organ_batch).argmax(1).tolist() == list(range(len(ORGANS)))  # each organ named right


# (f) large_files.yml


def large_files() -> list[dict]:
    return yaml.safe_load((BUNDLE / "large_files.yml").read_text(encoding="utf-8"))["large_files"]


def test_large_files_hashes_match_the_shipped_files():
    entries = large_files()
    shipped = subprocess.run(["git", "ls-files", "models"], cwd=BUNDLE, capture_output=True, text=True, check=True)
    weights = {line for line in shipped.stdout.split() if not line.endswith(".gitkeep")}
    assert {entry["path"] for entry in entries} == weights
    for entry in entries:
        assert set(entry) == {"path", "url", "hash_val", "hash_type"} and entry["hash_type"] == "md5"
        assert hashlib.md5((BUNDLE / entry["path"]).read_bytes()).hexdigest() == entry["hash_val"], entry["path"]


def test_download_large_files_verifies_a_copy_and_refuses_a_changed_file(tmp_path):
    shutil.copy(BUNDLE / "large_files.yml", tmp_path)
    for entry in large_files():
        (tmp_path / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLE / entry["path"], tmp_path / entry["path"])
    result = bundle_command("download_large_files", "--bundle_path", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("skipped downloading") == len(large_files())
    with (tmp_path / "models" / "text" / "manifest.json").open("a") as manifest:
        manifest.write(" ")
    result = bundle_command("download_large_files", "--bundle_path", str(tmp_path))
    assert result.returncode != 0 and "hash check of existing file failed" in result.stdout + result.stderr


# (g) MONAI's inference-workflow properties


def test_inference_configs_have_monais_inference_properties(tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(BUNDLE / "configs" / "train.yaml"), str(BUNDLE / "configs" / "inference.yaml")],
        meta_file=str(METADATA),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        dataset_dir=str(tmp_path / "example"),  # the example scan is written here, not in the bundle
        output_dir=str(tmp_path / "out"),
        feature_cache_dir=str(tmp_path / "cache"),
        text_embedding_cache=str(TEXT_EMBEDDINGS),
        device="$torch.device('cpu')",
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.version == metadata()["version"]


# (h) licences and README


def test_licence_files_name_their_licences():
    licence = (BUNDLE / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0" in licence
    assert licence == (REPO / "LICENSE").read_text(encoding="utf-8")
    data_licence = (BUNDLE / "docs" / "data_license.txt").read_text(encoding="utf-8")
    assert "Multi-Atlas Labeling Beyond the Cranial Vault" in data_licence and "Synapse" in data_licence
    assert "synthetic phantoms" in data_licence and "Apache License 2.0" in data_licence
    assert "No clinician has validated" in data_licence and "no scan from there is distributed" in data_licence


def test_readme_has_the_model_zoo_sections_in_order():
    readme = (BUNDLE / "docs" / "README.md").read_text(encoding="utf-8")
    headings = [line.lstrip("#").strip() for line in readme.splitlines() if re.match(r"#{1,4} ", line)]
    positions = []
    for section in README_SECTIONS:
        found = [index for index, heading in enumerate(headings) if heading.lower().startswith(section.lower())]
        assert found, f"README has no section {section!r}"
        positions.append(found[0])
    assert positions == sorted(positions), list(zip(README_SECTIONS, positions))
    assert "ckpt_export" in readme and "download_large_files" in readme
    assert "bundle/models/model.pt" not in readme and "ood_queries.jsonl" not in readme
