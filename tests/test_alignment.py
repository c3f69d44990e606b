"""Image-text alignment (method.md §4): avgSim, InfoNCE, L_total, W_align, the text bank, the probability fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BUNDLE, TEXT_EMBEDDINGS
from scripts.calibration import fit_organ_probability
from scripts.losses import (
    AlignmentLoss,
    MedSORALoss,
    TextToImageLoss,
    alignment_logits,
    avg_sim,
    organ_image_prototypes,
)
from scripts.networks import MedSORAImageNet, MedSORANet
from scripts.text_bank import OrganTextBank, PrepareBatchWithOrganTexts

from text_pipeline.corpus import OOD_QUERIES, OOD_TRAINING_TEXTS, read_corpus, read_queries
from text_pipeline.organs import ORGANS

TEXT_MODEL = BUNDLE / "models" / "text" / "text_mlp_calibrated.pt"
TINY_IMAGE = dict(
    img_size=(32, 32, 8), slice_patch_size=8, hidden_size=32, mlp_dim=64, num_layers_2d=1, num_heads=2, num_layers_3d=1
)


def tiny_net(train_image_network: bool = True, fusion: str = "cross_attention") -> MedSORANet:
    torch.manual_seed(0)
    return MedSORANet(
        MedSORAImageNet(fusion=fusion, **TINY_IMAGE), text_features=24, train_image_network=train_image_network
    )


def test_avg_sim_is_the_mean_cosine_over_slices_and_texts():
    generator = torch.Generator().manual_seed(0)
    slices, texts = torch.randn(3, 5, 16, generator=generator), torch.randn(7, 4, 16, generator=generator)
    pairwise = F.cosine_similarity(slices[:, None, :, None, :], texts[None, :, None, :, :], dim=-1)  # [B, O, D, K]
    assert torch.allclose(avg_sim(slices, texts), pairwise.mean(dim=(2, 3)), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, D, d\] and text features \[O, K, d\]"):
        avg_sim(slices, texts[..., :8])


def test_infonce_prefers_each_organ_sample_near_its_own_texts():
    organs = torch.arange(7)
    prototypes = F.normalize(torch.randn(7, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    texts = prototypes[:, None, :].repeat(1, 3, 1)
    aligned = prototypes[:, None, :].repeat(1, 4, 1)
    loss = AlignmentLoss(temperature=0.1)
    assert loss(aligned, texts, organs) < 0.1 * loss(aligned, texts, organs.roll(1))
    expected = F.cross_entropy(avg_sim(aligned, texts) / 0.5, organs)
    assert torch.isclose(AlignmentLoss(temperature=0.5)(aligned, texts, organs), expected)
    with pytest.raises(ValueError, match="temperature"):
        AlignmentLoss(temperature=0.0)


def test_out_of_domain_texts_are_extra_negatives_one_each():
    generator = torch.Generator().manual_seed(2)
    slices, texts, others = (torch.randn(*shape, generator=generator) for shape in ((3, 5, 16), (7, 4, 16), (6, 16)))
    logits = alignment_logits(slices, texts, others, temperature=0.1)
    assert logits.shape == (3, 7 + 6)
    assert torch.allclose(logits[:, :7], avg_sim(slices, texts) / 0.1)
    per_text = F.cosine_similarity(slices[:, :, None, :], others[None, None], dim=-1).mean(dim=1)  # [B, M]
    assert torch.allclose(logits[:, 7:], per_text / 0.1, atol=1e-5)
    organ = torch.tensor([0, 1, 2])
    with_others = AlignmentLoss(0.1)(slices, texts, organ, others)
    assert with_others > AlignmentLoss(0.1)(slices, texts, organ)  # more negatives, more to lose


def test_organ_image_prototypes_are_the_unit_mean_of_each_organs_samples():
    generator = torch.Generator().manual_seed(3)
    slices, organ = torch.randn(5, 4, 16, generator=generator), torch.tensor([6, 2, 6, 6, 2])
    present, prototypes = organ_image_prototypes(slices, organ)
    assert present.tolist() == [2, 6]
    per_sample = F.normalize(slices, dim=-1).mean(dim=1)
    assert torch.allclose(prototypes[0], F.normalize(per_sample[[1, 4]].mean(dim=0), dim=0), atol=1e-6)
    assert torch.allclose(prototypes[1], F.normalize(per_sample[[0, 2, 3]].mean(dim=0), dim=0), atol=1e-6)


def test_text_to_image_loss_asks_each_text_for_its_own_organ_among_the_batchs():
    generator = torch.Generator().manual_seed(4)
    prototypes = F.normalize(torch.randn(7, 16, generator=generator), dim=-1)
    organ = torch.tensor([0, 3, 5, 3])
    slices = prototypes[organ][:, None, :].repeat(1, 2, 1)
    texts = prototypes[:, None, :].repeat(1, 3, 1) + 0.05 * torch.randn(7, 3, 16, generator=generator)
    loss = TextToImageLoss(temperature=0.3)
    assert loss(slices, texts, organ) < 0.5 * loss(slices, texts.roll(1, dims=0), organ)
    # by hand: the 9 texts of organs 0, 3, 5 (the batch's) against those organs' unit mean slice features
    batch = F.normalize(torch.stack([slices[organ == o].mean(dim=(0, 1)) for o in (0, 3, 5)]), dim=-1)
    logits = F.normalize(texts[[0, 3, 5]], dim=-1).reshape(9, 16) @ batch.T / 0.3
    expected = F.cross_entropy(logits, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    assert torch.isclose(loss(slices, texts, organ), expected, atol=1e-6)
    # texts of organs missing from the batch take no part
    other = texts.clone()
    other[[1, 2, 4, 6]] = torch.randn(4, 3, 16, generator=generator)
    assert torch.isclose(loss(slices, other, organ), expected, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        TextToImageLoss(temperature=-1.0)


def test_text_to_image_loss_targets_each_texts_soft_labels_over_the_batchs_organs():
    generator = torch.Generator().manual_seed(5)
    slices, texts = torch.randn(4, 2, 16, generator=generator), torch.randn(7, 3, 16, generator=generator)
    organ = torch.tensor([1, 4, 4, 6])
    labels = torch.rand(7, 3, 7, generator=generator)
    loss = TextToImageLoss(temperature=0.3)
    _, batch = organ_image_prototypes(slices, organ)
    logits = F.normalize(texts[[1, 4, 6]], dim=-1).reshape(9, 16) @ batch.T / 0.3
    target = labels[[1, 4, 6]][..., [1, 4, 6]].reshape(9, 3)
    expected = -(target / target.sum(dim=1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.isclose(loss(slices, texts, organ, labels), expected, atol=1e-6)
    # one-hot soft labels are the hard target; a text that is none of the batch's organs asks nothing
    one_hot = torch.eye(7)[:, None, :].repeat(1, 3, 1)
    assert torch.isclose(loss(slices, texts, organ, one_hot), loss(slices, texts, organ), atol=1e-6)
    one_hot[4] = torch.eye(7)[0]  # organ 4's texts now name only the liver, absent from the batch
    kept = F.cross_entropy(logits[[0, 1, 2, 6, 7, 8]], torch.tensor([0, 0, 0, 2, 2, 2]))
    assert torch.isclose(loss(slices, texts, organ, one_hot), kept, atol=1e-6)


def test_forward_with_texts_returns_what_the_total_loss_needs():
    net = tiny_net().train()
    x, texts = torch.rand(2, 1, 32, 32, 8), torch.randn(7, 5, 24)
    out = net(x, texts)
    assert {"2d", "3d", "fusion", "logits", "slice_features", "text_features"} <= set(out)
    assert out["slice_features"].shape == (2, 8, 32) and out["text_features"].shape == (7, 5, 32)
    assert net(x, texts, torch.randn(3, 24))["other_text_features"].shape == (3, 32)
    net.eval()
    with torch.no_grad():
        assert set(net(x, texts)) == {"logits", "slice_features", "text_features"}
        assert net(x).shape == (2, len(ORGANS))
    with pytest.raises(ValueError, match="text_feature_size"):
        net(x, torch.randn(7, 5, 10))


def test_total_loss_is_image_plus_alignment_and_trains_w_align():
    net = tiny_net().train()
    x, organ, texts = torch.rand(2, 1, 32, 32, 8), torch.tensor([0, 3]), torch.randn(7, 5, 24)
    out = net(x, texts)
    total = MedSORALoss(temperature=0.1)(out, organ)
    image = sum(F.cross_entropy(out[head], organ) for head in ("2d", "3d", "fusion"))
    alignment = AlignmentLoss(0.1)(out["slice_features"], out["text_features"], organ)
    assert torch.isclose(total, image + alignment)
    total.backward()
    assert net.align.weight.grad is not None and net.align.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="organ_texts"):
        MedSORALoss()({"fusion": out["fusion"]}, organ)


def test_total_loss_adds_the_weighted_text_to_image_term_and_returns_its_terms():
    net = tiny_net().train()
    x, organ, texts = torch.rand(3, 1, 32, 32, 8), torch.tensor([0, 3, 3]), torch.randn(7, 5, 24)
    out = net(x, texts)
    paper = MedSORALoss(temperature=0.1)(out, organ, return_terms=True)
    assert set(paper) == {"loss", "image", "image_2d", "image_3d", "image_fusion", "align"}
    for head in ("2d", "3d", "fusion"):
        assert torch.isclose(paper[f"image_{head}"], F.cross_entropy(out[head], organ))
    assert torch.isclose(paper["image"], paper["image_2d"] + paper["image_3d"] + paper["image_fusion"])
    ours = MedSORALoss(temperature=0.1, text_to_image_weight=0.5, text_to_image_temperature=0.3)(
        out, organ, return_terms=True
    )
    text_to_image = TextToImageLoss(0.3)(out["slice_features"], out["text_features"], organ)
    assert torch.isclose(ours["text_to_image"], text_to_image)
    assert torch.isclose(ours["loss"], paper["loss"] + 0.5 * text_to_image)
    assert torch.isclose(paper["loss"], paper["image"] + paper["align"])
    loss = MedSORALoss(temperature=0.1)
    loss(out, organ)  # the trainer's call: the terms are kept for its logs
    assert loss.last_terms.keys() == paper.keys() - {"loss"}
    assert all(torch.isclose(loss.last_terms[name], paper[name]) for name in loss.last_terms)
    with pytest.raises(ValueError, match="text_to_image_weight"):
        MedSORALoss(text_to_image_weight=-0.1)


def test_frozen_image_network_leaves_only_w_align_to_train():
    net = tiny_net(train_image_network=False).train()
    assert [name for name, p in net.named_parameters() if p.requires_grad] == ["align.weight"]
    out = net(torch.rand(2, 1, 32, 32, 8), torch.randn(7, 5, 24))
    MedSORALoss(image_loss=False)(out, torch.tensor([1, 2])).backward()
    assert net.align.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.image.parameters())


@pytest.mark.parametrize("fusion", ["2d", "3d", "concat"])
def test_alignment_works_for_every_ablation(fusion):
    out = tiny_net(fusion=fusion).train()(torch.rand(2, 1, 32, 32, 8), torch.randn(7, 5, 24))
    loss = MedSORALoss()(out, torch.tensor([4, 5]))
    assert torch.isfinite(loss) and out["slice_features"].shape[1] == (1 if fusion == "3d" else 8)


@pytest.fixture(scope="module")
def bank() -> OrganTextBank:
    return OrganTextBank(TEXT_MODEL, split="train", cache_dir=TEXT_EMBEDDINGS, out_of_domain_file=OOD_TRAINING_TEXTS)


def test_text_bank_groups_the_training_texts_by_the_organs_they_name(bank):
    train = read_corpus("train")
    assert len(train) == len(bank.all_features)
    assert sum(len(features) for features in bank.features) == sum(len(query.organs) for query in train)
    for index, organ in enumerate(ORGANS):
        naming = [organ in query.organs for query in train]
        assert len(bank.features[index]) == sum(naming)
        torch.testing.assert_close(bank.features[index], bank.all_features[naming])
        assert (
            bank.organ_labels[naming, index].eq(1).all() and bank.organ_labels[~torch.tensor(naming), index].eq(0).all()
        )
    assert bank.feature_size == 256
    assert bank.organ_labels.sum(dim=1).ge(1).all()
    assert bank.other_features.shape == (len(read_queries(OOD_TRAINING_TEXTS)), 256)


def test_text_bank_can_keep_the_source_organs_texts_only():
    train = read_corpus("train")
    bank = OrganTextBank(TEXT_MODEL, split="train", cache_dir=TEXT_EMBEDDINGS, positives="source")
    for index, organ in enumerate(ORGANS):
        assert len(bank.features[index]) == sum(query.meta["organ"] == organ for query in train)
    with pytest.raises(ValueError, match="positives must be one of organ_set, source, got 'primary'"):
        OrganTextBank(TEXT_MODEL, positives="primary")


def test_training_negatives_are_not_the_evaluation_queries():
    training = {query.text.lower() for query in read_queries(OOD_TRAINING_TEXTS)}
    assert not training & {query.text.lower() for query in read_queries(OOD_QUERIES)}
    assert all(not query.organs for query in read_queries(OOD_TRAINING_TEXTS))


def test_out_of_domain_file_naming_organs_is_refused(tmp_path):
    bad = tmp_path / "ood.jsonl"
    bad.write_text('{"text": "knee pain", "organs": []}\n{"text": "jaundice", "organs": ["liver"]}\n')
    with pytest.raises(ValueError, match=r"queries \[2\] name organs"):
        OrganTextBank(TEXT_MODEL, out_of_domain_file=bad)


def test_prepare_batch_draws_texts_per_organ_in_training_and_fixed_ones_in_validation(bank):
    batch = {"image": torch.rand(2, 1, 32, 32, 8), "label": torch.tensor([0, 1])}
    image, label, args, kwargs = PrepareBatchWithOrganTexts(bank, texts_per_organ=4, other_texts=5)(batch)
    assert image.shape == (2, 1, 32, 32, 8) and label.tolist() == [0, 1] and args == ()
    assert kwargs["organ_texts"].shape == (len(ORGANS), 4, 256) and kwargs["other_texts"].shape == (5, 256)
    assert kwargs["organ_text_labels"].shape == (len(ORGANS), 4, len(ORGANS))
    assert "other_texts" not in PrepareBatchWithOrganTexts(bank, texts_per_organ=4)(batch)[3]
    for organ, (drawn, labels) in enumerate(zip(kwargs["organ_texts"], kwargs["organ_text_labels"])):
        # every drawn text is one of that organ's texts, and its soft labels are the text MLP's probabilities of it
        assert (drawn[:, None] == bank.features[organ][None]).all(dim=-1).any(dim=1).all()
        assert torch.allclose(labels, torch.sigmoid(bank.text_model.head(drawn)), atol=1e-6)
    fixed = PrepareBatchWithOrganTexts(bank, texts_per_organ=4, random=False)
    assert torch.equal(fixed(batch)[3]["organ_texts"], fixed(batch)[3]["organ_texts"])
    assert torch.equal(fixed(batch)[3]["organ_text_labels"], bank.first(4)[1])
    with pytest.raises(ValueError, match="texts_per_organ must lie in 1.."):
        PrepareBatchWithOrganTexts(bank, texts_per_organ=10_000)


def test_probability_fit_recovers_a_known_logistic_map():
    rng = np.random.default_rng(0)
    evidence = rng.normal(0.2, 0.4, size=(4000, 7))
    labels = rng.random(evidence.shape) < 1 / (1 + np.exp(-(6.0 * evidence - 2.0)))
    scale, bias = fit_organ_probability(evidence, labels)
    assert scale == pytest.approx(6.0, rel=0.1) and bias == pytest.approx(-2.0, abs=0.2)
    with pytest.raises(ValueError, match="not positive"):
        fit_organ_probability(-evidence, labels)
    with pytest.raises(ValueError, match="both labels"):
        fit_organ_probability(evidence, np.ones_like(labels))


def fitting_run(net: MedSORANet, labels: torch.Tensor):
    """Run FitOrganProbability on one validation epoch where organ o's slices and texts are both the unit vector e_o."""
    from types import SimpleNamespace

    from ignite.engine import Engine
    from scripts.calibration import FitOrganProbability

    with torch.no_grad():
        net.align.weight.copy_(torch.eye(32, 24))
    texts = torch.eye(24)[:7].repeat(20, 1)
    bank = SimpleNamespace(all_features=texts, organ_labels=labels, other_features=torch.zeros(0, 24))
    organs = torch.arange(7)
    output = {"pred": {"slice_features": torch.eye(32)[:7, None, :].repeat(1, 4, 1)}, "label": organs}
    engine = Engine(lambda engine, batch: output)
    FitOrganProbability(net, bank).attach(engine)
    engine.run([0], max_epochs=1)
    return engine


def test_probability_fit_after_validation_sets_the_networks_buffers():
    net = tiny_net()
    labels = torch.eye(7).repeat(20, 1)
    labels[::3] = 0  # not every text of an organ is about it: a finite fit
    engine = fitting_run(net, labels)
    assert bool(net.probability_fitted) and float(net.probability_scale) > 0
    assert engine.state.metrics["probability_scale"] == pytest.approx(float(net.probability_scale))


def test_failed_probability_fit_marks_the_weights_unfit_for_scoring(caplog):
    from scripts.reasoning import SymptomOrganReasoner

    net = tiny_net()
    fitting_run(net, 1 - torch.eye(7).repeat(20, 1))  # the more evidence, the less related: no positive scale
    assert not bool(net.probability_fitted)
    assert "organ probabilities not fitted" in caplog.text
    with pytest.raises(ValueError, match="never fitted"):
        SymptomOrganReasoner(net, TEXT_MODEL)


def test_one_switch_trains_without_out_of_domain_texts():
    from conftest import bundle_parser

    parser = bundle_parser(ood_texts_per_step=0)
    assert len(parser.get_parsed_content("text_bank").other_features) == 0
    assert parser.get_parsed_content("train#prepare_batch").other_texts == 0
    assert parser.get_parsed_content("validate#prepare_batch").other_texts == 0
    assert bundle_parser().get_parsed_content("train#prepare_batch").other_texts == 32
