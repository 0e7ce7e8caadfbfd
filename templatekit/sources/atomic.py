"""Write files so that readers see the old file or the new one, never a half-written one, and nothing is left.

Each file is written to a temporary file beside it, fsynced and moved onto its name with `os.replace`. The
temporary file is removed on any error, on Ctrl-C and (through the CLI's handler) on SIGTERM. A run killed outright
(SIGKILL, a power cut) cannot clean up: its temporary file's name carries its process id, and the next write into
that folder removes the temporaries of runs that are no longer alive (`clean_stale_temporaries`).

Where output may go is `output.output_target`'s to say; an OS error while writing (a read-only file system, a full
disk, the file-size limit) is a `TemplateSourceError` naming the path the user gave, never a traceback.

`crash_point()` marks each step of a write. The crash tests set `TEMPLATEKIT_KILL_AT_STEP=N` to have the process
SIGKILLed at the Nth step (`N:TERM`: sent SIGTERM) and check that the original is intact or the new file whole;
unset, it does nothing.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import TemplateSourceError
from .output import make_output_folder, output_target

__all__ = [
    "TEMPORARY_SUFFIX",
    "atomic_output",
    "clean_stale_temporaries",
    "crash_point",
    "write_bytes_atomic",
    "write_error",
    "write_text_atomic",
]

#: How every temporary file templatekit writes ends: `.NAME.PID.RANDOM.templatekit-tmp`, beside NAME.
TEMPORARY_SUFFIX = ".templatekit-tmp"
_KILL_AT_STEP = "TEMPLATEKIT_KILL_AT_STEP"
_steps_taken = 0


def crash_point() -> None:
    """One step of a write. With `TEMPLATEKIT_KILL_AT_STEP=N` (crash tests) the process is sent SIGKILL at the Nth
    step, or the signal named after a colon (`N:TERM`, `N:INT`); unset, nothing happens."""
    global _steps_taken
    wanted = os.environ.get(_KILL_AT_STEP)
    if not wanted:
        return
    _steps_taken += 1
    step, _, name = wanted.strip().partition(":")
    if str(_steps_taken) == step:
        os.kill(os.getpid(), getattr(signal, f"SIG{name or 'KILL'}"))


def write_error(exc: OSError, shown: str | Path, what: str = "cannot write") -> TemplateSourceError:
    """An OS error met while writing `shown` (the path the user gave), as one line: `PATH: cannot write: why`."""
    return TemplateSourceError(f"{what}: {exc.strerror or exc}", source=str(shown))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def clean_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove from `folder` the temporary files of templatekit runs that died before they could (their names
    carry the run's process id; a run still alive keeps its own). Returns what was removed.

    Example:
        clean_stale_temporaries("model/")
        # [PosixPath('model/.tokenizer_config.json.bak.4242.k2j3h4l5.templatekit-tmp')]
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)):
            continue
        parts = name[: -len(TEMPORARY_SUFFIX)].rsplit(".", 2)  # ".NAME", PID, RANDOM
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def write_text_atomic(path: str | Path, text: str, *, make_folders: bool = False) -> None:
    """Write `text` (UTF-8, newlines untouched) to `path` so that readers see the old file or the new one,
    never a half-written one: a temporary file in the same folder, fsync, then `os.replace`.

    An existing file keeps its permission bits; a new one gets the usual `0o666 & ~umask`. Raises
    `TemplateSourceError` where `output_target` refuses the path, and for any OS error while writing.

    Example:
        write_text_atomic("patched.jinja", "{{ messages }}")
    """
    write_bytes_atomic(path, text.encode("utf-8"), make_folders=make_folders)


def write_bytes_atomic(path: str | Path, data: bytes, *, make_folders: bool = False) -> None:
    """`write_text_atomic` for bytes: the old file or the new one is there, never a half-written one.

    Example:
        write_bytes_atomic("tokenizer_config.json.bak", b"{}")
    """
    with atomic_output(path, make_folders=make_folders) as (handle, _):
        handle.write(data)


@contextmanager
def atomic_output(path: str | Path, *, make_folders: bool = False) -> Iterator[tuple[BinaryIO, Path]]:
    """Write a file in one step as seen from outside: yields `(handle, temporary_path)`; when the block ends
    without an error the temporary file is flushed, fsynced, given `path`'s permission bits and moved onto `path`
    with `os.replace`. On any error (inside the block or in the move) the temporary file is removed and `path` is
    left exactly as it was. The block may read `temporary_path` back to check what it wrote before it counts.

    `path` must be a regular file or a new path (`output.output_target`: a symbolic link in its own folder is
    followed, so the link stays); missing folders are created only with `make_folders`. Refusals and OS errors
    are `TemplateSourceError`s naming `path`.

    Example:
        with atomic_output("model.patched.gguf") as (handle, written):
            handle.write(header)
    """
    shown = Path(path)
    target = output_target(shown, make_folders=make_folders)
    if make_folders:
        make_output_folder(target, shown)
    folder = target.parent
    clean_stale_temporaries(folder)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    except OSError as exc:
        raise write_error(exc, shown) from None
    # Same folder as the target: os.replace is atomic only within one file system.
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.{os.getpid()}.", suffix=TEMPORARY_SUFFIX)
    except OSError as exc:
        raise write_error(exc, shown) from None
    try:
        crash_point()
        with os.fdopen(fd, "wb") as handle:
            yield handle, Path(tmp_name)
            handle.flush()
            crash_point()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        crash_point()
        os.replace(tmp_name, target)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(exc, shown) from None
        raise
    crash_point()
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
