"""Write files so that readers see the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_output", "write_bytes_atomic", "write_text_atomic"]


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8, newlines untouched) to `path` so that readers see the old file or the new one,
    never a half-written one: a temporary file in the same folder, fsync, then `os.replace`.

    An existing file keeps its permission bits; a new one gets the usual `0o666 & ~umask`.

    Example:
        >>> write_text_atomic("patched.jinja", "{{ messages }}")  # doctest: +SKIP
    """
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """`write_text_atomic` for bytes: the old file or the new one is there, never a half-written one.

    Example:
        >>> write_bytes_atomic("tokenizer_config.json.bak", b"{}")  # doctest: +SKIP
    """
    with atomic_output(path) as (handle, _):
        handle.write(data)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[tuple[BinaryIO, Path]]:
    """Write a file in one step as seen from outside: yields `(handle, temporary_path)`; when the block ends
    without an error the temporary file is flushed, fsynced, given `path`'s permission bits and moved onto `path`
    with `os.replace`. On any error (inside the block or in the move) the temporary file is removed and `path` is
    left exactly as it was. The block may read `temporary_path` back to check what it wrote before it counts.

    Example:
        >>> with atomic_output("model.patched.gguf") as (handle, written):  # doctest: +SKIP
        ...     handle.write(header)
    """
    path = Path(path)
    folder = path.parent
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    # Same folder as the target: os.replace is atomic only within one file system.
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, Path(tmp_name)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not every platform lets a folder be opened
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
