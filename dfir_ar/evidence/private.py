"""Owner-only directories and files for evidence (memory dumps, pcaps, process lists).

Why explicit modes at creation: ``mkdir(parents=True)`` and ``open(..., "wb")`` take the
umask's default (0755/0644), so every local user could read evidence until it is uploaded.
The mode is given to ``mkdir``/``os.open`` itself, never set by a chmod after the fact, so
there is no window in which the path exists with a wider mode.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dirs(path: Path, *, exist_ok: bool = True) -> None:
    """Create ``path`` and every missing parent with mode 0700 (existing ones are left as
    they are: they may be shared system directories)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    if not missing and not exist_ok:
        raise FileExistsError(f"{path} exists")
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if directory == path and not exist_ok:
                raise
            # created meanwhile by another writer of the same spool: fine


def open_private(path: Path, *, exclusive: bool = False, buffering: int = -1) -> IO[bytes]:
    """``path`` created 0600 and opened for binary writing. Unless ``exclusive`` (then it must
    not exist), a file already there (a temp name left by a crash, maybe with a wider mode) is
    removed first, so the file written is always a new one with this mode."""
    if not exclusive:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        return os.fdopen(fd, "wb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise
