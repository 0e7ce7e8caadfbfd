"""How big a result will be before it is built: printed values, filters, `str` methods and operators."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from jinja2.utils import Namespace, _PassArg, generate_lorem_ipsum, pass_context

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
    if not isinstance(value, (list, tuple)):
        return 0, ""
    size = _printed(value, _remaining(scope))
    return size + len(value) * (len(sep) if isinstance(sep, str) else 0), "a joined string"


def _predict_printed(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    return 2 * _printed(args[0], _remaining(scope)), "the value's text"


def _predict_tojson(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    indent = kwargs.get("indent", args[2] if len(args) > 2 else None)
    step = len(indent) if isinstance(indent, str) else max(_int(indent) or 0, 0)
    size = _printed(args[0], _remaining(scope), step + 2 if step else 0)
    return size * (3 if kwargs.get("ensure_ascii", args[1] if len(args) > 1 else False) else 1), "the JSON"


def _predict_list(scope: _Scope, args: tuple, kwargs: dict) -> tuple[float, str]:
    value = args[0]
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
    value = args[0]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return 8 * sum(len(item) for item in value if isinstance(item, (list, tuple, str))), "a summed list"
    return 0, ""


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
    "urlize": _scaled(6),
    "title": _scaled(3),
    "capitalize": _scaled(3),
    "upper": _scaled(3),
    "lower": _scaled(3),
    "trim": _scaled(1),
    "striptags": _scaled(1),
    "truncate": _scaled(1),
}


def _guard_filter(name: str, function: Callable) -> Callable:
    """`function` with its result's size checked (before it is built, where it can be told) and counted.

    The guard passes the context (as `pass_context` filters get it), which also keeps jinja2 from running the
    filter at compile time on constant arguments, outside any limit."""
    if getattr(function, "tk_guarded", False) or not callable(function):
        return function
    passes = _PassArg.from_obj(function)
    predict = _FILTER_SIZES.get(name)

    @pass_context
    def guarded(context, *args, **kwargs):
        scope = _SCOPE.get()
        if scope is not None:
            scope.tick()
            if predict is not None and args:
                size, what = predict(scope, args, kwargs)
                if size:
                    scope.need(size, f"the |{name} filter's result ({what})")
        if passes is None:
            result = function(*args, **kwargs)
        elif passes is _PassArg.context:
            result = function(context, *args, **kwargs)
        elif passes is _PassArg.eval_context:
            result = function(context.eval_ctx, *args, **kwargs)
        else:
            result = function(context.environment, *args, **kwargs)
        return result if scope is None else scope.account(result)

    functools.update_wrapper(guarded, function)
    guarded.jinja_pass_arg = _PassArg.context  # type: ignore[attr-defined]
    guarded.tk_guarded = True  # type: ignore[attr-defined]
    return guarded


class _GuardedFilters(dict):
    """The environment's filters, each guarded as it is added."""

    def __init__(self, filters: dict):
        super().__init__()
        self.update(filters)

    def __setitem__(self, name: str, function: Callable) -> None:
        super().__setitem__(name, _guard_filter(name, function))

    def update(self, *args, **kwargs) -> None:
        for name, function in dict(*args, **kwargs).items():
            self[name] = function

    def setdefault(self, name: str, function: Callable = None):  # type: ignore[override]
        if name not in self:
            self[name] = function
        return self[name]


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - jinja2's names
    """jinja2's `lipsum`, refusing a text larger than the memory left."""
    scope = _SCOPE.get()
    if scope is not None and type(n) is int and type(max) is int:
        scope.need(12 * n * max, f"lipsum({n}, max={max})")
    return generate_lorem_ipsum(n, html, min, max)


# -------------------------------------------------------------------------------------------- string methods


def _method_bytes(method: Any, args: tuple, kwargs: dict, scope: _Scope) -> float:
    """An upper bound for the size of what a `str` method returns (0: no check needed before calling)."""
    text: str = method.__self__
    name = method.__name__
    size = _str_bytes(text)
    if name in ("center", "ljust", "rjust", "zfill"):
        width = _int(args[0] if args else kwargs.get("width"))
        return max(width or 0, 0) * 4 + size
    if name == "expandtabs":
        tab = _int(args[0] if args else kwargs.get("tabsize", 8))
        return size + text.count("\t") * max(tab if tab is not None else 8, 0) + text.count("\n")
    if name == "replace":
        old, new = (args + (None, None))[:2]
        return _replaced(text, old, new, args[2] if len(args) > 2 else kwargs.get("count"))
    if name == "join":
        items = args[0] if args else None
        if isinstance(items, (list, tuple)):
            return _printed(items, _remaining(scope)) + len(items) * size
        return 0
    if name in ("split", "rsplit", "splitlines"):
        sep = args[0] if args else kwargs.get("sep")
        pieces = (text.count(sep) if isinstance(sep, str) and sep else len(text) // 2) + 1
        return size + 64 * pieces
    return 3 * size


_BIG = 1 << 16  # a result this small is built first and counted after


def _binop_bytes(op: str, left: Any, right: Any, scope: _Scope, line: int, offset: int) -> float:
    """The size of `left op right` when it can be told before building it (0: count it after)."""
    left_kind, right_kind = type(left), type(right)
    if op == "+":
        if left_kind is right_kind and left_kind in (list, tuple):
            return 8 * (len(left) + len(right)) + 64
        if left_kind is str and right_kind is str:
            return (len(left) + len(right)) * (1 if left.isascii() and right.isascii() else 4)
    elif op == "*":
        if right_kind is int and left_kind in (str, list, tuple):
            return _repeated(left, right)
        if left_kind is int and right_kind in (str, list, tuple):
            return _repeated(right, left)
        if left_kind is int and right_kind is int:
            return _int_bytes(left.bit_length() + right.bit_length(), scope, line, offset)
    elif op == "**":
        if left_kind is int and right_kind is int and right > 0:
            return _int_bytes(max(left.bit_length(), 1) * right, scope, line, offset)
    elif op == "%" and isinstance(left, str):
        return _percent_bytes(left, right, scope)
    return 0


def _repeated(value: Any, times: int) -> float:
    if times <= 0:
        return 0
    if isinstance(value, str):
        return _str_bytes(value) * times or 1
    return 8 * len(value) * times + 64


_MAX_INT_BITS = 1 << 16  # far past any number a chat template writes (str() refuses ints of 4,300+ digits)


def _int_bytes(bits: int, scope: _Scope, line: int, offset: int) -> float:
    if bits > _MAX_INT_BITS:
        scope.fail(
            "memory", f"an integer of {bits:,} bits is more than a template may build ({_MAX_INT_BITS:,})", line, offset
        )
    return 0


def _what(op: str, left: Any) -> str:
    kind = "a string" if isinstance(left, str) else "a list" if isinstance(left, list) else "a value"
    return {"+": f"{kind} built with +", "*": f"{kind} repeated with *", "%": "a string formatted with %"}.get(
        op, "a value"
    )
