"""Retrieval: PubMed and Wikipedia clients against local fakes of the real services, faults, cache, rate
limiting, sentence splitting and chunking, and the retrieve/chunk stages."""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path

import httpx
import pytest
import yaml
from fake_services import Article, FakeEutils, FakeMediaWiki, Page, Reply, StaticServer

from text_pipeline.organs import ORGANS
from text_pipeline.retrieval.chunking import chunk_document, split_sentences
from text_pipeline.retrieval.http import (
    APIError,
    FetchError,
    MalformedResponseError,
    RateLimiter,
    ResponseCache,
    fetch,
)
from text_pipeline.retrieval.pubmed import PubMedClient
from text_pipeline.retrieval.retrieve import DEFAULT_KEYWORDS_FILE, chunk, load_keywords, retrieve
from text_pipeline.retrieval.wikipedia import DEFAULT_USER_AGENT, WikipediaClient

SECRET = "s3cr3t-ncbi-key-0123456789"
FAST = {"max_retries": 3, "backoff": 0.001, "max_per_second": 1000.0}

ARTICLES = [
    Article(
        "101",
        "Jaundice in <i>acute</i> hepatitis",
        {
            "BACKGROUND": "Jaundice is yellowing of the skin and eyes.",
            "RESULTS": "Dark urine was seen in 80% of patients, e.g. in those with bilirubin above 3.5 mg/dL.",
        },
    ),
    Article("102", "Pale stools", "Patients reported pale stools. Itching was common. Fatigue followed."),
    Article("103", "A letter without abstract", None),
    Article("104", "Epigastric pain", "Pain radiated to the back. It eased when leaning forward."),
]
SEARCHES = {"jaundice": ["101", "102", "103"], "pancreatitis": ["104", "102"]}

PAGES = [
    Page(
        "Jaundice",
        "Jaundice is a yellowish pigmentation of the skin. It is caused by high bilirubin levels.\n\n\n"
        "== Signs and symptoms ==\nThe main sign is a yellow colour of the sclera. Itching may be present.\n\n\n"
        "== See also ==\nHyperbilirubinemia\n\n\n== References ==\n",
        pageid=1,
    ),
    Page("Crohn's disease", "Crohn's disease causes abdominal pain. Diarrhea is common.", pageid=2),
    Page("Acute pancreatitis", "Acute pancreatitis causes upper abdominal pain. Nausea is frequent.", pageid=3),
    Page(
        "Jaundice (disambiguation)",
        "Jaundice may refer to:\nJaundice, a medical condition",
        pageid=4,
        disambiguation=True,
    ),
]
WIKI_SEARCHES = {
    "jaundice": ["Jaundice", "Jaundice (disambiguation)", "Icterus", "Crohn's disease"],
    "pancreatitis": ["Acute pancreatitis", "Jaundice"],
}
REDIRECTS = {"Icterus": "Jaundice"}


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """Keep every request of these tests on 127.0.0.1, whatever proxy the environment names."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def eutils():
    with FakeEutils(ARTICLES, SEARCHES) as server:
        yield server


@pytest.fixture
def mediawiki():
    with FakeMediaWiki(PAGES, WIKI_SEARCHES, redirects=REDIRECTS, errors={"explode": ("badquery", "No.")}) as server:
        yield server


def pubmed_client(server: FakeEutils, cache_dir: Path | None = None, **overrides) -> PubMedClient:
    settings = {"api_key": SECRET, "email": "team@example.org", "cache_dir": cache_dir, **FAST, **overrides}
    return PubMedClient(base_url=server.base_url, **settings)


def wiki_client(server: FakeMediaWiki, cache_dir: Path | None = None, **overrides) -> WikipediaClient:
    return WikipediaClient(base_url=server.base_url, cache_dir=cache_dir, **{**FAST, **overrides})


class Sleeps(list):
    """A fake sleep that records the requested durations."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --- PubMed ---------------------------------------------------------------------------------------------


def test_pubmed_search_sends_identity_and_returns_pmids(eutils):
    with pubmed_client(eutils) as client:
        assert client.search("jaundice", retmax=2) == ["101", "102"]
    (request,) = eutils.requests
    assert request.path == "/entrez/eutils/esearch.fcgi"
    params = request.params
    assert params["db"] == "pubmed" and params["term"] == "jaundice" and params["retmax"] == "2"
    assert params["retmode"] == "json"
    assert params["api_key"] == SECRET and params["email"] == "team@example.org" and params["tool"] == "medsora"


def test_pubmed_fetch_parses_structured_and_plain_abstracts_and_skips_missing_ones(eutils):
    with pubmed_client(eutils) as client:
        articles = client.fetch_abstracts(["101", "102", "103", "999", "101"])
    assert [article["pmid"] for article in articles] == ["101", "102"]
    first, second = articles
    assert first["title"] == "Jaundice in acute hepatitis"
    assert first["abstract"] == (
        "BACKGROUND: Jaundice is yellowing of the skin and eyes.\n"
        "RESULTS: Dark urine was seen in 80% of patients, e.g. in those with bilirubin above 3.5 mg/dL."
    )
    assert first["url"] == "https://pubmed.ncbi.nlm.nih.gov/101/"
    assert second["abstract"] == "Patients reported pale stools. Itching was common. Fatigue followed."
    (request,) = eutils.requests
    assert request.path.endswith("/efetch.fcgi")
    assert request.params["id"] == "101,102,103,999"
    assert request.params["retmode"] == "xml" and request.params["rettype"] == "abstract"
    assert request.params["db"] == "pubmed" and request.params["api_key"] == SECRET


def test_pubmed_fetch_batches_200_ids_per_request(eutils):
    with pubmed_client(eutils) as client:
        articles = client.fetch_abstracts([str(1000 + i) for i in range(450)] + ["104"])
    assert [article["pmid"] for article in articles] == ["104"]
    assert [len(request.params["id"].split(",")) for request in eutils.requests] == [200, 200, 51]


def test_pubmed_key_and_email_default_from_environment_and_set_the_rate(eutils, monkeypatch):
    monkeypatch.setenv("NCBI_API_KEY", SECRET)
    monkeypatch.setenv("NCBI_EMAIL", "env@example.org")
    with_key = PubMedClient(base_url=eutils.base_url, cache_dir=None)
    assert with_key.api_key == SECRET and with_key.email == "env@example.org"
    assert with_key.limiter.interval == pytest.approx(1 / 10)
    with_key.search("jaundice", 1)
    assert eutils.requests[-1].params["api_key"] == SECRET
    assert eutils.requests[-1].params["email"] == "env@example.org"
    monkeypatch.delenv("NCBI_API_KEY")
    monkeypatch.delenv("NCBI_EMAIL")
    without_key = PubMedClient(base_url=eutils.base_url, cache_dir=None)
    assert without_key.api_key is None and without_key.limiter.interval == pytest.approx(1 / 3)
    without_key.search("jaundice", 1)
    assert "api_key" not in eutils.requests[-1].params and "email" not in eutils.requests[-1].params
    assert SECRET not in repr(with_key)
    with_key.close()
    without_key.close()


def test_api_key_never_reaches_logs_or_exceptions(eutils, caplog):
    caplog.set_level(logging.DEBUG)
    eutils.fail_next(Reply(status=500, body="oops"), times=1)
    with pubmed_client(eutils) as client:
        assert client.search("jaundice", 3) == ["101", "102", "103"]  # after the 500
        eutils.fail_next(Reply(status=400, body=f'{{"error": "Invalid key {SECRET}"}}'))
        with pytest.raises(FetchError) as failure:
            client.search("jaundice", 3)
    assert failure.value.status == 400
    message = str(failure.value)
    assert "esearch.fcgi" in message and "400" in message and "api_key=***" in message
    assert SECRET not in message and SECRET not in repr(failure.value.args)
    assert "HTTP Request" in caplog.text  # httpx's own request log was captured, redacted
    assert "esearch.fcgi" in caplog.text and "retry 1 of 3" in caplog.text
    assert SECRET not in caplog.text


# --- Wikipedia ------------------------------------------------------------------------------------------


def test_wikipedia_search_returns_titles_with_user_agent_and_formatversion_2(mediawiki):
    with wiki_client(mediawiki) as client:
        assert client.search("jaundice", limit=3) == ["Jaundice", "Jaundice (disambiguation)", "Icterus"]
    (request,) = mediawiki.requests
    assert request.headers["user-agent"] == DEFAULT_USER_AGENT
    params = request.params
    assert params["action"] == "query" and params["list"] == "search" and params["srsearch"] == "jaundice"
    assert params["format"] == "json" and params["formatversion"] == "2" and params["srlimit"] == "3"
    assert params["maxlag"] == "5"


def test_wikipedia_search_follows_sroffset_continuation(mediawiki):
    mediawiki.searches["long"] = [f"Page {i}" for i in range(600)]
    with wiki_client(mediawiki) as client:
        titles = client.search("long list", limit=550)
    assert titles == [f"Page {i}" for i in range(550)]
    assert [request.params.get("sroffset") for request in mediawiki.requests] == [None, "500"]


def test_wikipedia_extracts_follow_continue_and_resolve_redirects(mediawiki):
    with wiki_client(mediawiki, user_agent="medsora-tests/1.0 (test)") as client:
        pages = client.extracts(["Jaundice", "Crohn's disease", "icterus", "Nonexistent", "Jaundice (disambiguation)"])
    assert [page["title"] for page in pages] == ["Jaundice", "Crohn's disease"]
    jaundice, crohn = pages
    assert jaundice["url"] == "https://en.wikipedia.org/wiki/Jaundice"
    assert crohn["url"] == "https://en.wikipedia.org/wiki/Crohn%27s_disease"
    assert jaundice["text"] == (
        "Jaundice is a yellowish pigmentation of the skin. It is caused by high bilirubin levels.\n"
        "The main sign is a yellow colour of the sclera. Itching may be present."
    )
    assert crohn["text"] == "Crohn's disease causes abdominal pain. Diarrhea is common."
    assert len(mediawiki.requests) == 3  # one whole-article extract per response, 3 existing pages
    for request in mediawiki.requests:
        assert request.headers["user-agent"] == "medsora-tests/1.0 (test)"
        assert "exintro" not in request.params  # present means true, whatever its value
        assert request.params["explaintext"] and request.params["formatversion"] == "2"
    assert [request.params.get("excontinue") for request in mediawiki.requests] == [None, "1", "2"]


def test_wikipedia_error_object_fails_at_once_with_code_and_info(mediawiki):
    with wiki_client(mediawiki) as client, pytest.raises(APIError) as failure:
        client.search("explode this", limit=5)
    assert failure.value.code == "badquery" and failure.value.info == "No."
    assert "badquery" in str(failure.value) and "api.php" in str(failure.value)
    assert len(mediawiki.requests) == 1


def test_wikipedia_maxlag_is_retried_after_retry_after(mediawiki):
    mediawiki.fail_next(FakeMediaWiki.error("maxlag", "Waiting for db1: 6 seconds lagged.", {"Retry-After": "0"}))
    with wiki_client(mediawiki) as client:
        assert client.search("pancreatitis", limit=5) == ["Acute pancreatitis", "Jaundice"]
    assert len(mediawiki.requests) == 2


# --- faults in the shared GET ---------------------------------------------------------------------------


@pytest.fixture
def ok_server():
    with StaticServer(Reply(body='{"ok": true}')) as server:
        yield server


def test_429_with_retry_after_is_honoured_then_succeeds(ok_server):
    ok_server.fail_next(Reply(status=429, body="slow down", headers={"Retry-After": "7"}))
    sleeps = Sleeps()
    with httpx.Client() as client:
        body = fetch(client, ok_server.origin + "/x", {"q": "1"}, cache=None, limiter=None, backoff=0.001, sleep=sleeps)
    assert json.loads(body) == {"ok": True}
    assert sleeps == [7.0] and len(ok_server.requests) == 2


def test_500_twice_then_success_backs_off_exponentially(ok_server):
    ok_server.fail_next(Reply(status=500, body="boom"), times=2)
    sleeps = Sleeps()
    with httpx.Client() as client:
        body = fetch(client, ok_server.origin + "/x", {}, cache=None, limiter=None, backoff=0.01, sleep=sleeps)
    assert body == '{"ok": true}'
    assert sleeps == pytest.approx([0.01, 0.02]) and len(ok_server.requests) == 3


def test_slow_response_times_out_then_succeeds(ok_server):
    ok_server.fail_next(Reply(delay=1.5))
    with httpx.Client() as client:
        body = fetch(client, ok_server.origin + "/x", {}, cache=None, limiter=None, backoff=0.001, timeout=0.5)
    assert body == '{"ok": true}' and len(ok_server.requests) == 2


def test_persistent_503_fails_naming_the_url_after_max_retries(ok_server):
    ok_server.fail_next(Reply(status=503, body="down"), times=10)
    with httpx.Client() as client, pytest.raises(FetchError) as failure:
        fetch(client, ok_server.origin + "/api", {"q": "x", "api_key": SECRET}, max_retries=3, backoff=0.001)
    message = str(failure.value)
    assert f"{ok_server.origin}/api?q=x&api_key=***" in message and "503" in message and "4 attempts" in message
    assert SECRET not in message and failure.value.status == 503
    assert len(ok_server.requests) == 4


def test_404_fails_at_once(ok_server):
    ok_server.fail_next(Reply(status=404, body="Not Found", content_type="text/plain"), times=5)
    with httpx.Client() as client, pytest.raises(FetchError) as failure:
        fetch(client, ok_server.origin + "/missing", {"id": "1"}, max_retries=5, backoff=0.001)
    assert failure.value.status == 404 and "/missing?id=1" in str(failure.value) and "404" in str(failure.value)
    assert len(ok_server.requests) == 1


def test_connection_refused_is_retried_then_fails():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    with httpx.Client() as client, pytest.raises(FetchError) as failure:
        fetch(client, f"http://127.0.0.1:{port}/x", {}, max_retries=2, backoff=0.001, sleep=sleeps)
    assert "ConnectError" in str(failure.value) and failure.value.status is None and len(sleeps) == 2


def test_malformed_json_fails_naming_the_url_and_is_not_cached(eutils, tmp_path):
    eutils.fail_next(Reply(body='{"esearchresult": {"idlist": ['), times=10)
    with pubmed_client(eutils, tmp_path / "cache") as client, pytest.raises(MalformedResponseError) as failure:
        client.search("jaundice", 5)
    assert "esearch.fcgi" in str(failure.value) and SECRET not in str(failure.value)
    assert len(eutils.requests) == FAST["max_retries"] + 1
    assert not list((tmp_path / "cache").glob("*"))


def test_malformed_xml_once_is_retried(eutils):
    eutils.fail_next(Reply(body="<PubmedArticleSet><PubmedArticle>", content_type="text/xml"))
    with pubmed_client(eutils) as client:
        assert [article["pmid"] for article in client.fetch_abstracts(["102"])] == ["102"]
    assert len(eutils.requests) == 2


# --- cache ----------------------------------------------------------------------------------------------


def test_cache_key_ignores_secrets_and_parameter_order(tmp_path):
    key = ResponseCache.key("GET", "https://host/esearch.fcgi", {"term": "a", "db": "pubmed", "api_key": "one"})
    assert key == ResponseCache.key("get", "https://host/esearch.fcgi", {"db": "pubmed", "term": "a", "api_key": "2"})
    assert key != ResponseCache.key("GET", "https://host/esearch.fcgi", {"db": "pubmed", "term": "b"})
    cache = ResponseCache(tmp_path / "c")
    assert cache.get(key) is None
    cache.put(key, "body é", 200, "application/json")
    stored = cache.get(key)
    assert (stored.body, stored.status, stored.content_type) == ("body é", 200, "application/json")
    assert [path.name for path in (tmp_path / "c").iterdir()] == [f"{key}.json"]


def test_second_retrieve_over_the_same_cache_makes_no_request(eutils, mediawiki, tmp_path):
    keywords = {"liver": ["jaundice"], "pancreas": ["pancreatitis"]}
    outputs = []
    for run in range(2):
        out = tmp_path / f"documents_{run}.jsonl"
        with pubmed_client(eutils, tmp_path / "pubmed") as pubmed, wiki_client(mediawiki, tmp_path / "wiki") as wiki:
            count = retrieve(keywords, out, pubmed=pubmed, wikipedia=wiki, per_keyword=5, progress=False)
        outputs.append(out.read_bytes())
        if run == 0:
            requests_after_first = (len(eutils.requests), len(mediawiki.requests))
    assert (len(eutils.requests), len(mediawiki.requests)) == requests_after_first
    assert outputs[0] == outputs[1] and count == len(outputs[0].splitlines())
    for path in (tmp_path / "pubmed").iterdir():
        assert SECRET not in path.read_text()


# --- retrieve and chunk stages --------------------------------------------------------------------------


def test_retrieve_writes_deduplicated_documents_with_provenance(eutils, mediawiki, tmp_path):
    out = tmp_path / "docs" / "documents.jsonl"
    keywords = {"liver": ["jaundice", "yellow jaundice"], "pancreas": ["pancreatitis"]}
    with pubmed_client(eutils) as pubmed, wiki_client(mediawiki) as wiki:
        count = retrieve(keywords, out, pubmed=pubmed, wikipedia=wiki, per_keyword=5, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == len(rows)
    assert all(list(row) == ["source", "ref", "organ", "title", "text"] for row in rows)
    keys = [(row["source"], row["ref"], row["organ"]) for row in rows]
    assert len(keys) == len(set(keys))
    assert keys == [
        ("pubmed", "101", "liver"),
        ("pubmed", "102", "liver"),
        ("wikipedia", "https://en.wikipedia.org/wiki/Jaundice", "liver"),
        ("wikipedia", "https://en.wikipedia.org/wiki/Crohn%27s_disease", "liver"),
        ("pubmed", "104", "pancreas"),
        ("pubmed", "102", "pancreas"),
        ("wikipedia", "https://en.wikipedia.org/wiki/Acute_pancreatitis", "pancreas"),
        ("wikipedia", "https://en.wikipedia.org/wiki/Jaundice", "pancreas"),
    ]
    terms = [request.params["term"] for request in eutils.requests if request.path.endswith("esearch.fcgi")]
    assert terms[0] == "(jaundice) AND hasabstract AND english[la]"
    efetches = [request for request in eutils.requests if request.path.endswith("efetch.fcgi")]
    assert len(efetches) == 1 and efetches[0].params["id"] == "101,102,103,104"
    assert not list(out.parent.glob(".*tmp*"))


def test_retrieve_needs_a_source_and_known_organs(tmp_path):
    with pytest.raises(ValueError, match="PubMed client, a Wikipedia client"):
        retrieve(
            {"liver": ["jaundice"]}, tmp_path / "d.jsonl", pubmed=None, wikipedia=None, per_keyword=5, progress=False
        )
    with pytest.raises(ValueError, match="'heart'"):
        retrieve(
            {"heart": ["angina"]}, tmp_path / "d.jsonl", pubmed=None, wikipedia=None, per_keyword=5, progress=False
        )
    assert not (tmp_path / "d.jsonl").exists()


def test_a_failed_retrieve_writes_nothing(eutils, tmp_path):
    eutils.fail_next(Reply(status=503, body="down"), times=20)
    out = tmp_path / "documents.jsonl"
    with pubmed_client(eutils) as pubmed, pytest.raises(FetchError):
        retrieve({"liver": ["jaundice"]}, out, pubmed=pubmed, wikipedia=None, per_keyword=5, progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_chunk_stage_writes_chunks_with_provenance(tmp_path):
    documents = tmp_path / "documents.jsonl"
    rows = [
        {"source": "pubmed", "ref": "1", "organ": "liver", "title": "t", "text": "A one. B two. C three. D four."},
        {
            "source": "wikipedia",
            "ref": "https://en.wikipedia.org/wiki/X",
            "organ": "spleen",
            "title": "X",
            "text": "Only one sentence here.",
        },
    ]
    documents.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "chunks.jsonl"
    assert chunk(documents, out) == 3
    chunks = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["text"] for c in chunks] == ["A one. B two.", "C three. D four.", "Only one sentence here."]
    assert [(c["source"], c["ref"], c["organ"], c["sentence_start"]) for c in chunks] == [
        ("pubmed", "1", "liver", 0),
        ("pubmed", "1", "liver", 2),
        ("wikipedia", "https://en.wikipedia.org/wiki/X", "spleen", 0),
    ]
    documents.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"source": "pubmed", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=rf"{documents}:2: field 'ref'"):
        chunk(documents, tmp_path / "other.jsonl")
    assert not (tmp_path / "other.jsonl").exists()


# --- rate limiter ---------------------------------------------------------------------------------------


class FakeClock:
    """Time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("rate", [3.0, 10.0])
def test_rate_limiter_spaces_requests(rate):
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(5):
        limiter.acquire()
        starts.append(clock.now)
    assert clock.sleeps == pytest.approx([1 / rate] * 4)
    assert all(later - earlier >= 1 / rate - 1e-9 for earlier, later in zip(starts, starts[1:]))
    clock.now += 1.0  # idle for a second: the next request goes at once
    limiter.acquire()
    assert len(clock.sleeps) == 4
    clock.now += 0.5 / rate  # half an interval after the last: wait the other half
    limiter.acquire()
    assert clock.sleeps[-1] == pytest.approx(0.5 / rate)


@pytest.mark.parametrize("rate", [3.0, 10.0])
def test_rate_limiter_spaces_requests_from_several_threads(rate):
    sleeps: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            sleeps.append(seconds)

    limiter = RateLimiter(rate, clock=lambda: 100.0, sleep=sleep)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        limiter.acquire()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # all 8 arrive at the same instant: one goes at once, the others wait 1, 2, ..., 7 intervals
    assert sorted(sleeps) == pytest.approx([k / rate for k in range(1, 8)])


def test_rate_limiter_rejects_a_non_positive_rate():
    with pytest.raises(ValueError):
        RateLimiter(0)


# --- sentence splitting and chunking --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pain is common. Fever is rare.", ["Pain is common.", "Fever is rare."]),
        ("Symptoms, e.g. Fever, vary. Rest helps.", ["Symptoms, e.g. Fever, vary.", "Rest helps."]),
        ("Use a proxy, i.e. The bilirubin. Then stop.", ["Use a proxy, i.e. The bilirubin.", "Then stop."]),
        ("Dr. Smith saw her. She improved.", ["Dr. Smith saw her.", "She improved."]),
        ("Smith et al. Reported it in 2001. It held.", ["Smith et al. Reported it in 2001.", "It held."]),
        ("Levels rose to 3.5 mg. Then 4.2 mg.", ["Levels rose to 3.5 mg.", "Then 4.2 mg."]),
        (
            "Infection with H. pylori causes gastritis. Ulcers follow.",
            ["Infection with H. pylori causes gastritis.", "Ulcers follow."],
        ),
        ("Strains of H. Pylori differ. J. R. Smith agreed.", ["Strains of H. Pylori differ.", "J. R. Smith agreed."]),
        ("Chronic hepatitis B. Cirrhosis may follow.", ["Chronic hepatitis B.", "Cirrhosis may follow."]),
        (
            'Is it pain? "Yes." It hurts! (See Fig. 2.) Done.',
            ["Is it pain?", '"Yes."', "It hurts!", "(See Fig. 2.)", "Done."],
        ),
        ("In the U.S. Patients wait. Case No. 4 was mild.", ["In the U.S. Patients wait.", "Case No. 4 was mild."]),
        ("BACKGROUND: Pain\nRESULTS: Fever was seen.", ["BACKGROUND: Pain", "RESULTS: Fever was seen."]),
        ("Ends without period", ["Ends without period"]),
        ("  \n ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_chunks_have_two_or_three_sentences_in_order():
    for count in range(1, 15):
        text = " ".join(f"Sentence number {i}." for i in range(count))
        chunks = chunk_document(text, source="pubmed", ref="7", organ="liver")
        sizes = [len(split_sentences(c["text"])) for c in chunks]
        assert sum(sizes) == count
        if count == 1:
            assert sizes == [1]
        else:
            assert all(2 <= size <= 3 for size in sizes), (count, sizes)
        assert [c["sentence_start"] for c in chunks] == [sum(sizes[:i]) for i in range(len(sizes))]
        assert " ".join(c["text"] for c in chunks) == text
    assert chunk_document("", source="pubmed", ref="7", organ="liver") == []


def test_chunk_ids_are_stable_and_follow_provenance():
    text = "One a. Two b. Three c. Four d. Five e."
    first = chunk_document(text, source="wikipedia", ref="https://en.wikipedia.org/wiki/A", organ="spleen")
    again = chunk_document(text, source="wikipedia", ref="https://en.wikipedia.org/wiki/A", organ="spleen")
    assert first == again
    assert [c["text"] for c in first] == ["One a. Two b. Three c.", "Four d. Five e."]
    assert all(set(c) == {"chunk_id", "text", "source", "ref", "organ", "sentence_start"} for c in first)
    assert all(c["organ"] == "spleen" and c["source"] == "wikipedia" for c in first)
    assert len({c["chunk_id"] for c in first}) == 2
    other_ref = chunk_document(text, source="wikipedia", ref="https://en.wikipedia.org/wiki/B", organ="spleen")
    assert {c["chunk_id"] for c in other_ref}.isdisjoint(c["chunk_id"] for c in first)
    other_organ = chunk_document(text, source="wikipedia", ref="https://en.wikipedia.org/wiki/A", organ="liver")
    assert [c["chunk_id"] for c in other_organ] == [c["chunk_id"] for c in first]
    assert all(len(c["chunk_id"]) == 16 for c in first)


# --- keywords file ---------------------------------------------------------------------------------------


def test_shipped_keywords_cover_every_organ():
    keywords = load_keywords()
    assert list(keywords) == list(ORGANS)
    assert all(4 <= len(terms) <= 8 for terms in keywords.values())
    assert DEFAULT_KEYWORDS_FILE.is_file()


def test_unknown_organ_in_keywords_file_is_named(tmp_path):
    path = tmp_path / "keywords.yaml"
    path.write_text(yaml.safe_dump({"liver": ["jaundice"], "heart": ["angina"]}))
    with pytest.raises(ValueError) as failure:
        load_keywords(path)
    assert str(path) in str(failure.value) and "'heart'" in str(failure.value)


@pytest.mark.parametrize(
    "content", ["liver: []\n", "liver:\n", "liver: [jaundice, '  ']\n", "- liver\n", "liver: [a\n"]
)
def test_bad_keywords_files_are_rejected(tmp_path, content):
    path = tmp_path / "keywords.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=str(path)):
        load_keywords(path)
