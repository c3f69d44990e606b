"""Fake NCBI E-utilities and MediaWiki Action API servers on 127.0.0.1, speaking the real wire formats.

Each server binds an OS-chosen port on 127.0.0.1 only, answers in a daemon thread, and records every request::

    from fake_services import Article, FakeEutils, FakeMediaWiki, Reply

    with FakeEutils(articles=[Article("101", "Title", {"BACKGROUND": "..."})], searches={"jaundice": ["101"]}) as ncbi:
        client = PubMedClient(base_url=ncbi.base_url, cache_dir=None)
        ncbi.fail_next(Reply(status=429, headers={"Retry-After": "1"}))   # the next request gets a 429
        ncbi.fail_next(Reply(delay=1.0), times=2)                          # the next 2 are slow, then normal
        ncbi.requests                                                      # [Request(method, path, params, headers)]

Scripted replies (``fail_next``) are consumed in request arrival order before the normal behaviour; a
:class:`Reply` with a body and status 200 replaces the normal answer, one with only a ``delay`` delays it.

E-utilities: ``GET /esearch.fcgi`` (``retmode=json``: ``{"header", "esearchresult": {"count", "retmax",
"retstart", "idlist", ...}}``; a term matches a ``searches`` key it contains, case-insensitive) and
``GET /efetch.fcgi`` (``retmode=xml``: a ``<PubmedArticleSet>`` with ``<PubmedArticle>``, abstracts
plain or structured with ``Label``; unknown ids are left out, as NCBI does).

MediaWiki (``GET /w/api.php``, ``format=json&formatversion=2``): ``list=search`` (``srsearch`` matched
against ``searches`` keys, ``sroffset`` continuation) and ``prop=extracts|pageprops`` with ``explaintext``:
like TextExtracts, one whole-article extract per response unless ``exintro`` is present (any value), the
others through ``continue: {"excontinue": n, "continue": "||"}``; ``normalized`` and ``redirects``
(with ``redirects``), ``missing`` pages, ``pageprops.disambiguation``; errors as HTTP 200 with
``{"error": {"code", "info", "docref"}}`` and a ``MediaWiki-API-Error`` header.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "Article",
    "FakeEutils",
    "FakeMediaWiki",
    "FakeServer",
    "Page",
    "Reply",
    "Request",
    "StaticServer",
    "xml_text",
]


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (query parameters with a single value each)."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class Reply:
    """A scripted answer: ``body`` None means "answer normally" (after ``delay`` seconds)."""

    status: int = 200
    body: str | None = None
    content_type: str = "application/json; charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeServer:
    """A ThreadingHTTPServer on 127.0.0.1 that records requests and answers through :meth:`answer`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._scripted: list[Reply] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                parts = urlsplit(self.path)
                params = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
                request = Request("GET", parts.path, params, {k.lower(): v for k, v in self.headers.items()})
                reply = server._record(request)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.body is None:
                    reply = server.answer(request)
                data = reply.body.encode("utf-8") if reply.body is not None else b""
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (timeout tests)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _record(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            return self._scripted.pop(0) if self._scripted else Reply()

    def fail_next(self, reply: Reply, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``reply`` instead of normally."""
        with self._lock:
            self._scripted.extend([reply] * times)

    def paths(self) -> list[str]:
        """The path of every request so far, in arrival order."""
        with self._lock:
            return [request.path for request in self.requests]

    def answer(self, request: Request) -> Reply:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class StaticServer(FakeServer):
    """Answers every request with the same :class:`Reply` (after any scripted ones)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self.reply = reply

    def answer(self, request: Request) -> Reply:
        return self.reply


def _json(content: object, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, body=json.dumps(content), headers=headers or {})


@dataclass(frozen=True)
class Article:
    """A PubMed record: ``abstract`` is plain text, a {label: text} dict (structured), or None (no abstract).

    Titles and abstract texts are inserted as XML (so inline ``<i>`` markup is allowed, ``&`` must be escaped).
    """

    pmid: str
    title: str
    abstract: str | dict[str, str] | None


class FakeEutils(FakeServer):
    """Fake NCBI E-utilities; :attr:`base_url` stands for ``https://eutils.ncbi.nlm.nih.gov/entrez/eutils``."""

    def __init__(self, articles: list[Article], searches: dict[str, list[str]]) -> None:
        super().__init__()
        self.articles = {article.pmid: article for article in articles}
        self.searches = searches

    @property
    def base_url(self) -> str:
        return self.origin + "/entrez/eutils"

    def answer(self, request: Request) -> Reply:
        if request.path.endswith("/esearch.fcgi"):
            return self._esearch(request.params)
        if request.path.endswith("/efetch.fcgi"):
            return self._efetch(request.params)
        return Reply(status=404, body="<html><body>Not Found</body></html>", content_type="text/html")

    def _esearch(self, params: dict[str, str]) -> Reply:
        if params.get("db") != "pubmed" or "term" not in params:
            return _json({"esearchresult": {"ERROR": "Empty term and query_key - nothing todo"}})
        term = params["term"].lower()
        pmids = next((ids for key, ids in self.searches.items() if key.lower() in term), [])
        retmax = int(params.get("retmax", 20))
        result = {
            "count": str(len(pmids)),
            "retmax": str(min(retmax, len(pmids))),
            "retstart": "0",
            "idlist": pmids[:retmax],
            "translationset": [],
            "querytranslation": params["term"],
        }
        return _json({"header": {"type": "esearch", "version": "0.3"}, "esearchresult": result})

    def _efetch(self, params: dict[str, str]) -> Reply:
        entries = []
        for pmid in params.get("id", "").split(","):
            article = self.articles.get(pmid.strip())
            if article is not None:
                entries.append(_pubmed_article(article))
        body = (
            '<?xml version="1.0" ?>\n'
            '<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2024//EN" '
            '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_240101.dtd">\n'
            "<PubmedArticleSet>\n" + "".join(entries) + "</PubmedArticleSet>\n"
        )
        return Reply(body=body, content_type="text/xml; charset=UTF-8")


def _pubmed_article(article: Article) -> str:
    if article.abstract is None:
        abstract = ""
    elif isinstance(article.abstract, str):
        abstract = f"<Abstract><AbstractText>{article.abstract}</AbstractText></Abstract>"
    else:
        sections = "".join(
            f"<AbstractText Label={quoteattr(label)} NlmCategory={quoteattr(label)}>{text}</AbstractText>"
            for label, text in article.abstract.items()
        )
        abstract = f"<Abstract>{sections}<CopyrightInformation>(c) 2024</CopyrightInformation></Abstract>"
    return (
        "<PubmedArticle>"
        f'<MedlineCitation Status="MEDLINE" Owner="NLM"><PMID Version="1">{article.pmid}</PMID>'
        '<Article PubModel="Print"><Journal><Title>Journal of Tests</Title></Journal>'
        f"<ArticleTitle>{article.title}</ArticleTitle>{abstract}"
        "<Language>eng</Language></Article></MedlineCitation>"
        '<PubmedData><ArticleIdList><ArticleId IdType="pubmed">'
        f"{article.pmid}</ArticleId></ArticleIdList></PubmedData>"
        "</PubmedArticle>\n"
    )


@dataclass(frozen=True)
class Page:
    """A wiki article: ``text`` is the explaintext extract (headings as ``== Heading ==``)."""

    title: str
    text: str
    pageid: int
    disambiguation: bool = False


class FakeMediaWiki(FakeServer):
    """Fake MediaWiki Action API; :attr:`base_url` stands for ``https://en.wikipedia.org/w/api.php``.

    Args:
        pages: the wiki's articles.
        searches: search results (titles) per query text, matched case-insensitively as a substring.
        redirects: redirect title -> target title.
        errors: query text -> (code, info) of an error object answered to its search.
    """

    def __init__(
        self,
        pages: list[Page],
        searches: dict[str, list[str]],
        redirects: dict[str, str] | None = None,
        errors: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        super().__init__()
        self.pages = {page.title: page for page in pages}
        self.searches = searches
        self.redirects = redirects or {}
        self.errors = errors or {}

    @property
    def base_url(self) -> str:
        return self.origin + "/w/api.php"

    @staticmethod
    def error(code: str, info: str, headers: dict[str, str] | None = None) -> Reply:
        content = {"error": {"code": code, "info": info, "docref": "See /w/api.php for API usage."}}
        return _json(content, headers={"MediaWiki-API-Error": code, **(headers or {})})

    def answer(self, request: Request) -> Reply:
        params = request.params
        if request.path != "/w/api.php":
            return Reply(status=404, body="Not Found", content_type="text/plain")
        if params.get("format") != "json":
            return Reply(body="<api/>", content_type="text/xml")
        if params.get("action") != "query":
            return self.error("badvalue", f'Unrecognized value for parameter "action": {params.get("action")}.')
        if params.get("list") == "search":
            return self._search(params)
        if "extracts" in params.get("prop", "").split("|"):
            return self._extracts(params)
        return _json({"batchcomplete": True})

    def _search(self, params: dict[str, str]) -> Reply:
        query = params.get("srsearch", "")
        if not query:
            return self.error("missingparam", 'The "srsearch" parameter must be set.')
        for key, (code, info) in self.errors.items():
            if key.lower() in query.lower():
                return self.error(code, info)
        titles = next((found for key, found in self.searches.items() if key.lower() in query.lower()), [])
        limit, offset = int(params.get("srlimit", 10)), int(params.get("sroffset", 0))
        hits = [
            {"ns": 0, "title": title, "pageid": self.pages[title].pageid if title in self.pages else 0}
            for title in titles[offset : offset + limit]
        ]
        answer: dict = {"batchcomplete": True, "query": {"searchinfo": {"totalhits": len(titles)}, "search": hits}}
        if offset + limit < len(titles):
            answer["continue"] = {"sroffset": offset + limit, "continue": "-||"}
        return _json(answer)

    def _extracts(self, params: dict[str, str]) -> Reply:
        asked = [title for title in params.get("titles", "").split("|") if title]
        query: dict = {}
        normalized = []
        resolved = []
        for title in asked:
            final = title[:1].upper() + title[1:].replace("_", " ")
            if final != title:
                normalized.append({"fromencoded": False, "from": title, "to": final})
            resolved.append(final)
        if normalized:
            query["normalized"] = normalized
        if "redirects" in params:
            hops = [{"from": title, "to": self.redirects[title]} for title in resolved if title in self.redirects]
            if hops:
                query["redirects"] = hops
            resolved = [self.redirects.get(title, title) for title in resolved]
        pages = []
        for title in dict.fromkeys(resolved):
            page = self.pages.get(title)
            if page is None:
                pages.append({"ns": 0, "title": title, "missing": True})
                continue
            entry: dict = {"pageid": page.pageid, "ns": 0, "title": page.title}
            if page.disambiguation and "disambiguation" in params.get("ppprop", ""):
                entry["pageprops"] = {"disambiguation": ""}
            pages.append(entry)
        existing = [entry for entry in pages if not entry.get("missing")]
        if "exintro" in params:  # present means true, whatever the value
            for entry in existing:
                entry["extract"] = self.pages[entry["title"]].text.split("\n==")[0]
            query["pages"] = pages
            return _json({"batchcomplete": True, "query": query})
        offset = int(params.get("excontinue", 0))
        if offset < len(existing):
            existing[offset]["extract"] = self.pages[existing[offset]["title"]].text
        query["pages"] = pages
        answer: dict = {"query": query}
        if len(existing) > 1 and "explaintext" in params:
            answer["warnings"] = {
                "extracts": {"warnings": '"exlimit" was too large for a whole article extracts request, lowered to 1.'}
            }
        if offset + 1 < len(existing):
            answer["continue"] = {"excontinue": offset + 1, "continue": "||"}
        else:
            answer["batchcomplete"] = True
        return _json(answer)


def xml_text(text: str) -> str:
    """``text`` escaped for an :class:`Article` title or abstract."""
    return escape(text)
