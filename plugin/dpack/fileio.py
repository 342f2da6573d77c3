"""Files other programs read: written to a temporary file beside the target and renamed over it, so a
reader never sees half a file; their SHA-256."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(
    path: str | os.PathLike[str],
    payload: bytes,
    check: Callable[[Path], None] | None = None,
    mode: int = 0o644,
) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same directory, created
    exclusively under an unpredictable name (so nothing planted there is followed or overwritten), with
    ``mode``; fsync, ``check`` on it (raise to abandon the write: the old file stays), rename over the
    target."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def open_regular(path: str | os.PathLike[str], what: str, error: type[Exception]) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file; otherwise ``error`` with one line
    naming ``what`` was expected. Opened non-blocking first, so a FIFO or device neither blocks nor
    is read: a capture, config or model is a file."""
    from .errors import one_line

    where = one_line(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: is a directory, not a {what}") from None
    except PermissionError:
        raise error(f"{where}: permission denied") from None
    except OSError as err:
        raise error(f"{where}: cannot open ({one_line(err.strerror)})") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise error(f"{where}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(f"{where}: not a regular file (a pipe or device?); a {what} must be a file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_output(path: str | os.PathLike[str], what: str, error: type[Exception]) -> None:
    """Refuse an output path that cannot be written, before any work starts: a directory, a path whose
    parent is a file, or an unwritable directory (the file is created there at the end)."""
    from .errors import one_line

    p = Path(path)
    where = one_line(path)
    if p.is_dir():
        raise error(f"{where}: is a directory; the {what} needs a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise error(f"{where}: {one_line(parent)} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"{where}: cannot write in {one_line(parent)}")
