"""Load chat templates from files and folders, and write patched templates back safely.

Every source goes through `load_templates`, which decides the source's kind (`source_kind`) and hands it to the
loader registered for that kind in `LOADERS`. New kinds (Hub ids, GGUF files) plug in with `register_loader`
without touching the callers. Every failure is a `TemplateSourceError` that names the file, and the line and
column where that means something.

Files are read within bounded memory: a template file over `MAX_TEMPLATE_BYTES` or a JSON config over
`MAX_CONFIG_BYTES` is refused before it is read (and a file that grows while it is read, or a device such as
`/dev/zero`, is never read past the limit); JSON nested deeper than Python's parser can follow, bytes that are not
UTF-8, NUL bytes (a binary file) and symbolic link loops are each an error naming the file and the place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from templatekit.errors import TemplateSourceError

__all__ = [
    "LOADERS",
    "MAX_CONFIG_BYTES",
    "MAX_TEMPLATE_BYTES",
    "LoadedTemplate",
    "NoChatTemplateError",
    "atomic_output",
    "find_template_files",
    "load_templates",
    "read_file_bytes",
    "read_json_file",
    "register_loader",
    "source_kind",
    "write_bytes_atomic",
    "write_text_atomic",
]

#: File names `find_template_files` picks up besides `*.jinja`.
CONFIG_NAMES = ("tokenizer_config.json", "chat_template.json")

#: Largest template file read (a `.jinja` file, a template inside a config or a GGUF file): real ones are
#: kilobytes; anything this large is not a chat template.
MAX_TEMPLATE_BYTES = 16 << 20
#: Largest JSON config read (`tokenizer_config.json`, `chat_template.json`): real ones are at most a few megabytes
#: (a long list of added tokens).
MAX_CONFIG_BYTES = 64 << 20

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A JSON string (unrolled, so a long one is matched in linear time) or a bracket.
_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')
_TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2", ".txt", ".tmpl")
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


class NoChatTemplateError(TemplateSourceError):
    """A config file or folder was read fine but holds no chat template."""


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


def _read_json(path: Path) -> object:
    return read_json_file(path)


def _templates_from_field(value: object, *, path: Path, kind: str) -> list[LoadedTemplate]:
    """Templates from a `chat_template` field: a string, or a list of `{"name": ..., "template": ...}`."""
    if isinstance(value, str):
        return [LoadedTemplate("default", _checked(value, path=path, name="default"), path, kind)]
    if isinstance(value, list):
        if not value:
            raise NoChatTemplateError("'chat_template' is an empty list", source=str(path))
        found: list[LoadedTemplate] = []
        seen: set[str] = set()
        for index, entry in enumerate(value):
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
                raise TemplateSourceError(
                    f"'chat_template'[{index}] must be an object with a string 'name' and 'template'", source=str(path)
                )
            name, template = entry["name"], entry.get("template")
            if not isinstance(template, str):
                raise TemplateSourceError(f"chat template {name!r} is not a string", source=str(path))
            if name in seen:
                raise TemplateSourceError(f"chat template {name!r} appears twice", source=str(path))
            seen.add(name)
            found.append(LoadedTemplate(name, _checked(template, path=path, name=name), path, kind))
        return found
    if value is None:
        raise NoChatTemplateError("no chat template ('chat_template' is null)", source=str(path))
    raise TemplateSourceError(
        f"'chat_template' must be a string or a list of {{name, template}} objects, not {type(value).__name__}",
        source=str(path),
    )


def _load_json_config(path: Path, kind: str) -> list[LoadedTemplate]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise TemplateSourceError(f"expected a JSON object, found {type(data).__name__}", source=str(path))
    if "chat_template" not in data:
        raise NoChatTemplateError("no chat template (no 'chat_template' field)", source=str(path))
    return _templates_from_field(data["chat_template"], path=path, kind=kind)


def _load_jinja_file(source: str | Path) -> list[LoadedTemplate]:
    path = Path(source)
    return [LoadedTemplate("default", _checked(_read_text(path), path=path, name="default"), path, "jinja")]


def _load_tokenizer_config(source: str | Path) -> list[LoadedTemplate]:
    return _load_json_config(Path(source), "tokenizer_config")


def _load_chat_template_json(source: str | Path) -> list[LoadedTemplate]:
    return _load_json_config(Path(source), "chat_template_json")


def _present(path: Path, *, folder: bool = False) -> bool:
    """Whether `path` is there: a file (a folder with `folder=True`). A symbolic link that cannot be followed (a
    loop, or a link to nothing) is a `TemplateSourceError`, never taken for an absent file: the folder would
    silently give another template than the one it means to."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise _os_error(FileNotFoundError(), path) from None
        return False
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:  # a path through a file
            return False
        raise _os_error(exc, path) from None
    return stat.S_ISDIR(mode) == folder


def _load_model_folder(source: str | Path) -> list[LoadedTemplate]:
    """A saved model or tokenizer folder, read the way transformers reads it.

    `chat_template.jinja` (plus every `additional_chat_templates/*.jinja`) wins over the `chat_template` field
    of `tokenizer_config.json`, which wins over a processor's `chat_template.json`.
    """
    folder = Path(source)
    main = folder / "chat_template.jinja"
    extra_dir = folder / "additional_chat_templates"
    extras = sorted(extra_dir.glob("*.jinja")) if _present(extra_dir, folder=True) else []
    if _present(main) or extras:
        found = _load_jinja_file(main) if _present(main) else []
        for path in extras:
            text = _checked(_read_text(path), path=path, name=path.stem)
            found.append(LoadedTemplate(path.stem, text, path, "jinja"))
        return found
    for name, loader in (
        ("tokenizer_config.json", _load_tokenizer_config),
        ("chat_template.json", _load_chat_template_json),
    ):
        path = folder / name
        if _present(path):
            try:
                return loader(path)
            except NoChatTemplateError:
                continue
    raise NoChatTemplateError(
        "no chat template found (looked for chat_template.jinja, additional_chat_templates/*.jinja, "
        "'chat_template' in tokenizer_config.json and chat_template.json)",
        source=str(folder),
    )


def _load_hub_id(source: str | Path, revision: str | None = None) -> list[LoadedTemplate]:
    # Imported here: huggingface_hub is only needed (and only paid for) when a Hub id is given.
    from templatekit.hub import load_hub_templates

    return load_hub_templates(str(source), revision=revision)


def _load_gguf(source: str | Path) -> list[LoadedTemplate]:
    from templatekit.gguf_file import read_gguf_templates

    return read_gguf_templates(source)


#: Loader for each source kind; `load_templates` dispatches on `source_kind(source)`.
LOADERS: dict[str, Callable[[str | Path], list[LoadedTemplate]]] = {
    "jinja": _load_jinja_file,
    "tokenizer_config": _load_tokenizer_config,
    "chat_template_json": _load_chat_template_json,
    "folder": _load_model_folder,
    "hub": _load_hub_id,
    "gguf": _load_gguf,
}


def register_loader(kind: str, loader: Callable[[str | Path], list[LoadedTemplate]]) -> None:
    """Install (or replace) the loader for one source kind.

    Example:
        >>> register_loader("gguf", lambda source: [LoadedTemplate("default", "{{ x }}", Path(source), "gguf")])
        >>> register_loader("gguf", _load_gguf)  # put the original back
    """
    LOADERS[kind] = loader


def source_kind(source: str | Path) -> str:
    """Which loader a source goes to: "folder", "gguf", "chat_template_json", "tokenizer_config", "jinja" or "hub".

    An existing file whose kind is not recognised by name is read as raw Jinja text; a path that does not
    exist and looks like `owner/name` is taken for a Hugging Face Hub id.

    Example:
        >>> source_kind("chat_template.json"), source_kind("any/tokenizer_config.json"), source_kind("x.jinja")
        ('chat_template_json', 'tokenizer_config', 'jinja')
    """
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".gguf":
        return "gguf"
    if path.name == "chat_template.json":
        return "chat_template_json"
    if path.suffix.lower() == ".json":
        return "tokenizer_config"
    if (
        not os.path.lexists(path)  # a symbolic link that goes nowhere is a local file all the same
        and isinstance(source, str)
        and _HUB_ID.match(source)
        and path.suffix.lower() not in _TEMPLATE_SUFFIXES
    ):
        return "hub"
    return "jinja"


def load_templates(source: str | Path, *, revision: str | None = None) -> list[LoadedTemplate]:
    """Every chat template a source holds: a `.jinja` file, a `tokenizer_config.json`, a processor's
    `chat_template.json`, a saved model folder, a GGUF file or a Hugging Face Hub model id (at `revision`:
    a branch, tag or commit; only Hub ids have revisions).

    Raises `TemplateSourceError` (naming the file, and line/column where known) for a missing or unreadable
    file, bytes that are not UTF-8, invalid JSON, a config without a chat template, or an empty template;
    `NoChatTemplateError` (a subclass) when the source is readable but holds no template.

    Example:
        >>> [(t.name, t.kind) for t in load_templates("tokenizer_config.json")]  # doctest: +SKIP
        [('default', 'tokenizer_config'), ('tool_use', 'tokenizer_config')]
    """
    kind = source_kind(source)
    if revision is None:
        return LOADERS[kind](source)
    if kind != "hub":
        raise TemplateSourceError(
            f"a revision applies only to a Hugging Face Hub id (this is a {kind})", source=str(source)
        )
    return LOADERS[kind](source, revision=revision)


def find_template_files(paths: Iterable[str | Path]) -> list[Path]:
    """The template files under `paths`: each file given, and, in each folder (recursively, skipping hidden
    folders), every `*.jinja`, `tokenizer_config.json` and `chat_template.json`, sorted.

    Raises `TemplateSourceError` for a path that does not exist.

    Example:
        >>> find_template_files(["corpus/"])  # doctest: +SKIP
        [PosixPath('corpus/trl/llama3_1.jinja'), PosixPath('corpus/trl/qwen2_5.jinja')]
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_file():
            found.append(entry)
        elif entry.is_dir():
            matches = []
            for root, dirs, files in os.walk(entry):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                matches += [Path(root, f) for f in files if f.endswith(".jinja") or f in CONFIG_NAMES]
            found.extend(sorted(matches))
        elif os.path.lexists(entry):  # a link that cannot be followed (a loop), a pipe, a device
            try:
                entry.stat()
            except OSError as exc:
                raise _os_error(exc, entry) from None
            found.append(entry)
        else:
            raise TemplateSourceError("no such file or folder", source=str(entry))
    return found


# --------------------------------------------------------------------------------------------------- writing


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
