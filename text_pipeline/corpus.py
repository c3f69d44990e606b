"""The shipped symptom corpus and query files: reading them, with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from text_pipeline.organs import ORGANS, organs_named_in

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS_DIR = DATA_DIR / "corpus"
KNOWLEDGE_BASE_DIR = DATA_DIR / "knowledge_base"
OOD_QUERIES = DATA_DIR / "ood_queries.jsonl"  # held out: evaluation only
OOD_TRAINING_TEXTS = DATA_DIR / "ood_train.jsonl"  # training negatives: texts of no organ
STYLES = ("patient", "triage", "clinician", "exam", "lab")
SPLITS = ("train", "test")
CORPUS_SOURCE_PREFIX = "corpus:"  # a query source naming a split of the shipped corpus, e.g. "corpus:test"
OOD_QUERIES_SOURCE = "corpus:ood"  # the query source naming the shipped out-of-domain evaluation queries


@dataclass(frozen=True)
class Query:
    """A symptom text with the organs a clinician would consider, primary first (none: out of domain)."""

    text: str
    organs: tuple[str, ...] = ()
    primary: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def is_out_of_domain(self) -> bool:
        return not self.organs


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")  # a byte order mark, as some editors save UTF-8, is not content
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {error.start})") from None
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON: {error.msg}") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(item).__name__}")
        yield number, item


def parse_query(item: dict, where: str) -> Query:
    """Validate one {"text", "organs", "primary"} object; ``where`` (``file:line``) prefixes every error."""
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'text' is missing or empty")
    organs = item.get("organs", [])
    if not isinstance(organs, list) or not all(isinstance(organ, str) for organ in organs):
        raise ValueError(f"{where}: 'organs' must be a list of organ names")
    unknown = [organ for organ in organs if organ not in ORGANS]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"{where}: unknown organ(s) {names}; known organs: {', '.join(ORGANS)}")
    if len(set(organs)) != len(organs):
        raise ValueError(f"{where}: 'organs' lists an organ twice")
    primary = item.get("primary", organs[0] if organs else None)
    if organs and primary not in organs:
        raise ValueError(f"{where}: primary {primary!r} is not among its organs {organs}")
    if not organs and primary is not None:
        raise ValueError(f"{where}: an out-of-domain query (organs []) has no primary organ")
    meta = {key: value for key, value in item.items() if key not in ("text", "organs", "primary")}
    return Query(text=text.strip(), organs=tuple(organs), primary=primary, meta=meta)


def read_queries(path: str | Path) -> list[Query]:
    """Read a JSON-lines query file of ``{"text", "organs": [...], "primary"}``; ``"organs": []`` is out of domain."""
    queries = [parse_query(item, f"{path}:{number}") for number, item in read_jsonl(path)]
    if not queries:
        raise ValueError(f"{path} holds no queries")
    return queries


def read_query_sources(sources: str | Path | list[str | Path]) -> list[Query]:
    """Queries from one source or several: a JSON-lines file (see :func:`read_queries`), ``"corpus:test"`` /
    ``"corpus:train"`` (a split of the shipped corpus) or ``"corpus:ood"`` (the shipped out-of-domain queries,
    :data:`OOD_QUERIES`), so that a command names the shipped queries from any folder."""
    if isinstance(sources, str | Path):
        sources = [sources]
    if not sources:
        raise ValueError("no query source given: name a JSON-lines file or corpus:test")
    queries = []
    for source in sources:
        name = str(source)
        if name == OOD_QUERIES_SOURCE:
            queries += read_queries(OOD_QUERIES)
        elif name.startswith(CORPUS_SOURCE_PREFIX):
            queries += read_corpus(name.removeprefix(CORPUS_SOURCE_PREFIX))
        else:
            queries += read_queries(source)
    return queries


def read_corpus(split: str | None = None, corpus_dir: str | Path = CORPUS_DIR) -> list[Query]:
    """The shipped symptom corpus (one file per organ), optionally one split: "train" or "test".

    Each query's ``meta`` holds ``id``, ``organ`` (the source organ), ``style``, ``kb_id`` and ``split``.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    queries = []
    for organ in ORGANS:
        path = Path(corpus_dir) / f"{organ}.jsonl"
        for number, item in read_jsonl(path):
            query = parse_query(item, f"{path}:{number}")
            if query.meta.get("organ") != organ or query.meta.get("split") not in SPLITS:
                raise ValueError(f"{path}:{number}: expected 'organ' {organ!r} and 'split' in {SPLITS}")
            if split is None or query.meta["split"] == split:
                queries.append(query)
    return queries


def read_knowledge_base(kb_dir: str | Path = KNOWLEDGE_BASE_DIR) -> dict[str, dict]:
    """The organ knowledge base the corpus was expanded from, by passage id."""
    passages = {}
    for organ in ORGANS:
        for _, item in read_jsonl(Path(kb_dir) / f"{organ}.jsonl"):
            passages[item["id"]] = item
    return passages


def leaking_texts(queries: list[Query]) -> list[tuple[str, list[str]]]:
    """(text, organs it names) for every query whose text names an organ: must be empty for the corpus."""
    return [(query.text, named) for query in queries if (named := organs_named_in(query.text))]
