"""Read template files within bounded memory, and what a loaded template is (`LoadedTemplate`).

A template file over `MAX_TEMPLATE_BYTES` or a JSON config over `MAX_CONFIG_BYTES` is refused before it is read
(and a file that grows while it is read, or a device such as `/dev/zero`, is never read past the limit); JSON
nested deeper than Python's parser can follow, bytes that are not UTF-8, NUL bytes (a binary file) and symbolic
link loops are each an error naming the file and the place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import TemplateSourceError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_TEMPLATE_BYTES",
    "LoadedTemplate",
    "read_file_bytes",
    "read_json_file",
]

#: Largest template file read (a `.jinja` file, a template inside a config or a GGUF file): real ones are
#: kilobytes; anything this large is not a chat template.
MAX_TEMPLATE_BYTES = 16 << 20
#: Largest JSON config read (`tokenizer_config.json`, `chat_template.json`): real ones are at most a few megabytes
#: (a long list of added tokens).
MAX_CONFIG_BYTES = 64 << 20

# A JSON string (unrolled, so a long one is matched in linear time) or a bracket.
_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')
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
            return f"{where}#{self.name}"
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


def read_file_bytes(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of `path`, refused with a `TemplateSourceError` when there are more than `limit`: a regular file
    by its size before anything is read, anything else (a pipe, a device) after `limit + 1` bytes at most.

    Example:
        >>> read_file_bytes("chat_template.jinja", MAX_TEMPLATE_BYTES, "template file")  # doctest: +SKIP
        b'{% for message in messages %}...'
    """
    path = Path(path)
    too_big = f"{{}}: a {what} over {_size(limit)} is not read"
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise TemplateSourceError(too_big.format(_size(size)), source=str(path))
            data = handle.read(limit + 1)
    except OSError as exc:
        raise _os_error(exc, path) from None
    if len(data) > limit:
        raise TemplateSourceError(too_big.format(f"more than {_size(limit)}"), source=str(path))
    return data


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


def read_json_file(path: str | Path, limit: int = MAX_CONFIG_BYTES) -> object:
    """A JSON file's data, read within bounded memory (see `read_file_bytes`).

    Raises `TemplateSourceError` naming the file, with line and column for invalid JSON and for nesting deeper
    than Python's JSON parser can follow.

    Example:
        >>> read_json_file("tokenizer_config.json")["eos_token"]  # doctest: +SKIP
        '<|im_end|>'
    """
    path = Path(path)
    text = _read_text(path, limit, f"{path.name} file" if path.suffix.lower() == ".json" else "JSON file")
    try:
        return json.loads(text)
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
