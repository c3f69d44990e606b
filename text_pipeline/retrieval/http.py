"""What the PubMed and Wikipedia clients share: rate limiting, retrying GETs, an on-disk response cache.

Errors are :class:`RetrievalError` (an :class:`OSError`, as :mod:`urllib` does for network failures), and
their messages and this module's log lines name the URL with every secret parameter (``api_key``)
replaced by ``***``.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlencode

import httpx

from text_pipeline.files import write_atomically

logger = logging.getLogger(__name__)

T = TypeVar("T")

Params = Mapping[str, str | int | float | None]

SECRET_PARAMS: frozenset[str] = frozenset({"api_key"})
"""Query parameters whose values never reach a log line, an exception or a cache key."""

CACHE_IGNORED_PARAMS: frozenset[str] = SECRET_PARAMS | {"email", "tool"}
"""Query parameters that identify the caller, not the content, and so stay out of cache keys."""

DEFAULT_TIMEOUT = 30.0
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 300.0


class RetrievalError(OSError):
    """A request to a remote service failed for good."""


class FetchError(RetrievalError):
    """An HTTP error status, a timeout or a connection failure; ``status`` is None when no response came."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class MalformedResponseError(RetrievalError):
    """A response body that could not be parsed (invalid JSON or XML, or not the expected structure)."""


class APIError(RetrievalError):
    """An error object returned by the service itself (MediaWiki ``error``, E-utilities ``ERROR``)."""

    def __init__(self, message: str, *, code: str = "", info: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.info = info


class TransientAPIError(APIError):
    """Raised by a response parser for a service error worth retrying (MediaWiki ``maxlag``, ``ratelimited``)."""


class RateLimiter:
    """Spaces calls to :meth:`acquire` at least ``1 / max_per_second`` apart, across threads.

    Each caller reserves the next free slot under a lock, then sleeps outside it until its slot, so
    threads queue up in order instead of all waking at once.

    Args:
        max_per_second: the largest number of calls allowed in any second.
        clock: monotonic time in seconds.
        sleep: blocks for the given number of seconds.
    """

    def __init__(
        self,
        max_per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not max_per_second > 0 or math.isinf(max_per_second):
            raise ValueError(f"max_per_second must be a positive finite number, got {max_per_second!r}")
        self.interval = 1.0 / max_per_second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot: float | None = None

    def acquire(self) -> None:
        """Block until the caller may send its request."""
        with self._lock:
            now = self._clock()
            slot = now if self._next_slot is None else max(now, self._next_slot)
            self._next_slot = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


@dataclass(frozen=True)
class CachedResponse:
    """A cached response body with its HTTP status and content type."""

    body: str
    status: int = 200
    content_type: str = ""


class ResponseCache:
    """Response bodies on disk, one JSON file per request, written atomically.

    Args:
        directory: where the files go; created on the first :meth:`put`.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(method: str, url: str, params: Params | None = None) -> str:
        """The cache key of a request: sha256 of method, URL and sorted parameters without secrets.

        Args:
            method: HTTP method.
            url: URL without query string.
            params: query parameters; those in :data:`CACHE_IGNORED_PARAMS` and those set to None are left out.
        """
        items = sorted(
            (name, str(value))
            for name, value in (params or {}).items()
            if name not in CACHE_IGNORED_PARAMS and value is not None
        )
        payload = json.dumps([method.upper(), url, items], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.directory / f"{key}.json"

    def get(self, key: str) -> CachedResponse | None:
        """The cached response for ``key``, or None if there is none or its file is unreadable."""
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            return CachedResponse(body=entry["body"], status=int(entry["status"]), content_type=entry["content_type"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unreadable cache entry %s: %s", path, error)
            return None

    def put(self, key: str, body: str, status: int = 200, content_type: str = "") -> None:
        """Store a response under ``key``, replacing any earlier one.

        Args:
            key: from :meth:`key`.
            body: the decoded response body.
            status: its HTTP status.
            content_type: its Content-Type header.
        """
        text = json.dumps({"status": status, "content_type": content_type, "body": body}, ensure_ascii=False)
        write_atomically(self._path(key), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def redact_params(params: Params | None) -> dict[str, Any]:
    """``params`` with the value of every secret parameter replaced by ``***``."""
    return {name: "***" if name in SECRET_PARAMS and value else value for name, value in (params or {}).items()}


def redacted_url(url: str, params: Params | None = None) -> str:
    """``url`` with its query string, secrets redacted, as it may appear in logs and errors."""
    shown = {name: value for name, value in redact_params(params).items() if value is not None}
    return f"{url}?{urlencode(shown, safe='*')}" if shown else url


def _redact_text(text: str, params: Params | None) -> str:
    for name in SECRET_PARAMS:
        value = (params or {}).get(name)
        if value:
            text = text.replace(str(value), "***")
    return text


class _RedactSecretsFilter(logging.Filter):
    """Redacts secret query parameters from the request lines httpx logs at INFO level."""

    _pattern = re.compile(r"\b(" + "|".join(re.escape(name) for name in sorted(SECRET_PARAMS)) + r")=[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._pattern.sub(r"\1=***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_filter_lock = threading.Lock()


def install_httpx_log_redaction() -> None:
    """Make the ``httpx`` logger redact secret query parameters (idempotent).

    httpx logs every request URL, query string included, at INFO level; with ``logging.basicConfig(level=INFO)``
    an API key would otherwise land in the log.
    """
    httpx_logger = logging.getLogger("httpx")
    with _filter_lock:
        if not any(isinstance(existing, _RedactSecretsFilter) for existing in httpx_logger.filters):
            httpx_logger.addFilter(_RedactSecretsFilter())


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or HTTP date), capped at MAX_RETRY_AFTER."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _identity(body: str) -> str:
    return body


def fetch(client: httpx.Client, url: str, params: Params | None = None, **options: Any) -> str:
    """GET ``url`` and return its body, retrying transient failures; ``options`` are :func:`fetch_parsed`'s."""
    return fetch_parsed(client, url, params, _identity, **options)


def fetch_parsed(
    client: httpx.Client,
    url: str,
    params: Params | None,
    parse: Callable[[str], T],
    *,
    cache: ResponseCache | None = None,
    limiter: RateLimiter | None = None,
    max_retries: int = 5,
    backoff: float = 0.5,
    timeout: float = DEFAULT_TIMEOUT,
    headers: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """GET ``url``, parse the body, and cache it once it parses.

    Retried, up to ``max_retries`` times after the first attempt: HTTP 429 and 5xx, timeouts, connection
    errors, bodies that ``parse`` rejects with :class:`ValueError` or :class:`xml.etree.ElementTree.ParseError`
    (a truncated or garbled body is usually transient), and :class:`TransientAPIError`. The wait is
    ``backoff * 2**attempt`` seconds (at most :data:`MAX_BACKOFF`), or the response's Retry-After when it has
    one. Any other non-2xx status fails at once. Only bodies that parse are cached, so a cache hit makes no
    request at all.

    Args:
        client: the HTTP client (its own headers, such as User-Agent, apply).
        url: URL without query string.
        params: query parameters.
        parse: turns the body into the value returned.
        cache: response cache, or None for none.
        limiter: rate limiter every attempt waits for, or None.
        max_retries: retries after the first attempt.
        backoff: first retry delay in seconds.
        timeout: seconds for connecting and for each read.
        headers: extra request headers.
        sleep: blocks for the given seconds between attempts.

    Returns:
        ``parse(body)``.

    Raises:
        FetchError: a non-retryable status, or retries exhausted on status, timeout or connection errors.
        MalformedResponseError: retries exhausted with a body that does not parse.
        APIError: the parser's service error (at once), or a :class:`TransientAPIError` that did not clear.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    shown = redacted_url(url, params)
    key = cache.key("GET", url, params) if cache is not None else ""
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            try:
                return parse(cached.body)
            except (ValueError, ET.ParseError, APIError) as error:
                logger.warning("cached response for %s does not parse (%s); fetching it again", shown, error)

    attempts = max_retries + 1
    for attempt in range(attempts):
        if limiter is not None:
            limiter.acquire()
        delay = min(backoff * 2**attempt, MAX_BACKOFF)
        final_error: RetrievalError
        try:
            response = client.get(url, params=dict(params or {}), headers=headers, timeout=timeout)
        except httpx.TimeoutException as error:
            reason = f"timed out after {timeout:g} s ({type(error).__name__})"
            final_error = FetchError(f"GET {shown} failed after {attempts} attempts: {reason}", url=shown)
        except httpx.TransportError as error:
            reason = f"{type(error).__name__}: {_redact_text(str(error), params)}"
            final_error = FetchError(f"GET {shown} failed after {attempts} attempts: {reason}", url=shown)
        except httpx.HTTPError as error:
            reason = f"{type(error).__name__}: {_redact_text(str(error), params)}"
            raise FetchError(f"GET {shown} failed: {reason}", url=shown) from None
        else:
            status = response.status_code
            if status == 429 or status >= 500:
                reason = f"HTTP {status} {response.reason_phrase}".rstrip()
                final_error = FetchError(
                    f"GET {shown} failed after {attempts} attempts: {reason}", url=shown, status=status
                )
                retry_after = _retry_after(response)
                delay = retry_after if retry_after is not None else delay
            elif not response.is_success:
                snippet = _redact_text(" ".join(response.text.split())[:200], params)
                raise FetchError(
                    f"GET {shown} failed: HTTP {status} {response.reason_phrase}: {snippet}".rstrip(": "),
                    url=shown,
                    status=status,
                ) from None
            else:
                body = response.text
                try:
                    value = parse(body)
                except TransientAPIError as error:
                    reason = f"service error {error.code}: {error.info}"
                    final_error = APIError(
                        f"{shown} answered with error {error.code!r} after {attempts} attempts: {error.info}",
                        code=error.code,
                        info=error.info,
                    )
                    retry_after = _retry_after(response)
                    delay = retry_after if retry_after is not None else delay
                except APIError as error:
                    raise APIError(f"{shown}: {error}", code=error.code, info=error.info) from None
                except (ValueError, ET.ParseError) as error:
                    reason = f"malformed body: {error}"
                    final_error = MalformedResponseError(
                        f"malformed response from {shown} (still after {attempts} attempts): {error}"
                    )
                else:
                    if cache is not None:
                        cache.put(key, body, status, response.headers.get("content-type", ""))
                    return value
        if attempt == attempts - 1:
            raise final_error from None
        logger.warning("GET %s: %s; retry %d of %d in %.2f s", shown, reason, attempt + 1, max_retries, delay)
        sleep(delay)
    raise AssertionError("unreachable")


class ServiceClient:
    """What the PubMed and Wikipedia clients share: an HTTP client, a rate limit, retries and a response cache.

    Args:
        max_per_second: the most requests per second.
        cache_dir: response cache folder, or None for no cache.
        http_client: an httpx client to use (not closed by :meth:`close`); default: one of its own.
        max_retries: retries per request after the first attempt.
        backoff: first retry delay in seconds.
        timeout: seconds for connecting and for each read.
    """

    def __init__(
        self,
        max_per_second: float,
        cache_dir: str | Path | None,
        http_client: httpx.Client | None,
        max_retries: int,
        backoff: float,
        timeout: float,
    ) -> None:
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.limiter = RateLimiter(max_per_second)
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self._owns_client = http_client is None
        self._client = http_client if http_client is not None else httpx.Client(follow_redirects=True)

    def _fetch(
        self, url: str, params: Params, parse: Callable[[str], T], headers: Mapping[str, str] | None = None
    ) -> T:
        return fetch_parsed(
            self._client,
            url,
            params,
            parse,
            cache=self.cache,
            limiter=self.limiter,
            max_retries=self.max_retries,
            backoff=self.backoff,
            timeout=self.timeout,
            headers=headers,
        )

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
