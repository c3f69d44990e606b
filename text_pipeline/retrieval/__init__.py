"""Retrieval of the symptom text corpus (method.md §1): PubMed and Wikipedia documents per organ keyword,
split into 2-3 sentence chunks with provenance.

Modules: :mod:`~text_pipeline.retrieval.http` (rate limiting, retries, response cache),
:mod:`~text_pipeline.retrieval.pubmed`, :mod:`~text_pipeline.retrieval.wikipedia`,
:mod:`~text_pipeline.retrieval.chunking`, and :mod:`~text_pipeline.retrieval.retrieve` (the two stages).
"""

from text_pipeline.retrieval.chunking import chunk_document, split_sentences
from text_pipeline.retrieval.http import (
    APIError,
    FetchError,
    MalformedResponseError,
    RateLimiter,
    ResponseCache,
    RetrievalError,
    fetch,
)
from text_pipeline.retrieval.pubmed import PubMedClient
from text_pipeline.retrieval.retrieve import chunk, load_keywords, retrieve
from text_pipeline.retrieval.wikipedia import WikipediaClient

__all__ = [
    "APIError",
    "FetchError",
    "MalformedResponseError",
    "PubMedClient",
    "RateLimiter",
    "ResponseCache",
    "RetrievalError",
    "WikipediaClient",
    "chunk",
    "chunk_document",
    "fetch",
    "load_keywords",
    "retrieve",
    "split_sentences",
]
