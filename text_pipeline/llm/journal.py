"""An append-only JSONL journal of completed LLM calls, so that an interrupted build resumes where it stopped.

One line per completed call: ``{"stage", "chunk_id", "key", "status", "result", ...}``, where ``key`` is
:func:`request_key` of the model, the messages and the parameters. A rerun looks every call up by
``(stage, chunk_id, key)`` before sending it; a call whose prompt, model or parameters changed gets a new
key, so it is made again (the old line stays, unused). Each line is written with a single ``write`` and then
flushed and fsync'd, so a line on disk is a call that completed; a torn last line (the process was killed
mid-write) is ignored on load and cut off before the next append. A corrupt line elsewhere is skipped with a
warning (its call is made again).

``status`` is ``"ok"`` or ``"failed"`` (the answer stayed invalid after the bounded JSON retries); a failed
call is not repeated on resume unless the stage is asked to (``retry_failed=True``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from text_pipeline.files import write_atomically

__all__ = ["Journal", "request_key", "write_jsonl"]

log = logging.getLogger("text_pipeline.llm")


def request_key(model: str, messages: list[dict], params: dict[str, Any]) -> str:
    """A hash of everything that determines a call's answer: the model, the messages and the parameters."""
    canonical = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


class Journal:
    """The journal at ``path`` (created with its folder if missing), loaded and opened for appending.

    Thread-safe: stages append from their worker threads. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[tuple[str, str, str], dict] = {}
        self._lock = threading.Lock()
        self.skipped_lines = 0
        created = not self.path.exists()
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:
            _fsync_dir(self.path.parent)

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if tail:
            record = _parse(tail)
            if record is not None:  # complete but for its newline: keep it, and end it properly
                lines.append(tail)
                with open(self.path, "ab") as handle:
                    handle.write(b"\n")
                    handle.flush()
                    os.fsync(handle.fileno())
            else:
                log.warning("journal %s: ignoring a torn last line (%d bytes)", self.path, len(tail))
                with open(self.path, "r+b") as handle:
                    handle.truncate(len(data) - len(tail))
                    handle.flush()
                    os.fsync(handle.fileno())
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                self.skipped_lines += 1
                log.warning("journal %s: skipping corrupt line %d", self.path, number)
                continue
            self._records[(record["stage"], record["chunk_id"], record["key"])] = record

    def get(self, stage: str, chunk_id: str, key: str) -> dict | None:
        """The record of a completed call, or None."""
        with self._lock:
            return self._records.get((stage, str(chunk_id), key))

    def append(self, stage: str, chunk_id: str, key: str, status: str, result: Any, **extra: Any) -> dict:
        """Record a completed call durably (one line, flushed and fsync'd) and return the record."""
        record = {
            "stage": stage,
            "chunk_id": str(chunk_id),
            "key": key,
            "status": status,
            "result": result,
            **extra,
            "time": time.time(),
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"journal {self.path} is closed")
            written = os.write(self._fd, line)
            if written != len(line):  # a short write of a regular file means a full disk; don't go on silently
                raise OSError(f"journal {self.path}: short write ({written} of {len(line)} bytes)")
            os.fsync(self._fd)
            self._records[(stage, record["chunk_id"], key)] = record
        return record

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def records(self) -> list[dict]:
        """All current records (the last one per call)."""
        with self._lock:
            return list(self._records.values())

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _parse(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("stage", "chunk_id", "key")):
        return None
    if record.get("status") not in ("ok", "failed") or "result" not in record:
        return None
    return record


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write ``rows`` as JSONL to ``path`` atomically (:func:`text_pipeline.files.write_atomically`), fsync'd."""

    def write(temporary: Path) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    written = write_atomically(path, write)
    _fsync_dir(written.parent)
    return written
