"""Wikipedia articles through the MediaWiki Action API: full-text search, then plain-text extracts.

Wikimedia's policy asks for a descriptive User-Agent and for requests in series; the client sends one
on every request, keeps to ``max_per_second``, and sends ``maxlag`` so that the servers can ask it to wait.

Boolean API parameters count as true whenever present, whatever their value (``exintro=0`` means intro
only), so the client leaves ``exintro`` out to get whole articles. TextExtracts returns a single whole
article per response; the others follow through ``continue``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from text_pipeline.retrieval.http import (
    DEFAULT_TIMEOUT,
    APIError,
    MalformedResponseError,
    ServiceClient,
    TransientAPIError,
)

logger = logging.getLogger(__name__)

API_URL = "https://en.wikipedia.org/w/api.php"
ARTICLE_BASE_URL = "https://en.wikipedia.org/wiki/"
DEFAULT_USER_AGENT = "medsora-text-pipeline/0.1 (research; contact via project repository)"
DEFAULT_CACHE_DIR = Path(".cache/text_pipeline/wikipedia")
MAXLAG = 5
TITLES_PER_REQUEST = 20  # exlimit's maximum for clients without the apihighlimits right
MAX_SEARCH_LIMIT = 500
MAX_CONTINUATIONS = 1000
TRANSIENT_ERROR_CODES = frozenset({"maxlag", "ratelimited", "readonly", "internal_api_error_DBQueryTimeoutError"})
SKIPPED_SECTIONS = frozenset(
    {
        "see also",
        "references",
        "external links",
        "further reading",
        "notes",
        "bibliography",
        "sources",
        "citations",
        "footnotes",
        "notes and references",
    }
)
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1$")


class WikipediaClient(ServiceClient):
    """Searches Wikipedia and fetches plain-text article extracts, rate limited, retried and cached.

    Args:
        base_url: the ``api.php`` URL.
        user_agent: sent as User-Agent on every request.
        cache_dir: response cache folder, or None for no cache.
        max_per_second: the most requests per second.
        http_client: an httpx client to use (not closed by :meth:`close`); default: one of its own.
        article_base_url: article URLs are this plus the title with underscores.
        max_retries: retries per request after the first attempt.
        backoff: first retry delay in seconds.
        timeout: seconds for connecting and for each read.
    """

    def __init__(
        self,
        base_url: str = API_URL,
        user_agent: str = DEFAULT_USER_AGENT,
        cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
        max_per_second: float = 3.0,
        http_client: httpx.Client | None = None,
        *,
        article_base_url: str = ARTICLE_BASE_URL,
        max_retries: int = 5,
        backoff: float = 0.5,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not user_agent.strip():
            raise ValueError("Wikimedia requires a descriptive User-Agent; got an empty one")
        self.base_url = base_url
        self.user_agent = user_agent
        self.article_base_url = article_base_url
        super().__init__(max_per_second, cache_dir, http_client, max_retries, backoff, timeout)

    def _get(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._fetch(
            self.base_url,
            {**params, "format": "json", "formatversion": 2, "maxlag": MAXLAG},
            parse_api_response,
            headers={"User-Agent": self.user_agent},
        )

    def _query(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield the ``query`` object of each response, following ``continue`` to the end."""
        continuation: dict[str, Any] = {}
        for _ in range(MAX_CONTINUATIONS):
            answer = self._get({**params, **continuation})
            for module, warning in answer.get("warnings", {}).items():
                logger.debug("MediaWiki warning from %s: %s", module, warning)
            query = answer.get("query", {})
            if not isinstance(query, dict):
                raise MalformedResponseError(f"{self.base_url}: 'query' is not an object")
            yield query
            continuation = answer.get("continue") or {}
            if not continuation:
                return
            if not isinstance(continuation, dict):
                raise MalformedResponseError(f"{self.base_url}: 'continue' is not an object")
        raise MalformedResponseError(f"{self.base_url}: still continuing after {MAX_CONTINUATIONS} requests")

    def search(self, query: str, limit: int = 20) -> list[str]:
        """Titles of the articles that best match ``query``, best first.

        Args:
            query: CirrusSearch query text.
            limit: the most titles to return.
        """
        if not query.strip():
            raise ValueError("empty Wikipedia search query")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        params = {
            "action": "query",
            "list": "search",
            "srsearch": query,
            "srlimit": min(limit, MAX_SEARCH_LIMIT),
            "srnamespace": 0,
            "srprop": "",
        }
        titles: list[str] = []
        for result in self._query(params):
            hits = result.get("search", [])
            if not isinstance(hits, list) or not all(isinstance(hit, dict) and "title" in hit for hit in hits):
                raise MalformedResponseError(f"{self.base_url}: 'query.search' is not a list of pages with titles")
            titles.extend(hit["title"] for hit in hits if hit["title"] not in titles)
            if len(titles) >= limit:
                break
        return titles[:limit]

    def extracts(self, titles: Iterable[str]) -> list[dict[str, str]]:
        """Plain-text extracts of whole articles, :data:`TITLES_PER_REQUEST` titles per request.

        Section headings and reference sections (See also, References, ...) are dropped; the paragraphs are
        joined by line breaks.

        Args:
            titles: article titles; redirects are followed, and two titles of the same article give it once.

        Returns:
            One ``{"title", "url", "text"}`` per existing, non-disambiguation article with text, in the order
            of ``titles``.
        """
        unique: dict[str, dict[str, str]] = {}
        for page in self.extracts_by_title(titles).values():
            unique.setdefault(page["title"], page)
        return list(unique.values())

    def extracts_by_title(self, titles: Iterable[str]) -> dict[str, dict[str, str]]:
        """Like :meth:`extracts`, keyed by the title asked for (two titles may share one article).

        Args:
            titles: article titles.

        Returns:
            ``{asked title: {"title", "url", "text"}}`` for the titles that lead to an article with text, in
            the order of ``titles``; ``"title"`` is the article's own title, after redirects.
        """
        wanted = list(dict.fromkeys(title.strip() for title in titles if title.strip()))
        results: dict[str, dict[str, str]] = {}
        for start in range(0, len(wanted), TITLES_PER_REQUEST):
            batch = wanted[start : start + TITLES_PER_REQUEST]
            pages, renamed = self._pages(batch)
            articles: dict[str, dict[str, str] | None] = {}
            for title in batch:
                final = renamed.get(title, title)
                final = renamed.get(final, final)
                if final not in articles:
                    articles[final] = self._article(final, pages.get(final))
                if articles[final] is not None:
                    results[title] = articles[final]
        return results

    def _article(self, title: str, page: dict[str, Any] | None) -> dict[str, str] | None:
        if page is None or page.get("missing") or page.get("invalid"):
            logger.debug("Wikipedia has no article %r", title)
            return None
        if "disambiguation" in (page.get("pageprops") or {}):
            logger.debug("skipping disambiguation page %r", title)
            return None
        text = clean_extract(page.get("extract") or "")
        if not text:
            logger.debug("Wikipedia article %r has no text", title)
            return None
        return {"title": title, "url": self.article_url(title), "text": text}

    def _pages(self, titles: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Pages by title, merged across continuations, and the renames (normalization, redirects) applied."""
        params = {
            "action": "query",
            "prop": "extracts|pageprops",
            "ppprop": "disambiguation",
            "explaintext": 1,
            "exsectionformat": "wiki",
            "exlimit": "max",
            "redirects": 1,
            "titles": "|".join(titles),
        }
        pages: dict[str, dict[str, Any]] = {}
        renamed: dict[str, str] = {}
        for query in self._query(params):
            for rename in [*query.get("normalized", []), *query.get("redirects", [])]:
                if isinstance(rename, dict) and "from" in rename and "to" in rename:
                    renamed[rename["from"]] = rename["to"]
            page_list = query.get("pages", [])
            if not isinstance(page_list, list) or not all(isinstance(p, dict) and "title" in p for p in page_list):
                raise MalformedResponseError(f"{self.base_url}: 'query.pages' is not a list of pages (formatversion=2)")
            for page in page_list:
                merged = pages.setdefault(page["title"], {})
                merged.update({key: value for key, value in page.items() if value is not None})
        return pages, renamed

    def article_url(self, title: str) -> str:
        """The article URL of ``title``, percent-encoded as MediaWiki does (spaces become underscores)."""
        return self.article_base_url + quote(title.replace(" ", "_"), safe=";@$!*(),/~:")


def parse_api_response(body: str) -> dict[str, Any]:
    """A MediaWiki API JSON answer, with its ``error`` object turned into an exception.

    Raises:
        ValueError: not a JSON object.
        TransientAPIError: ``maxlag`` and other errors worth retrying.
        APIError: any other error object, with its code and info.
    """
    answer = json.loads(body)
    if not isinstance(answer, dict):
        raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
    error = answer.get("error")
    if error is not None:
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
        info = str(error.get("info", "")) if isinstance(error, dict) else str(error)
        error_type = TransientAPIError if code in TRANSIENT_ERROR_CODES else APIError
        raise error_type(f"MediaWiki API error {code!r}: {info}", code=code, info=info)
    return answer


def clean_extract(text: str) -> str:
    """An explaintext extract without headings, empty lines and reference sections."""
    lines: list[str] = []
    skip_level = 0
    for line in text.splitlines():
        line = line.strip()
        heading = _HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            if skip_level and level > skip_level:
                continue
            skip_level = level if heading.group(2).lower() in SKIPPED_SECTIONS else 0
            continue
        if line and not skip_level:
            lines.append(" ".join(line.split()))
    return "\n".join(lines)
