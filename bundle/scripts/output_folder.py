"""Folders a run writes to: held by one run at a time, and one run's outputs moved in all or nothing.

- :class:`FolderLock`: a second process on a folder another holds is refused, naming the holder's process;
  :func:`hold_folders` holds a run's folders (training's ``output_dir`` and ``ckpt_dir``, evaluation's
  ``output_dir``) until the run ends.
- :class:`OutputFolder`: a run's files are staged beside ``output_dir``'s and moved into place when the run
  succeeds. A run that fails leaves ``output_dir`` as it found it; a run that succeeds leaves only its own outputs
  there (the files an earlier run wrote with the same patterns are removed, so no stale ``query_001.png`` survives
  a run with one query); an ``output_dir`` that cannot be written is refused before the run's work starts.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

STAGING_PREFIX = ".partial-"
HOLDER_PREFIX = ".in-use-by-process-"  # marks who holds a folder, while they hold it


class OutputFolderInUse(RuntimeError):
    """Another run is writing to the same folder."""


def unwritable(folder: Path, error: OSError, what: str = "output_dir") -> PermissionError:
    return PermissionError(f"{what} {folder} cannot be written: {error.strerror or error}")


class FolderLock:
    """An exclusive lock on ``folder`` (created if needed) for this process: ``flock`` on the folder itself, so
    the system frees it when the process ends, however it ends; a marker file names the holder meanwhile.

    Args:
        folder: the folder to hold.
        what: the folder's name in messages (the config id, e.g. ``output_dir``).
    """

    def __init__(self, folder: str | Path, what: str = "output_dir") -> None:
        self.folder, self.what = Path(folder), what
        self._descriptor: int | None = None
        self._created = False

    def acquire(self) -> FolderLock:
        try:
            self._created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.folder, os.O_RDONLY)
        except OSError as error:
            raise unwritable(self.folder, error, self.what) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            holders = sorted(path.name.removeprefix(HOLDER_PREFIX) for path in self.folder.glob(f"{HOLDER_PREFIX}*"))
            raise OutputFolderInUse(
                f"{self.what} {self.folder} is in use by another run (process {', '.join(holders) or 'unknown'}): "
                f"wait for it to finish, or choose another {self.what}"
            ) from None
        self._descriptor = descriptor
        try:
            for stale in self.folder.glob(f"{HOLDER_PREFIX}*"):  # left by a run that was killed
                stale.unlink()
            self._marker.touch()
        except OSError as error:
            self.release()
            raise unwritable(self.folder, error, self.what) from None
        return self

    @property
    def _marker(self) -> Path:
        return self.folder / f"{HOLDER_PREFIX}{os.getpid()}"

    def release(self) -> None:
        """Free the folder; one this lock created is removed if nothing was written to it."""
        if self._descriptor is None:
            return
        self._marker.unlink(missing_ok=True)
        if self._created and not any(self.folder.iterdir()):
            self.folder.rmdir()
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


_HELD: dict[Path, FolderLock] = {}


def hold_folders(**folders: str | Path) -> list[Path]:
    """Hold each folder (``output_dir=..., ckpt_dir=...``) until :func:`release_folders` or the end of this
    process, even one ended by an error: a run started meanwhile on any of them is refused, naming this process.
    Holding a folder this process holds already does nothing.

    Returns:
        the folders, resolved.
    """
    held = []
    for what, folder in folders.items():
        path = Path(folder).resolve()
        if path not in _HELD:
            _HELD[path] = FolderLock(path, what).acquire()
        held.append(path)
    return held


def release_folders() -> None:
    """Release what :func:`hold_folders` holds: at the end of a run (its ``finalize``), or of the process."""
    while _HELD:
        _HELD.popitem()[1].release()


atexit.register(release_folders)


class OutputFolder:
    """Stage a run's files in ``output_dir/.partial-<pid>-*/`` and move them in on success; ``output_dir`` is
    held (:class:`FolderLock`) meanwhile.

    Args:
        output_dir: where the outputs go (created if needed).
        owned: glob patterns of the files a run of this kind writes there; on success, earlier ones are removed.

    Use as a context manager: write each file to :meth:`staged`, name it in reports with :meth:`final`.
    """

    def __init__(self, output_dir: str | Path, owned: Sequence[str]) -> None:
        self.output_dir, self.owned = Path(output_dir), tuple(owned)
        self._lock = FolderLock(self.output_dir)
        self.staging: Path | None = None

    def __enter__(self) -> OutputFolder:
        self._lock.acquire()
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.output_dir))
        except OSError as error:
            self._lock.release()
            raise unwritable(self.output_dir, error) from None
        return self

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
            self._lock.release()
