"""Atomic files: a reader sees the old file or the new one, never half of either.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the
old one (``os.replace`` is atomic on POSIX and Windows), so a run interrupted at any moment keeps its
last good checkpoint, config and metrics. :func:`ensure_writable_dir` checks an output folder once, where a
command starts writing, so that a path that cannot be written is one clear error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from .errors import RunDirError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """A temporary path in ``path``'s folder to write to (by a library that wants a file name); renamed to
    ``path`` when the block ends, removed if it raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode())


def ensure_writable_dir(path: str | os.PathLike, file_name: str = "", create: bool = True) -> Path:
    """Check that files can be written in the folder ``path``: create it (and its parents) if missing, then write
    and remove a temporary file in it, named as :func:`atomic_output` names them (for ``file_name`` when given, so
    that a name too long for the file system is caught here too).

    With ``create=False`` nothing is created: the nearest folder that exists is checked instead, and the names
    of the folders still to be made are checked against its file system's longest name (a command that may yet
    fail on its data leaves no empty folder behind).

    Raises:
        RunDirError: naming the path and the operating system's reason: it is a file, it lies under a file, a
            name is too long, the file system is read-only, or permission is denied.
    """
    path = Path(path)
    try:
        folder = path
        if create:
            path.mkdir(parents=True, exist_ok=True)
        else:
            while not folder.exists():  # Path.exists raises ENAMETOOLONG for a too long name it reaches
                folder = folder.parent
            if not folder.is_dir():
                raise OSError(errno.EEXIST if folder == path else errno.ENOTDIR, "", str(folder))
            longest = os.pathconf(folder, "PC_NAME_MAX")
            if any(len(os.fsencode(part)) > longest for part in path.relative_to(folder).parts):
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{file_name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno == errno.EEXIST:
            reason = f"{path} is a file, not a folder"
        elif e.errno == errno.ENOTDIR:
            reason = "a part of the path is a file, not a folder (ENOTDIR)"
        else:
            reason = f"{e.strerror or e}" + (f" ({errno.errorcode[e.errno]})" if e.errno in errno.errorcode else "")
        where = f"{path / file_name}" if file_name else f"the folder {path}"
        raise RunDirError(f"cannot write {where}: {reason}; choose another path") from None
    return path
