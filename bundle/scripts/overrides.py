"""Command-line overrides of the bundle's text fields are data, never config syntax.

MONAI's bundle runner gives every override to its config parser, which runs a value starting with ``$`` as
Python, resolves ``@id`` to another config entry and expands ``%file#id`` from a config file, and whose command
line (fire) turns ``None`` into Python's None. For a symptom, a file name or a folder, any of these would be a
silent wrong answer or code run from a patient's text: :func:`refuse_config_syntax_in_text_overrides` runs first
(``initialize``), before any override is used, and refuses them, naming the plain command that scores any text.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

CONFIG_SYNTAX = {"$": "runs it as Python", "@": "reads another config entry instead", "%": "expands a config macro"}
NONE_WORDS = ("None", "none", "null", "NULL")
TEXT_IDS = (  # ids whose value is text or a path: never meant as an expression
    "symptom",
    "queries_file",
    "image",
    "label",
    "label_convention",
    "datalist",
    "dataset_dir",
    "phantom_dir",
    "output_dir",
    "ckpt_dir",
    "model_path",
    "feature_cache_dir",
    "text_artifacts",
    "text_embedding_cache",
    "vit_pretrained_dir",
)
PLAIN_COMMAND = "python scripts/symptom_query.py --symptom TEXT ... (in the bundle's folder)"


def command_line_overrides(argv: Sequence[str]) -> dict[str, str]:
    """``--id value`` and ``--id=value`` pairs of a ``monai.bundle`` command line, as typed."""
    overrides, index = {}, 0
    while index < len(argv):
        argument = argv[index]
        if argument.startswith("--"):
            key, equals, value = argument[2:].partition("=")
            if equals:
                overrides[key] = value
            elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                overrides[key] = argv[index + 1]
                index += 1
        index += 1
    return overrides


def refuse_config_syntax_in_text_overrides(ids: Sequence[str] = TEXT_IDS, argv: Sequence[str] | None = None) -> None:
    """Raise if a command-line override of a text id starts with config syntax, or says None for the symptom.

    Args:
        ids: the config ids whose overrides are text.
        argv: the command line (default ``sys.argv``).

    Raises:
        ValueError: naming the id, the character and what MONAI would have done, and the plain command instead.
    """
    overrides = command_line_overrides(sys.argv[1:] if argv is None else argv)
    for key in ids:
        value = overrides.get(key)
        if value is None:
            continue
        if value[:1] in CONFIG_SYNTAX:
            raise ValueError(
                f"--{key} starts with {value[0]!r}, and MONAI's bundle runner {CONFIG_SYNTAX[value[0]]} rather than "
                f"take it as text: refused. Score any text with `{PLAIN_COMMAND}`, or put it in a queries file"
            )
        if key == "symptom" and value.strip() in NONE_WORDS:
            raise ValueError(
                f"--symptom {value!r} is not a symptom (MONAI's command line would read it as None and score the "
                f"default example instead): describe the symptom, or score the word itself with `{PLAIN_COMMAND}`"
            )
