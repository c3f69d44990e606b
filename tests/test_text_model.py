"""The text model of method.md §2 and §5: encoders, organ anchors, soft labels, the text MLP, metrics, figures."""

from __future__ import annotations

import hashlib
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_bert_dir
from fake_openai import FakeOpenAI
from fake_openai import fake_embedding as openai_fake_embedding

from text_pipeline.anchors import anchor_loss, fit_anchors, margin, soft_labels
from text_pipeline.corpus import read_corpus
from text_pipeline.encoders import (
    CachedEncoder,
    MiniLMEncoder,
    OpenAIEmbeddingEncoder,
    TextEncoder,
    TransformersEncoder,
    make_encoder,
)
from text_pipeline.figures import label_correlation, plot_label_correlation, plot_tsne
from text_pipeline.labels import hard_labels
from text_pipeline.metrics import evaluate_scores, mean_average_precision, ood_auroc, rank_k_accuracy
from text_pipeline.organs import ORGANS
from text_pipeline.text_model import (
    TextMLP,
    load_text_model,
    save_text_model,
    text_mlp_loss,
    train_text_mlp,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT_HALF = math.sqrt(0.5)


def clustered_texts(num_organs: int = 7, per_organ: int = 30, dim: int = 32, noise: float = 0.15, seed: int = 12345):
    """Synthetic 'embeddings': one random unit centre per organ, texts scattered around it, unit norm."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_organs, dim, generator=generator), dim=-1)
    organ_of_text = torch.arange(num_organs).repeat_interleave(per_organ)
    features = centres[organ_of_text] + noise * torch.randn(len(organ_of_text), dim, generator=generator)
    return torch.nn.functional.normalize(features, dim=-1), organ_of_text, centres


@pytest.fixture(scope="module")
def clusters():
    features, organ_of_text, centres = clustered_texts()
    anchors = fit_anchors(features, organ_of_text, epochs=150, lr=1e-2, batch_size=64, seed=0)
    return features, organ_of_text, centres, anchors


# ---------------------------------------------------------------------------------------------- anchors (§2)


def test_margin_matches_hand_computed_values():
    a = torch.tensor([0.9, 0.5, 0.1, 0.8])
    b = torch.tensor([0.1, 0.3, 0.9, 0.2])
    # M(a, b) = max(0, 0.8 - a) + max(0, b - 0.2)
    # (0.9, 0.1): 0 + 0 = 0;  (0.5, 0.3): 0.3 + 0.1 = 0.4;  (0.1, 0.9): 0.7 + 0.7 = 1.4;  (0.8, 0.2): 0 + 0 = 0
    torch.testing.assert_close(margin(a, b, m=0.8), torch.tensor([0.0, 0.4, 1.4, 0.0]))
    # m = 0.6: (0.5, 0.3) -> max(0, 0.1) + max(0, 0.3 - 0.4) = 0.1
    torch.testing.assert_close(margin(torch.tensor(0.5), torch.tensor(0.3), m=0.6), torch.tensor(0.1))


def test_anchor_loss_matches_hand_computed_value():
    v_pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v_neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    features = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cosine: the first row's length is irrelevant
    organ_of_text = torch.tensor([0, 1, 0])
    # sim(v+, f) rows f0..f2: [1, 0], [0, 1], [r, r];  sim(v-, f): [0, 1], [1, 0], [r, r]  (r = 1/sqrt(2))
    # organ 0: P = {f0, f2}: M(1, 0) = 0, M(r, r) = (0.8 - r) + (r - 0.2) = 0.6 -> mean 0.3
    #          N = {f1}:     M(sim(v-_0, f1) = 1, sim(v+_0, f1) = 0) = 0
    # organ 1: P = {f1}:     M(1, 0) = 0
    #          N = {f0, f2}: M(1, 0) = 0, M(r, r) = 0.6 -> mean 0.3
    # total: sum over organs = 0.3 + 0 + 0 + 0.3 = 0.6 (a mean over organs would give 0.3)
    loss = anchor_loss(v_pos, v_neg, features, organ_of_text, m=0.8)
    torch.testing.assert_close(loss, torch.tensor(0.6))


def test_anchor_loss_skips_the_positive_term_of_an_organ_without_texts():
    v_pos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    v_neg = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [ROOT_HALF, ROOT_HALF]])
    organ_of_text = torch.tensor([0, 1, 0])
    # organs 0 and 1 as above: 0.6. Organ 2 has no text: no P term; N = all three texts:
    # f0: M(sim(v-_2, f0) = 1, sim(v+_2, f0) = -1) = 0;  f1: M(0, 0) = 0.8;  f2: M(r, -r) = 0.8 - r
    expected = 0.6 + (0.0 + 0.8 + (0.8 - ROOT_HALF)) / 3
    loss = anchor_loss(v_pos, v_neg, features, organ_of_text, m=0.8)
    torch.testing.assert_close(loss, torch.tensor(expected))
    loss.backward()
    assert torch.isfinite(v_pos.grad).all() and torch.isfinite(v_neg.grad).all()
    with pytest.raises(ValueError, match="organ indices"):
        anchor_loss(v_pos, v_neg, features, torch.tensor([0, 1, 3]))


def test_soft_labels_are_rescaled_cosines_without_softmax():
    v_pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    # (cos + 1) / 2: f0 -> (1, 0.5); f1 -> (0, 0.5); f2 -> ((r + 1) / 2, (r + 1) / 2)
    high = (ROOT_HALF + 1) / 2
    expected = torch.tensor([[1.0, 0.5], [0.0, 0.5], [high, high]])
    labels = soft_labels(v_pos, features)
    torch.testing.assert_close(labels, expected)
    assert labels[2].sum() > 1.5  # no softmax: a text can be high for several organs

    random_labels = soft_labels(torch.randn(7, 16), torch.randn(100, 16))
    assert random_labels.shape == (100, 7)
    assert random_labels.min() >= 0 and random_labels.max() <= 1


def test_anchor_fit_pulls_positive_anchors_to_their_organ(clusters):
    features, organ_of_text, centres, anchors = clusters
    v_pos = torch.nn.functional.normalize(anchors.v_pos.detach(), dim=-1)
    similarity = v_pos @ centres.T  # [anchor i, centre j]
    assert (similarity.diagonal() > 0.5).all(), similarity.diagonal()
    assert (similarity.argmax(dim=1) == torch.arange(7)).all()

    labels = soft_labels(anchors.v_pos.detach(), features)
    assert (labels.argmax(dim=1) == organ_of_text).float().mean() > 0.9

    untrained = fit_anchors(features, organ_of_text, epochs=0, seed=0)
    with torch.no_grad():
        assert anchors(features, organ_of_text) < 0.5 * untrained(features, organ_of_text)


def test_anchor_fit_is_deterministic_for_a_seed():
    features, organ_of_text, _ = clustered_texts(per_organ=5, dim=8)
    first = fit_anchors(features, organ_of_text, epochs=5, batch_size=8, seed=3)
    second = fit_anchors(features, organ_of_text, epochs=5, batch_size=8, seed=3)
    other = fit_anchors(features, organ_of_text, epochs=5, batch_size=8, seed=4)
    assert torch.equal(first.v_pos, second.v_pos) and torch.equal(first.v_neg, second.v_neg)
    assert not torch.equal(first.v_pos, other.v_pos)


# ---------------------------------------------------------------------------------------------- text MLP (§2)


def test_text_mlp_fits_soft_labels(clusters):
    features, _, _, anchors = clusters
    targets = soft_labels(anchors.v_pos.detach(), features)
    untrained = train_text_mlp(features, targets, epochs=0, hidden_dim=64, seed=0)
    model = train_text_mlp(features, targets, epochs=60, hidden_dim=64, seed=0, progress=False)
    with torch.no_grad():
        assert text_mlp_loss(model, features, targets) < text_mlp_loss(untrained, features, targets) - 0.01
    predicted = model.predict_proba(features)
    assert predicted.shape == targets.shape and predicted.min() >= 0 and predicted.max() <= 1
    correlation = np.corrcoef(predicted.flatten().numpy(), targets.flatten().numpy())[0, 1]
    assert correlation > 0.9, correlation
    assert not model.training


def test_hard_label_baseline_trains_through_the_same_function(clusters):
    features, organ_of_text, _, _ = clusters
    targets = hard_labels(organ_of_text)
    assert targets.shape == (len(organ_of_text), len(ORGANS)) and torch.equal(targets.sum(dim=1), torch.ones(210))
    model = train_text_mlp(features, targets, epochs=40, hidden_dim=64, seed=0, progress=False)
    predicted = model.predict_proba(features)
    assert (predicted.argmax(dim=1) == organ_of_text).float().mean() > 0.95
    assert model.embed(features).shape == (len(features), 64)  # f_bar


def test_text_mlp_training_is_seeded_and_validates_targets():
    features, organ_of_text, _ = clustered_texts(per_organ=4, dim=8)
    targets = hard_labels(organ_of_text)
    rng_state = torch.random.get_rng_state()
    first = train_text_mlp(features, targets, epochs=3, hidden_dim=16, seed=1, progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is left alone
    second = train_text_mlp(features, targets, epochs=3, hidden_dim=16, seed=1, progress=False)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_text_mlp(features, targets * 2, epochs=1)
    with pytest.raises(ValueError, match="targets"):
        train_text_mlp(features, targets[:5], epochs=1)


def test_text_model_save_load_round_trip(tmp_path):
    features = torch.randn(10, 12)
    model = train_text_mlp(features, torch.rand(10, 7), epochs=2, hidden_dim=16, dropout=0.2, progress=False)
    path = save_text_model(tmp_path / "models" / "text_mlp.pt", model, extra={"encoder": "minilm", "labels": "soft"})
    loaded = load_text_model(path)
    assert isinstance(loaded, TextMLP) and not loaded.training
    assert loaded.config == {"in_dim": 12, "hidden_dim": 16, "num_organs": 7, "dropout": 0.2}
    assert loaded.extra == {"encoder": "minilm", "labels": "soft"}
    assert torch.equal(loaded.predict_proba(features), model.predict_proba(features))
    assert [p.name for p in path.parent.iterdir()] == ["text_mlp.pt"]  # no temporary file left

    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a text MLP"):
        load_text_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_text_model(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="extra"):
        save_text_model(tmp_path / "bad.pt", model, extra={"when": object()})


# ---------------------------------------------------------------------------------------------- encoders


class CountingEncoder(TextEncoder):
    """A deterministic fake encoder that counts the texts it is asked to embed."""

    def __init__(self, name: str = "counting:v1", dim: int = 8) -> None:
        self.name, self.dim = name, dim
        self.encoded: list[str] = []

    def _embed(self, texts: list[str]) -> np.ndarray:
        self.encoded.extend(texts)
        return np.stack([fake_embedding(text, self.dim) for text in texts])


def fake_embedding(text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder()


def test_minilm_gives_unit_384d_vectors_that_put_similar_symptoms_close(minilm):
    texts = ["yellow skin and dark urine", "jaundice with dark urine", "knee pain"]
    embeddings = minilm.encode(texts)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32 and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2, similarity
    assert "all-MiniLM-L6-v2" in minilm.name


def test_minilm_batches_give_what_sentence_transformers_gives_in_the_input_order():
    texts = [query.text for query in read_corpus("test")[:70]] + ["knee pain"]
    encoder = MiniLMEncoder(batch_size=16)  # several batches, texts of many lengths
    reference = encoder._load().encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(texts), reference, atol=1e-5)


def test_texts_must_be_non_empty(tmp_path):
    encoder = CountingEncoder()
    with pytest.raises(ValueError, match=r"indices \[1, 3\]"):
        encoder.encode(["fever", "", "nausea", " \t\n"])
    with pytest.raises(ValueError, match=r"indices \[0\]"):
        CachedEncoder(encoder, tmp_path).encode(["  "])
    with pytest.raises(TypeError, match="single string"):
        encoder.encode("fever")
    assert encoder.encoded == []
    assert encoder.encode([]).shape == (0, 8)


def test_cached_encoder_embeds_each_text_once(tmp_path):
    inner = CountingEncoder()
    cached = CachedEncoder(inner, tmp_path / "cache")
    first = cached.encode(["fever", "nausea", "fever"])
    assert inner.encoded == ["fever", "nausea"]
    np.testing.assert_array_equal(first, CountingEncoder().encode(["fever", "nausea", "fever"]))
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)

    second = cached.encode(["nausea", "fever"])
    assert inner.encoded == ["fever", "nausea"]
    np.testing.assert_array_equal(second, first[[1, 0]])

    # a new process: everything comes from disk
    fresh_inner = CountingEncoder()
    fresh = CachedEncoder(fresh_inner, tmp_path / "cache")
    np.testing.assert_array_equal(fresh.encode(["fever", "nausea"]), first[:2])
    assert fresh_inner.encoded == []
    fresh.encode(["vomiting", "fever"])
    assert fresh_inner.encoded == ["vomiting"]
    # the first cache sees the second's new shard instead of re-embedding
    cached.encode(["vomiting"])
    assert inner.encoded == ["fever", "nausea"]

    other = CountingEncoder(name="counting:v2")
    CachedEncoder(other, tmp_path / "cache").encode(["fever"])
    assert other.encoded == ["fever"]  # the key includes the encoder's name
    leftovers = [path.name for path in (tmp_path / "cache").rglob(".*")]
    assert leftovers == []  # atomic writes leave no temporary file


def test_transformers_encoder_mean_pools_a_local_model(tmp_path):
    encoder = make_encoder(f"transformers:{tiny_bert_dir(tmp_path / 'tiny-bert')}")
    assert isinstance(encoder, TransformersEncoder) and encoder.dim == 32
    assert str((tmp_path / "tiny-bert").resolve()) in encoder.name
    alone = encoder.encode(["yellow skin"])
    batch = encoder.encode(["knee pain and dark urine with jaundice", "yellow skin", "knee pain"])
    assert batch.shape == (3, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(alone[0], batch[1], atol=1e-5)  # padding in a batch does not change the mean
    assert not np.allclose(batch[1], batch[2], atol=1e-3)

    with pytest.raises(FileNotFoundError, match="no-such-model"):
        TransformersEncoder(tmp_path / "no-such-model")


def test_openai_encoder_speaks_the_embeddings_wire_format(monkeypatch, caplog):
    monkeypatch.setenv("MEDSORA_TEST_KEY", "sk-test-secret-123")
    texts = ["fever", "dark urine", "pale stools", "itching", "weight loss"]
    with FakeOpenAI(embedding_dim=24, api_key="sk-test-secret-123") as server, caplog.at_level(logging.DEBUG):
        server.fail_next(503, times=1, retry_after=0.01)  # retried by the client
        encoder = OpenAIEmbeddingEncoder(
            model="text-embedding-3-small", base_url=server.base_url, api_key_env="MEDSORA_TEST_KEY", batch_size=2
        )
        embeddings = encoder.encode(texts)
        requests, base_url = server.requests, server.base_url
    assert embeddings.shape == (5, 24) and embeddings.dtype == np.float32 and encoder.dim == 24
    expected = np.array([openai_fake_embedding(text, 24) for text in texts], dtype=np.float32)
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)  # rows in input order

    assert [request.status for request in requests] == [503, 200, 200, 200]  # batches of 2, 2 and 1
    assert [request.body["input"] for request in requests[1:]] == [texts[0:2], texts[2:4], texts[4:]]
    assert all(request.path == "/v1/embeddings" for request in requests)
    assert all(request.body["model"] == "text-embedding-3-small" for request in requests)
    assert all(request.body["encoding_format"] == "float" for request in requests)
    assert encoder.name == f"openai:text-embedding-3-small@{base_url}"
    assert "sk-test-secret-123" not in caplog.text


def test_openai_encoder_through_make_encoder_and_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    with FakeOpenAI(embedding_dim=16) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        encoder = make_encoder("openai:text-embedding-3-small", cache_dir=tmp_path)
        assert encoder.dim == 16  # discovered with one probe request
        embeddings = encoder.encode(["fever", "dark urine", "fever"])
        assert embeddings.shape == (3, 16)
        np.testing.assert_array_equal(embeddings[0], embeddings[2])
        assert server.requests[-1].body["input"] == ["fever", "dark urine"]  # each text once
        requests_before = len(server.requests)
        again = make_encoder("openai:text-embedding-3-small", cache_dir=tmp_path).encode(["dark urine"])
        assert len(server.requests) == requests_before  # served from the cache
        np.testing.assert_array_equal(again[0], embeddings[1])


def test_openai_encoder_names_the_missing_key_variable(monkeypatch):
    monkeypatch.delenv("MEDSORA_ABSENT_KEY", raising=False)
    with pytest.raises(RuntimeError, match="MEDSORA_ABSENT_KEY"):
        OpenAIEmbeddingEncoder(api_key_env="MEDSORA_ABSENT_KEY")
    monkeypatch.setenv("MEDSORA_ABSENT_KEY", "  ")
    with pytest.raises(RuntimeError, match="MEDSORA_ABSENT_KEY"):
        OpenAIEmbeddingEncoder(api_key_env="MEDSORA_ABSENT_KEY")


def test_make_encoder_specs(tmp_path, monkeypatch):
    assert isinstance(make_encoder("minilm"), MiniLMEncoder)
    cached = make_encoder("minilm", cache_dir=tmp_path)
    assert isinstance(cached, CachedEncoder) and cached.name == MiniLMEncoder().name and cached.dim == 384
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert make_encoder("openai:text-embedding-3-large").name == "openai:text-embedding-3-large"
    for bad in ("bert", "transformers:", "minilm:other"):
        with pytest.raises(ValueError, match="unknown encoder spec"):
            make_encoder(bad)


# ---------------------------------------------------------------------------------------------- metrics (§5)

SCORES = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.8], [0.3, 0.3, 0.3]])


def test_rank_k_accuracy_counts_ties_against_the_primary_organ():
    primary = [0, 2, 1]
    # q0: organ 0 scores highest -> rank 1; q1: organ 2 ties organ 1 at 0.8 -> rank 2;
    # q2: all tie -> rank 3 (a tie never earns credit)
    assert rank_k_accuracy(SCORES, primary, 1) == pytest.approx(100 / 3)
    assert rank_k_accuracy(SCORES, primary, 2) == pytest.approx(200 / 3)
    assert rank_k_accuracy(SCORES, primary, 3) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="k must"):
        rank_k_accuracy(SCORES, primary, 4)


def test_mean_average_precision_over_organs():
    labels = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0]])
    # organ 0: ranking q0 (+) -> AP 1
    # organ 1: ranking q1 (0.8, -), q0 (0.5, +), q2 (0.3, +): precisions at the hits 1/2, 2/3 -> AP 7/12
    # organ 2: ranking q1 (+) first -> AP 1
    expected = 100 * (1 + 7 / 12 + 1) / 3
    assert mean_average_precision(SCORES, labels) == pytest.approx(expected)
    # an organ no query names is left out of the mean
    with_empty = np.concatenate([SCORES, np.full((3, 1), 0.7)], axis=1)
    assert mean_average_precision(with_empty, np.concatenate([labels, np.zeros((3, 1))], axis=1)) == pytest.approx(
        expected
    )
    # tied scores are one threshold: precision 1/2 at recall 1, whatever the order of the queries
    assert mean_average_precision([[0.5], [0.5]], [[1], [0]]) == pytest.approx(50.0)
    assert mean_average_precision([[0.5], [0.5]], [[0], [1]]) == pytest.approx(50.0)


def test_ood_auroc_of_the_top_score():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.85, 0.0], [0.1, 0.2]])
    is_ood = [False, False, True, True]
    # top scores: in-domain 0.9, 0.8; out-of-domain 0.85, 0.2
    # pairs (in > out): 0.9>0.85 yes, 0.9>0.2 yes, 0.8>0.85 no, 0.8>0.2 yes -> 3/4
    assert ood_auroc(scores, is_ood) == pytest.approx(75.0)
    assert ood_auroc([[0.5], [0.5]], [False, True]) == pytest.approx(50.0)  # a tie counts one half
    with pytest.raises(ValueError, match="both"):
        ood_auroc(scores, [False] * 4)


def test_evaluate_scores_on_queries():
    liver, pancreas, kidney = (ORGANS.index(name) for name in ("liver", "pancreas", "kidney"))
    queries = [
        SimpleNamespace(text="dark urine", organs=("liver", "gallbladder"), primary="liver"),
        {"text": "flank pain", "organs": ["kidney"], "primary": "kidney"},
        SimpleNamespace(text="back pain after meals", organs=("pancreas",), primary="pancreas"),
        SimpleNamespace(text="knee pain", organs=(), primary=None),
    ]
    scores = np.full((4, 7), 0.1)
    scores[0, liver], scores[0, ORGANS.index("gallbladder")] = 0.9, 0.8
    scores[1, kidney], scores[1, liver] = 0.6, 0.7  # kidney ranked 2nd
    scores[2, pancreas] = 0.95
    scores[3, :] = 0.2  # out of domain: its top score 0.2 is below every in-domain top score
    result = evaluate_scores(scores, queries)
    assert result["rank1"] == pytest.approx(200 / 3)
    assert result["rank2"] == pytest.approx(100.0) and result["rank3"] == pytest.approx(100.0)
    assert result["ood_auroc"] == pytest.approx(100.0)
    assert result["n_queries"] == 4 and result["n_out_of_domain"] == 1
    # mAP over the 4 organs with positives (liver, gallbladder, kidney, pancreas), on the 3 in-domain queries:
    # liver: q0 0.9 (+), q1 0.7 (-) -> 1; gallbladder: q0 (+) first -> 1; pancreas: q2 (+) first -> 1;
    # kidney: q1 0.6 (+) first -> 1
    assert result["mAP"] == pytest.approx(100.0)
    in_domain_only = evaluate_scores(scores[:3], queries[:3])
    assert "ood_auroc" not in in_domain_only and in_domain_only["n_queries"] == 3


# ---------------------------------------------------------------------------------------------- figures


def test_label_correlation_of_balanced_one_hot_labels():
    # 7 equally frequent one-hot columns: corr(i, j) = -1/6 off the diagonal
    correlation = label_correlation(hard_labels(torch.arange(7).repeat(3)))
    expected = np.full((7, 7), -1 / 6)
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(correlation, expected, atol=1e-12)


def test_figures_are_valid_pngs(tmp_path, clusters):
    import matplotlib.image

    features, organ_of_text, _, anchors = clusters
    tsne = plot_tsne(features[::3], organ_of_text[::3], anchors.v_pos, tmp_path / "figures" / "tsne.png")
    heatmap = plot_label_correlation(
        hard_labels(organ_of_text), soft_labels(anchors.v_pos.detach(), features), tmp_path / "figures" / "corr.png"
    )
    for path in (tsne, heatmap):
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # something is drawn
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == ["corr.png", "tsne.png"]
