"""The bundle's command line, as a user meets it: text overrides are data, and a user error is one short message.

:func:`check_command_line` is the first step of every run (``check_command_line`` in train.yaml, first in
``training``, ``evaluating`` and ``inferring``):

- MONAI's bundle runner gives every override to its config parser, which runs a value starting with ``$`` as
  Python, resolves ``@id`` to another config entry and expands ``%file#id`` from a config file, and whose command
  line (fire) turns ``None`` into Python's None. For a symptom, a file name or a folder, any of these would be a
  silent wrong answer or code run from a patient's text: :func:`refuse_config_syntax_in_text_overrides` refuses
  them before any override is used, naming the plain command that scores any text.
- fire, MONAI's command line, reads an override as a Python literal where it can: ``pain, nausea`` becomes a
  tuple, ``pain # after meals`` becomes ``pain`` (``#`` starts a comment), ``2024`` a number. The symptom reaches
  the model as typed (:func:`as_typed`); an override of another text id that fire would change is refused
  (:func:`refuse_changed_text_overrides`).
- MONAI reports an error inside a component as a 100-line traceback ending in "Failed to instantiate
  component": :func:`report_user_errors_plainly` makes a user error (a bad file, argument or text: ``ValueError``,
  ``FileNotFoundError``, ``PermissionError``, ``NotADirectoryError``, a scan that cannot be read, ``ScanError``,
  or a folder another run holds, ``OutputFolderInUse``) end the run with its own message alone; ``MEDSORA_DEBUG=1``
  keeps the full traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import TracebackType

CONFIG_SYNTAX = {"$": "would run it as Python", "@": "would read another config entry", "%": "would expand a macro"}
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
TYPED_IDS = ("symptom",)  # taken as typed (as_typed), so fire's reading of them does not matter
LITERAL_STARTS = ("'", '"', "[", "(", "{")  # a value starting so is Python literal syntax, typed on purpose


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
                f"--{key} starts with {value[0]!r}: MONAI's bundle runner {CONFIG_SYNTAX[value[0]]} rather than take "
                f"it as text, so it is refused. Score any text with `{PLAIN_COMMAND}`, or put it in a queries file"
            )
        if key == "symptom" and value.strip() in NONE_WORDS:
            raise ValueError(
                f"--symptom {value!r} is not a symptom (MONAI's command line would read it as None and score the "
                f"default example instead): describe the symptom, or score the word itself with `{PLAIN_COMMAND}`"
            )


def fire_reading(value: str) -> object:
    """What fire, MONAI's command line, makes of a typed override ``value``."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(value)


def refuse_changed_text_overrides(ids: Sequence[str] = TEXT_IDS, argv: Sequence[str] | None = None) -> None:
    """Raise if fire turns a command-line override of a text id into anything but the text typed (``scan#1.nii.gz``
    into ``scan``, ``2024`` into a number), unless the value was typed as a Python literal (``'"a#b"'``, a list).

    Raises:
        ValueError: naming the id, what was typed, what the bundle would get, and how to type it.
    """
    overrides = command_line_overrides(sys.argv[1:] if argv is None else argv)
    for key in ids:
        typed = overrides.get(key)
        if key in TYPED_IDS or typed is None or typed.lstrip().startswith(LITERAL_STARTS):
            continue
        read = fire_reading(typed)
        if read != typed:
            raise ValueError(
                f"--{key} {typed!r} would reach the bundle as {read!r}: MONAI's command line reads a value as Python "
                f"where it can ('#' starts a comment, a comma makes a tuple, digits a number). Quote it inside the "
                f"shell's quotes: --{key} '\"{typed}\"'"
            )


def as_typed(key: str, value: object, argv: Sequence[str] | None = None) -> object:
    """The text typed for ``--key`` on the command line, if it was given there, else ``value`` (the config's).

    For a symptom, fire's reading would be a silent wrong answer: ``pain, nausea, vomiting`` would be a tuple and
    ``pain # after meals`` would be scored as ``pain``.
    """
    typed = command_line_overrides(sys.argv[1:] if argv is None else argv).get(key)
    return value if typed is None else typed


USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)
DEBUG_VARIABLE = "MEDSORA_DEBUG"


def user_error(error: BaseException) -> BaseException | None:
    """The outermost user error in ``error``'s chain (MONAI wraps a component's error in RuntimeErrors; a
    ``ScanError`` names the scan around its cause; ``OutputFolderInUse`` names the other run), or None if the chain
    holds none."""
    from scripts.data import ScanError
    from scripts.output_folder import OutputFolderInUse

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (*USER_ERRORS, ScanError, OutputFolderInUse)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def report_user_errors_plainly() -> None:
    """From now on, an uncaught user error ends the process with ``error: <its message>`` on stderr and exit
    status 1, instead of a traceback; other errors, and every error with ``MEDSORA_DEBUG=1``, keep theirs."""
    if os.environ.get(DEBUG_VARIABLE) or getattr(sys.excepthook, "medsora", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        cause = user_error(error)
        if cause is None:
            previous(kind, error, traceback)
            return
        print(f"error: {cause}\n(the full traceback: set {DEBUG_VARIABLE}=1)", file=sys.stderr, flush=True)

    hook.medsora = True
    sys.excepthook = hook


def require_positive_integers(**settings: object) -> None:
    """Raise naming the first setting that is not a whole number of at least 1 (``num_epochs=-1``, say)."""
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def require_given_together(ids: Sequence[str], argv: Sequence[str] | None = None) -> None:
    """Raise unless the command line overrides all of ``ids`` or none of them (``--image`` without ``--label``
    would otherwise pair the CT with the example scan's label map)."""
    overrides = command_line_overrides(sys.argv[1:] if argv is None else argv)
    given = [key for key in ids if key in overrides]
    if given and len(given) != len(ids):
        missing = ", ".join(f"--{key}" for key in ids if key not in overrides)
        raise ValueError(f"{', '.join(f'--{key}' for key in given)} given without {missing}: give them together")


def check_command_line() -> None:
    """The first step of every bundle run: plain user errors, then the text overrides checked."""
    report_user_errors_plainly()
    refuse_config_syntax_in_text_overrides()
    refuse_changed_text_overrides()
