"""All-or-nothing writes for bundles and manifests.

An export takes minutes and can be interrupted (Ctrl-C, OOM, a failed check). A half-written
bundle that looks complete is worse than none, so everything is built in a hidden temporary
sibling in the same directory (same filesystem, so the final ``rename`` is atomic) and moved
into place only when the block finished without an exception. An existing target is never
touched unless the caller asked for ``force``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from genrec.errors import GenrecError

__all__ = ["TargetExistsError", "atomic_directory", "atomic_file"]


class TargetExistsError(GenrecError, FileExistsError):
    """The destination already exists and ``force`` was not given."""


def _fsync_dir(path: Path) -> None:
    """Persist a rename in ``path`` (best effort: some filesystems refuse fsync on directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree if it exists, never following a symlinked directory."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sibling(final: Path, tag: str) -> Path:
    return final.parent / f".{final.name}.{tag}-{secrets.token_hex(4)}"


def _exists_message(final: Path) -> str:
    return f"{final} already exists; pass --force to replace it (or choose another output path)"


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` only if the block succeeds.

    The temporary directory is ``<parent>/.<name>.tmp-<random>``. On normal exit it is renamed
    to ``final``; with ``force`` an existing ``final`` is first renamed aside, and deleted only
    after the new one is in place. On any exception (KeyboardInterrupt included) the temporary
    directory is removed and the exception propagates; ``final`` is left as it was.

    Raises:
        TargetExistsError: ``final`` exists and ``force`` is false (checked before and after
            the block, so a target that appeared meanwhile is not clobbered either).
    """
    final = Path(final)
    if (final.exists() or final.is_symlink()) and not force:
        raise TargetExistsError(_exists_message(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _sibling(final, "tmp")
        try:
            os.mkdir(tmp)  # mode 0o777 & ~umask, unlike tempfile.mkdtemp's 0o700
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        _commit(tmp, final, force)
    except BaseException:
        _remove(tmp)
        raise


def _commit(tmp: Path, final: Path, force: bool) -> None:
    """Move ``tmp`` onto ``final``; with ``force`` swap out an existing target safely."""
    if final.exists() or final.is_symlink():
        if not force:
            raise TargetExistsError(_exists_message(final))
        old = _sibling(final, "old")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)  # put the previous target back before giving up
            raise
        _fsync_dir(final.parent)
        _remove(old)
    else:
        os.rename(tmp, final)
        _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_file(
    final: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``final`` for writing; replace ``final`` with it on success.

    The data is flushed and fsynced before ``os.replace``, so readers see either the old file
    or the complete new one. On any exception the temporary file is removed and ``final`` is
    untouched. ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"``.
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w', 'wt' or 'wb', not {mode!r}")
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _sibling(final, "tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
