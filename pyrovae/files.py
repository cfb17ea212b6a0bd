"""Atomic files: a reader sees the old file or the new one, never half of either.

Every file is written to a temporary name in the same folder (``.NAME.XXXXXXXX.tmp``), flushed to disk,
then renamed over the old one (``os.replace`` is atomic on POSIX and Windows, and replaces a symbolic
link itself, never the file it points to), so a run interrupted at any moment keeps its last good
checkpoint, config and metrics. A temporary file that an interrupted write left behind matches
:data:`TEMPORARY`; :func:`remove_stale_temporaries` removes them (a command does so in a run folder it
holds the lock of). Files get the mode the umask asks for (``0o666 & ~umask``, as ``open`` gives), not
the ``0o600`` of a temporary file, so a shared folder stays readable by those it is shared with.
:func:`ensure_writable_dir` checks an output folder once, where a command starts writing, so that a path
that cannot be written is one clear error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

from .errors import RunDirError

#: The names of the temporary files :func:`atomic_output` creates: ``.NAME.`` + mkstemp's 8 characters
#: + ``.tmp``.
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def current_umask() -> int:
    """This process's umask, read without changing it where the system says it (Linux), else by setting
    and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """A temporary path in ``path``'s folder to write to (by a library that wants a file name); renamed to
    ``path`` when the block ends, removed if it raises. The file has the mode the umask asks for."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
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


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files (:data:`TEMPORARY`, regular files only) that interrupted atomic writes left
    in ``folder``; returns their names. Call it only while no other process writes there (under the
    folder's lock)."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if TEMPORARY.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
    return sorted(removed)


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
