"""A small fake OpenAI-compatible HTTP server for tests: chat completions and embeddings on 127.0.0.1.

It speaks the real wire format (``POST /v1/chat/completions`` and ``POST /v1/embeddings`` with the real JSON
request and response shapes; errors as ``{"error": {"message", "type", "param", "code"}}``), so the real
``openai`` client can be pointed at it::

    from fake_openai import FakeOpenAI, fake_embedding

    def answer(body: dict) -> str:             # the request body, parsed; returns the assistant's content
        return '{"is_symptom": true, "reason": "a symptom"}'

    with FakeOpenAI(chat=answer, embedding_dim=16) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        server.fail_next(429, times=1, retry_after=1)   # the next request gets a 429 with Retry-After: 1
        server.delay_next(0.5, times=2)                 # the 2 requests after that wait 0.5 s before answering
        server.delay = 0.2                              # every request waits 0.2 s (a slow model)
        ...
        server.requests                                 # the request log: a list of Request, in arrival order

Embeddings are deterministic: input text ``t`` gets :func:`fake_embedding` ``(t, dim)``, a unit vector seeded by
a hash of the text (``dim`` is the request's ``dimensions`` if given, else ``embedding_dim``); both
``encoding_format`` ``"float"`` and ``"base64"`` (the openai client's default) are answered.

Faults are consumed in request arrival order, by every POST (chat or embeddings). Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAI", "Request", "fake_embedding"]

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}


def fake_embedding(text: str, dim: int = 16) -> list[float]:
    """The fake server's embedding of ``text``: a unit vector of length ``dim`` seeded by SHA-256 of the text.

    Values are rounded to float32, so a vector decoded from the base64 wire format equals this one exactly.
    """
    rng = random.Random(hashlib.sha256(text.encode("utf-8")).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in vector]


@dataclass
class Request:
    """One request the server received: ``path`` ("/v1/chat/completions"), ``body`` (parsed JSON; None if it was
    not JSON, e.g. cut short by a client killed mid-send; such a request is answered 400),
    ``headers`` (lower-cased names), ``received_at`` (time.monotonic()) and ``status`` (the HTTP status it was
    answered with; None while it is still being answered)."""

    path: str
    body: Any
    headers: dict[str, str]
    received_at: float
    status: int | None = None


@dataclass
class _Fault:
    status: int | None = None
    retry_after: float | None = None
    message: str | None = None
    delay: float = 0.0


@dataclass
class _Script:
    failures: list[_Fault] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)


class FakeOpenAI:
    """A fake OpenAI-compatible server on 127.0.0.1 (a free port), run in a background thread.

    Args:
        chat: ``chat(body) -> str``: the assistant's message content for a chat-completions request body. It may
            raise; the server then answers 500. Default: ``"{}"``.
        embedding_dim: the default embedding length.
        delay: seconds every request waits before it is answered (settable later as ``server.delay``).
        api_key: if given, requests must carry ``Authorization: Bearer <api_key>`` or get a 401.
    """

    def __init__(
        self,
        chat: Callable[[dict], str] | None = None,
        embedding_dim: int = 16,
        delay: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.chat = chat or (lambda body: "{}")
        self.embedding_dim = embedding_dim
        self.delay = delay
        self.api_key = api_key
        self._requests: list[Request] = []
        self._script = _Script()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        handler = type("_Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, as ``openai.OpenAI(base_url=...)`` wants it."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started; use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def requests(self) -> list[Request]:
        """A snapshot of the request log, in arrival order."""
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[Request]:
        """The chat-completions requests of the log."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None, message: str | None = None):
        """The next ``times`` requests are answered with HTTP ``status`` and an OpenAI error body (and a
        ``Retry-After`` header if ``retry_after`` is given)."""
        with self._lock:
            self._script.failures.extend(_Fault(status, retry_after, message) for _ in range(times))

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """The next ``times`` requests wait ``seconds`` (on top of ``delay``) before they are answered."""
        with self._lock:
            self._script.delays.extend([seconds] * times)

    # -- internals -------------------------------------------------------------------------------------------
    def _admit(self, request: Request) -> tuple[_Fault | None, float]:
        with self._lock:
            self._requests.append(request)
            fault = self._script.failures.pop(0) if self._script.failures else None
            extra = self._script.delays.pop(0) if self._script.delays else 0.0
            return fault, self.delay + extra

    def _respond(self, request: Request) -> tuple[int, dict, dict[str, str]]:
        """(status, JSON body, extra headers) for an admitted request without a scripted fault."""
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.")
        if not isinstance(request.body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        if request.path == "/v1/chat/completions":
            return self._chat_completion(request.body)
        if request.path == "/v1/embeddings":
            return self._embeddings(request.body)
        return _error(404, f"Invalid URL (POST {request.path})")

    def _chat_completion(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        if "model" not in body or not isinstance(body.get("messages"), list):
            return _error(400, "you must provide a model parameter and a messages list")
        try:
            content = self.chat(body)
        except Exception as error:  # a handler bug is a 500, like a crashing model server
            return _error(500, f"fake chat handler raised {type(error).__name__}: {error}")
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion_tokens = len(str(content).split())
        return (
            200,
            {
                "id": f"chatcmpl-fake{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": None,
            },
            {},
        )

    def _embeddings(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) and t for t in inputs):
            return _error(400, "'input' must be a non-empty string or a list of non-empty strings")
        dim = body.get("dimensions") or self.embedding_dim
        data = []
        for index, text in enumerate(inputs):
            vector = fake_embedding(text, dim)
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode("ascii")
            else:
                encoded = vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(t.split()) for t in inputs)
        return (
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", ""),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            {},
        )


def _error(status: int, message: str, retry_after: float | None = None) -> tuple[int, dict, dict[str, str]]:
    kind, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects
    timeout = 30
    fake: FakeOpenAI

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence the per-request stderr log
        pass

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = Request(
            path=self.path.split("?", 1)[0],
            body=body,
            headers={k.lower(): v for k, v in self.headers.items()},
            received_at=time.monotonic(),
        )
        fault, delay = self.fake._admit(request)
        if delay > 0 and self.fake._closing.wait(delay):
            return
        if fault is not None:
            status, payload, headers = _error(
                fault.status, fault.message or f"fake fault {fault.status}", retry_after=fault.retry_after
            )
        else:
            status, payload, headers = self.fake._respond(request)
        request.status = status
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout) while we slept
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - e.g. GET /v1/models: not served
        data = json.dumps(_error(404, f"Invalid URL (GET {self.path})")[1]).encode("utf-8")
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
