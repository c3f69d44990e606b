"""The two LLM stages of the symptom corpus (method.md §1): filter chunks, then expand the kept ones.

A chunk is a mapping (or an object with attributes) with ``chunk_id`` (or ``id``), ``text`` and, for
:func:`expand_chunks`, ``organ`` (one of ``ORGANS``); ``source`` and ``ref`` are carried into the output.

Both stages run ``config.concurrency`` requests at once, show a tqdm progress bar, return results in input
order, and journal every completed call (:mod:`text_pipeline.llm.journal`), so a killed build, rerun with the
same journal, sends no call again that had completed. A transport error that outlasts the retries
(:func:`~text_pipeline.llm.client.call_with_retries`) stops the stage with that error (rerun to resume);
an answer that stays invalid JSON after ``config.json_retries`` extra attempts marks its chunk as failed:
counted in the summary, logged, and journalled (a rerun does not repeat it unless ``retry_failed=True``).

The returned lists carry a :class:`StageSummary` as ``.summary``; it is also logged at INFO level.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import openai
from tqdm.auto import tqdm

from text_pipeline.llm.client import LLMConfig, call_with_retries, make_client
from text_pipeline.llm.journal import Journal, request_key
from text_pipeline.llm.prompts import (
    JSON_RESPONSE_FORMAT,
    InvalidAnswer,
    expand_messages,
    filter_messages,
    parse_expand,
    parse_filter,
    parse_rewrite,
    repair_message,
    rewrite_messages,
)
from text_pipeline.organs import ORGANS, organs_named_in

__all__ = ["StageResult", "StageSummary", "expand_chunks", "filter_chunks", "normalized"]

log = logging.getLogger("text_pipeline.llm")


@dataclass
class StageSummary:
    """What a stage did. ``requests_sent`` counts HTTP attempts that got an answer parsed (including invalid
    ones re-asked); ``calls_reused`` counts calls answered from the journal."""

    stage: str
    chunks: int = 0
    kept: int = 0  # filter: chunks kept; expand: observations returned
    failed: list[str] = field(default_factory=list)  # chunk ids whose answer stayed invalid
    requests_sent: int = 0
    calls_reused: int = 0
    invalid_answers: int = 0
    leaks_found: int = 0  # expand: observations naming an organ (each sent for one rewrite)
    leaks_dropped: int = 0  # expand: of those, dropped because the rewrite still leaked or failed
    duplicates_dropped: int = 0  # expand

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StageResult(list):
    """A plain list of the stage's results, with the stage's :class:`StageSummary` as ``.summary``."""

    summary: StageSummary

    def __init__(self, items, summary: StageSummary) -> None:
        super().__init__(items)
        self.summary = summary


def normalized(text: str) -> str:
    """The deduplication key of a text: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class _Chunk:
    chunk_id: Any
    text: str
    organ: str | None
    source: Any
    ref: Any
    original: Any


def _field(chunk, *names: str):
    for name in names:
        if isinstance(chunk, Mapping):
            if name in chunk:
                return chunk[name]
        elif hasattr(chunk, name):
            return getattr(chunk, name)
    return None


def _checked_chunks(chunks: Sequence, need_organ: bool) -> list[_Chunk]:
    """The chunks' fields, or a ValueError naming the first bad chunk (before any call is made)."""
    checked, seen = [], set()
    for position, chunk in enumerate(chunks):
        chunk_id = _field(chunk, "chunk_id", "id")
        if chunk_id is None or not str(chunk_id).strip():
            raise ValueError(f"chunk at position {position} has no chunk_id (or id)")
        if str(chunk_id) in seen:
            raise ValueError(f"chunk id {chunk_id!r} occurs more than once")
        seen.add(str(chunk_id))
        text = _field(chunk, "text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"chunk {chunk_id!r} has empty or missing text")
        organ = _field(chunk, "organ")
        if need_organ and organ not in ORGANS:
            raise ValueError(f"chunk {chunk_id!r} has organ {organ!r}; expected one of {', '.join(ORGANS)}")
        checked.append(_Chunk(chunk_id, text.strip(), organ, _field(chunk, "source"), _field(chunk, "ref"), chunk))
    return checked


class _Caller:
    """Journalled, retried, validated chat calls of one stage run."""

    def __init__(self, client, config: LLMConfig, journal: Journal, summary: StageSummary, retry_failed: bool):
        self.client = client.with_options(max_retries=0, timeout=config.timeout)
        self.config = config
        self.model = config.resolved_model()
        self.params: dict[str, Any] = {"response_format": JSON_RESPONSE_FORMAT}
        if config.temperature is not None:
            self.params["temperature"] = config.temperature
        self.journal = journal
        self.summary = summary
        self.retry_failed = retry_failed
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.summary, name, getattr(self.summary, name) + 1)

    def _content(self, messages: list[dict], what: str) -> str | None:
        def send():
            return self.client.chat.completions.create(model=self.model, messages=messages, **self.params)

        response = call_with_retries(send, self.config, what=what)
        self._count("requests_sent")
        if not response.choices:
            return None
        return response.choices[0].message.content

    def call(self, stage: str, chunk_id, messages: list[dict], parse: Callable[[str | None], Any]) -> tuple[str, Any]:
        """``("ok", parsed answer)`` or ``("failed", None)``, from the journal if this call completed before."""
        key = request_key(self.model, messages, self.params)
        record = self.journal.get(stage, str(chunk_id), key)
        if record is not None and (record["status"] == "ok" or not self.retry_failed):
            self._count("calls_reused")
            return record["status"], record["result"]
        conversation = list(messages)
        problem = ""
        for attempt in range(self.config.json_retries + 1):
            content = self._content(conversation, what=f"{stage} chunk {chunk_id}")
            try:
                result = parse(content)
            except InvalidAnswer as error:
                problem = str(error)
                self._count("invalid_answers")
                log.warning(
                    "%s chunk %s: invalid answer (attempt %d of %d): %s",
                    stage, chunk_id, attempt + 1, self.config.json_retries + 1, problem,
                )  # fmt: skip
                conversation = conversation + [{"role": "assistant", "content": content or ""}, repair_message(problem)]
                continue
            self.journal.append(stage, chunk_id, key, "ok", result, model=self.model)
            return "ok", result
        log.warning("%s chunk %s: recorded as failed: %s", stage, chunk_id, problem)
        self.journal.append(stage, chunk_id, key, "failed", None, model=self.model, error=problem)
        return "failed", None


def _run(items: list, work: Callable, concurrency: int, desc: str, progress: bool) -> list:
    """``[work(item) for item in items]`` on ``concurrency`` threads, in input order, with a progress bar.

    The first error stops the run: calls not yet started are cancelled, those in flight are let finish (so
    they get journalled) and the error is raised.
    """
    results: list = [None] * len(items)
    if not items:
        return results
    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix=f"llm-{desc}")
    futures = {pool.submit(work, item): index for index, item in enumerate(items)}
    pending = set(futures)
    try:
        with tqdm(total=len(items), desc=desc, unit="chunk", disable=not progress) as bar:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results[futures[future]] = future.result()  # raises the worker's error
                bar.update(len(done))
    except Exception:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:  # KeyboardInterrupt: don't wait for calls in flight
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _prepare(client, config: LLMConfig):
    config.resolved_model()  # fail early, before any call
    return make_client(config) if client is None else client


def filter_chunks(
    chunks: Sequence,
    client: openai.OpenAI | None,
    config: LLMConfig,
    journal_path: str | os.PathLike,
    *,
    progress: bool = True,
    retry_failed: bool = False,
) -> StageResult:
    """The chunks the LLM says describe a patient's symptom or clinical observation, in input order.

    Args:
        chunks: mappings or objects with ``chunk_id`` (or ``id``) and ``text``; they are returned as given.
        client: an ``openai.OpenAI``; None makes one from ``config`` (:func:`make_client`).
        config: model, retries, concurrency.
        journal_path: the JSONL journal of completed calls (created if missing; reuse it to resume).
        progress: show a tqdm progress bar.
        retry_failed: ask again for chunks journalled as failed (invalid answers) by an earlier run.

    Raises:
        ValueError: a chunk without id or with empty text (naming the chunk id), duplicate ids, no model.
        MissingAPIKeyError: ``client`` is None and the key's environment variable is unset.
        openai.APIError: a request failed for good (after the retries, or at once if not retryable).
    """
    checked = _checked_chunks(chunks, need_organ=False)
    client = _prepare(client, config)
    summary = StageSummary(stage="filter", chunks=len(checked))
    with Journal(journal_path) as journal:
        caller = _Caller(client, config, journal, summary, retry_failed)

        def work(chunk: _Chunk):
            return caller.call("filter", chunk.chunk_id, filter_messages(chunk.text), parse_filter)

        answers = _run(checked, work, config.concurrency, "filter", progress)
    kept = []
    for chunk, (status, answer) in zip(checked, answers):
        if status == "failed":
            summary.failed.append(str(chunk.chunk_id))
        elif answer["is_symptom"]:
            kept.append(chunk.original)
    summary.kept = len(kept)
    log.info("filter summary: %s", summary.as_dict())
    if summary.failed:
        log.warning("filter: %d chunk(s) failed (invalid answers): %s", len(summary.failed), summary.failed)
    return StageResult(kept, summary)


def expand_chunks(
    chunks: Sequence,
    client: openai.OpenAI | None,
    config: LLMConfig,
    journal_path: str | os.PathLike,
    n: int = 5,
    *,
    progress: bool = True,
    retry_failed: bool = False,
) -> StageResult:
    """``n`` clinical observations per chunk that name no organ, as
    ``{"text", "organ", "source_chunk_id", "source", "ref"}`` dicts in input order.

    Every observation goes through the organ-name leak check (:func:`text_pipeline.organs.organs_named_in`,
    any organ): a leaking one is rewritten once by the LLM and dropped if the rewrite still leaks. Duplicates
    (case- and whitespace-insensitive) across the whole output are dropped, the first kept. Chunks need an
    ``organ`` of ``ORGANS``; the rest is as for :func:`filter_chunks`.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, not {n!r}")
    checked = _checked_chunks(chunks, need_organ=True)
    client = _prepare(client, config)
    summary = StageSummary(stage="expand", chunks=len(checked))
    lock = threading.Lock()

    def add(name: str) -> None:
        with lock:
            setattr(summary, name, getattr(summary, name) + 1)

    with Journal(journal_path) as journal:
        caller = _Caller(client, config, journal, summary, retry_failed)

        def work(chunk: _Chunk):
            messages = expand_messages(chunk.text, chunk.organ, n)
            status, observations = caller.call("expand", chunk.chunk_id, messages, lambda c: parse_expand(c, n))
            if status == "failed":
                return None
            clean = []
            for observation in observations:
                named = organs_named_in(observation)
                if named:
                    add("leaks_found")
                    status, rewritten = caller.call(
                        "rewrite", chunk.chunk_id, rewrite_messages(observation, named), parse_rewrite
                    )
                    still = organs_named_in(rewritten) if status == "ok" else named
                    if still:
                        add("leaks_dropped")
                        log.info("expand chunk %s: dropped an observation naming %s", chunk.chunk_id, still)
                        continue
                    observation = rewritten
                clean.append(observation)
            return clean

        per_chunk = _run(checked, work, config.concurrency, "expand", progress)
    rows, seen = [], set()
    for chunk, observations in zip(checked, per_chunk):
        if observations is None:
            summary.failed.append(str(chunk.chunk_id))
            continue
        for text in observations:
            key = normalized(text)
            if key in seen:
                summary.duplicates_dropped += 1
                continue
            seen.add(key)
            rows.append(
                {
                    "text": text,
                    "organ": chunk.organ,
                    "source_chunk_id": chunk.chunk_id,
                    "source": chunk.source,
                    "ref": chunk.ref,
                }
            )
    summary.kept = len(rows)
    log.info("expand summary: %s", summary.as_dict())
    if summary.failed:
        log.warning("expand: %d chunk(s) failed (invalid answers): %s", len(summary.failed), summary.failed)
    return StageResult(rows, summary)
