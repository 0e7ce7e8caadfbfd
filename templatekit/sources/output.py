"""Where output may go: a regular file or a new path, never a device, a pipe, a socket, or a link out of its folder.

`output_target` is asked before anything is written (and again by `atomic.atomic_output` as it writes): it
returns the file to replace, or raises a `TemplateSourceError` naming the user's path, in words they can act on.
Writing onto `/dev/null` as root would otherwise replace the system's `/dev/null` with a regular file, and a FIFO
or a socket in the way is someone else's. No option (not `--force`) lifts these refusals: `--stdout` prints.

Folders: output goes into a folder that exists; a missing one is created only when the caller says so
(`make_folders=True`, the CLI's `--mkdir`), so that a mistyped path does not leave new folders behind.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import TemplateSourceError
from .reading import file_kind

__all__ = ["make_output_folder", "output_target"]

_ONLY = "output goes only to a regular file or a new path"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _missing_folder(path: Path) -> tuple[Path, bool] | None:
    """The first missing (False) or non-folder (True) ancestor of `path`, nearest the root; None if all are folders."""
    for parent in reversed(path.parents):
        try:
            info = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):
            return parent, False
        except OSError:
            return None  # cannot tell (no permission): the write itself will say
        if not stat.S_ISDIR(info.st_mode):
            return parent, True
    return None


def _within(target: Path, folder: Path) -> bool:
    return target == folder or folder in target.parents


def output_target(path: str | Path, *, make_folders: bool = False) -> Path:
    """The file to replace when writing to `path`: `path` itself (a regular file, or nothing yet), or, for a
    symbolic link to a regular file in its own folder (or below it), the file it points to, so the link stays.

    Refused, each with a `TemplateSourceError` naming `path` and why: a device, a named pipe, a socket or a
    folder at `path`; a symbolic link that leads out of its folder, to nothing or to anything but a regular file;
    a missing folder on the way (unless `make_folders`: then `make_output_folder` creates it when writing); a
    file where a folder is expected. Nothing is created or changed here.

    Example:
        output_target("/dev/null")
        # Traceback (most recent call last):
        # TemplateSourceError: /dev/null: a character device, not a regular file: output goes only to a regular file ...
    """
    path = Path(path)
    problem = _missing_folder(path)
    if problem is not None:
        where, is_file = problem
        if is_file:
            raise TemplateSourceError(
                f"{where} is not a folder ({file_kind(os.stat(where).st_mode)})", source=str(path)
            )
        if not make_folders:
            raise TemplateSourceError(
                f"the folder {where} does not exist (pass --mkdir to create it)", source=str(path)
            )
        return path
    info = _lstat(path)
    if info is not None and stat.S_ISLNK(info.st_mode):
        target = Path(os.path.realpath(path))
        folder = Path(os.path.realpath(path.parent))
        if not _within(target, folder):
            raise TemplateSourceError(
                f"a symbolic link out of its folder (to {target}): {_ONLY}; write to {target} itself if you mean it",
                source=str(path),
            )
        info = _lstat(target)
        if info is None:
            raise TemplateSourceError(f"a symbolic link to nothing ({os.readlink(path)}): {_ONLY}", source=str(path))
        if not stat.S_ISREG(info.st_mode):
            raise TemplateSourceError(f"a symbolic link to {file_kind(info.st_mode)}: {_ONLY}", source=str(path))
        _writable_folder(target)
        return target
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise TemplateSourceError(f"{file_kind(info.st_mode)}, not a regular file: {_ONLY}", source=str(path))
    _writable_folder(path)
    return path


def _writable_folder(path: Path) -> None:
    """Refuse a folder the file cannot be written in (a read-only file system, no permission), before any work."""
    folder = path.parent
    if os.access(folder, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    why = "a read-only file system" if read_only else "no permission to write there"
    raise TemplateSourceError(f"cannot write in {folder}: {why}", source=str(path))


def make_output_folder(path: Path, shown: str | Path) -> None:
    """Create the folders on the way to `path` (after `output_target(..., make_folders=True)` allowed it); an OS
    error is a `TemplateSourceError` naming `shown`, the path the user gave."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TemplateSourceError(
            f"cannot create the folder {path.parent}: {exc.strerror or exc}", source=str(shown)
        ) from None
