"""How big a result will be before it is built: printed values, filters, `str` methods and operators."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from jinja2.exceptions import TemplateError
from jinja2.utils import Namespace

from .scope import _SCOPE, _Scope, _str_bytes

# ------------------------------------------------------------------------------------------------------- sizes

_SMALL = (int, float, bool, type(None))


def _printed(value: Any, cap: float, indent: int = 0) -> float:
    """About how many bytes `str(value)` (or its JSON) takes; stops counting once past `cap`."""
    kind = type(value)
    if kind is str:
        return _str_bytes(value) + 2
    if kind in _SMALL:
        return value.bit_length() // 3 + 2 if kind is int else 24
    if isinstance(value, (bytes, bytearray)):
        return 4 * len(value) + 16  # its repr: \\xNN for each byte at most
    total = 0
    # Each entry: the items left to walk, their depth, the container they belong to, and `total` when it began.
    stack: list[tuple[Iterator, int, int | None, float]] = [(iter((value,)), 0, None, 0)]
    path: set[int] = set()  # containers being walked: a namespace that holds itself is printed once
    # A container met again (shared, not a cycle) is printed again: it costs what it cost the first time, looked
    # up, not walked (a dict holding one dict twice, sixty deep, prints 2**60 of them; walking them never ends).
    sizes: dict[int, float] = {}
    while stack:
        iterator, depth, _, _ = stack[-1]
        for item in iterator:
            kind = type(item)
            if kind is str or isinstance(item, str):
                total += _str_bytes(item) + 4 + depth * indent
            elif kind in _SMALL:
                total += (item.bit_length() // 3 + 4 if kind is int else 24) + depth * indent
            elif isinstance(item, (list, tuple, set, frozenset, dict, Namespace)):
                key = id(item)
                if key in path:
                    total += 8
                    continue
                total += 16 + depth * indent
                if key in sizes:
                    total += sizes[key]
                elif total <= cap:
                    if isinstance(item, Namespace):
                        item = item._Namespace__attrs  # type: ignore[attr-defined]
                    children = itertools.chain.from_iterable(item.items()) if isinstance(item, dict) else item
                    stack.append((iter(children), depth + 1, key, total))
                    path.add(key)
                    break
            elif isinstance(item, (bytes, bytearray)):
                total += 4 * len(item) + 16 + depth * indent
            elif not isinstance(item, jinja2.Undefined):
                total += 64
            if total > cap:
                return total
        else:
            _, _, owner, start = stack.pop()
            if owner is not None:
                path.discard(owner)
                sizes[owner] = total - start
    return total


def check_printable(value: Any, offset: int = -1) -> None:
    """Refuse, before `str(value)` builds it, the text of a value too large for the memory left (a value written
    by code of ours that runs inside a render, such as the tracer's emission hook). `offset`: where the value
    is written in the template's source, for the error's line:column.

    Example:
        >>> from templatekit.core.sandbox import limit_scope
        >>> with limit_scope(max_memory=4096):
        ...     check_printable(["x" * 5000])
        Traceback (most recent call last):
        ...
        templatekit.errors.TemplateLimitError: <template>: memory limit exceeded: the text of a value written would take 4.9 KiB, more than the 4 KiB limit
    """
    scope = _SCOPE.get()
    if scope is not None and type(value) is not str and type(value) not in _SMALL:
        scope.need(_printed(value, _remaining(scope)), "the text of a value written", 0, offset)


def _remaining(scope: _Scope) -> float:
    return scope.cap - scope.spent + 1


_SIZED = (list, tuple, dict, str, range)
_SHORT = 1024  # a sized loop this short needs no check per iteration: its body's hooks check the deadline


# ------------------------------------------------------------------------------------------ filters and globals


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """Argument `index` (0 = the value filtered) or keyword `name`."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if index < len(args) else default


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _text_bytes(value: Any, scope: _Scope) -> float:
    return _str_bytes(value) if isinstance(value, str) else _printed(value, _remaining(scope))


def _predict_center(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    width = _int(_arg(args, kwargs, 1, "width", 80)) or 0
    return max(width, 0) + _text_bytes(args[0], scope), "a centred string"


def _predict_indent(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    text = args[0]
    width = _arg(args, kwargs, 1, "width", 4)
    step = len(width) if isinstance(width, str) else max(_int(width) or 0, 0)
    lines = text.count("\n") + 1 if isinstance(text, str) else 1
    return _text_bytes(text, scope) + lines * step, "an indented string"


def _predict_wordwrap(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    text = args[0]
    width = max(_int(_arg(args, kwargs, 1, "width", 79)) or 1, 1)
    wrap = _arg(args, kwargs, 3, "wrapstring", None)
    size = len(text) if isinstance(text, str) else 0
    lines = size // width + (text.count("\n") if isinstance(text, str) else 0) + 1
    return _text_bytes(text, scope) + lines * (len(wrap) if isinstance(wrap, str) else 1), "a wrapped string"


def _replaced(text: Any, old: Any, new: Any, count: Any) -> float:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    found = len(text) + 1 if not old else text.count(old)
    if type(count) is int and count >= 0:
        found = min(found, count)
    return _str_bytes(text) + found * max(len(new) - len(old), 0) * (1 if new.isascii() else 4)


def _predict_replace(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    old, new = _arg(args, kwargs, 1, "old"), _arg(args, kwargs, 2, "new")
    return _replaced(args[0], old, new, _arg(args, kwargs, 3, "count")), "a replaced string"


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _percent_bytes(fmt: str, values: Any, scope: _Scope) -> float:
    """An upper bound for `fmt % values`: the format, every value printed, and every width or precision."""
    size = _str_bytes(fmt) + _printed(values, _remaining(scope))
    starred = False
    for width, precision in _PERCENT.findall(fmt):
        for number in (width, precision):
            if number == "*":
                starred = True
            elif number:
                size += int(number) if len(number) < 19 else float("inf")
    if starred:
        items = values if isinstance(values, tuple) else (values,)
        size += sum(abs(item) for item in items if type(item) is int)
    return size


def _predict_format(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    values = kwargs or args[1:]
    fmt = args[0] if isinstance(args[0], str) else str(args[0])
    return _percent_bytes(fmt, values, scope), "a formatted string"


def _predict_join(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    value, sep = args[0], _arg(args, kwargs, 1, "d", "")
    if isinstance(value, str):  # joined character by character
        count, size = len(value), _str_bytes(value)
    elif isinstance(value, (list, tuple)):
        count, size = len(value), _printed(value, _remaining(scope))
    elif isinstance(value, (dict, range)):
        count, size = len(value), _printed(list(value), _remaining(scope))
    else:
        return 0, ""
    return size + count * _text_bytes(sep, scope), "a joined string"


def _predict_printed(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    return 2 * _printed(args[0], _remaining(scope)), "the value's text"


def _predict_tojson(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    indent = kwargs.get("indent", args[2] if len(args) > 2 else None)
    step = len(indent) if isinstance(indent, str) else max(_int(indent) or 0, 0)
    size = _printed(args[0], _remaining(scope), step + 2 if step else 0)
    return size * (3 if kwargs.get("ensure_ascii", args[1] if len(args) > 1 else False) else 1), "the JSON"


def _predict_list(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    value = args[0]
    if isinstance(value, str) and not value.isascii():  # a string's characters each become a new object
        return 88 * len(value) + 64, "a list"
    if isinstance(value, dict):  # items: a tuple each
        return 72 * len(value) + 64, "a list"
    return (8 * len(value) + 64 if isinstance(value, _SIZED) else 0), "a list"


def _predict_batch(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    count = _int(_arg(args, kwargs, 1, "linecount", 1)) or 0
    filled = _arg(args, kwargs, 2, "fill_with") is not None
    return (8 * max(count, 0) if filled else 0), "a batch"


def _predict_slice(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    count = _int(_arg(args, kwargs, 1, "slices", 1)) or 0
    value = args[0]
    return 64 * max(count, 0) + (8 * len(value) if isinstance(value, _SIZED) else 0), "slices"


def _predict_sum(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    """Lists summed are copied at each step: every partial sum is built (and left as garbage)."""
    value, start = args[0], _arg(args, kwargs, 2, "start", 0)
    if not isinstance(value, (list, tuple)) or not isinstance(start, (list, tuple, str)):
        return 0, ""
    total, garbage = len(start), 0.0
    for item in value:
        total += len(item) if isinstance(item, (list, tuple, str)) else 1
        garbage += 8 * total + 64
    return garbage, "a summed list"


def _predict_urlize(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    text = args[0]
    if not isinstance(text, str):
        return 6 * _printed(text, _remaining(scope)), "an urlized string"
    extra = sum(
        _text_bytes(_arg(args, kwargs, index, name, None) or "", scope) for index, name in ((3, "target"), (4, "rel"))
    )
    words = text.count(" ") + text.count("\n") + text.count("\t") + 1  # each may become a link
    return 6 * _str_bytes(text) + words * (extra + 64), "an urlized string"


def _scaled(factor: int) -> Callable:
    def predict(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
        return factor * _text_bytes(args[0], scope), "a filtered string"

    return predict


_FILTER_SIZES: dict[str, Callable] = {
    "center": _predict_center,
    "indent": _predict_indent,
    "wordwrap": _predict_wordwrap,
    "replace": _predict_replace,
    "format": _predict_format,
    "join": _predict_join,
    "string": _predict_printed,
    "pprint": _predict_printed,
    "xmlattr": _predict_printed,
    "tojson": _predict_tojson,
    "list": _predict_list,
    "sort": _predict_list,
    "unique": _predict_list,
    "reverse": _predict_list,
    "dictsort": _predict_list,
    "items": _predict_list,
    "groupby": _predict_list,
    "batch": _predict_batch,
    "slice": _predict_slice,
    "sum": _predict_sum,
    "escape": _scaled(6),
    "e": _scaled(6),
    "forceescape": _scaled(6),
    "urlencode": _scaled(9),
    "urlize": _predict_urlize,
    "title": _scaled(3),
    "capitalize": _scaled(3),
    "upper": _scaled(3),
    "lower": _scaled(3),
    "trim": _scaled(1),
    "striptags": _scaled(1),
    "truncate": _scaled(1),
}


# -------------------------------------------------------------------------------------------- string methods


def _method_bytes(method: Any, args: tuple, kwargs: dict, scope: _Scope) -> float:
    """An upper bound for the size of what a `str` or `bytes` method returns (0: no check needed before calling)."""
    text: str | bytes = method.__self__
    name = method.__name__
    size = _str_bytes(text) if isinstance(text, str) else len(text)
    if name in ("center", "ljust", "rjust", "zfill"):
        width = _int(args[0] if args else kwargs.get("width"))
        return max(width or 0, 0) * 4 + size
    if name == "expandtabs":
        tab = _int(args[0] if args else kwargs.get("tabsize", 8))
        tabs, newlines = (text.count("\t"), text.count("\n")) if isinstance(text, str) else (text.count(b"\t"), 1)
        return size + tabs * max(tab if tab is not None else 8, 0) + newlines
    if name == "replace":
        old, new = (args + (None, None))[:2]
        return _replaced(text, old, new, args[2] if len(args) > 2 else kwargs.get("count"))
    if name == "translate":
        table = args[0] if args else None
        longest = 4
        if isinstance(table, dict):
            lengths = (len(v) for v in table.values() if isinstance(v, (str, bytes)))
            longest = 4 * max(lengths, default=1)
        return 4 * len(text) * longest + 64
    if name == "join":
        items = args[0] if args else None
        if isinstance(items, (list, tuple)):
            return _printed(items, _remaining(scope)) + len(items) * size
        if isinstance(items, (str, bytes)):
            return 4 * len(items) * (size + 1)
        return 0
    if name in ("split", "rsplit", "splitlines"):
        sep = args[0] if args else kwargs.get("sep")
        pieces = (text.count(sep) if isinstance(sep, type(text)) and sep else len(text) // 2) + 1
        return size + 64 * pieces
    return 4 * size + 64


_BIG = 1 << 16  # a result this small is built first and counted after


def _binop_bytes(op: str, left: Any, right: Any, scope: _Scope, line: int, offset: int) -> float:
    """The size of `left op right` when it can be told before building it (0: count it after)."""
    left_kind, right_kind = type(left), type(right)
    if op == "+":
        if left_kind is right_kind and left_kind in (list, tuple):
            return 8 * (len(left) + len(right)) + 64
        if left_kind is str and right_kind is str:
            return (len(left) + len(right)) * (1 if left.isascii() and right.isascii() else 4)
        if isinstance(left, (bytes, bytearray)) and isinstance(right, (bytes, bytearray)):
            return len(left) + len(right) + 64
    elif op == "*":
        if right_kind is int and isinstance(left, _SEQUENCES):
            return _repeated(left, right)
        if left_kind is int and isinstance(right, _SEQUENCES):
            return _repeated(right, left)
        if left_kind is int and right_kind is int:
            return _int_bytes(left.bit_length() + right.bit_length(), scope, line, offset)
    elif op == "**":
        if left_kind is int and right_kind is int and right > 0:
            return _int_bytes(max(left.bit_length(), 1) * right, scope, line, offset)
    elif op == "%" and isinstance(left, (str, bytes)):
        return _percent_bytes(left if isinstance(left, str) else left.decode("latin-1"), right, scope)
    return 0


_SEQUENCES = (str, list, tuple, bytes, bytearray)


def _repeated(value: Any, times: int) -> float:
    if times <= 0:
        return 0
    if isinstance(value, str):
        return _str_bytes(value) * times or 1
    if isinstance(value, (bytes, bytearray)):
        return len(value) * times or 1
    return 8 * len(value) * times + 64


_MAX_INT_BITS = 1 << 16  # far past any number a chat template writes (str() refuses ints of 4,300+ digits)


def _int_bytes(bits: int, scope: _Scope, line: int, offset: int) -> float:
    if bits > _MAX_INT_BITS:
        scope.fail(
            "memory", f"an integer of {bits:,} bits is more than a template may build ({_MAX_INT_BITS:,})", line, offset
        )
    return 0


def _what(op: str, left: Any) -> str:
    kinds = ((str, "a string"), ((bytes, bytearray), "a byte string"), (list, "a list"), (tuple, "a tuple"))
    kind = next((name for types, name in kinds if isinstance(left, types)), "a value")
    return {"+": f"{kind} built with +", "*": f"{kind} repeated with *", "%": "a string formatted with %"}.get(
        op, "a value"
    )


_MESSAGE_BYTES = 1 << 16  # the most of a value raised as an error's message that is kept as its text


def _bound_message(error: TemplateError, scope: Any) -> None:
    """Give an error raised with a value (not text) a message of bounded size: its text if small, else a note."""
    if len(error.args) != 1 or isinstance(error.args[0], str) or error.args[0] is None:
        return
    value = error.args[0]
    size = _printed(value, _MESSAGE_BYTES)
    if size > _MESSAGE_BYTES:
        error.args = (f"<a {type(value).__name__} of about {size:,.0f} characters or more, too large to show>",)
    else:
        scope.charge(size)
        error.args = (str(value),)
