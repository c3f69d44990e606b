"""The LLM stages (text_pipeline.llm) against a fake OpenAI-compatible server on 127.0.0.1 (tests/fake_openai.py)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import openai
import pytest
from fake_openai import FakeOpenAI, fake_embedding

from text_pipeline.llm import (
    EXPAND_INSTRUCTION,
    FILTER_QUESTION,
    Journal,
    LLMConfig,
    MissingAPIKeyError,
    expand_chunks,
    filter_chunks,
    make_client,
)
from text_pipeline.organs import ORGAN_NAME_STEMS, ORGANS, organs_named_in

KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"
MODEL = "fake-model-1"


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("OPENAI_BASE_URL", "MEDSORA_LLM_MODEL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def config_for(server: FakeOpenAI, **overrides) -> LLMConfig:
    settings = dict(
        base_url=server.base_url, model=MODEL, timeout=5, max_retries=3, backoff=0.01, concurrency=4, json_retries=1
    )
    return LLMConfig(**{**settings, **overrides})


def chunk(i: int, text: str | None = None, organ: str | None = None) -> dict:
    return {
        "chunk_id": f"c{i:02d}",
        "text": f"Chunk {i}: the patient describes complaint number {i}." if text is None else text,
        "organ": organ or ORGANS[i % len(ORGANS)],
        "source": "wikipedia",
        "ref": f"https://example.org/{i}",
    }


def first_user(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def quoted(prompt: str) -> str:
    return prompt.split('"""\n', 1)[1].rsplit('\n"""', 1)[0]


def kind_of(body: dict) -> str:
    prompt = first_user(body)
    if prompt.startswith(FILTER_QUESTION):
        return "filter"
    if prompt.startswith("Based ONLY on the given chunk"):
        return "expand"
    if prompt.startswith("Rewrite"):
        return "rewrite"
    raise AssertionError(f"unexpected prompt: {prompt[:80]}")


def n_asked(body: dict) -> int:
    return int(re.search(r"create (\d+) unique", first_user(body)).group(1))


def observations_for(text: str, n: int) -> list[str]:
    return [f"Observation {j} drawn from: {text}" for j in range(n)]


def fake_model(body: dict) -> str:
    """A well-behaved model: symptoms are texts mentioning "itch"; observations derived from the text."""
    kind, text = kind_of(body), quoted(first_user(body))
    if kind == "filter":
        return json.dumps({"is_symptom": "itch" in text, "reason": "fake"})
    if kind == "expand":
        return json.dumps({"observations": observations_for(text, n_asked(body))})
    return json.dumps({"observation": "A rewritten observation without any organ."})


def chunk_number(body: dict) -> int:
    return int(re.search(r"Chunk (\d+):", first_user(body)).group(1))


# --- the happy path -------------------------------------------------------------------------------------------


def test_filter_keeps_and_drops_as_the_model_answers(tmp_path):
    texts = {True: "generalized itch at night.", False: "epidemiology."}
    chunks = [chunk(i, f"Chunk {i}: " + texts[i % 3 == 0]) for i in range(7)]
    with FakeOpenAI(chat=fake_model, api_key=KEY) as server:
        kept = filter_chunks(chunks, make_client(config_for(server)), config_for(server), tmp_path / "j.jsonl")
        requests = server.chat_requests()
    assert kept == [chunks[0], chunks[3], chunks[6]]
    assert kept.summary.kept == 3 and kept.summary.failed == [] and kept.summary.requests_sent == 7
    assert len(requests) == 7
    assert sorted(quoted(first_user(r.body)) for r in requests) == sorted(c["text"] for c in chunks)
    for request in requests:
        assert request.body["model"] == MODEL
        assert request.body["response_format"] == {"type": "json_object"}
        assert request.body["temperature"] == 0.0
        assert first_user(request.body).startswith(FILTER_QUESTION)
        assert '"is_symptom"' in first_user(request.body)
        assert request.headers["authorization"] == f"Bearer {KEY}"


def test_expand_returns_n_observations_per_chunk_in_input_order(tmp_path):
    chunks = [chunk(i) for i in range(6)]
    with FakeOpenAI(chat=fake_model) as server:
        for seconds in (0.3, 0.05, 0.2, 0.0):  # the first chunks answer last
            server.delay_next(seconds)
        rows = expand_chunks(chunks, None, config_for(server), tmp_path / "j.jsonl", n=3)
        requests = server.chat_requests()
    expected = [
        {"text": text, "organ": c["organ"], "source_chunk_id": c["chunk_id"], "source": "wikipedia", "ref": c["ref"]}
        for c in chunks
        for text in observations_for(c["text"], 3)
    ]
    assert rows == expected
    assert rows.summary.kept == 18 and rows.summary.leaks_found == 0 and rows.summary.duplicates_dropped == 0
    assert len(requests) == 6
    for request in requests:
        prompt = first_user(request.body)
        c = chunks[chunk_number(request.body)]
        assert request.body["model"] == MODEL and request.body["response_format"] == {"type": "json_object"}
        assert prompt.startswith(EXPAND_INSTRUCTION.format(n=3))
        assert c["text"] in prompt and '"observations"' in prompt
        assert f"The chunk is about the {c['organ'].replace('_', ' ')}" in prompt
    liver_prompt = next(first_user(r.body) for r in requests if chunk_number(r.body) == 0)
    assert ORGANS[0] == "liver" and "hepat" in ORGAN_NAME_STEMS["liver"]
    assert all(f'"{stem}"' in liver_prompt for organ in ORGANS for stem in ORGAN_NAME_STEMS[organ])


def test_fake_embeddings_are_deterministic_unit_vectors():
    with FakeOpenAI(embedding_dim=8) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        first = client.embeddings.create(model="emb", input=["alpha", "beta"])  # base64 on the wire
        floats = client.embeddings.create(model="emb", input="alpha", encoding_format="float")
        sized = client.embeddings.create(model="emb", input="alpha", dimensions=4, encoding_format="float")
    assert [d.embedding for d in first.data] == [fake_embedding("alpha", 8), fake_embedding("beta", 8)]
    assert floats.data[0].embedding == fake_embedding("alpha", 8)
    assert abs(sum(v * v for v in fake_embedding("alpha", 8)) - 1) < 1e-6
    assert len(sized.data[0].embedding) == 4 and fake_embedding("alpha", 8) != fake_embedding("beta", 8)
    assert [r.body["input"] for r in server.requests] == [["alpha", "beta"], "alpha", "alpha"]


# --- faults ---------------------------------------------------------------------------------------------------


def run_filter(server, tmp_path, chunks=None, **overrides):
    config = config_for(server, **overrides)
    return filter_chunks(chunks or [chunk(0, "Chunk 0: itch.")], make_client(config), config, tmp_path / "j.jsonl")


def test_429_with_retry_after_is_waited_for_then_succeeds(tmp_path):
    with FakeOpenAI(chat=fake_model) as server:
        server.fail_next(429, retry_after=0.6)
        kept = run_filter(server, tmp_path)
        requests = server.requests
    assert len(kept) == 1
    assert [r.status for r in requests] == [429, 200]
    assert requests[1].received_at - requests[0].received_at >= 0.55  # honoured, although backoff is 0.01 s


def test_500_then_success(tmp_path):
    with FakeOpenAI(chat=fake_model) as server:
        server.fail_next(500)
        kept = run_filter(server, tmp_path)
        statuses = [r.status for r in server.requests]
    assert len(kept) == 1 and statuses == [500, 200]


def test_a_response_slower_than_the_timeout_is_retried(tmp_path):
    with FakeOpenAI(chat=fake_model) as server:
        server.delay_next(2.0)
        started = time.monotonic()
        kept = run_filter(server, tmp_path, timeout=0.3)
        elapsed = time.monotonic() - started
        requests = server.requests
    assert len(kept) == 1 and len(requests) == 2
    assert elapsed < 1.9  # the client gave up on the slow answer instead of waiting for it


def test_persistent_503_raises_after_max_retries(tmp_path):
    with FakeOpenAI(chat=fake_model) as server:
        server.fail_next(503, times=50)
        with pytest.raises(openai.InternalServerError) as caught:
            run_filter(server, tmp_path, max_retries=2)
        assert len(server.requests) == 3  # the first attempt and 2 retries
    assert caught.value.status_code == 503


def test_a_400_is_not_retried(tmp_path):
    with FakeOpenAI(chat=fake_model) as server:
        server.fail_next(400, message="bad parameter")
        with pytest.raises(openai.BadRequestError, match="bad parameter"):
            run_filter(server, tmp_path)
        assert len(server.requests) == 1


def test_malformed_answers_are_retried_then_counted_as_failed(tmp_path, caplog):
    answers = {
        0: "this is not JSON",
        1: json.dumps({"is_symptom": "yes", "reason": "string instead of a boolean"}),
        2: json.dumps({"reason": "no is_symptom key"}),
        3: json.dumps({"is_symptom": True, "reason": "fine, itch"}),
    }
    chunks = [chunk(i) for i in answers]

    def model(body):
        return answers[chunk_number(body)]

    with FakeOpenAI(chat=model) as server:
        with caplog.at_level(logging.WARNING, logger="text_pipeline.llm"):
            kept = run_filter(server, tmp_path, chunks=chunks, json_retries=2)
        counts = {i: sum(chunk_number(r.body) == i for r in server.chat_requests()) for i in answers}
        retried = [r.body for r in server.chat_requests() if chunk_number(r.body) == 0][1:]
        # a rerun on the same journal repeats no call, failed ones included ...
        again = run_filter(server, tmp_path, chunks=chunks, json_retries=2)
        assert len(server.requests) == sum(counts.values())
        # ... unless asked to
        config = config_for(server, json_retries=0)
        retry = filter_chunks(chunks, None, config, tmp_path / "j.jsonl", retry_failed=True)
        assert len(server.requests) == sum(counts.values()) + 3
    assert kept == [chunks[3]]
    assert kept.summary.failed == ["c00", "c01", "c02"] and kept.summary.invalid_answers == 9
    assert counts == {0: 3, 1: 3, 2: 3, 3: 1}  # 1 + json_retries attempts, then given up
    assert retried[0]["messages"][-2] == {"role": "assistant", "content": "this is not JSON"}
    assert "not valid" in retried[0]["messages"][-1]["content"]
    assert "recorded as failed" in caplog.text and "c01" in caplog.text
    assert again == kept and again.summary.failed == kept.summary.failed and again.summary.requests_sent == 0
    assert retry.summary.failed == ["c00", "c01", "c02"] and retry.summary.calls_reused == 1


def test_expand_with_the_wrong_number_of_observations_is_failed(tmp_path):
    def model(body):
        text = quoted(first_user(body))
        count = 2 if chunk_number(body) == 1 else n_asked(body)
        return json.dumps({"observations": observations_for(text, count)})

    with FakeOpenAI(chat=model) as server:
        rows = expand_chunks([chunk(0), chunk(1), chunk(2)], None, config_for(server), tmp_path / "j.jsonl", n=3)
        assert len(server.requests) == 1 + 2 + 1
    assert rows.summary.failed == ["c01"]
    assert [row["source_chunk_id"] for row in rows] == ["c00"] * 3 + ["c02"] * 3


# --- organ-name leaks and duplicates --------------------------------------------------------------------------


def leaky_model(rewrite_answer: str):
    def model(body):
        kind, text = kind_of(body), quoted(first_user(body))
        if kind == "expand":
            number = chunk_number(body)
            observations = observations_for(text, n_asked(body))
            if number == 0:
                observations[1] = "Hepatic tenderness is noted on deep palpation."
            if number == 1:  # the same sentence as chunk 0's first, in other case and spacing
                observations[2] = "  OBSERVATION 0   drawn from:  " + chunks_text(0).upper()
            return json.dumps({"observations": observations})
        assert kind == "rewrite"
        return json.dumps({"observation": rewrite_answer})

    return model


def chunks_text(i: int) -> str:
    return chunk(i)["text"]


def test_a_leaking_observation_is_rewritten(tmp_path):
    fixed = "Tenderness is noted in the right upper quadrant on deep palpation."
    with FakeOpenAI(chat=leaky_model(fixed)) as server:
        rows = expand_chunks([chunk(0), chunk(1)], None, config_for(server), tmp_path / "j.jsonl", n=3)
        rewrites = [r.body for r in server.chat_requests() if kind_of(r.body) == "rewrite"]
    assert len(rewrites) == 1
    prompt = first_user(rewrites[0])
    assert "Hepatic tenderness is noted on deep palpation." in prompt and "the liver" in prompt and '"hepat"' in prompt
    assert rewrites[0]["response_format"] == {"type": "json_object"} and rewrites[0]["model"] == MODEL
    texts = [row["text"] for row in rows]
    assert fixed in texts and not any(organs_named_in(t) for t in texts)
    assert rows.summary.leaks_found == 1 and rows.summary.leaks_dropped == 0
    # dedup, case- and whitespace-insensitive, across chunks: chunk 1's third sentence repeats chunk 0's first
    assert rows.summary.duplicates_dropped == 1 and len(rows) == 5
    assert [row["source_chunk_id"] for row in rows] == ["c00"] * 3 + ["c01"] * 2


def test_a_rewrite_that_still_leaks_is_dropped(tmp_path):
    with FakeOpenAI(chat=leaky_model("The hepatic edge is firm.")) as server:
        rows = expand_chunks([chunk(0)], None, config_for(server), tmp_path / "j.jsonl", n=3)
        kinds = [kind_of(r.body) for r in server.chat_requests()]
    assert kinds == ["expand", "rewrite"]  # rewritten once, not again
    assert len(rows) == 2 and not any(organs_named_in(row["text"]) for row in rows)
    assert rows.summary.leaks_found == 1 and rows.summary.leaks_dropped == 1


# --- bad input, keys and logs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_chunk_text_names_the_chunk(tmp_path, text):
    with FakeOpenAI(chat=fake_model) as server:
        for stage in (filter_chunks, expand_chunks):
            with pytest.raises(ValueError, match="c01"):
                stage([chunk(0), chunk(1, text=text)], None, config_for(server), tmp_path / "j.jsonl")
        assert server.requests == []


def test_an_unknown_organ_is_rejected_before_any_call(tmp_path):
    bad = {**chunk(2), "organ": "heart"}
    with FakeOpenAI(chat=fake_model) as server:
        with pytest.raises(ValueError, match="c02.*heart"):
            expand_chunks([chunk(0), bad], None, config_for(server), tmp_path / "j.jsonl")
        assert server.requests == []


def test_a_missing_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY") as caught:
        make_client(LLMConfig(base_url="http://127.0.0.1:9/v1", model=MODEL))
    assert "OPENAI_API_KEY=unused" in str(caught.value)
    monkeypatch.setenv("MY_LLM_KEY", "   ")
    with FakeOpenAI(chat=fake_model) as server:
        config = config_for(server, api_key_env="MY_LLM_KEY")
        with pytest.raises(MissingAPIKeyError, match="MY_LLM_KEY"):
            filter_chunks([chunk(0)], None, config, tmp_path / "j.jsonl")
        assert server.requests == []


def test_model_and_base_url_come_from_the_environment(tmp_path, monkeypatch):
    with FakeOpenAI(chat=fake_model) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("MEDSORA_LLM_MODEL", "env-model")
        config = LLMConfig(backoff=0.01)
        kept = filter_chunks([chunk(0, "Chunk 0: itch.")], None, config, tmp_path / "j.jsonl")
        assert len(kept) == 1 and server.requests[0].body["model"] == "env-model"
    monkeypatch.delenv("MEDSORA_LLM_MODEL")
    with pytest.raises(ValueError, match="MEDSORA_LLM_MODEL"):
        filter_chunks([chunk(0)], None, LLMConfig(), tmp_path / "j.jsonl")


def test_the_key_never_appears_in_logs_errors_or_the_journal(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, openai's and httpx's included
    with FakeOpenAI(chat=fake_model, api_key=KEY) as server:
        server.fail_next(429, retry_after=0.01)
        server.fail_next(500)
        kept = run_filter(server, tmp_path, chunks=[chunk(0, "Chunk 0: itch."), chunk(1)])
        server.fail_next(401, times=1, message="Incorrect API key provided.")
        with pytest.raises(openai.AuthenticationError) as caught:
            run_filter(server, tmp_path / "other")
        server.fail_next(503, times=5)
        with pytest.raises(openai.InternalServerError) as caught_503:
            run_filter(server, tmp_path / "third", max_retries=1)
    assert len(kept) == 1
    assert "retry 1 of 3" in caplog.text  # the retries were logged ...
    for text in (caplog.text, str(caught.value), repr(caught.value), str(caught_503.value)):
        assert KEY not in text and KEY[8:20] not in text  # ... without the key
    assert KEY not in (tmp_path / "j.jsonl").read_text()


# --- the journal ----------------------------------------------------------------------------------------------


def test_a_torn_last_journal_line_is_ignored_and_cut(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.append("expand", "c00", "k0", "ok", ["a"])
        journal.append("expand", "c01", "k1", "ok", ["b"])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"stage": "expand", "chunk_id": "c02", "key": "k2", "sta')
    with Journal(path) as journal:
        assert len(journal) == 2 and journal.get("expand", "c02", "k2") is None
        assert journal.get("expand", "c01", "k1")["result"] == ["b"]
        journal.append("expand", "c02", "k2", "ok", ["c"])
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["stage"] == "expand" for line in lines)
    # a complete last line that lost only its newline is kept
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    with Journal(path) as journal:
        assert len(journal) == 3
        journal.append("expand", "c03", "k3", "ok", ["d"])
    assert len(path.read_text().splitlines()) == 4


BUILD = textwrap.dedent(
    """
    import sys
    from text_pipeline.llm import LLMConfig, expand_chunks, make_client, write_jsonl
    from text_pipeline.organs import ORGANS

    base_url, journal, out = sys.argv[1:4]
    chunks = [
        {"chunk_id": f"c{i:02d}", "text": f"Chunk {i}: the patient describes complaint number {i}.",
         "organ": ORGANS[i % len(ORGANS)], "source": "wikipedia", "ref": f"https://example.org/{i}"}
        for i in range(12)
    ]
    config = LLMConfig(base_url=base_url, model="fake-model-1", timeout=10, max_retries=2, backoff=0.01,
                       concurrency=2)
    rows = expand_chunks(chunks, make_client(config), config, journal, n=3, progress=False)
    write_jsonl(out, rows)
    """
)


def test_a_killed_build_resumes_without_repeating_completed_calls(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILD)
    journal, out = tmp_path / "journal.jsonl", tmp_path / "out.jsonl"
    env = dict(os.environ)
    with FakeOpenAI(chat=fake_model, delay=0.2) as server:
        command = [sys.executable, str(script), server.base_url, str(journal), str(out)]
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not (journal.exists() and journal.read_text().count("\n") >= 4):
            assert first.poll() is None, first.communicate()[1].decode()
            assert time.monotonic() < deadline, "the build journalled nothing"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        time.sleep(0.3)  # let the server log what the killed client had sent
        assert not out.exists()
        journalled = {json.loads(line)["chunk_id"] for line in journal.read_text().splitlines()}
        # a request the killed client was still sending arrives truncated (body None) and is never answered
        first_run = [f"c{chunk_number(r.body):02d}" for r in server.chat_requests() if r.body is not None]
        logged = len(server.requests)
        second = subprocess.run(command, env=env, capture_output=True, timeout=30)
        assert second.returncode == 0, second.stderr.decode()
        second_run = [f"c{chunk_number(r.body):02d}" for r in server.requests[logged:]]
    resumed = [json.loads(line) for line in out.read_text().splitlines()]

    every = {f"c{i:02d}" for i in range(12)}
    assert 4 <= len(journalled) < 12 and second_run  # killed mid-build
    assert set(first_run) | set(second_run) == every  # every chunk answered
    assert not set(second_run) & journalled  # nothing journalled was asked again
    repeated = set(first_run) & set(second_run)
    assert repeated <= set(first_run) - journalled and len(repeated) <= 2  # at most the calls in flight
    assert len(first_run) + len(second_run) == 12 + len(repeated) and len(second_run) == len(set(second_run))

    with FakeOpenAI(chat=fake_model) as server:  # the same build, never interrupted
        config = LLMConfig(base_url=server.base_url, model=MODEL, backoff=0.01, concurrency=2)
        chunks = [chunk(i) for i in range(12)]
        uninterrupted = expand_chunks(chunks, None, config, tmp_path / "fresh.jsonl", n=3, progress=False)
    assert resumed == list(uninterrupted) and len(resumed) == 36
