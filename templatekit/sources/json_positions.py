"""Positions inside JSON text, found without parsing it into objects (positions are lost once parsed).

`value_start` finds where the value at a path of keys and indices begins, `string_offsets` maps each decoded
character of a JSON string to its place in the file (so a template's line and column can be told in the
`tokenizer_config.json` that holds it), and `replace_json_string` splices a new string in, every other
character untouched (`in_place`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["replace_json_string", "string_offsets", "value_start"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, index: int) -> int:
    return _WHITESPACE.match(text, index).end()


def _member_start(text: str, index: int, key: str) -> int | None:
    """Where the value of `key` starts in the object starting at `index` (its last occurrence, as json.loads
    keeps the last of duplicated keys)."""
    decoder = json.JSONDecoder()
    if text[index : index + 1] != "{":
        return None
    found = None
    index = _skip(text, index + 1)
    if text[index : index + 1] == "}":
        return None
    while True:
        name, index = json.decoder.scanstring(text, index + 1)
        index = _skip(text, _skip(text, index) + 1)  # past ':'
        if name == key:
            found = index
        _, index = decoder.raw_decode(text, index)
        index = _skip(text, index)
        if text[index] == "}":
            return found
        index = _skip(text, index + 1)  # past ','


def _element_start(text: str, index: int, position: int) -> int | None:
    decoder = json.JSONDecoder()
    if text[index : index + 1] != "[":
        return None
    index = _skip(text, index + 1)
    for _ in range(position):
        if text[index] == "]":
            return None
        _, index = decoder.raw_decode(text, index)
        index = _skip(text, _skip(text, index) + 1)  # past ','
    return None if text[index] == "]" else index


def replace_json_string(text: str, path: Sequence[str | int], value: str) -> str:
    """`text` (a valid JSON document) with the string at `path` replaced by `value`, every other character untouched.

    The new string is escaped the way the file already is: raw non-ASCII characters if the file holds any,
    `\\uXXXX` escapes otherwise.

    Example:
        >>> replace_json_string('{"a": 1,\\n  "chat_template": "x"}', ["chat_template"], "y\\n")
        '{"a": 1,\\n  "chat_template": "y\\\\n"}'
    """
    index = value_start(text, path)
    if index is None:
        raise InvalidArgumentError(f"no {'/'.join(map(str, path))} in the JSON text")
    old, end = json.JSONDecoder().raw_decode(text, index)
    if not isinstance(old, str):
        raise ArgumentTypeError(f"{'/'.join(map(str, path))} is not a string")
    keep_raw = any(ord(char) > 127 for char in text)
    return text[:index] + json.dumps(value, ensure_ascii=not keep_raw) + text[end:]


def value_start(raw: str, path: Sequence[str | int]) -> int | None:
    """Offset in the JSON text `raw` where the value at `path` (object keys, array indices) begins; None when there
    is no such value. A repeated key resolves to its last occurrence, as `json.loads` keeps the last.

    Example:
        >>> raw = '{"a": 1, "chat_template": [{"name": "x", "template": "hi"}]}'
        >>> raw[value_start(raw, ["chat_template", 0, "template"]):]
        '"hi"}]}'
    """
    index: int | None = _skip(raw, 0)
    for step in path:
        index = _member_start(raw, index, step) if isinstance(step, str) else _element_start(raw, index, step)
        if index is None:
            return None
    return index


def string_offsets(raw: str, quote: int) -> list[int]:
    """For the JSON string literal opening at `quote`: the offset in `raw` of each decoded character, plus the
    offset of the closing quote (so the position just past the last character maps too).

    Example:
        >>> string_offsets(r'"a\\nb"', 0)
        [1, 2, 4, 5]
    """
    offsets, i = [], quote + 1
    while i < len(raw) and raw[i] != '"':
        offsets.append(i)
        if raw[i] != "\\":
            i += 1
        elif raw[i + 1] != "u":
            i += 2
        elif 0xD800 <= int(raw[i + 2 : i + 6], 16) < 0xDC00 and raw[i + 6 : i + 8] == "\\u":
            i += 12  # a surrogate pair: two escapes, one character
        else:
            i += 6
    offsets.append(i)
    return offsets
