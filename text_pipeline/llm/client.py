"""The LLM client: configuration, an ``openai.OpenAI`` built from it, and this project's retry policy.

Any OpenAI-compatible chat-completions server works (OpenAI, Azure's compatible endpoint, vLLM, Ollama,
llama.cpp's server): set ``base_url`` (or ``OPENAI_BASE_URL``) and the model (or ``MEDSORA_LLM_MODEL``).
The API key is read ONLY from the environment variable named by ``LLMConfig.api_key_env`` (default
``OPENAI_API_KEY``); it is never taken from a config file, never logged and never part of an error message.
Local servers that do not check keys still need a non-empty one: ``export OPENAI_API_KEY=unused``.

The openai client's own retries are switched off (``max_retries=0``); :func:`call_with_retries` retries
429, 408, 409 and 5xx answers, timeouts and connection errors with exponential backoff and jitter, and
waits as long as a ``Retry-After`` (or ``retry-after-ms``) header asks.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import openai

__all__ = [
    "LLMConfig",
    "MissingAPIKeyError",
    "call_with_retries",
    "is_retryable",
    "make_client",
    "retry_after_seconds",
]

log = logging.getLogger("text_pipeline.llm")

BASE_URL_ENV = "OPENAI_BASE_URL"
MODEL_ENV = "MEDSORA_LLM_MODEL"
RETRYABLE_STATUS = frozenset({408, 409, 429})

T = TypeVar("T")

_jitter = random.Random()  # jitter only; never part of any result
_sleep = time.sleep  # indirection so that tests may patch it


class MissingAPIKeyError(RuntimeError):
    """The environment variable that should hold the API key is unset or empty."""


@dataclass(frozen=True)
class LLMConfig:
    """How to reach the LLM and how hard to try.

    Attributes:
        base_url: the server's ``/v1`` URL; None reads ``OPENAI_BASE_URL`` (and, if that is unset too, the
            openai client's default, api.openai.com).
        model: the chat model; None reads ``MEDSORA_LLM_MODEL``.
        api_key_env: the NAME of the environment variable holding the key (the key itself is never configured).
        timeout: seconds for one HTTP request.
        max_retries: retries after the first attempt on 429/408/409/5xx, timeouts and connection errors.
        backoff: the first retry's delay in seconds; it doubles per retry, with jitter (x0.5 to x1).
        concurrency: requests in flight at once (threads).
        temperature: sent with every chat request; None sends none (some reasoning models accept no other
            than their default).
        json_retries: extra attempts when the answer is not the JSON asked for; after them the item is
            recorded as failed.
        max_backoff: the longest single wait, whether from backoff or from a Retry-After header.
    """

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60
    max_retries: int = 5
    backoff: float = 1.0
    concurrency: int = 4
    temperature: float | None = 0.0
    json_retries: int = 2
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        checks = {
            "timeout": self.timeout > 0,
            "max_retries": isinstance(self.max_retries, int) and self.max_retries >= 0,
            "backoff": self.backoff >= 0,
            "concurrency": isinstance(self.concurrency, int) and self.concurrency >= 1,
            "json_retries": isinstance(self.json_retries, int) and self.json_retries >= 0,
            "max_backoff": self.max_backoff >= 0,
            "api_key_env": isinstance(self.api_key_env, str) and bool(self.api_key_env.strip()),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"LLMConfig.{name} has an invalid value: {getattr(self, name)!r}")

    def resolved_model(self) -> str:
        """``model``, else ``$MEDSORA_LLM_MODEL``; a ValueError naming both if neither is set."""
        model = self.model or os.environ.get(MODEL_ENV, "").strip()
        if not model:
            raise ValueError(f"no LLM model configured: set LLMConfig.model or the environment variable {MODEL_ENV}")
        return model

    def resolved_base_url(self) -> str | None:
        """``base_url``, else ``$OPENAI_BASE_URL``, else None (the openai client's default)."""
        return self.base_url or os.environ.get(BASE_URL_ENV, "").strip() or None


def api_key(config: LLMConfig) -> str:
    """The key from ``$<config.api_key_env>``; MissingAPIKeyError naming the variable if it is unset or empty."""
    key = os.environ.get(config.api_key_env, "").strip()
    if not key:
        raise MissingAPIKeyError(
            f"no API key: the environment variable {config.api_key_env} is unset or empty. Set it to your key; "
            f"servers that do not check keys (Ollama, vLLM, llama.cpp) accept any non-empty value, "
            f"e.g. {config.api_key_env}=unused"
        )
    return key


def make_client(config: LLMConfig) -> openai.OpenAI:
    """An ``openai.OpenAI`` for ``config``: key from the environment only, the openai client's retries off
    (:func:`call_with_retries` does them), ``config.timeout`` per request."""
    return openai.OpenAI(
        api_key=api_key(config),
        base_url=config.resolved_base_url(),
        timeout=config.timeout,
        max_retries=0,
    )


def retry_after_seconds(headers) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is worth retrying: timeouts, connection errors, 408/409/429 and 5xx answers
    (except a 429 ``insufficient_quota``, which waiting does not cure)."""
    if isinstance(error, openai.APIConnectionError):  # APITimeoutError is a subclass
        return True
    if isinstance(error, openai.APIStatusError):
        if error.status_code == 429 and getattr(error, "code", None) == "insufficient_quota":
            return False
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return False


def _describe(error: BaseException) -> str:
    if isinstance(error, openai.APIStatusError):
        message = getattr(error, "message", "") or ""
        return f"HTTP {error.status_code}: {message[:200]}"
    return type(error).__name__


def call_with_retries(call: Callable[[], T], config: LLMConfig, what: str = "LLM call") -> T:
    """``call()``, retried per ``config`` while it raises a retryable error (:func:`is_retryable`).

    The n-th retry waits ``min(max_backoff, backoff * 2**(n-1))`` times a jitter in [0.5, 1], or what the
    error response's Retry-After asks (capped at ``max_backoff``), whichever is longer. After
    ``config.max_retries`` retries the last error is raised; non-retryable errors are raised at once.
    """
    attempt = 0
    while True:
        try:
            return call()
        except Exception as error:
            if not is_retryable(error) or attempt >= config.max_retries:
                if is_retryable(error):
                    log.error("%s failed after %d attempts: %s", what, attempt + 1, _describe(error))
                raise
            attempt += 1
            delay = min(config.max_backoff, config.backoff * 2 ** (attempt - 1)) * _jitter.uniform(0.5, 1.0)
            response = getattr(error, "response", None) if isinstance(error, openai.APIStatusError) else None
            asked = retry_after_seconds(getattr(response, "headers", None))
            if asked is not None:
                delay = max(delay, min(asked, config.max_backoff))
            log.warning("%s: %s; retry %d of %d in %.2f s", what, _describe(error), attempt, config.max_retries, delay)
            _sleep(delay)
