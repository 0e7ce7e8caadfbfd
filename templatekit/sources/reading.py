"""Read template files within bounded memory, and what a loaded template is (`LoadedTemplate`).

Only regular files are read: a named pipe, a device or a socket is refused before `open` could block on it
(`open_regular`). A template file over `MAX_TEMPLATE_BYTES` or a JSON config over `MAX_CONFIG_BYTES` is refused
before it is read (and a file that grows while it is read is never read past the limit); JSON nested deeper than
Python's parser can follow, a lone surrogate (half of a UTF-16 pair, which no UTF-8 text can hold), bytes that
are not UTF-8, NUL bytes (a binary file) and symbolic link loops are each an error naming the file and the place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import TemplateSourceError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DATA_BYTES",
    "MAX_LINE_BYTES",
    "MAX_TEMPLATE_BYTES",
    "LoadedTemplate",
    "file_kind",
    "open_regular",
    "read_file_bytes",
    "read_json_file",
    "read_text_lines",
]

#: Largest template file read (a `.jinja` file, a template inside a config or a GGUF file): real ones are
#: kilobytes; anything this large is not a chat template.
MAX_TEMPLATE_BYTES = 16 << 20
#: Largest JSON config read (`tokenizer_config.json`, `chat_template.json`): real ones are at most a few megabytes
#: (a long list of added tokens).
MAX_CONFIG_BYTES = 64 << 20
#: Largest data file read at once (`audit --data`): its rows are held in memory, several times their size as Python
#: objects. A larger data set is audited on a sample.
MAX_DATA_BYTES = 256 << 20
#: Longest line of a data file (one conversation).
MAX_LINE_BYTES = 64 << 20

# A JSON string (unrolled, so a long one is matched in linear time) or a bracket.
_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')
# A `\\uD800`-`\\uDFFF` escape in JSON text, after an even run of backslashes (an odd one escapes the backslash).
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([dD][89a-fA-F][0-9a-fA-F]{2})")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Kinds of file that can hold several named templates at once.
_SHARED_FILE_KINDS = ("tokenizer_config", "chat_template_json", "gguf")


@dataclass(frozen=True)
class LoadedTemplate:
    """One chat template and where it came from.

    `name` is the template's name as transformers knows it ("default" for the main template, "tool_use",
    "rag", … for named ones), `origin` the file it was read from, `kind` the kind of that file
    ("jinja", "tokenizer_config", "chat_template_json" or "gguf"). `display`, when set, is how a person knows
    that file better than by its path (a Hub file is `org/model@rev/tokenizer_config.json`, not a cache path).

    Example:
        >>> t = LoadedTemplate(name="tool_use", text="{{ x }}", origin=Path("tokenizer_config.json"),
        ...                    kind="tokenizer_config")
        >>> t.label
        'tokenizer_config.json#tool_use'
    """

    name: str
    text: str
    origin: Path | None
    kind: str
    display: str | None = None

    @property
    def label(self) -> str:
        """A short human name: the file, plus `#name` for a named template that shares its file with others."""
        where = self.display or (str(self.origin) if self.origin is not None else "<template>")
        if self.kind in _SHARED_FILE_KINDS and self.name != "default":
            # A name is the config's to choose: a control character in it is shown escaped, on the one line.
            name = self.name if self.name.isprintable() else self.name.encode("unicode_escape").decode("ascii")
            return f"{where}#{name}"
        return where


# --------------------------------------------------------------------------------------------------- reading


def _size(n: int) -> str:
    """A byte count for people: `209,715,245 bytes (200.0 MiB)`, `64 MiB`."""
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n >> 20} MiB"
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n:,} bytes"


def _os_error(exc: OSError, path: Path) -> TemplateSourceError:
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return TemplateSourceError("symbolic link to a file that does not exist", source=str(path))
        return TemplateSourceError("no such file", source=str(path))
    if isinstance(exc, IsADirectoryError):
        return TemplateSourceError("is a folder, expected a file", source=str(path))
    if exc.errno == errno.ELOOP:
        return TemplateSourceError(
            "symbolic link loop: following the link never reaches a file or folder", source=str(path)
        )
    return TemplateSourceError(f"cannot read: {exc.strerror or exc}", source=str(path))


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a person: "a named pipe (FIFO)", "a character device", …

    Example:
        >>> file_kind(stat.S_IFIFO), file_kind(stat.S_IFREG)
        ('a named pipe (FIFO)', 'a regular file')
    """
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(mode: int, path: Path) -> TemplateSourceError:
    if stat.S_ISDIR(mode):
        return TemplateSourceError("is a folder, expected a file", source=str(path))
    return TemplateSourceError(f"{file_kind(mode)}, not a regular file: only regular files are read", source=str(path))


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file (a symbolic link to one is followed).

    A named pipe, a device or a socket is refused before `open` could block on it (a FIFO's open waits for a
    writer, forever), and the file is opened non-blocking and checked again, so that one swapped in between is
    refused too. Raises `TemplateSourceError` naming the file.

    Example:
        with open_regular("chat_template.jinja") as handle:
            head = handle.read(64)
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(mode, path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _os_error(exc, path) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(mode, path)
    return os.fdopen(fd, "rb")


def read_file_bytes(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file `path` (see `open_regular`), refused with a `TemplateSourceError` when there
    are more than `limit`: by its size before anything is read, and never read past `limit + 1` bytes (a file that
    grows while it is read).

    Example:
        read_file_bytes("chat_template.jinja", MAX_TEMPLATE_BYTES, "template file")
        # b'{% for message in messages %}...'
    """
    path = Path(path)
    too_big = f"{{}}: a {what} over {_size(limit)} is not read"
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise TemplateSourceError(too_big.format(_size(size)), source=str(path))
            data = handle.read(limit + 1)
    except OSError as exc:
        raise _os_error(exc, path) from None
    if len(data) > limit:
        raise TemplateSourceError(too_big.format(f"more than {_size(limit)}"), source=str(path))
    return data


def read_text_lines(path: str | Path, limit: int = MAX_DATA_BYTES) -> Iterator[tuple[int, str]]:
    """Each line of a UTF-8 text file (a JSONL data set) with its number from 1, read within bounded memory: only a
    regular file (`open_regular`), of at most `limit` bytes (checked before reading), with lines of at most
    `MAX_LINE_BYTES`, no NUL byte and valid UTF-8; each refusal a `TemplateSourceError` naming the file and line.

    Example:
        [number for number, line in read_text_lines("train.jsonl")]
        # [1, 2, 3]
    """
    path = Path(path)
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise TemplateSourceError(
                f"{_size(size)}: a data file over {_size(limit)} is not read at once; audit a sample "
                f"(head -n 10000 {path} > sample.jsonl)",
                source=str(path),
            )
        read, number = 0, 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            read += len(raw)
            if len(raw) > MAX_LINE_BYTES or read > limit:
                what = f"a line over {_size(MAX_LINE_BYTES)}" if len(raw) > MAX_LINE_BYTES else "the file grew"
                raise TemplateSourceError(f"{what}: not read", source=str(path), line=number)
            if (nul := raw.find(b"\0")) >= 0:
                raise TemplateSourceError(
                    f"a binary file, not text: NUL byte at column {nul + 1}", source=str(path), line=number
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TemplateSourceError(
                    f"not valid UTF-8: byte 0x{raw[exc.start]:02x}", source=str(path), line=number, column=exc.start + 1
                ) from None
            yield number, line


def _line_column(data: bytes | str, offset: int) -> tuple[int, int]:
    newline = b"\n" if isinstance(data, bytes) else "\n"
    return data.count(newline, 0, offset) + 1, offset - (data.rfind(newline, 0, offset) + 1) + 1


def _read_text(path: Path, limit: int = MAX_TEMPLATE_BYTES, what: str = "template file") -> str:
    """The file's text, decoded as strict UTF-8 with its newlines kept exactly as they are."""
    data = read_file_bytes(path, limit, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line, column = _line_column(data, start)
        raise TemplateSourceError(
            f"not valid UTF-8: byte 0x{data[start]:02x} at byte offset {start}",
            source=str(path),
            line=line,
            column=column,
        ) from None
    if "\0" in text:
        start = data.index(b"\0")
        line, column = _line_column(data, start)
        raise TemplateSourceError(
            f"a binary file, not text: NUL byte at byte offset {start}", source=str(path), line=line, column=column
        )
    return text


def _checked(text: str, *, path: Path, name: str) -> str:
    if (lone := _LONE_SURROGATE.search(text)) is not None:  # only JSON's \\u escapes can write one
        line, column = _line_column(text, lone.start())
        what = "chat template" if name == "default" else f"chat template {name!r}"
        raise TemplateSourceError(
            f"{what} holds a lone surrogate U+{ord(lone.group()):04X} (half of a UTF-16 pair, not a character; "
            f"no UTF-8 file can hold it) at line {line}, column {column} of the template",
            source=str(path),
        )
    if len(text) > MAX_TEMPLATE_BYTES:
        what = "chat template" if name == "default" else f"chat template {name!r}"
        raise TemplateSourceError(
            f"{what} of {len(text):,} characters: a template over {_size(MAX_TEMPLATE_BYTES)} is not read",
            source=str(path),
        )
    if not text.strip():
        what = "empty chat template" if name == "default" else f"empty chat template {name!r}"
        raise TemplateSourceError(what, source=str(path))
    return text


def _too_deep(text: str) -> tuple[str, int, int]:
    """How deep a JSON text nests, for a person, and where: the first bracket past Python's recursion limit, else
    the first at the deepest level (Python's parser may stop short of the limit when called from deep in a stack).
    """
    depth, limit, deepest, at = 0, sys.getrecursionlimit(), 0, len(text)
    for match in _JSON_NESTING.finditer(text):
        char = match.group()[0]
        if char in "[{":
            depth += 1
            if depth > limit:
                return f"more than {limit:,}", *_line_column(text, match.start())
            if depth > deepest:
                deepest, at = depth, match.start()
        elif char in "]}":
            depth -= 1
    return f"{deepest:,}", *_line_column(text, at)


def _lone_surrogate(text: str) -> tuple[int, str] | None:
    """Where JSON text escapes a lone surrogate (`\\ud800` not followed by a low half, or a low half alone), and
    its escape; None when every surrogate escape is one half of a pair."""
    paired_until = -1
    for match in _SURROGATE_ESCAPE.finditer(text):
        escape_at = match.end() - 6
        if escape_at < paired_until:
            continue  # the low half of the pair just seen
        if int(match.group(1), 16) < 0xDC00:
            low = _SURROGATE_ESCAPE.match(text, match.end())
            if low is not None and low.start() == match.end() and int(low.group(1), 16) >= 0xDC00:
                paired_until = low.end()
                continue
        return escape_at, text[escape_at : match.end()]
    return None


def read_json_file(path: str | Path, limit: int = MAX_CONFIG_BYTES) -> object:
    """A JSON file's data, read within bounded memory (see `read_file_bytes`).

    Raises `TemplateSourceError` naming the file, with line and column for invalid JSON, for nesting deeper than
    Python's JSON parser can follow, and for a lone surrogate escape (`"\\ud800"`: half of a UTF-16 pair, which
    no UTF-8 text, and so no template written back or printed, can hold).

    Example:
        read_json_file("tokenizer_config.json")["eos_token"]
        # '<|im_end|>'
    """
    path = Path(path)
    text = _read_text(path, limit, f"{path.name} file" if path.suffix.lower() == ".json" else "JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateSourceError(
            f"invalid JSON: {exc.msg}", source=str(path), line=exc.lineno, column=exc.colno
        ) from None
    except RecursionError:
        depth, line, column = _too_deep(text)
        raise TemplateSourceError(
            f"JSON nested {depth} levels deep, deeper than Python's JSON parser goes (a config nests a few)",
            source=str(path),
            line=line,
            column=column,
        ) from None
    if (lone := _lone_surrogate(text)) is not None:
        line, column = _line_column(text, lone[0])
        raise TemplateSourceError(
            f"a lone surrogate {lone[1]} (half of a UTF-16 pair, not a character; UTF-8 cannot write it)",
            source=str(path),
            line=line,
            column=column,
        )
    return data
