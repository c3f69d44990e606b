"""PubMed abstracts through NCBI E-utilities: ``esearch`` for PMIDs, ``efetch`` for titles and abstracts.

NCBI allows 3 requests per second without an API key and 10 with one; the client keeps to that. The key
(``NCBI_API_KEY``) is sent as the ``api_key`` parameter and never logged; ``email`` and ``tool`` identify
the caller as NCBI asks.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from text_pipeline.retrieval.http import (
    DEFAULT_TIMEOUT,
    APIError,
    ServiceClient,
    TransientAPIError,
    install_httpx_log_redaction,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils"
ARTICLE_URL = "https://pubmed.ncbi.nlm.nih.gov/{pmid}/"
DEFAULT_CACHE_DIR = Path(".cache/text_pipeline/pubmed")
FETCH_BATCH = 200
MAX_RETMAX = 10_000


class PubMedClient(ServiceClient):
    """Searches PubMed and fetches abstracts, rate limited, retried and cached.

    Args:
        base_url: the E-utilities base URL (``esearch.fcgi`` and ``efetch.fcgi`` are appended).
        api_key: NCBI API key; default ``$NCBI_API_KEY``. Raises the rate limit from 3 to 10 requests/s.
        email: contact address sent to NCBI; default ``$NCBI_EMAIL``.
        tool: tool name sent to NCBI.
        cache_dir: response cache folder, or None for no cache.
        http_client: an httpx client to use (not closed by :meth:`close`); default: one of its own.
        max_per_second: override of the NCBI rate limit.
        max_retries: retries per request after the first attempt.
        backoff: first retry delay in seconds.
        timeout: seconds for connecting and for each read.
    """

    def __init__(
        self,
        base_url: str = EUTILS_URL,
        api_key: str | None = None,
        email: str | None = None,
        tool: str = "medsora",
        cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
        http_client: httpx.Client | None = None,
        *,
        max_per_second: float | None = None,
        max_retries: int = 5,
        backoff: float = 0.5,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("NCBI_API_KEY") or None
        self.email = email if email is not None else os.environ.get("NCBI_EMAIL") or None
        self.tool = tool
        super().__init__(
            max_per_second or (10.0 if self.api_key else 3.0), cache_dir, http_client, max_retries, backoff, timeout
        )
        install_httpx_log_redaction()

    def __repr__(self) -> str:
        key = "set" if self.api_key else "none"
        return f"PubMedClient(base_url={self.base_url!r}, api_key={key}, tool={self.tool!r})"

    def _params(self, **params: Any) -> dict[str, Any]:
        identity = {"tool": self.tool, "email": self.email, "api_key": self.api_key}
        return {**params, **{name: value for name, value in identity.items() if value}}

    def _get(self, endpoint: str, params: dict[str, Any], parse: Callable[[str], T]) -> T:
        return self._fetch(f"{self.base_url}/{endpoint}", params, parse)

    def search(self, term: str, retmax: int = 20) -> list[str]:
        """PMIDs of the best matches for ``term``, best first.

        Args:
            term: a PubMed query (free text or field-tagged).
            retmax: the most PMIDs to return (at most 10,000).

        Returns:
            PMIDs as strings.
        """
        if not term.strip():
            raise ValueError("empty PubMed search term")
        if not 0 < retmax <= MAX_RETMAX:
            raise ValueError(f"retmax must be in 1..{MAX_RETMAX}, got {retmax}")
        params = self._params(db="pubmed", term=term, retmax=retmax, retmode="json", sort="relevance")
        pmids = self._get("esearch.fcgi", params, parse_esearch)
        logger.debug("PubMed %r: %d PMIDs", term, len(pmids))
        return pmids

    def fetch_abstracts(self, pmids: Iterable[str | int]) -> list[dict[str, str]]:
        """Titles and abstracts of ``pmids``, in their order, fetched :data:`FETCH_BATCH` at a time.

        Args:
            pmids: PubMed ids; duplicates are fetched once.

        Returns:
            One ``{"pmid", "title", "abstract", "url"}`` per article that has an abstract; articles without
            one, and ids PubMed does not return, are left out.
        """
        wanted = list(dict.fromkeys(str(pmid).strip() for pmid in pmids))
        bad = [pmid for pmid in wanted if not pmid.isdigit()]
        if bad:
            raise ValueError(f"not PubMed ids: {bad[:5]}")
        found: dict[str, dict[str, str]] = {}
        for start in range(0, len(wanted), FETCH_BATCH):
            batch = wanted[start : start + FETCH_BATCH]
            params = self._params(db="pubmed", id=",".join(batch), rettype="abstract", retmode="xml")
            for article in self._get("efetch.fcgi", params, parse_efetch):
                found.setdefault(article["pmid"], article)
        missing = [pmid for pmid in wanted if pmid not in found]
        if missing:
            logger.debug("%d of %d PMIDs have no abstract or were not returned", len(missing), len(wanted))
        return [found[pmid] for pmid in wanted if pmid in found]


def parse_esearch(body: str) -> list[str]:
    """PMIDs of an ``esearch`` JSON answer.

    Raises:
        ValueError: not JSON, or no ``esearchresult.idlist``.
        APIError: an ``ERROR`` reported by E-utilities.
    """
    document = json.loads(body)
    result = document.get("esearchresult") if isinstance(document, dict) else None
    if not isinstance(result, dict):
        if isinstance(document, dict) and "error" in document:
            raise APIError(f"E-utilities error: {document['error']}", code="error", info=str(document["error"]))
        raise ValueError("no 'esearchresult' object in the esearch answer")
    if "ERROR" in result:
        info = str(result["ERROR"])
        # "Search Backend failed: ..." is NCBI's answer when its backend is briefly overloaded
        error_type = TransientAPIError if "backend" in info.lower() else APIError
        raise error_type(f"E-utilities error: {info}", code="ERROR", info=info)
    idlist = result.get("idlist")
    if not isinstance(idlist, list) or not all(isinstance(pmid, str) and pmid.isdigit() for pmid in idlist):
        raise ValueError("'esearchresult.idlist' is missing or not a list of PMIDs")
    return idlist


def _text(element: ET.Element | None) -> str:
    """All text inside ``element`` (inline markup such as <i> and <sup> included), whitespace collapsed."""
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def parse_efetch(body: str) -> list[dict[str, str]]:
    """Articles with an abstract in an ``efetch`` PubmedArticleSet.

    Structured abstracts keep their section labels, one section per line (``"BACKGROUND: ..."``).

    Raises:
        xml.etree.ElementTree.ParseError: not XML.
        ValueError: XML whose root is not a PubmedArticleSet.
        APIError: an ``<ERROR>`` answer.
    """
    root = ET.fromstring(body)
    if root.tag != "PubmedArticleSet":
        error = root.find(".//ERROR")
        if error is not None:
            raise APIError(f"E-utilities error: {_text(error)}", code="ERROR", info=_text(error))
        raise ValueError(f"expected a PubmedArticleSet, got <{root.tag}>")
    articles = []
    for entry in root.iter("PubmedArticle"):
        citation = entry.find("MedlineCitation")
        pmid = _text(citation.find("PMID")) if citation is not None else ""
        article = citation.find("Article") if citation is not None else None
        if not pmid or article is None:
            raise ValueError("a PubmedArticle without MedlineCitation/PMID or Article")
        sections = []
        for part in article.findall("Abstract/AbstractText"):
            text = _text(part)
            label = (part.get("Label") or "").strip()
            if text:
                sections.append(f"{label}: {text}" if label else text)
        if not sections:
            continue
        title = _text(article.find("ArticleTitle")) or _text(article.find("VernacularTitle"))
        articles.append(
            {"pmid": pmid, "title": title, "abstract": "\n".join(sections), "url": ARTICLE_URL.format(pmid=pmid)}
        )
    return articles
