"""The retrieve and chunk stages: organ keywords -> documents JSONL -> chunks JSONL."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from tqdm import tqdm

from text_pipeline.corpus import read_jsonl
from text_pipeline.files import write_atomically
from text_pipeline.organs import ORGANS
from text_pipeline.retrieval.chunking import chunk_document
from text_pipeline.retrieval.pubmed import FETCH_BATCH, PubMedClient
from text_pipeline.retrieval.wikipedia import TITLES_PER_REQUEST, WikipediaClient

logger = logging.getLogger(__name__)

DEFAULT_KEYWORDS_FILE = Path(__file__).resolve().parents[1] / "configs" / "organ_keywords.yaml"
PUBMED_FILTERS = "hasabstract AND english[la]"
"""ANDed to every PubMed keyword: articles without an abstract would only take up the per-keyword slots."""
SOURCES = ("pubmed", "wikipedia")
DOCUMENT_FIELDS = ("source", "ref", "organ", "title", "text")


def load_keywords(path: str | Path = DEFAULT_KEYWORDS_FILE) -> dict[str, list[str]]:
    """Read the organ keywords YAML: a mapping of organ name to a non-empty list of search terms.

    Args:
        path: the YAML file; default: the shipped ``text_pipeline/configs/organ_keywords.yaml``.

    Returns:
        Keywords per organ, organs in :data:`ORGANS` order, each list stripped and without duplicates.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, not a mapping, an unknown organ, or a list that is empty or holds a non-string
            or empty keyword; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(content, dict) or not content:
        raise ValueError(f"{path}: expected a mapping of organ name to a list of keywords")
    keywords: dict[str, list[str]] = {}
    for organ, terms in content.items():
        if organ not in ORGANS:
            raise ValueError(f"{path}: unknown organ {organ!r}; known organs: {', '.join(ORGANS)}")
        if not isinstance(terms, list) or not terms:
            raise ValueError(f"{path}: organ {organ!r} needs a non-empty list of keywords")
        if not all(isinstance(term, str) and term.strip() for term in terms):
            raise ValueError(f"{path}: organ {organ!r} has a keyword that is not a non-empty string")
        keywords[organ] = list(dict.fromkeys(" ".join(term.split()) for term in terms))
    return {organ: keywords[organ] for organ in ORGANS if organ in keywords}


def _validate_keywords(keywords: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """``keywords`` as lists, checked: known organs, each with at least one non-empty keyword."""
    checked = {}
    for organ, terms in keywords.items():
        if organ not in ORGANS:
            raise ValueError(f"unknown organ {organ!r}; known organs: {', '.join(ORGANS)}")
        if isinstance(terms, str):
            raise ValueError(f"organ {organ!r}: keywords must be a list of strings, not one string")
        terms = [term for term in terms if isinstance(term, str) and term.strip()]
        if not terms:
            raise ValueError(f"organ {organ!r} has no keywords")
        checked[organ] = terms
    return checked


def retrieve(
    keywords: Mapping[str, Iterable[str]],
    out_file: str | Path,
    *,
    pubmed: PubMedClient | None,
    wikipedia: WikipediaClient | None,
    per_keyword: int = 20,
    progress: bool = False,
) -> int:
    """Search each organ's keywords in PubMed and Wikipedia and write the documents found as JSON lines.

    Each line is ``{"source", "ref", "organ", "title", "text"}``, with ``ref`` the PMID or the article URL;
    a document appears once per organ whichever keywords found it, and once more for every other organ
    whose keywords found it too. Documents are fetched once even when several organs share them. Lines
    follow the order of organs, then sources, then search ranks, so the same responses give the same file.
    The file is written only after every request succeeded; a failed run can be resumed from the clients'
    response caches.

    Args:
        keywords: search terms per organ (see :func:`load_keywords`).
        out_file: the documents JSONL, replaced atomically.
        pubmed: PubMed client, or None to skip PubMed.
        wikipedia: Wikipedia client, or None to skip Wikipedia.
        per_keyword: results asked for per keyword and source.
        progress: show progress bars on stderr.

    Returns:
        The number of lines written.
    """
    keywords = _validate_keywords(keywords)
    if pubmed is None and wikipedia is None:
        raise ValueError("retrieve needs a PubMed client, a Wikipedia client, or both")
    if per_keyword < 1:
        raise ValueError(f"per_keyword must be >= 1, got {per_keyword}")
    found = _search(keywords, pubmed, wikipedia, per_keyword, progress)
    fetched: dict[str, dict[str, dict[str, str]]] = {"pubmed": {}, "wikipedia": {}}
    if pubmed is not None:
        fetched["pubmed"] = _fetch_pubmed(
            pubmed, _unique(key for hits in found.values() for key in hits["pubmed"]), progress
        )
    if wikipedia is not None:
        titles = _unique(key for hits in found.values() for key in hits["wikipedia"])
        fetched["wikipedia"] = _fetch_wikipedia(wikipedia, titles, progress)

    documents = []
    seen: set[tuple[str, str, str]] = set()
    for organ, hits in found.items():
        for source in SOURCES:
            for key in hits[source]:
                document = fetched[source].get(key)
                if document is None or (source, document["ref"], organ) in seen:
                    continue
                seen.add((source, document["ref"], organ))
                documents.append(
                    {
                        "source": source,
                        "ref": document["ref"],
                        "organ": organ,
                        "title": document["title"],
                        "text": document["text"],
                    }
                )
    _write_jsonl(out_file, documents)
    counts = ", ".join(f"{organ} {sum(doc['organ'] == organ for doc in documents)}" for organ in keywords)
    logger.info("%d documents -> %s (%s)", len(documents), out_file, counts)
    return len(documents)


def _search(
    keywords: dict[str, list[str]],
    pubmed: PubMedClient | None,
    wikipedia: WikipediaClient | None,
    per_keyword: int,
    progress: bool,
) -> dict[str, dict[str, list[str]]]:
    """Search hits per organ and source: PMIDs and article titles, in keyword then rank order."""
    searches = sum(len(terms) for terms in keywords.values()) * ((pubmed is not None) + (wikipedia is not None))
    found: dict[str, dict[str, list[str]]] = {organ: {source: [] for source in SOURCES} for organ in keywords}
    with tqdm(total=searches, desc="searching", unit="query", disable=not progress) as bar:
        for organ, terms in keywords.items():
            for term in terms:
                if pubmed is not None:
                    found[organ]["pubmed"].extend(pubmed.search(f"({term}) AND {PUBMED_FILTERS}", per_keyword))
                    bar.update()
                if wikipedia is not None:
                    found[organ]["wikipedia"].extend(wikipedia.search(term, per_keyword))
                    bar.update()
    return found


def _fetch_pubmed(pubmed: PubMedClient, pmids: list[str], progress: bool) -> dict[str, dict[str, str]]:
    """``{pmid: {"ref", "title", "text"}}`` for the PMIDs that have an abstract."""
    documents = {}
    with tqdm(total=len(pmids), desc="pubmed abstracts", unit="pmid", disable=not progress) as bar:
        for start in range(0, len(pmids), FETCH_BATCH):
            batch = pmids[start : start + FETCH_BATCH]
            for article in pubmed.fetch_abstracts(batch):
                documents[article["pmid"]] = {
                    "ref": article["pmid"],
                    "title": article["title"],
                    "text": article["abstract"],
                }
            bar.update(len(batch))
    return documents


def _fetch_wikipedia(wikipedia: WikipediaClient, titles: list[str], progress: bool) -> dict[str, dict[str, str]]:
    """``{searched title: {"ref", "title", "text"}}`` for the titles that lead to an article with text."""
    documents = {}
    with tqdm(total=len(titles), desc="wikipedia articles", unit="title", disable=not progress) as bar:
        for start in range(0, len(titles), TITLES_PER_REQUEST):
            batch = titles[start : start + TITLES_PER_REQUEST]
            for title, page in wikipedia.extracts_by_title(batch).items():
                documents[title] = {"ref": page["url"], "title": page["title"], "text": page["text"]}
            bar.update(len(batch))
    return documents


def chunk(documents_file: str | Path, out_file: str | Path) -> int:
    """Split every document of a documents JSONL into 2-3 sentence chunks and write them as JSON lines.

    Args:
        documents_file: the JSONL written by :func:`retrieve`.
        out_file: the chunks JSONL, replaced atomically; one
            ``{"chunk_id", "text", "source", "ref", "organ", "sentence_start"}`` per line.

    Returns:
        The number of chunks written.

    Raises:
        FileNotFoundError: no documents file.
        ValueError: a line that is not JSON or lacks a field, named by file and line.
    """
    chunks = []
    for number, document in read_jsonl(documents_file):
        for field in DOCUMENT_FIELDS:
            if not isinstance(document.get(field), str):
                raise ValueError(f"{documents_file}:{number}: field {field!r} is missing or not a string")
        if document["organ"] not in ORGANS:
            raise ValueError(f"{documents_file}:{number}: unknown organ {document['organ']!r}")
        chunks.extend(
            chunk_document(document["text"], source=document["source"], ref=document["ref"], organ=document["organ"])
        )
    _write_jsonl(out_file, chunks)
    logger.info("%d chunks -> %s", len(chunks), out_file)
    return len(chunks)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _write_jsonl(path: str | Path, rows: list[dict]) -> None:
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_atomically(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
