"""One run's outputs, all or nothing: staged beside ``output_dir``'s files, moved into place when the run succeeds.

A run that fails leaves ``output_dir`` as it found it; a run that succeeds leaves only its own outputs there (the
files an earlier run wrote with the same patterns are removed, so no stale ``query_001.png`` survives a run with
one query); two runs on one ``output_dir`` at once are refused, naming the process that holds it; an
``output_dir`` that cannot be written is refused before the run's work starts.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

STAGING_PREFIX = ".partial-"


class OutputFolderInUse(RuntimeError):
    """Another run is writing to the same ``output_dir``."""


class OutputFolder:
    """Stage a run's files in ``output_dir/.partial-<pid>-*/`` and move them in on success.

    Args:
        output_dir: where the outputs go (created if needed).
        owned: glob patterns of the files a run of this kind writes there; on success, earlier ones are removed.

    Use as a context manager: write each file to :meth:`staged`, name it in reports with :meth:`final`.
    """

    def __init__(self, output_dir: str | Path, owned: Sequence[str]) -> None:
        self.output_dir, self.owned = Path(output_dir), tuple(owned)
        self._lock: int | None = None
        self.staging: Path | None = None

    def __enter__(self) -> OutputFolder:
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.output_dir, os.O_RDONLY)
        except OSError as error:
            raise self._unwritable(error) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            holders = sorted({path.name.split("-")[1] for path in self.output_dir.glob(f"{STAGING_PREFIX}*-*")})
            raise OutputFolderInUse(
                f"output_dir {self.output_dir} is in use by another run (process {', '.join(holders) or 'unknown'}): "
                "wait for it to finish, or choose another output_dir"
            ) from None
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.output_dir))
        except OSError as error:
            os.close(self._lock)
            self._lock = None
            raise self._unwritable(error) from None
        return self

    def _unwritable(self, error: OSError) -> PermissionError:
        return PermissionError(f"output_dir {self.output_dir} cannot be written: {error.strerror or error}")

    def staged(self, name: str) -> Path:
        """Where to write output ``name`` during the run."""
        return self.staging / name

    def final(self, name: str) -> Path:
        """Where output ``name`` will be once the run has succeeded."""
        return self.output_dir / name

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                for pattern in self.owned:
                    for stale in self.output_dir.glob(pattern):
                        stale.unlink()
                for file in sorted(self.staging.iterdir()):
                    os.replace(file, self.output_dir / file.name)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None
