"""Atomic writes (text_pipeline/files.py)."""

from __future__ import annotations

import pytest
import torch

from text_pipeline.files import write_atomically, write_torch_atomically


def test_the_same_tensors_give_the_same_bytes_wherever_and_whenever_written(tmp_path):
    content = {"weight": torch.arange(12.0).reshape(3, 4), "fitted": torch.tensor(True)}
    first = write_torch_atomically(tmp_path / "a" / "model.pt", content)
    second = write_torch_atomically(tmp_path / "b" / "model.pt", content)
    assert first.read_bytes() == second.read_bytes()  # the random temporary name leaves no trace
    loaded = torch.load(first, weights_only=True)
    assert torch.equal(loaded["weight"], content["weight"]) and bool(loaded["fitted"])
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["model.pt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = write_torch_atomically(tmp_path / "model.pt", {"weight": torch.ones(2)})
    before = path.read_bytes()

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_bytes() == before and [file.name for file in tmp_path.iterdir()] == ["model.pt"]
