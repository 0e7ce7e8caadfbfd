"""Read the chat templates of a GGUF file, and write a new GGUF file carrying patched ones.

A GGUF file keeps its chat template in the metadata key `tokenizer.chat_template`, and named templates
(`tool_use`, `rag`, …) in `tokenizer.chat_template.<name>`.

Reading walks the file's header, metadata and tensor descriptions with a small reader of its own (`_scan`), which
keeps only where each metadata entry lies and never loads an array: a multi-gigabyte model costs a few kilobytes,
and a file that lies is refused before anything is allocated. Every string length and array count is checked
against the bytes left in the file, keys against the 65,535 bytes GGUF allows, nesting and the number of entries
against fixed limits; each failure is a `TemplateSourceError` naming the file and the byte where it is.

Writing never touches the input. The new file is assembled from the input's own bytes: the header, every
metadata entry except the replaced templates, the tensor descriptions and the tensor data are copied verbatim, so
nothing else can change (no re-encoding of types, arrays or quantised tensors). Only the template entries are
encoded afresh and the data section is re-padded to the file's alignment (tensor offsets are relative to that
section, so they stay valid). The result is read back and compared before it replaces anything at the target:
templates as written, all other entries byte-identical, tensor data identical.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import GenerationTagsWarning, NoChatTemplateError, TemplateSourceError
from .atomic import atomic_output
from .reading import MAX_TEMPLATE_BYTES, LoadedTemplate, _os_error, open_regular

__all__ = [
    "DEFAULT_KEY",
    "GenerationTagsWarning",
    "read_gguf_templates",
    "template_key",
    "write_gguf_templates",
]

#: Metadata key of the main chat template; named ones are `DEFAULT_KEY + "." + name`.
DEFAULT_KEY = "tokenizer.chat_template"
_NAMED_PREFIX = DEFAULT_KEY + "."
_COPY_CHUNK = 16 << 20

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # version 1 used 32-bit lengths; the gguf package reads 2 and 3 too
# GGUF value types (gguf.GGUFValueType): the size of each scalar, and the two others.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_TYPE_NAMES = {
    0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
    8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64",
}  # fmt: skip
_MAX_KEY_BYTES = 65535  # the GGUF specification's limit on a key
_MAX_ENTRIES = 1 << 16  # metadata entries kept (real files have a few dozen)
_MAX_DEPTH = 8  # arrays of arrays
_MAX_WALKED = 1 << 25  # string and array elements stepped over one by one (a 262k-token vocabulary is 0.8M)
_WINDOW = 1 << 20
# A generation tag in any form (the same as `core.tags.TAG_OPENING`; sources may not import the core).
_GENERATION_TAG = re.compile(r"\{%[-+]?\s*(?:end)?generation\b")


def _warn_if_tagged(target: Path, templates: Mapping[str, str]) -> None:
    tagged = [name for name, text in templates.items() if _GENERATION_TAG.search(text)]
    if tagged:
        names = ", ".join(repr(name) for name in tagged)
        warnings.warn(
            f"{target}: chat template {names} carries {{% generation %}} tags; inference engines without "
            "generation-tag support (llama.cpp / llama-cpp-python, text-generation-webui, tabbyAPI) fail to load "
            f"this file. Keep it for training; to deploy, write an untagged copy: templatekit strip {target} "
            "-o NEW.gguf",
            GenerationTagsWarning,
            stacklevel=3,
        )


def template_key(name: str) -> str:
    """The metadata key holding the template called `name`.

    Example:
        >>> template_key("default"), template_key("tool_use")
        ('tokenizer.chat_template', 'tokenizer.chat_template.tool_use')
    """
    return DEFAULT_KEY if name == "default" else _NAMED_PREFIX + name


# --------------------------------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class _Entry:
    """One metadata entry: its byte range (key included), its value type (then the item types of an array), and
    for a string value the byte range of the string."""

    start: int
    end: int
    types: tuple[int, ...]
    string: tuple[int, int] | None = None

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end

    def kind(self) -> str:
        return "/".join(_TYPE_NAMES.get(t, str(t)) for t in self.types)


@dataclass(frozen=True)
class _Layout:
    """Byte ranges of a GGUF file, as `_scan` found them."""

    header: tuple[int, int]  # magic, version, tensor count, metadata count
    fields: dict[str, _Entry]  # each metadata entry, in file order
    tensor_infos: tuple[int, int]
    data_offset: int
    alignment: int
    little_endian: bool
    size: int


class _Reader:
    """Sequential reads of little pieces of a file through a window, each checked against the file's end."""

    def __init__(self, handle, size: int, path: Path):
        self.handle, self.size, self.path = handle, size, path
        self.pos = 0
        self.order = "<"
        self.walked = 0
        self._window, self._window_start = b"", 0

    def fail(self, message: str, at: int | None = None) -> TemplateSourceError:
        where = self.pos if at is None else at
        return TemplateSourceError(f"not a readable GGUF file: {message} (at byte {where:,})", source=str(self.path))

    def need(self, count: int, what: str) -> None:
        left = self.size - self.pos
        if count > left:
            raise self.fail(f"{what} needs {count:,} bytes, but the file ends {left:,} bytes later")

    def read(self, count: int, what: str) -> bytes:
        self.need(count, what)
        offset = self.pos - self._window_start
        if offset < 0 or offset + count > len(self._window):
            self.handle.seek(self.pos)
            self._window, self._window_start, offset = self.handle.read(max(count, _WINDOW)), self.pos, 0
        self.pos += count
        return self._window[offset : offset + count]

    def u32(self, what: str) -> int:
        return struct.unpack(self.order + "I", self.read(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack(self.order + "Q", self.read(8, what))[0]

    def skip(self, count: int, what: str) -> None:
        self.need(count, what)
        self.pos += count

    def step(self, count: int) -> None:
        """Count `count` elements walked one by one; too many is refused (time and memory stay bounded)."""
        self.walked += count
        if self.walked > _MAX_WALKED:
            raise self.fail(f"more than {_MAX_WALKED:,} strings and arrays in the metadata")

    def string(self, what: str) -> tuple[int, int]:
        """Step over a string; its bytes' range."""
        length = self.u64(f"the length of {what}")
        start = self.pos
        self.skip(length, f"{what} (a string of {length:,} bytes)")
        return start, self.pos

    def strings(self, count: int, what: str) -> None:
        """Step over `count` strings in a row (a vocabulary: hundreds of thousands; kept to one tight loop)."""
        unpack = struct.Struct(self.order + "Q").unpack_from
        window, base, pos, size = self._window, self._window_start, self.pos, self.size
        for index in range(count):
            offset = pos - base
            if offset < 0 or offset + 8 > len(window):
                self.handle.seek(pos)
                window, base, offset = self.handle.read(_WINDOW), pos, 0
                if len(window) < 8:
                    self.pos = pos
                    self.need(8, f"the length of {what}[{index}]")
            (length,) = unpack(window, offset)
            pos += 8
            if length > size - pos:
                self.pos = pos
                self.need(length, f"{what}[{index}] (a string of {length:,} bytes)")
            pos += length
        self._window, self._window_start, self.pos = window, base, pos

    def value(self, kind: int, what: str, depth: int = 0) -> tuple[int, ...]:
        """Step over a value of type `kind`; its types (the value's, then an array's item types)."""
        if kind in _SCALAR_SIZES:
            self.skip(_SCALAR_SIZES[kind], f"{what} ({_TYPE_NAMES[kind]})")
            return (kind,)
        if kind == _STRING:
            self.string(what)
            return (kind,)
        if kind != _ARRAY:
            raise self.fail(f"{what} has unknown value type {kind}", self.pos - 4)
        if depth >= _MAX_DEPTH:
            raise self.fail(f"{what}: arrays nested more than {_MAX_DEPTH} deep")
        item = self.u32(f"the item type of {what}")
        count = self.u64(f"the length of {what}")
        if item in _SCALAR_SIZES:
            self.skip(count * _SCALAR_SIZES[item], f"{what} ({count:,} items of {_TYPE_NAMES[item]})")
            return (kind, item)
        if item not in (_STRING, _ARRAY):
            raise self.fail(f"{what} has unknown item type {item}", self.pos - 12)
        # Each string takes 8 bytes at least, each array 12: a count the file cannot hold is refused up front.
        self.need(count * (8 if item == _STRING else 12), f"{what} ({count:,} items of {_TYPE_NAMES[item]})")
        self.step(count)
        if item == _STRING:
            self.strings(count, what)
            return (kind, item)
        types: tuple[int, ...] = (item,)
        for index in range(count):
            types = self.value(item, f"{what}[{index}]", depth + 1)
        return (kind, *types)


def _scan(path: Path) -> _Layout:
    """Where everything in the GGUF file `path` lies, every length and count checked before it is used."""
    try:
        with open_regular(path) as handle:
            size = handle.seek(0, 2)
            return _scan_open(_Reader(handle, size, path))
    except OSError as exc:
        raise _os_error(exc, path) from None


def _scan_open(reader: _Reader) -> _Layout:
    if reader.size == 0:
        raise reader.fail("the file is empty")
    magic = reader.read(min(4, reader.size), "the magic")
    if magic != _MAGIC:
        raise reader.fail(f"no GGUF magic: the file starts with {magic!r}, not {_MAGIC!r}", 0)
    (version,) = struct.unpack("<I", reader.read(4, "the version"))
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        reader.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in _VERSIONS:
        raise reader.fail(f"GGUF version {version} is not supported (only {' and '.join(map(str, _VERSIONS))})", 4)
    tensor_count = reader.u64("the tensor count")
    entry_count = reader.u64("the metadata count")
    header_end = reader.pos
    if entry_count > _MAX_ENTRIES:
        raise reader.fail(f"{entry_count:,} metadata entries, more than the {_MAX_ENTRIES:,} read", header_end - 8)
    reader.need(entry_count * 13, f"{entry_count:,} metadata entries")  # key length, type, a byte at least
    fields: dict[str, _Entry] = {}
    for number in range(entry_count):
        start = reader.pos
        key_length = reader.u64(f"the key length of metadata entry {number}")
        if key_length > _MAX_KEY_BYTES:
            raise reader.fail(f"metadata entry {number} has a key of {key_length:,} bytes (GGUF allows 65,535)", start)
        raw = reader.read(key_length, f"the key of metadata entry {number}")
        try:
            key = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise reader.fail(f"the key of metadata entry {number} is not UTF-8", start + 8) from None
        if key in fields:
            raise reader.fail(f"metadata key {key!r} appears twice", start)
        kind = reader.u32(f"the value type of {key!r}")
        string = None
        if kind == _STRING:
            string = reader.string(f"metadata {key!r}")
            types: tuple[int, ...] = (kind,)
        else:
            types = reader.value(kind, f"metadata {key!r}")
        fields[key] = _Entry(start, reader.pos, types, string)
    infos_start = reader.pos
    reader.need(tensor_count * 24, f"{tensor_count:,} tensor descriptions")  # name length, dims, type, offset
    for number in range(tensor_count):
        reader.string(f"the name of tensor {number}")
        dims = reader.u32(f"the dimension count of tensor {number}")
        reader.skip(dims * 8 + 12, f"the shape, type and offset of tensor {number} ({dims:,} dimensions)")
    infos_end = reader.pos
    alignment = 32
    if (entry := fields.get("general.alignment")) is not None:
        if entry.types != (_UINT32,):
            raise reader.fail(f"'general.alignment' must be a uint32, found {entry.kind()}", entry.start)
        reader.pos = entry.end - 4
        alignment = reader.u32("'general.alignment'")
        if alignment == 0 or alignment & (alignment - 1):
            raise reader.fail(f"alignment {alignment} is not a power of two", entry.start)
    # Bounded by the file: the padding a copy writes is less than the alignment, and the data must start in the file.
    data_offset = infos_end + (-infos_end % alignment)
    if (entry is not None and alignment > reader.size) or (tensor_count and data_offset > reader.size):
        where = entry.start if entry is not None else infos_end
        raise reader.fail(
            f"alignment {alignment:,} puts the tensor data at byte {data_offset:,}, past the end of this "
            f"{reader.size:,}-byte file",
            where,
        )
    return _Layout(
        header=(0, header_end),
        fields=fields,
        tensor_infos=(infos_start, infos_end),
        data_offset=data_offset,
        alignment=alignment,
        little_endian=reader.order == "<",
        size=reader.size,
    )


def _string_value(layout: _Layout, key: str, path: Path) -> str:
    entry = layout.fields[key]
    if entry.string is None:
        raise TemplateSourceError(f"metadata {key!r} must be a string, found {entry.kind()}", source=str(path))
    start, end = entry.string
    if end - start > MAX_TEMPLATE_BYTES:
        raise TemplateSourceError(
            f"metadata {key!r} is a template of {end - start:,} bytes; one over {MAX_TEMPLATE_BYTES >> 20} MiB "
            "is not read",
            source=str(path),
        )
    try:
        with open_regular(path) as handle:
            handle.seek(start)
            data = handle.read(end - start)
    except OSError as exc:
        raise _os_error(exc, path) from None
    if len(data) != end - start:
        raise TemplateSourceError(f"metadata {key!r}: the file changed while it was read", source=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateSourceError(
            f"metadata {key!r} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            source=str(path),
        ) from None
    if not text.strip():
        raise TemplateSourceError(f"metadata {key!r} is an empty chat template", source=str(path))
    return text


def read_gguf_templates(source: str | Path) -> list[LoadedTemplate]:
    """The chat templates of a GGUF file: `tokenizer.chat_template` ("default") first, then each
    `tokenizer.chat_template.<name>` in file order.

    Raises `TemplateSourceError` for a file that is not GGUF (or lies about its lengths: nothing is allocated
    from them) or a template that is not a UTF-8 string; `NoChatTemplateError` when the file has no template.

    Example:
        [t.name for t in read_gguf_templates("model.Q4_K_M.gguf")]
        # ['default', 'tool_use']
    """
    path = Path(source)
    layout = _scan(path)
    found: list[LoadedTemplate] = []
    for key in layout.fields:
        if key == DEFAULT_KEY:
            found.insert(0, LoadedTemplate("default", _string_value(layout, key, path), path, "gguf"))
        elif key.startswith(_NAMED_PREFIX) and len(key) > len(_NAMED_PREFIX):
            found.append(LoadedTemplate(key[len(_NAMED_PREFIX) :], _string_value(layout, key, path), path, "gguf"))
    if not found:
        raise NoChatTemplateError(f"no chat template (no {DEFAULT_KEY!r} metadata)", source=str(path))
    return found


# --------------------------------------------------------------------------------------------------- writing


def _encode_string_field(key: str, value: str, little_endian: bool) -> bytes:
    order = "<" if little_endian else ">"
    name, text = key.encode("utf-8"), value.encode("utf-8")
    return (
        struct.pack(f"{order}Q", len(name))
        + name
        + struct.pack(f"{order}I", _STRING)
        + struct.pack(f"{order}Q", len(text))
        + text
    )


def write_gguf_templates(
    source: str | Path, target: str | Path, templates: Mapping[str, str], *, make_folders: bool = False
) -> None:
    """Write a copy of the GGUF file `source` to `target` with the chat templates in `templates` (name → text)
    replaced, everything else byte for byte the same; `source` is never modified.

    The copy is written to a temporary file next to `target`, read back and checked (each template as given,
    every other metadata entry and the tensor descriptions byte-identical, the tensor data identical), and only
    then moved onto `target`. Raises `TemplateSourceError` when `target` is `source`, when a named template is
    not in the file, or when the read-back check fails (nothing is written then). Warns
    (`GenerationTagsWarning`) once the file is written when a template carries generation tags: engines without
    generation-tag support fail to load such a file, and `templatekit strip` writes one without them. `target` goes
    through `atomic.atomic_output`: a regular file or a new path, its folder created only with `make_folders`.

    Example:
        write_gguf_templates("model.gguf", "model.patched.gguf", {"default": patched_text})
    """
    source, target = Path(source), Path(target)
    if target.exists() and target.resolve() == source.resolve():
        raise TemplateSourceError("refusing to overwrite the input GGUF file; write a new file", source=str(target))
    layout = _scan(source)
    missing = [name for name in templates if template_key(name) not in layout.fields]
    if missing:
        raise TemplateSourceError(f"no chat template named {missing[0]!r} in this file", source=str(source))
    replaced = {template_key(name): text for name, text in templates.items()}
    for key in replaced:
        _string_value(layout, key, source)  # a template stored as anything but a string is not replaced

    with open_regular(source) as original:

        def span(start: int, end: int) -> bytes:
            original.seek(start)
            return original.read(end - start)

        head = bytearray(span(*layout.header))
        for key, entry in layout.fields.items():
            head += (
                _encode_string_field(key, replaced[key], layout.little_endian) if key in replaced else span(*entry.span)
            )
        head += span(*layout.tensor_infos)
        head += b"\0" * (-len(head) % layout.alignment)
        with atomic_output(target, make_folders=make_folders) as (handle, temporary):
            handle.write(head)
            original.seek(layout.data_offset)
            _copy_rest(original, handle)
            handle.flush()
            _check_written(temporary, source, layout, replaced)
    _warn_if_tagged(target, templates)


def _copy_rest(src, dst) -> None:
    while chunk := src.read(_COPY_CHUNK):
        dst.write(chunk)


def _same_tail(a: Path, a_offset: int, b: Path, b_offset: int) -> bool:
    """Whether two files hold the same bytes from the given offsets to their ends (compared chunk by chunk:
    plain comparison is several times faster than hashing, and the data is in the page cache anyway)."""
    with open(a, "rb") as left, open(b, "rb") as right:
        left.seek(a_offset)
        right.seek(b_offset)
        while True:
            chunk = left.read(_COPY_CHUNK)
            if chunk != right.read(_COPY_CHUNK):
                return False
            if not chunk:
                return True


def _check_written(written: Path, source: Path, before: _Layout, replaced: Mapping[str, str]) -> None:
    """Read the new file back and compare it with the input; raise if anything but the templates differs."""
    after = _scan(written)

    def fail(what: str) -> None:
        raise TemplateSourceError(f"the written GGUF file does not read back as expected: {what}", source=str(source))

    if list(after.fields) != list(before.fields):
        fail("metadata keys differ")
    with open(source, "rb") as old, open(written, "rb") as new:

        def same(a: tuple[int, int], b: tuple[int, int]) -> bool:
            old.seek(a[0])
            new.seek(b[0])
            return old.read(a[1] - a[0]) == new.read(b[1] - b[0])

        if not same(before.header, after.header):
            fail("header differs")
        for key in before.fields:
            if key in replaced:
                if _string_value(after, key, written) != replaced[key]:
                    fail(f"{key!r} does not hold the new template")
            elif not same(before.fields[key].span, after.fields[key].span):
                fail(f"metadata {key!r} changed")
        if not same(before.tensor_infos, after.tensor_infos):
            fail("tensor descriptions changed")
    if not _same_tail(source, before.data_offset, written, after.data_offset):
        fail("tensor data changed")
