"""Sentence splitting and 2-3 sentence chunks with provenance, for the LLM filter and expansion stages."""

from __future__ import annotations

import hashlib
import json
import math
import re

# Lower-cased abbreviations after which a period never ends a sentence (``et al.`` ends in ``al``).
ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "al",
        "approx",
        "cf",
        "dr",
        "drs",
        "eq",
        "fig",
        "figs",
        "incl",
        "jr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "ref",
        "refs",
        "sr",
        "st",
        "viz",
        "vol",
        "vs",
    }
)

# A sentence-ending run of punctuation (with closing quotes or brackets) that whitespace follows.
_CANDIDATE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s+(\S))")
_DOTTED_ABBREVIATION = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # e.g, i.e, U.S, a.m (final period not included)
_INITIAL = re.compile(r"[A-Z]")
_LOWERCASE_WORD = re.compile(r"[a-z]+")
# Words after which a capital letter and a period read as an initial ("by J. Smith", "of H. Pylori").
_BEFORE_INITIALS = frozenset(
    {"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to", "with"}
)


def _is_boundary(text: str, match: re.Match[str]) -> bool:
    if match.group(1)[0].islower():
        return False
    if not match.group(0).startswith(".") or match.group(0).startswith(".."):
        return True
    words = text[: match.start()].split()
    if not words:
        return True
    token = words[-1].lstrip("([{\"'\u201c\u2018")
    if token.lower() in ABBREVIATIONS or _DOTTED_ABBREVIATION.fullmatch(token):
        return False
    if token in ("No", "Nos") and match.group(1)[0].isdigit():
        return False
    if _INITIAL.fullmatch(token):
        # An initial ("J. Smith"), unless a lowercase content word precedes it: "... hepatitis B. Cirrhosis ..."
        previous = words[-2] if len(words) > 1 else ""
        return bool(_LOWERCASE_WORD.fullmatch(previous)) and previous not in _BEFORE_INITIALS
    return True


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences.

    A sentence ends at ``.``, ``!`` or ``?`` (with any closing quotes or brackets) followed by whitespace and
    a character that is not a lowercase letter, except after an abbreviation (``e.g.``, ``i.e.``, ``Dr.``,
    ``et al.``, ``Fig.``, ``vs.``, ``U.S.``, ``No. 4``, ...) or a capital initial (``H. pylori``, ``J. Smith``).
    A capital letter after a lowercase content word ends a sentence ("... hepatitis B. Cirrhosis ...");
    after a function word ("by J. Smith", "of H. Pylori") it is an initial. Decimals ("3.5") never split,
    as no whitespace follows their period. Line breaks are hard boundaries (paragraphs, abstract sections);
    join hard-wrapped lines before.

    Args:
        text: plain text.

    Returns:
        The sentences, stripped, without empty ones.
    """
    sentences: list[str] = []
    for paragraph in text.splitlines():
        start = 0
        for match in _CANDIDATE.finditer(paragraph):
            if _is_boundary(paragraph, match):
                sentences.append(paragraph[start : match.end()])
                start = match.end()
        sentences.append(paragraph[start:])
    return [" ".join(sentence.split()) for sentence in sentences if sentence.strip()]


def chunk_id(source: str, ref: str, sentence_start: int) -> str:
    """A stable id of the chunk of document (``source``, ``ref``) that starts at sentence ``sentence_start``."""
    payload = json.dumps([source, ref, sentence_start], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _chunk_sizes(count: int, min_sentences: int, max_sentences: int) -> list[int]:
    """Sizes of consecutive chunks covering ``count`` sentences, as even as possible, larger ones first."""
    if count <= max_sentences:
        return [count] if count else []
    chunks = math.ceil(count / max_sentences)
    if count // chunks < min_sentences:
        # No split fits both bounds (e.g. 5 sentences into 3-4); prefer fewer, longer chunks over short ones.
        chunks = max(1, count // min_sentences)
    size, larger = divmod(count, chunks)
    return [size + 1] * larger + [size] * (chunks - larger)


def chunk_document(
    text: str,
    *,
    source: str,
    ref: str,
    organ: str,
    min_sentences: int = 2,
    max_sentences: int = 3,
) -> list[dict[str, str | int]]:
    """Split a document into chunks of ``min_sentences`` to ``max_sentences`` consecutive sentences.

    Chunk sizes are as even as possible, so no chunk falls short of ``min_sentences`` unless the whole
    document does (a one-sentence document is one one-sentence chunk). Where no split fits both bounds
    (5 sentences into 3-4), chunks grow past ``max_sentences`` instead; 2-3, the default, always fits.

    Args:
        text: the document's plain text.
        source: ``"pubmed"`` or ``"wikipedia"``.
        ref: the document's id within its source (PMID or article URL).
        organ: the organ the document was retrieved for.
        min_sentences: the fewest sentences per chunk.
        max_sentences: the most sentences per chunk.

    Returns:
        ``{"chunk_id", "text", "source", "ref", "organ", "sentence_start"}`` per chunk, in document order;
        ``chunk_id`` hashes (source, ref, sentence_start), so it is the same for every organ the document
        was retrieved for.
    """
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(f"need 1 <= min_sentences <= max_sentences, got {min_sentences} and {max_sentences}")
    sentences = split_sentences(text)
    chunks = []
    start = 0
    for size in _chunk_sizes(len(sentences), min_sentences, max_sentences):
        chunks.append(
            {
                "chunk_id": chunk_id(source, ref, start),
                "text": " ".join(sentences[start : start + size]),
                "source": source,
                "ref": ref,
                "organ": organ,
                "sentence_start": start,
            }
        )
        start += size
    return chunks
