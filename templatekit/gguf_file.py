"""Read the chat templates of a GGUF file, and write a new GGUF file carrying patched ones.

A GGUF file keeps its chat template in the metadata key `tokenizer.chat_template`, and named templates
(`tool_use`, `rag`, …) in `tokenizer.chat_template.<name>`. Files are read with the `gguf` package's `GGUFReader`
(memory-mapped: a multi-gigabyte model is not loaded into memory).

Writing never touches the input. The new file is assembled from the input's own bytes: the header, every
metadata entry except the replaced templates, the tensor descriptions and the tensor data are copied verbatim, so
nothing else can change (no re-encoding of types, arrays or quantised tensors). Only the template entries are
encoded afresh and the data section is re-padded to the file's alignment (tensor offsets are relative to that
section, so they stay valid). The result is read back and compared before it replaces anything at the target:
templates as written, all other entries byte-identical, tensor data identical.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from templatekit.errors import TemplateSourceError
from templatekit.sources import LoadedTemplate, NoChatTemplateError, atomic_output

__all__ = ["DEFAULT_KEY", "read_gguf_templates", "template_key", "write_gguf_templates"]

#: Metadata key of the main chat template; named ones are `DEFAULT_KEY + "." + name`.
DEFAULT_KEY = "tokenizer.chat_template"
_NAMED_PREFIX = DEFAULT_KEY + "."
_COPY_CHUNK = 16 << 20


def template_key(name: str) -> str:
    """The metadata key holding the template called `name`.

    Example:
        >>> template_key("default"), template_key("tool_use")
        ('tokenizer.chat_template', 'tokenizer.chat_template.tool_use')
    """
    return DEFAULT_KEY if name == "default" else _NAMED_PREFIX + name


def _open(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(path, "r")
    except FileNotFoundError:
        raise TemplateSourceError("no such file", source=str(path)) from None
    except IsADirectoryError:
        raise TemplateSourceError("is a folder, expected a GGUF file", source=str(path)) from None
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
        # The reader's own words ("GGUF magic invalid", a duplicated key, a truncated file) say what is wrong.
        raise TemplateSourceError(f"not a readable GGUF file: {exc}", source=str(path)) from None
    except OSError as exc:
        raise TemplateSourceError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None


def _string_value(field, path: Path) -> str:
    from gguf import GGUFValueType

    if field.types != [GGUFValueType.STRING]:
        kind = "/".join(t.name.lower() for t in field.types)
        raise TemplateSourceError(f"metadata {field.name!r} must be a string, found {kind}", source=str(path))
    data = bytes(field.parts[-1])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateSourceError(
            f"metadata {field.name!r} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            source=str(path),
        ) from None
    if not text.strip():
        raise TemplateSourceError(f"metadata {field.name!r} is an empty chat template", source=str(path))
    return text


def read_gguf_templates(source: str | Path) -> list[LoadedTemplate]:
    """The chat templates of a GGUF file: `tokenizer.chat_template` ("default") first, then each
    `tokenizer.chat_template.<name>` in file order.

    Raises `TemplateSourceError` for a file that is not GGUF or a template that is not a UTF-8 string;
    `NoChatTemplateError` when the file has no template.

    Example:
        >>> [t.name for t in read_gguf_templates("model.Q4_K_M.gguf")]  # doctest: +SKIP
        ['default', 'tool_use']
    """
    path = Path(source)
    reader = _open(path)
    found: list[LoadedTemplate] = []
    for key, field in reader.fields.items():
        if key == DEFAULT_KEY:
            found.insert(0, LoadedTemplate("default", _string_value(field, path), path, "gguf"))
        elif key.startswith(_NAMED_PREFIX) and len(key) > len(_NAMED_PREFIX):
            found.append(LoadedTemplate(key[len(_NAMED_PREFIX) :], _string_value(field, path), path, "gguf"))
    if not found:
        raise NoChatTemplateError(f"no chat template (no {DEFAULT_KEY!r} metadata)", source=str(path))
    return found


# --------------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Layout:
    """Byte ranges of a GGUF file, as the reader found them."""

    header: tuple[int, int]  # magic, version, tensor count, metadata count
    fields: dict[str, tuple[int, int]]  # each metadata entry, key included
    tensor_infos: tuple[int, int]
    data_offset: int
    alignment: int
    little_endian: bool


def _layout(reader, path: Path) -> _Layout:
    from gguf import GGUFEndian

    def extent(field) -> tuple[int, int]:
        return field.offset, field.offset + sum(int(part.nbytes) for part in field.parts)

    header_end = extent(reader.fields["GGUF.kv_count"])[1]
    fields: dict[str, tuple[int, int]] = {}
    cursor = header_end
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        start, end = extent(field)
        if start != cursor:  # entries are back to back in a GGUF file; anything else is not one we can splice
            raise TemplateSourceError(f"unexpected layout around metadata {key!r} at byte {start}", source=str(path))
        fields[key] = (start, end)
        cursor = end
    infos_start = cursor
    for tensor in reader.tensors:
        start, end = extent(tensor.field)
        if start != cursor:
            raise TemplateSourceError(f"unexpected layout around tensor {tensor.name!r}", source=str(path))
        cursor = end
    return _Layout(
        header=(0, header_end),
        fields=fields,
        tensor_infos=(infos_start, cursor),
        data_offset=int(reader.data_offset),
        alignment=int(reader.alignment),
        little_endian=reader.endianess == GGUFEndian.LITTLE,
    )


def _encode_string_field(key: str, value: str, little_endian: bool) -> bytes:
    from gguf import GGUFValueType

    order = "<" if little_endian else ">"
    name, text = key.encode("utf-8"), value.encode("utf-8")
    return (
        struct.pack(f"{order}Q", len(name))
        + name
        + struct.pack(f"{order}I", int(GGUFValueType.STRING))
        + struct.pack(f"{order}Q", len(text))
        + text
    )


def write_gguf_templates(source: str | Path, target: str | Path, templates: Mapping[str, str]) -> None:
    """Write a copy of the GGUF file `source` to `target` with the chat templates in `templates` (name → text)
    replaced, everything else byte for byte the same; `source` is never modified.

    The copy is written to a temporary file next to `target`, read back and checked (each template as given,
    every other metadata entry and the tensor descriptions byte-identical, the tensor data identical), and only
    then moved onto `target`. Raises `TemplateSourceError` when `target` is `source`, when a named template is
    not in the file, or when the read-back check fails (nothing is written then).

    Example:
        >>> write_gguf_templates("model.gguf", "model.patched.gguf", {"default": patched_text})  # doctest: +SKIP
    """
    source, target = Path(source), Path(target)
    if target.exists() and target.resolve() == source.resolve():
        raise TemplateSourceError("refusing to overwrite the input GGUF file; write a new file", source=str(target))
    reader = _open(source)
    layout = _layout(reader, source)
    missing = [name for name in templates if template_key(name) not in layout.fields]
    if missing:
        raise TemplateSourceError(f"no chat template named {missing[0]!r} in this file", source=str(source))
    replaced = {template_key(name): text for name, text in templates.items()}
    for key in replaced:
        _string_value(reader.fields[key], source)  # a template stored as anything but a string is not replaced

    with open(source, "rb") as original:
        def span(start: int, end: int) -> bytes:
            original.seek(start)
            return original.read(end - start)

        head = bytearray(span(*layout.header))
        for key, (start, end) in layout.fields.items():
            head += _encode_string_field(key, replaced[key], layout.little_endian) if key in replaced else span(
                start, end
            )
        head += span(*layout.tensor_infos)
        head += b"\0" * (-len(head) % layout.alignment)
        with atomic_output(target) as (handle, temporary):
            handle.write(head)
            original.seek(layout.data_offset)
            _copy_rest(original, handle)
            handle.flush()
            _check_written(temporary, source, layout, replaced)


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
    reader = _open(written)
    after = _layout(reader, written)

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
                if _string_value(reader.fields[key], written) != replaced[key]:
                    fail(f"{key!r} does not hold the new template")
            elif not same(before.fields[key], after.fields[key]):
                fail(f"metadata {key!r} changed")
        if not same(before.tensor_infos, after.tensor_infos):
            fail("tensor descriptions changed")
    if not _same_tail(source, before.data_offset, written, after.data_offset):
        fail("tensor data changed")

