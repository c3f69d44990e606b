"""Caches shared by processes that write at the same time: no reader ever sees a half-written entry, none is lost."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing

import numpy as np
import torch
from scripts.organ_features import OrganFeatures, _read_cache_entry

from text_pipeline.encoders import CachedEncoder, TextEncoder
from text_pipeline.files import write_torch_atomically
from text_pipeline.organs import ORGANS

WRITERS = 4
FORK = multiprocessing.get_context("fork")


class HashEncoder(TextEncoder):
    """Each text's embedding is a function of the text alone, so any process's entry can be checked."""

    name, dim = "hash-encoder", 16

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([expected_embedding(text) for text in texts])


def expected_embedding(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    vector = np.random.default_rng(seed).standard_normal(HashEncoder.dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def texts_of(writer: int) -> list[str]:
    """Overlapping sets: each writer shares half its texts with the next."""
    return [f"symptom {index}" for index in range(writer * 20, writer * 20 + 40)]


def embed_in_rounds(cache_dir: str, writer: int, barrier) -> None:
    barrier.wait()
    encoder = CachedEncoder(HashEncoder(), cache_dir)
    texts = texts_of(writer)
    for start in range(0, len(texts), 5):  # a shard per call, while the others write theirs
        encoder.encode(texts[start : start + 5])


def test_processes_embedding_into_one_cache_at_once_lose_nothing_and_corrupt_nothing(tmp_path, caplog):
    barrier = FORK.Barrier(WRITERS)
    writers = [FORK.Process(target=embed_in_rounds, args=(str(tmp_path), w, barrier)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
    assert [process.exitcode for process in writers] == [0] * WRITERS
    reader = CachedEncoder(HashEncoder(), tmp_path)
    reader.encoder = None  # every text must now come from the shards the writers left
    all_texts = sorted({text for writer in range(WRITERS) for text in texts_of(writer)})
    with caplog.at_level(logging.WARNING):
        embeddings = reader.encode(all_texts)
    assert "unreadable" not in caplog.text
    np.testing.assert_allclose(embeddings, np.stack([expected_embedding(text) for text in all_texts]), atol=1e-6)
    assert not list(tmp_path.rglob(".*.tmp*"))  # no temporary file left behind


def organ_entry(value: float) -> dict:
    features = torch.full((len(ORGANS), 32), value)
    return {"features": features, "counts": torch.full((len(ORGANS),), 3), "organ_voxels": torch.ones(2, len(ORGANS))}


def rewrite_entry(path: str, value: float, rounds: int, barrier) -> None:
    barrier.wait()
    for _ in range(rounds):
        write_torch_atomically(path, organ_entry(value))


def test_a_feature_cache_entry_rewritten_by_several_processes_is_always_whole(tmp_path, caplog):
    entry = tmp_path / "scan.pt"
    write_torch_atomically(entry, organ_entry(0.0))
    barrier = FORK.Barrier(WRITERS + 1)
    writers = [FORK.Process(target=rewrite_entry, args=(str(entry), float(w + 1), 40, barrier)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    barrier.wait()
    seen = set()
    with caplog.at_level(logging.WARNING):
        while any(process.is_alive() for process in writers):
            features = _read_cache_entry(entry)
            assert isinstance(features, OrganFeatures)  # never unreadable, never a mixture of two writers
            assert torch.unique(features.features).numel() == 1
            seen.add(float(features.features[0, 0]))
    for process in writers:
        process.join(60)
    assert [process.exitcode for process in writers] == [0] * WRITERS
    assert "unreadable" not in caplog.text and len(seen) > 1  # the reader did read while they wrote
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scan.pt"]
