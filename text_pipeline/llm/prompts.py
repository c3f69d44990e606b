"""The paper's two prompts (method.md §1), the organ-name rewrite prompt, and strict parsers of the answers.

Every request asks for ``response_format={"type": "json_object"}``; the answers are validated strictly by
:func:`parse_filter`, :func:`parse_expand` and :func:`parse_rewrite`, which raise :class:`InvalidAnswer`
(a ValueError) on anything else: not JSON, not an object, a missing key, a wrong type, an empty string,
the wrong number of observations. Extra keys in an otherwise valid object are ignored.
"""

from __future__ import annotations

import json

from text_pipeline.organs import ORGAN_NAME_STEMS, ORGANS

__all__ = [
    "EXPAND_INSTRUCTION",
    "EXPAND_TEMPLATE",
    "FILTER_QUESTION",
    "FILTER_TEMPLATE",
    "JSON_RESPONSE_FORMAT",
    "REWRITE_TEMPLATE",
    "SYSTEM_PROMPT",
    "InvalidAnswer",
    "expand_messages",
    "filter_messages",
    "parse_expand",
    "parse_filter",
    "parse_rewrite",
    "repair_message",
    "rewrite_messages",
]

JSON_RESPONSE_FORMAT = {"type": "json_object"}

SYSTEM_PROMPT = (
    "You help build a corpus of clinical symptom descriptions for a model that must infer which abdominal "
    "organ a symptom relates to. Always answer with a single JSON object and nothing else."
)

# The paper's filter question, verbatim.
FILTER_QUESTION = "Does this text describe a patient's symptom or clinical observation?"

FILTER_TEMPLATE = (
    FILTER_QUESTION + "\n"
    "Answer true if the text describes what a patient experiences or reports, or a sign or finding a clinician "
    "observes; answer false for anything else (epidemiology, anatomy, pathophysiology, treatment, study "
    "methods, history of medicine).\n"
    'Answer with JSON only, exactly of this form: {{"is_symptom": true or false, "reason": "<one short '
    'sentence>"}}\n'
    "\n"
    "Text:\n"
    '"""\n{text}\n"""'
)

# The paper's expansion instruction, verbatim but for N, which is filled in.
EXPAND_INSTRUCTION = (
    "Based ONLY on the given chunk, create {n} unique clinical observations in complete, medical-style sentences"
)

EXPAND_TEMPLATE = (
    EXPAND_INSTRUCTION + ".\n"
    "Each observation describes a symptom a patient reports or a sign or finding a clinician observes, as it "
    "would be written in a clinical note. Do not add facts the chunk does not support.\n"
    "The chunk is about the {organ}. Never name the {organ} or any word derived from it: use no word or "
    "phrase that begins with {organ_stems}. Name no other organ either: use no word or phrase that begins "
    "with {other_stems}. The reader must infer the organ from the symptoms alone.\n"
    'Answer with JSON only, exactly of this form: {{"observations": ["<sentence 1>", ..., "<sentence {n}>"]}} '
    "with exactly {n} distinct sentences.\n"
    "\n"
    "Chunk:\n"
    '"""\n{text}\n"""'
)

REWRITE_TEMPLATE = (
    "Rewrite the following clinical observation without naming {named} or any other organ, and without any "
    "word derived from an organ's name: use no word or phrase that begins with {stems}. Keep its clinical "
    "meaning and keep it one complete, medical-style sentence.\n"
    'Answer with JSON only, exactly of this form: {{"observation": "<the rewritten sentence>"}}\n'
    "\n"
    "Observation:\n"
    '"""\n{text}\n"""'
)

REPAIR_TEMPLATE = "That answer was not valid ({problem}). Answer again with only the JSON object asked for."


class InvalidAnswer(ValueError):
    """The model's answer is not the JSON asked for."""


def organ_label(organ: str) -> str:
    """``adrenal_gland`` -> ``adrenal gland``."""
    return organ.replace("_", " ")


def _quoted(stems) -> str:
    quoted = [f'"{stem}"' for stem in stems]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _messages(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def filter_messages(text: str) -> list[dict[str, str]]:
    """The chat messages of the filter request for a chunk's text."""
    return _messages(FILTER_TEMPLATE.format(text=text))


def expand_messages(text: str, organ: str, n: int) -> list[dict[str, str]]:
    """The chat messages asking for ``n`` observations from a chunk about ``organ`` (one of ORGANS)."""
    if organ not in ORGAN_NAME_STEMS:
        raise ValueError(f"unknown organ {organ!r}; known organs: {', '.join(ORGANS)}")
    others = [stem for other in ORGANS if other != organ for stem in ORGAN_NAME_STEMS[other]]
    return _messages(
        EXPAND_TEMPLATE.format(
            n=n,
            organ=organ_label(organ),
            organ_stems=_quoted(ORGAN_NAME_STEMS[organ]),
            other_stems=_quoted(others),
            text=text,
        )
    )


def rewrite_messages(observation: str, named: list[str]) -> list[dict[str, str]]:
    """The chat messages asking to rewrite ``observation`` without the organs ``named`` in it (any organ's
    stems are listed, the named organs' first)."""
    order = list(named) + [organ for organ in ORGANS if organ not in named]
    stems = [stem for organ in order for stem in ORGAN_NAME_STEMS[organ]]
    named_text = " or ".join(f"the {organ_label(organ)}" for organ in named) or "any organ"
    return _messages(REWRITE_TEMPLATE.format(named=named_text, stems=_quoted(stems), text=observation))


def repair_message(problem: str) -> dict[str, str]:
    """The user turn sent after an invalid answer, asking for the JSON again."""
    return {"role": "user", "content": REPAIR_TEMPLATE.format(problem=problem)}


def _object(content: str | None) -> dict:
    if content is None or not content.strip():
        raise InvalidAnswer("the answer is empty")
    try:
        value = json.loads(content)
    except ValueError as error:
        raise InvalidAnswer(f"the answer is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidAnswer(f"the answer is JSON but not an object (a {type(value).__name__})")
    return value


def _sentence(value, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidAnswer(f"{where} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidAnswer(f"{where} is an empty string")
    return value.strip()


def parse_filter(content: str | None) -> dict:
    """``{"is_symptom": bool, "reason": str}`` from the filter answer; InvalidAnswer otherwise."""
    answer = _object(content)
    if "is_symptom" not in answer:
        raise InvalidAnswer('the key "is_symptom" is missing')
    if not isinstance(answer["is_symptom"], bool):
        raise InvalidAnswer(f'"is_symptom" must be true or false, not {answer["is_symptom"]!r}')
    if "reason" not in answer:
        raise InvalidAnswer('the key "reason" is missing')
    if not isinstance(answer["reason"], str):
        raise InvalidAnswer(f'"reason" must be a string, not {type(answer["reason"]).__name__}')
    return {"is_symptom": answer["is_symptom"], "reason": answer["reason"].strip()}


def parse_expand(content: str | None, n: int) -> list[str]:
    """The ``n`` observations of an expansion answer (stripped); InvalidAnswer unless there are exactly ``n``
    non-empty strings under "observations"."""
    answer = _object(content)
    if "observations" not in answer:
        raise InvalidAnswer('the key "observations" is missing')
    items = answer["observations"]
    if not isinstance(items, list):
        raise InvalidAnswer(f'"observations" must be a list, not {type(items).__name__}')
    if len(items) != n:
        raise InvalidAnswer(f'"observations" must hold exactly {n} sentences, not {len(items)}')
    return [_sentence(item, f"observation {i + 1}") for i, item in enumerate(items)]


def parse_rewrite(content: str | None) -> str:
    """The rewritten sentence of a rewrite answer; InvalidAnswer otherwise."""
    answer = _object(content)
    if "observation" not in answer:
        raise InvalidAnswer('the key "observation" is missing')
    return _sentence(answer["observation"], '"observation"')
