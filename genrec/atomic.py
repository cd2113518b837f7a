"""All-or-nothing writes for bundles, manifests, reports and result files.

An export takes minutes and can be interrupted (Ctrl-C, SIGTERM, OOM, a failed check). A
half-written bundle that looks complete is worse than none, so everything is built in a hidden
temporary sibling in the same directory (same filesystem, so the final ``rename`` is atomic) and
moved into place only when the block finished without an exception. An existing target is
never touched unless the caller asked for ``force``.

Temporaries are named ``.<name>.genrec-<tag>-<pid>-<random>`` (tag ``tmp``, ``old`` or
``probe``), so what a SIGKILL (or a power cut) leaves behind says what it is and which process
made it. The next write to the same path removes such leftovers whose process is gone, and puts
back a previous target that a killed ``force`` replacement had moved aside
(``clean_leftovers``). A leftover of a live process is another run at work: it is kept.

Problems with the destination (a parent that is a file, a directory that cannot be written, a
device or FIFO, a symlink loop, a name too long for the temporary) raise ``OutputPathError``,
one line naming the path. ``check_writable`` runs the same checks up front, so that a command
can refuse a bad output path before it computes anything. A symlinked output file is written
through: the file the link points to is replaced, the link is kept (as ``>`` in a shell does).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from genrec.errors import GenrecError

__all__ = ["OutputPathError", "TargetExistsError", "atomic_directory", "atomic_file", "check_writable",
           "clean_leftovers", "leftover_name"]

TAGS = ("tmp", "old", "probe")
# .<name>.genrec-<tag>-<pid>-<8 hex>: the one pattern every temporary of this module follows
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.genrec-(?P<tag>tmp|old|probe)-(?P<pid>[0-9]+)-[0-9a-f]{8}$")


class TargetExistsError(GenrecError, FileExistsError):
    """The destination already exists and ``force`` was not given."""


class OutputPathError(GenrecError):
    """The destination cannot be written (the message names the path and says why)."""


def leftover_name(name: str, tag: str, pid: int | None = None) -> str:
    """The name of a temporary sibling of ``name``: ``.<name>.genrec-<tag>-<pid>-<random>``."""
    if tag not in TAGS:
        raise ValueError(f"tag must be one of {TAGS}, not {tag!r}")
    return f".{name}.genrec-{tag}-{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}"


def _sibling(final: Path, tag: str) -> Path:
    return final.parent / leftover_name(final.name, tag)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (ours or another user's); a leftover of a live one is kept."""
    if pid <= 0:
        return True  # not a pid we wrote: never treat it as dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


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


def _exists_message(final: Path) -> str:
    return f"{_show(final)} already exists; pass --force to replace it (or choose another output path)"


def _show(path: str | os.PathLike[str]) -> str:
    """A path as a one-line message shows it: quoted if it holds a newline or another
    unprintable character."""
    text = os.fspath(path)
    return text if text.isprintable() else ascii(text)


def _reason(e: OSError) -> str:
    """``[Errno 13] Permission denied: 'x'`` -> ``permission denied``: the path is said once, by us."""
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]


def clean_leftovers(final: str | os.PathLike[str]) -> list[str]:
    """Deal with what killed writes to ``final`` left next to it; returns one note per leftover.

    Only names of this module's pattern for ``final``'s name, made by a process that is no
    longer alive, are touched: ``tmp`` and ``probe`` leftovers are removed; an ``old`` one (the
    previous target that a ``force`` replacement had moved aside) is renamed back if ``final``
    is missing (the kill came between the two renames), removed otherwise.
    """
    final = Path(final)
    notes: list[str] = []
    try:
        names = os.listdir(final.parent)
    except OSError:
        return notes
    for name in sorted(names):
        m = _LEFTOVER.match(name)
        if not m or m["name"] != final.name or pid_alive(int(m["pid"])):
            continue
        path = final.parent / name
        try:
            if m["tag"] == "old" and not (final.exists() or final.is_symlink()):
                os.rename(path, final)
                notes.append(f"restored {_show(final)} from {name}: process {m['pid']} had moved it aside "
                             "to replace it and is gone")
                continue
            _remove(path)
        except OSError:
            continue  # another run cleaned it meanwhile, or we may not: leave it
        notes.append(f"removed {_show(path)}, left by process {m['pid']} (gone) while writing {_show(final)}")
    return notes


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _target(path: str | os.PathLike[str], directory: bool) -> Path:
    """The path a write of ``path`` will rename onto, after the checks that need no writing.

    A symlinked file is resolved (written through); a symlinked directory is not (``force``
    replaces the link itself, as it always did).
    """
    text = os.fspath(path)
    if not text:
        raise OutputPathError("the output path is empty")
    if "\0" in text:
        raise OutputPathError(f"cannot write {ascii(text)}: a path cannot contain a NUL byte")
    final = Path(text)
    if final.name in ("", ".", ".."):
        raise OutputPathError(f"cannot write {_show(text)}: it names a directory, not a "
                              + ("new directory" if directory else "file"))
    lst = _stat(final, text, follow=False)
    if not directory and lst is not None and stat.S_ISLNK(lst.st_mode):
        final = Path(os.path.realpath(final))
    st = _stat(final, text)
    if st is not None:
        if directory and not stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"cannot write {_show(text)}: it exists and is not a directory")
        if not directory and stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"cannot write {_show(text)}: it is a directory")
        if not directory and not stat.S_ISREG(st.st_mode):
            raise OutputPathError(f"cannot write {_show(text)}: it is {_kind(st.st_mode)}, not a regular "
                                  "file (the result is a new file that replaces it)")
    _existing_parent(final, text)
    return final


def _stat(path: Path, text: str, follow: bool = True) -> os.stat_result | None:
    """``os.stat`` (``lstat`` unless ``follow``); None if ``path`` is absent or under a file;
    OutputPathError naming ``text`` for anything else (a symlink loop, a name too long)."""
    try:
        return os.stat(path, follow_symlinks=follow)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputPathError(f"cannot write {_show(text)}: a loop of symlinks") from None
        raise OutputPathError(f"cannot write {_show(text)}: {_reason(e)}") from None


def _existing_parent(final: Path, text: str) -> Path:
    """The nearest existing ancestor of ``final``; OutputPathError unless it is a directory."""
    parent = final.parent
    while (st := _stat(parent, text)) is None and parent != parent.parent:
        if _stat(parent, text, follow=False) is not None:
            raise OutputPathError(f"cannot write {_show(text)}: {_show(parent)} is a broken symlink")
        parent = parent.parent
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"cannot write {_show(text)}: {_show(parent)} is a file, not a directory")
    return parent


def check_writable(path: str | os.PathLike[str], *, directory: bool = False,
                   note: Callable[[str], None] | None = None) -> Path:
    """Refuse, before any work, an output path that ``atomic_file`` (``atomic_directory`` with
    ``directory``) could not write; returns the path it will replace (a symlink resolved).

    Besides the checks of ``atomic_file`` it creates and removes a probe file where the
    temporary will go (the nearest existing ancestor if the parent is still to be made), which
    is the one reliable test for a read-only directory or filesystem (``os.access`` says yes
    to root). Leftovers of killed runs on the same path are cleaned on the way, each one
    passed to ``note`` (a line for the user) if given.
    """
    text = os.fspath(path)
    final = _target(path, directory)
    parent = _existing_parent(final, text)
    if parent == final.parent:
        for line in clean_leftovers(final):
            if note is not None:
                note(line)
        first = final.name
    else:  # the first missing directory under ``parent`` stands in for the output
        first = final.relative_to(parent).parts[0]
    probe = parent / leftover_name(first, "probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise _create_failed(text, parent, e) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return final


def _make_parent(final: Path, text: str) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _existing_parent(final, text)  # names a parent that is a file
        raise OutputPathError(f"cannot write {_show(text)}: cannot create {_show(final.parent)} "
                              f"({_reason(e)})") from None


def _create_failed(text: str, directory: Path, e: OSError) -> OutputPathError:
    """The error for a temporary that could not be made in ``directory``."""
    if e.errno == errno.ENAMETOOLONG:
        return OutputPathError(f"cannot write {_show(text)}: the name is too long for its temporary sibling; "
                               "choose a shorter one")
    return OutputPathError(f"cannot write {_show(text)}: cannot create files in {_show(directory)} ({_reason(e)})")


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` only if the block succeeds.

    The temporary directory is ``<parent>/.<name>.genrec-tmp-<pid>-<random>``. On normal exit it
    is renamed to ``final``; with ``force`` an existing ``final`` is first renamed aside (tag
    ``old``), and deleted only after the new one is in place. On any exception
    (KeyboardInterrupt and the CLI's SIGTERM included) the temporary directory is removed and
    the exception propagates; ``final`` is left as it was.

    Raises:
        TargetExistsError: ``final`` exists and ``force`` is false (checked before and after
            the block, so a target that appeared meanwhile is not clobbered either).
        OutputPathError: the directory cannot be created there.
    """
    text = os.fspath(final)
    final = _target(final, directory=True)
    if final.parent.is_dir():
        clean_leftovers(final)
    if (final.exists() or final.is_symlink()) and not force:
        raise TargetExistsError(_exists_message(final))
    _make_parent(final, text)
    while True:
        tmp = _sibling(final, "tmp")
        try:
            os.mkdir(tmp)  # mode 0o777 & ~umask, unlike tempfile.mkdtemp's 0o700
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise _create_failed(text, final.parent, e) from None
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
    untouched. ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"``. The temporary is created
    on entry, so a destination that cannot be written fails before the block runs
    (``OutputPathError``); a symlinked ``final`` is written through.
    """
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w', 'wt' or 'wb', not {mode!r}")
    text = os.fspath(final)
    final = _target(final, directory=False)
    if final.parent.is_dir():
        clean_leftovers(final)
    _make_parent(final, text)
    while True:
        tmp = _sibling(final, "tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise _create_failed(text, final.parent, e) from None
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
