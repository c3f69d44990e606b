"""Writing files so that a reader never sees one half written (used by the text pipeline and the bundle)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    Args:
        path: the file to create or replace; its folder is created if needed.
        write: writes the whole content to the path it is given.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes))
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from error
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomically(path: str | Path, content: Any, stream: Sequence[str] = ()) -> Path:
    """Write ``content`` as indented JSON, atomically.

    Args:
        path: the file.
        content: anything ``json`` writes; with ``stream``, a dict.
        stream: keys of ``content`` whose values are sequences written one entry at a time (a sequence that makes
            each entry when it is read is then never held whole, nor is the text); the file is the same.
    """
    if not stream:
        text = json.dumps(content, indent=2) + "\n"
        return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def indented(value: Any, depth: int) -> str:
        return json.dumps(value, indent=2).replace("\n", "\n" + "  " * depth)

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as file:
            file.write("{")
            for number, (key, value) in enumerate(content.items()):
                file.write(("," if number else "") + f"\n  {json.dumps(key)}: ")
                if key not in stream:
                    file.write(indented(value, 1))
                    continue
                file.write("[")
                count = 0
                for count, entry in enumerate(value, 1):
                    file.write(("," if count > 1 else "") + "\n    " + indented(entry, 2))
                file.write("\n  ]" if count else "]")
            file.write("\n}\n" if content else "}\n")

    return write_atomically(path, write)


def write_torch_atomically(path: str | Path, content: Any) -> Path:
    """``torch.save`` ``content`` (tensors and plain containers, loadable with ``weights_only=True``), atomically.

    The same content gives the same bytes: ``torch.save`` names the folder inside its archive after a file path
    it is given (here the random temporary name), so it is given an open file instead.
    """
    import torch

    def save(tmp: Path) -> None:
        with tmp.open("wb") as file:
            torch.save(content, file)

    return write_atomically(path, save)
