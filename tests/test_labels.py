"""The text MLP's labels (text_pipeline.labels): hard, the paper's anchors, and the calibrated labels."""

from __future__ import annotations

import pytest
import torch

from text_pipeline.corpus import Query
from text_pipeline.labels import (
    SECONDARY_ORGAN_WEIGHT,
    AnchorCalibration,
    calibrated_labels,
    fit_anchor_calibration,
    hard_labels,
    organ_sets,
    ranked_organ_sets,
)

QUERIES = [
    Query("pale stools and yellow eyes", ("liver", "gallbladder", "pancreas"), "liver"),
    Query("black stools", ("stomach",), "stomach"),
    Query("a vague ache", ("pancreas", "liver"), "pancreas"),
    Query("a sprained ankle"),  # no organ
]


def test_organ_sets_and_their_ranked_form():
    sets, ranked = organ_sets(QUERIES), ranked_organ_sets(QUERIES)
    assert sets[0].tolist() == [1, 1, 0, 1, 0, 0, 0] and sets[3].sum() == 0
    s = SECONDARY_ORGAN_WEIGHT
    assert ranked[0].tolist() == pytest.approx([1, s, 0, s, 0, 0, 0])
    assert ranked[2].tolist() == pytest.approx([s, 1, 0, 0, 0, 0, 0])  # the primary leads, not the first index
    assert ranked[1].tolist() == [0, 0, 0, 0, 0, 1, 0] and ranked[3].sum() == 0
    assert hard_labels(torch.tensor([2, 0])).tolist() == [[0, 0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]]


def test_calibrated_labels_match_the_formula_by_hand():
    calibration = AnchorCalibration(scale=torch.full((7,), 10.0), bias=torch.full((7,), -5.0))
    similarities = torch.zeros(4, 7)
    similarities[:, 0], similarities[:, 5] = 0.5, 0.8  # sigmoid(10 * 0.5 - 5) = 0.5, sigmoid(3) = 0.9526
    labels = calibrated_labels(similarities, ranked_organ_sets(QUERIES), calibration, set_weight=0.5)
    sigmoid = torch.sigmoid(torch.tensor([-5.0, 0.0, 3.0]))
    assert labels[0, 0].item() == pytest.approx(0.5 * 1 + 0.5 * sigmoid[1].item())  # primary, anchors halfway
    assert labels[0, 1].item() == pytest.approx(0.5 * SECONDARY_ORGAN_WEIGHT + 0.5 * sigmoid[0].item())
    assert labels[0, 5].item() == pytest.approx(0.5 * sigmoid[2].item())  # similar, but nobody named it
    assert labels[1, 5].item() == pytest.approx(0.5 + 0.5 * sigmoid[2].item())
    assert labels[3].tolist() == [0.0] * 7  # a text of no organ: 0 everywhere, whatever its anchors say
    primary = ranked_organ_sets(QUERIES)[:3] == 1.0
    assert labels[:3][primary].min() >= 0.5 > labels[:3][ranked_organ_sets(QUERIES)[:3] == 0].max()


def test_calibrated_labels_refuse_a_weight_outside_zero_to_one():
    calibration = AnchorCalibration(scale=torch.ones(7), bias=torch.zeros(7))
    with pytest.raises(ValueError, match="set_weight must lie in"):
        calibrated_labels(torch.zeros(1, 7), torch.zeros(1, 7), calibration, set_weight=1.5)


def test_anchor_calibration_recovers_a_known_logistic_relation():
    generator = torch.Generator().manual_seed(0)
    similarities = torch.rand(20_000, 7, generator=generator) * 0.6 + 0.2  # the band MiniLM's anchors give
    true_scale = torch.linspace(5, 20, 7)
    true_bias = -0.5 * true_scale + torch.linspace(-1, 1, 7)  # organs named in a few to most texts
    probability = torch.sigmoid(similarities * true_scale + true_bias)
    sets = (torch.rand(20_000, 7, generator=generator) < probability).float()
    fitted = fit_anchor_calibration(similarities, sets)
    torch.testing.assert_close(fitted.scale, true_scale, rtol=0.15, atol=0.5)
    torch.testing.assert_close(fitted.bias, true_bias, rtol=0.15, atol=0.5)
    torch.testing.assert_close(fitted(similarities), probability, atol=0.03, rtol=0)


def test_anchor_calibration_needs_texts_with_and_without_each_organ():
    sets = torch.zeros(10, 7)
    sets[:5, :6] = 1.0  # no text of adrenal_gland
    with pytest.raises(ValueError, match="not so for adrenal_gland"):
        fit_anchor_calibration(torch.rand(10, 7), sets)
