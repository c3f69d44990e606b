"""Alignment refinement (scripts/refinement.py): W_align alone on the frozen image network, model.pt rewritten."""

from __future__ import annotations

import pytest
import torch
from conftest import BUNDLE, TEXT_EMBEDDINGS
from scripts.losses import MedSORALoss
from scripts.networks import MedSORAImageNet, MedSORANet
from scripts.refinement import AlignmentRefinement, frozen_slice_features
from scripts.text_bank import OrganTextBank

from text_pipeline.corpus import OOD_TRAINING_TEXTS
from text_pipeline.organs import ORGANS

TEXT_MODEL = BUNDLE / "models" / "text" / "text_mlp_calibrated.pt"


class NoisyOrgans(torch.utils.data.Dataset):
    """Two samples of every organ, each organ a bright block of its own place, drawn with new noise each time."""

    def __len__(self) -> int:
        return 2 * len(ORGANS)

    def __getitem__(self, index: int) -> dict:
        organ = index % len(ORGANS)
        image = 0.1 * torch.rand(1, 32, 32, 8)
        image[:, 4 * organ : 4 * organ + 4] += 1.0
        return {"image": image, "label": torch.tensor([organ])}


@pytest.fixture(scope="module")
def bank() -> OrganTextBank:
    return OrganTextBank(TEXT_MODEL, split="train", cache_dir=TEXT_EMBEDDINGS, out_of_domain_file=OOD_TRAINING_TEXTS)


def tiny_net() -> MedSORANet:
    torch.manual_seed(0)
    image = MedSORAImageNet(
        img_size=(32, 32, 8), slice_patch_size=8, hidden_size=32, mlp_dim=64, num_layers_2d=1, num_heads=2,
        num_layers_3d=1,
    )  # fmt: skip
    return MedSORANet(image, text_features=256)


def refinement(net: MedSORANet, path, bank: OrganTextBank, steps: int = 60, **loss) -> AlignmentRefinement:
    validation = [NoisyOrgans()[index] for index in range(len(ORGANS))]
    return AlignmentRefinement(
        net, path, NoisyOrgans(), validation, bank, MedSORALoss(image_loss=False, **loss), steps=steps, passes=2,
        batch_size=4, texts_per_organ=8, other_texts=4,
    )  # fmt: skip


def test_frozen_features_are_every_pass_over_the_dataset_drawn_anew():
    net = tiny_net()
    features, organs = frozen_slice_features(net, NoisyOrgans(), passes=3, batch_size=5)
    assert features.shape == (3 * 2 * len(ORGANS), 8, 32) and organs.tolist() == list(range(7)) * 6
    assert not torch.equal(features[:14], features[14:28])  # new noise in each pass


def test_refinement_trains_w_align_alone_and_rewrites_model_pt(tmp_path, bank):
    net = tiny_net()
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    before = {name: value.clone() for name, value in net.state_dict().items()}
    summary = refinement(tiny_net(), path, bank, text_to_image_weight=0.5)()  # a fresh network loads model.pt
    saved = torch.load(path, weights_only=True)
    assert not torch.equal(saved["align.weight"], before["align.weight"])
    assert all(torch.equal(saved[name], before[name]) for name in before if name.startswith("image."))
    assert bool(saved["probability_fitted"]) and float(saved["probability_scale"]) > 0
    assert bool(saved["alignment_refined"]) and not bool(before["alignment_refined"])
    assert summary["probability_scale"] == pytest.approx(float(saved["probability_scale"]))
    assert summary["loss_last"] < summary["loss_first"]
    assert not list(tmp_path.glob("*.tmp*")) and [file.name for file in tmp_path.iterdir()] == ["model.pt"]


def test_a_refined_model_pt_is_not_refined_again_until_trained_again(tmp_path, bank):
    path = tmp_path / "model.pt"
    torch.save(tiny_net().state_dict(), path)
    refinement(tiny_net(), path, bank)()
    refined = path.read_bytes()
    assert refinement(tiny_net(), path, bank)() == {} and path.read_bytes() == refined
    net = tiny_net()
    net.load_state_dict(torch.load(path, weights_only=True))
    net.eval()(torch.rand(1, 1, 32, 32, 8))
    assert bool(net.alignment_refined)  # evaluating keeps the mark
    net.train()(torch.rand(2, 1, 32, 32, 8), torch.randn(7, 2, 256))
    assert not bool(net.alignment_refined)  # a training step clears it: these weights would be refined anew


def test_no_steps_leave_model_pt_as_training_wrote_it(tmp_path, bank):
    path = tmp_path / "model.pt"
    torch.save(tiny_net().state_dict(), path)
    written = path.read_bytes()
    assert refinement(tiny_net(), path, bank, steps=0)() == {}
    assert path.read_bytes() == written


def test_refinement_settings_are_checked(tmp_path, bank):
    net, validation = tiny_net(), [NoisyOrgans()[0]]
    with pytest.raises(ValueError, match="image_loss=False"):
        AlignmentRefinement(net, tmp_path / "model.pt", NoisyOrgans(), validation, bank, MedSORALoss())
    with pytest.raises(ValueError, match="steps must be 0 or more"):
        AlignmentRefinement(
            net, tmp_path / "model.pt", NoisyOrgans(), validation, bank, MedSORALoss(image_loss=False), steps=-1
        )
    with pytest.raises(ValueError, match="texts_per_organ must lie in"):
        AlignmentRefinement(
            net, tmp_path / "model.pt", NoisyOrgans(), validation, bank, MedSORALoss(image_loss=False),
            texts_per_organ=10_000,
        )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="do not exist"):
        refinement(net, tmp_path / "missing.pt", bank)()
