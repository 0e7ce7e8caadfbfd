"""How much work an operation does before it runs, in steps: comparisons, `in`, hashing, sorts, filters and the
tests that compare.

Python compares, hashes and sorts nested values inside one C call that no hook and no watchdog can interrupt,
and a value built from shared parts (`[z] * 1000`, a namespace doubled sixty times) is far larger to walk than
to hold. So each such operation is charged by the *logical* size of its operands: every item of every
container, a container met again counted again in full (its size looked up, not walked again).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from jinja2.utils import Namespace

from .scope import _Scope

__all__ = ["COMPARE", "compare_work", "filter_work", "logical_size", "method_work"]

_SCALARS = (int, float, bool, type(None))
_PLAIN = frozenset({str, int, float, bool, type(None)})
_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
#: The comparison operators as the compiled template names them.
COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gteq": operator.ge,
    "lt": operator.lt,
    "lteq": operator.le,
    "in": lambda left, right: left in right,
    "notin": lambda left, right: left not in right,
}


def _text(value: str) -> int:
    return 1 + (len(value) >> 6)  # C compares and scans text 64 bytes in about the time of one Python step


def logical_size(value: Any, cap: float) -> float:
    """How many items comparing, hashing or sorting `value` may visit; stops counting once past `cap`.

    Example:
        >>> shared = [1, 2, 3]
        >>> logical_size([shared] * 4, 1e9), logical_size("x" * 640, 1e9)
        (17, 11)
    """
    kind = type(value)
    if kind is str:
        return _text(value)
    if kind in _SCALARS or not isinstance(value, (list, tuple, dict, set, frozenset, *_VIEWS, str, bytes)):
        return 1  # a namespace, an undefined, a number: compared by identity or in constant time
    if isinstance(value, (str, bytes)):
        return 1 + (len(value) >> 6)
    sizes: dict[int, float] = {}  # a container met again costs what it cost the first time
    path: set[int] = {id(value)}  # containers being walked: a cycle counts once
    stack: list[tuple[int, Any, float]] = [(id(value), iter(_items(value)), 1)]
    while stack:
        key, items, total = stack[-1]
        for item in items:
            kind = type(item)
            if kind is str:
                total += _text(item)
            elif kind in _SCALARS or isinstance(item, Namespace):
                total += 1
            elif isinstance(item, (list, tuple, dict, set, frozenset, *_VIEWS)):
                child = id(item)
                if child in sizes:
                    total += sizes[child]
                elif child in path:
                    total += 1
                else:
                    stack[-1] = (key, items, total)
                    stack.append((child, iter(_items(item)), 1))
                    path.add(child)
                    break
            elif isinstance(item, (str, bytes)):
                total += 1 + (len(item) >> 6)
            else:
                total += 1
            if total > cap:
                return total
        else:
            stack.pop()
            path.discard(key)
            sizes[key] = total
            if not stack:
                return total
            parent, parent_items, parent_total = stack[-1]
            parent_total += total
            if parent_total > cap:
                return parent_total
            stack[-1] = (parent, parent_items, parent_total)
    return 1  # not reached


def _items(value: Any) -> Any:
    if isinstance(value, dict):
        return (part for pair in value.items() for part in pair)
    if isinstance(value, type({}.items())):
        return (part for pair in value for part in pair)
    return value


def compare_work(op: str, left: Any, right: Any, cap: float) -> float:
    """The steps `left op right` may take (op as jinja2 names it: "eq", "lt", "in", …)."""
    if op in ("in", "notin"):
        kind = type(right)
        if kind is str or isinstance(right, (str, bytes)):
            return 1 + (len(right) >> 6) + (len(left) >> 6 if isinstance(left, (str, bytes)) else 0)
        if kind is dict or isinstance(right, (dict, set, frozenset, type({}.keys()))):
            return 1 + logical_size(left, cap)  # a hash and one comparison with the key found
    size = logical_size(left, cap)
    return size + logical_size(right, cap - size)


# ------------------------------------------------------------------------------------------------------ filters


def _count(value: Any) -> int:
    try:
        return len(value) if isinstance(value, (list, tuple, dict, str, range)) else 0
    except TypeError:
        return 0


def _sorting(scope: _Scope, args: tuple) -> float:
    value = args[0]
    count = _count(value)
    return logical_size(value, scope.step_cap - scope.steps) * max(1, math.ceil(math.log2(count + 1)))


def _walking(scope: _Scope, args: tuple) -> float:
    return logical_size(args[0], scope.step_cap - scope.steps)


def _per_char(factor: int) -> Callable[[_Scope, tuple], float]:
    """Filters that run Python code for every character or word (textwrap, regular expressions, quoting)."""

    def work(scope: _Scope, args: tuple) -> float:
        value = args[0]
        return factor * (len(value) if isinstance(value, str) else 0)

    return work


_FILTER_WORK: dict[str, Callable[[_Scope, tuple], float]] = {
    "sort": _sorting,
    "dictsort": _sorting,
    "groupby": _sorting,
    "unique": _walking,
    "min": _walking,
    "max": _walking,
    "sum": _walking,
    "pprint": _walking,
    "title": _per_char(1),
    "capitalize": _per_char(1),
    "striptags": _per_char(1),
    "urlencode": _per_char(1),
    "wordcount": _per_char(1),
    "wordwrap": _per_char(2),
    "truncate": _per_char(1),
    "urlize": _per_char(4),
}


def filter_work(name: str, scope: _Scope, args: tuple) -> float:
    """The steps a filter's call may take, beyond the bytes it builds (which count on their own)."""
    predict = _FILTER_WORK.get(name)
    if predict is not None and args:
        return 4 + predict(scope, args)
    if args:
        value = args[0]
        if type(value) is str:
            return 4 + (len(value) >> 6)
        return 4 + _count(value)  # one Python step per item, the most a filter over a sequence does
    return 4


def method_work(method: Any, owner: Any, args: tuple, scope: Any) -> float:
    """The steps a call of a builtin may take: `index` and `count` compare every item of a list or tuple, `copy`
    visits each, and a container argument (a key to hash, items to add or compare) is walked."""
    cap = scope.step_cap - scope.steps
    work = 1.0
    if isinstance(owner, (list, tuple, dict)):
        if method.__name__ in ("index", "count"):
            work += logical_size(owner, cap)
        elif method.__name__ == "copy":
            work += len(owner)
    for argument in args:
        if type(argument) not in _PLAIN:
            work += logical_size(argument, cap)
    return work
