"""Data-parallel training (multi_gpu_train.yaml) on 2 CPU processes with gloo: the organ probabilities are fitted on
the validation samples of all ranks, the same on each, and a resumed run keeps the best weights."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE, SMALL_NETWORK, TEXT_EMBEDDINGS, bundle_parser

from text_pipeline.organs import ORGANS

pytestmark = pytest.mark.slow

CONFIGS = ["configs/train.yaml", "configs/multi_gpu_train.yaml"]
SMALL = {**SMALL_NETWORK, "num_phantom_train": 2, "num_phantom_val": 1, "num_workers": 1}
VALIDATION_SAMPLES = len(ORGANS)  # one validation phantom, every organ once
# what each rank leaves behind, appended to the `training` steps: its fit, its record of the best validation
RANK_RECORD = """
+training:
- "$torch.save({'metrics': {key: value for key, value in @validate#evaluator.state.metrics.items()
    if key.startswith('probability')}, 'best_metric': @validate#evaluator.state.best_metric,
    'best_metric_epoch': @validate#evaluator.state.best_metric_epoch,
    'buffers': {key: value for key, value in @network.module.state_dict().items() if key.startswith('probability')}},
    os.path.join(@output_dir, 'rank' + str(@rank) + '.pt'))"
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """Phantoms and the tests' text-embedding cache for the module's runs; the cache is filled once here rather
    than by two ranks at once."""
    root = tmp_path_factory.mktemp("shared")
    paths = {"phantom_dir": root / "phantoms", "text_embedding_cache": TEXT_EMBEDDINGS}
    bundle_parser(**{key: str(value) for key, value in paths.items()}).get_parsed_content("text_bank")
    record = root / "rank_record.yaml"
    record.write_text(RANK_RECORD)
    return {**paths, "record": record}


def torchrun(shared: dict[str, Path], run_dir: Path, **overrides) -> subprocess.CompletedProcess:
    settings = {
        **SMALL, "phantom_dir": shared["phantom_dir"], "text_embedding_cache": shared["text_embedding_cache"],
        "ckpt_dir": run_dir / "models", "output_dir": run_dir / "eval", **overrides,
    }  # fmt: skip
    arguments = [f"--{key}={str(value).replace(' ', '')}" for key, value in settings.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "monai.bundle", "run", "training", "--config_file", str([*CONFIGS, str(shared["record"])])]
    result = subprocess.run([*command, *arguments], cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def rank_records(run_dir: Path) -> list[dict]:
    return [torch.load(run_dir / "eval" / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained(shared, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp")
    torchrun(shared, run_dir, num_epochs=1)
    return run_dir


def single_process_fit(shared: dict[str, Path], model_path: Path, share: slice = slice(None)) -> tuple[float, float]:
    """Platt scaling as one process does it, over the validation samples (``share`` of them) through the weights."""
    from scripts.calibration import fit_organ_probability
    from scripts.organ_features import organ_image_features

    paths = {key: str(shared[key]) for key in ("phantom_dir", "text_embedding_cache")}
    parser = bundle_parser(**SMALL, **paths, device="$torch.device('cpu')")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(weights(model_path))
    bank = parser.get_parsed_content("text_bank")
    samples = parser.get_parsed_content("validate#samples")
    assert len(samples) == VALIDATION_SAMPLES
    organs = organ_image_features(network, samples[share])
    texts = torch.cat([bank.all_features, bank.other_features])
    labels = torch.cat([bank.organ_labels, torch.zeros(len(bank.other_features), len(ORGANS))])
    with torch.no_grad():
        evidence = network.project_texts(texts) @ organs.features[organs.present].T
    return fit_organ_probability(evidence.numpy(), labels[:, organs.present].numpy())


def test_every_rank_fits_the_organ_probabilities_on_all_validation_samples(trained, shared):
    records = rank_records(trained)
    for record in records:  # each rank validated a share (4 and 3 samples), the fit saw all of them
        assert record["metrics"]["probability_fit_samples"] == VALIDATION_SAMPLES
    assert records[0]["metrics"] == records[1]["metrics"]  # the same fit, to the bit

    # the weights as validation left them (1 epoch: the chosen ones), before rank 0's alignment refinement
    (final,) = (trained / "models").glob("checkpoint_final_iteration=*.pt")
    validated = trained / "validated.pt"
    torch.save(weights(final)["model"], validated)
    saved = weights(validated)
    assert all(torch.equal(saved[key], value) for key, value in records[1]["buffers"].items())  # rank 1's too
    refined = weights(trained / "models" / "model.pt")
    assert all(torch.equal(refined[key], value) for key, value in records[0]["buffers"].items())
    assert bool(saved["probability_fitted"]) and not bool(saved["alignment_refined"])
    scale, bias = float(saved["probability_scale"]), float(saved["probability_bias"])
    fitted = (records[0]["metrics"]["probability_scale"], records[0]["metrics"]["probability_bias"])
    assert (scale, bias) == pytest.approx(fitted, rel=1e-6)  # the buffers are float32
    expected = single_process_fit(shared, validated)
    assert (scale, bias) == pytest.approx(expected, rel=1e-4)  # summed in another order, in other batches
    rank0_share = single_process_fit(shared, validated, slice(0, None, 2))
    assert not np.allclose((scale, bias), rank0_share, rtol=1e-2)  # the test tells a share's fit from the full one


def test_rank_0_refines_the_alignment_once_training_is_done(trained, shared):
    (final,) = (trained / "models").glob("checkpoint_final_iteration=*.pt")
    validated, refined = weights(final)["model"], weights(trained / "models" / "model.pt")
    assert bool(refined["alignment_refined"]) and bool(refined["probability_fitted"])
    assert not torch.equal(refined["align.weight"], validated["align.weight"])
    assert all(torch.equal(refined[key], value) for key, value in validated.items() if key.startswith("image."))
    refit = (float(refined["probability_scale"]), float(refined["probability_bias"]))
    assert refit == pytest.approx(single_process_fit(shared, trained / "models" / "model.pt"), rel=1e-4)


def test_a_resumed_run_keeps_model_pt_when_no_validation_beats_the_record(trained, shared, tmp_path):
    """The other half, a better validation after resuming replaces model.pt: test_checkpoints.py (no processes)."""
    shutil.copytree(trained / "models", tmp_path / "models")
    for path in sorted((tmp_path / "models").glob("checkpoint_*.pt")):
        checkpoint = weights(path)
        (validator,) = checkpoint["best_validation"]["validators"]
        assert validator["key_metric_name"] == "val_alignment_loss" and validator["best_metric_epoch"] == 1
        assert validator["best_metric"] > 0 and validator["key_metric_savers"][0]["_saved"][0][0] < 0
        # val_alignment_loss is a cross-entropy, never below 0: a best of 0 cannot be beaten
        validator["best_metric"], validator["key_metric_savers"][0]["_saved"][0] = 0.0, (0.0, "model.pt")
        torch.save(checkpoint, path)
    model = tmp_path / "models" / "model.pt"
    before, stamp = model.read_bytes(), model.stat().st_mtime_ns
    iterations = weights(next(model.parent.glob("checkpoint_final_iteration=*.pt")))["trainer"]["iteration"]

    result = torchrun(shared, tmp_path, num_epochs=2, resume=True)
    assert "restored the best validation so far: val_alignment_loss 0 at epoch 1" in result.stdout + result.stderr
    final = weights(tmp_path / "models" / f"checkpoint_final_iteration={2 * iterations}.pt")  # a second epoch ran
    assert model.read_bytes() == before and model.stat().st_mtime_ns == stamp
    for record in rank_records(tmp_path):  # rank 1 validates without the saver and gets the record back too
        assert (record["best_metric"], record["best_metric_epoch"]) == (0.0, 1)
    (validator,) = final["best_validation"]["validators"]
    assert (validator["best_metric"], validator["best_metric_epoch"]) == (0.0, 1)
