"""The bundle as its users run it: `python -m monai.bundle ...` and `torchrun`, on small settings."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE, SMALL_NETWORK, TEXT_EMBEDDINGS
from scripts.networks import MedSORAImageNet, MedSORANet
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from text_pipeline.corpus import OOD_QUERIES, read_corpus, read_queries, read_query_sources
from text_pipeline.metrics import evaluate_scores
from text_pipeline.organs import ORGANS

TRAIN = "configs/train.yaml"
SMALL = {**SMALL_NETWORK, "num_phantom_train": 3, "num_phantom_val": 1, "learning_rate": 0.001, "num_workers": 2}
ITERATIONS_PER_EPOCH = 3  # 3 phantoms x 7 organs = 21 samples in batches of 8


def bundle_command(run_id: str, config_files: list[str], run_dir: Path, phantom_dir: Path, **overrides) -> list[str]:
    config = config_files[0] if len(config_files) == 1 else str(config_files)
    settings = {**SMALL, "phantom_dir": phantom_dir, "ckpt_dir": run_dir / "models", "output_dir": run_dir / "eval"}
    settings["text_embedding_cache"] = TEXT_EMBEDDINGS
    arguments = [f"--{key}={str(value).replace(' ', '')}" for key, value in {**settings, **overrides}.items()]
    return ["-m", "monai.bundle", "run", run_id, "--config_file", config, *arguments]


def run_bundle(*args, timeout: int = 300, launcher: tuple[str, ...] = (sys.executable,)) -> subprocess.CompletedProcess:
    result = subprocess.run([*launcher, *args], cwd=BUNDLE, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def scalars(log_dir: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def trainer_iteration(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["trainer"]["iteration"])


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("phantoms")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom_dir) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("run")
    # no alignment refinement: model.pt stays the best validation's weights, which the evaluating test checks;
    # test_alignment_alone_... below runs it, as do tests/test_refinement.py and tests/test_multi_gpu.py
    command = bundle_command("training", [TRAIN], run_dir, phantom_dir, num_epochs=5, refinement_steps=0)
    return run_dir, run_bundle(*command)


@pytest.mark.slow
def test_training_learns_the_image_model_and_the_alignment_together(trained):
    run_dir, result = trained
    losses = scalars(run_dir / "eval", "train_loss")
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert losses[5] < 0.8 * losses[1]
    assert re.search(r"Epoch \[5/5\]: \[3/3\] 100%", result.stderr)  # the progress bar
    assert "per-organ validation results" in result.stdout
    for organ in ORGANS:
        assert re.search(rf"^{organ} +[01]\.\d{{3}} +1$", result.stdout, re.MULTILINE)
    metrics = json.loads((run_dir / "eval" / "validation_metrics.json").read_text())
    assert metrics["epoch"] == 5 and len(metrics["confusion_matrix"]) == len(ORGANS)
    assert sum(map(sum, metrics["confusion_matrix"])) == len(ORGANS)  # one validation phantom, 7 organs
    assert (run_dir / "eval" / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert set(scalars(run_dir / "eval", "val_accuracy")) == {1, 2, 3, 4, 5}
    alignment = scalars(run_dir / "eval", "val_alignment_loss")  # InfoNCE of the validation organs vs the texts
    assert alignment[5] < alignment[1]
    assert set(scalars(run_dir / "eval", "val_alignment_accuracy")) == {1, 2, 3, 4, 5}
    # each term of L_total per iteration (5 epochs x 3 iterations), adding up to L_total
    iterations = set(range(1, 5 * ITERATIONS_PER_EPOCH + 1))
    terms = {tag: scalars(run_dir / "eval", f"loss_{tag}") for tag in ("align", "image", "text_to_image")}
    terms.update({head: scalars(run_dir / "eval", f"loss_image_{head}") for head in ("2d", "3d", "fusion")})
    total = scalars(run_dir / "eval", "loss")
    assert set(total) == iterations and all(set(values) == iterations for values in terms.values())
    for step in iterations:
        assert terms["image"][step] == pytest.approx(terms["2d"][step] + terms["3d"][step] + terms["fusion"][step])
        weighted = terms["align"][step] + terms["image"][step] + 0.5 * terms["text_to_image"][step]
        assert total[step] == pytest.approx(weighted, rel=1e-5)


@pytest.mark.slow
def test_training_saves_weights_and_a_resumable_checkpoint(trained):
    run_dir, _ = trained
    models = run_dir / "models"
    assert trainer_iteration(models / "checkpoint_epoch=5.pt") == 5 * ITERATIONS_PER_EPOCH
    weights = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    image_network = MedSORAImageNet(
        img_size=(32, 32, 8), in_channels=3, hidden_size=32, mlp_dim=64, num_layers_2d=1, num_layers_3d=1, num_heads=2
    )
    network = MedSORANet(image_network, text_features=256)
    network.load_state_dict(weights)
    assert network.probability_scale > 0  # fitted after validation, saved with the weights
    assert not list(models.glob(".*tmp*"))


@pytest.mark.slow
def test_alignment_alone_trains_w_align_on_the_frozen_image_model(trained, phantom_dir, tmp_path):
    run_dir, _ = trained
    pretrained = torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    command = bundle_command(
        "training", [TRAIN], tmp_path, phantom_dir, num_epochs=2, train_image_model=False,
        pretrained_model_path=run_dir / "models" / "model.pt",
    )  # fmt: skip
    result = run_bundle(*command)
    aligned = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    image_keys = [key for key in pretrained if key.startswith("image.")]
    assert image_keys and all(torch.equal(aligned[key], pretrained[key]) for key in image_keys)
    assert not torch.equal(aligned["align.weight"], pretrained["align.weight"])
    # then the alignment refinement (on by default) refined and marked the weights the run chose
    assert bool(aligned["alignment_refined"]) and not bool(pretrained["alignment_refined"])
    assert "alignment refinement: 900 steps of W_align" in result.stdout + result.stderr


@pytest.mark.slow
def test_evaluate_config_scores_the_best_weights(trained, phantom_dir):
    run_dir, _ = trained
    configs = [TRAIN, "configs/evaluate.yaml"]
    eval_dir = run_dir / "evaluate"
    result = run_bundle(*bundle_command("evaluating", configs, run_dir, phantom_dir, output_dir=eval_dir))
    assert "per-organ evaluation results" in result.stdout
    metrics = json.loads((eval_dir / "validation_metrics.json").read_text())
    best = min(scalars(run_dir / "eval", "val_alignment_loss").values())  # model.pt: the best validation
    assert metrics["val_alignment_loss"] == pytest.approx(best, rel=1e-4)
    symptoms = json.loads((eval_dir / "metrics.json").read_text())  # default queries: the corpus test split
    test_split = read_corpus("test")
    assert symptoms["n_queries"] == len(test_split) and "ood_auroc" not in symptoms
    assert [query["text"] for query in symptoms["queries"]] == [query.text for query in test_split]
    assert symptoms["samples_per_organ"] == dict.fromkeys(ORGANS, 1)  # one validation phantom


@pytest.mark.slow
def test_evaluating_symptoms_with_out_of_domain_queries(trained, phantom_dir, tmp_path):
    run_dir, _ = trained
    queries = ["corpus:test", "corpus:ood"]
    command = bundle_command(
        "evaluating", [TRAIN, "configs/evaluate.yaml"], run_dir, phantom_dir, output_dir=tmp_path,
        queries_file=str(queries).replace(" ", ""),
    )  # fmt: skip
    result = run_bundle(*command)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    labelled = read_query_sources(queries)
    scores = np.array([[query["scores"][organ] for organ in ORGANS] for query in metrics["queries"]])
    assert ((scores >= 0) & (scores <= 1)).all()
    expected = evaluate_scores(scores, labelled)  # the same definitions as text_pipeline's evaluate
    assert {key: metrics[key] for key in expected} == pytest.approx(expected)
    assert metrics["n_out_of_domain"] == len(read_queries(OOD_QUERIES)) and 0 <= metrics["ood_auroc"] <= 100
    header, values = result.stdout.strip().splitlines()[-2:]
    assert header.split() == ["rank1", "rank2", "rank3", "mAP", "ood_auroc", "n_queries"]
    assert float(values.split()[0]) == pytest.approx(metrics["rank1"], abs=0.005)


@pytest.mark.slow
def test_evaluating_names_a_malformed_queries_line(trained, phantom_dir, tmp_path):
    run_dir, _ = trained
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"text": "jaundice", "organs": ["liver"]}\n\n{"text": "itch", "organs": ["skin"]}\n')
    command = bundle_command(
        "evaluating", [TRAIN, "configs/evaluate.yaml"], run_dir, phantom_dir, output_dir=tmp_path / "out",
        queries_file=queries,
    )  # fmt: skip
    result = subprocess.run([sys.executable, *command], cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{queries}:3: unknown organ(s) 'skin'" in result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, phantom_dir):
    command = bundle_command("training", [TRAIN], tmp_path, phantom_dir, num_epochs=100)
    process = subprocess.Popen(
        [sys.executable, *command], cwd=BUNDLE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    try:
        while not list((tmp_path / "models").glob("checkpoint_epoch=*.pt")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # killed between writing a new checkpoint and removing the old one, both may be there; both are whole
    epochs_done = max(int(path.stem.split("=")[1]) for path in (tmp_path / "models").glob("checkpoint_epoch=*.pt"))
    checkpoint = tmp_path / "models" / f"checkpoint_epoch={epochs_done}.pt"
    assert epochs_done < 100 and trainer_iteration(checkpoint) == epochs_done * ITERATIONS_PER_EPOCH

    resumed = run_bundle(
        *bundle_command("training", [TRAIN], tmp_path, phantom_dir, num_epochs=epochs_done + 2, resume=True)
    )
    start = epochs_done * ITERATIONS_PER_EPOCH
    assert f"resumed at epoch {epochs_done}, iteration {start} of {epochs_done + 2} epochs" in resumed.stdout
    final = tmp_path / "models" / f"checkpoint_epoch={epochs_done + 2}.pt"
    assert trainer_iteration(final) == (epochs_done + 2) * ITERATIONS_PER_EPOCH


@pytest.mark.slow
def test_resume_without_a_checkpoint_names_the_config_id(tmp_path, phantom_dir):
    command = bundle_command("training", [TRAIN], tmp_path, phantom_dir, num_epochs=1, resume=True)
    result = subprocess.run([sys.executable, *command], cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"resume is set but ckpt_dir {tmp_path / 'models'} holds no training checkpoint" in result.stderr


@pytest.mark.slow
def test_ddp_training_on_two_cpu_processes_with_gloo(tmp_path, phantom_dir):
    configs = [TRAIN, "configs/multi_gpu_train.yaml"]
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    command = bundle_command("training", configs, tmp_path, phantom_dir, num_epochs=2)
    result = run_bundle(*command, launcher=launcher, timeout=400)
    assert result.stdout.count("per-organ validation results") == 1  # rank 0 alone reports
    # each rank trains on half of the 21 samples: 11 (padded) in batches of 8 -> 2 iterations per epoch
    assert trainer_iteration(tmp_path / "models" / "checkpoint_epoch=2.pt") == 4
    weights = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(key.startswith("module.") for key in weights)


@pytest.mark.slow
def test_training_on_the_real_scans_through_a_datalist(tmp_path, phantom_dir, shared_ct):
    items = [
        {"image": str(shared_ct / "patient_a" / "ct.nii.gz"), "convention": "totalseg_total"},
        {"image": str(shared_ct / "patient_b" / "dicom"), "convention": "totalseg_total"},
    ]
    for item in items:
        item["label"] = str(Path(item["image"]).parent / "seg_totalseg.nii.gz")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": items, "validation": items[1:]}))
    result = run_bundle(*bundle_command("training", [TRAIN], tmp_path, phantom_dir, num_epochs=1, datalist=datalist))
    assert "patient_b/dicom: no kidney in its label map, skipped" in result.stdout
    metrics = json.loads((tmp_path / "eval" / "validation_metrics.json").read_text())
    assert [metrics[f"n_{organ}"] for organ in ORGANS] == [1, 1, 0, 0, 1, 1, 1]


def test_paper_config_builds_the_papers_network_from_a_local_vit(tmp_path):
    from conftest import bundle_parser
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96)
    ).save_pretrained(tmp_path)
    parser = bundle_parser("paper.yaml", vit_pretrained_dir=str(tmp_path), device="$torch.device('cpu')")
    assert parser["num_epochs"] == 50 and parser["image_size"] == [224, 224, 32]
    network = parser.get_parsed_content("network_def").eval()
    assert type(network.image.slice_encoder).__name__ == "HuggingFaceViTSliceEncoder"
    assert network.feature_size == 48
    with torch.no_grad():
        logits = network(torch.rand(1, 3, 224, 224, 32))
    assert tuple(logits.shape) == (1, len(ORGANS))


def test_paper_config_without_a_local_vit_names_the_config_id():
    from conftest import bundle_parser

    with pytest.raises(Exception) as caught:
        bundle_parser("paper.yaml").get_parsed_content("network_def")
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("pretrained_dir" in message for message in chain)
