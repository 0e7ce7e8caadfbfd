"""The environment's filters and comparing tests, guarded: each one's work counted, and a filter's result sized
before it is built (where it can be told) and counted after."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from jinja2.filters import make_attrgetter
from jinja2.utils import _PassArg, generate_lorem_ipsum, pass_context

from .scope import _SCOPE
from .sizes import _FILTER_SIZES, _arg
from .work import compare_work, filter_work

__all__ = ["GuardedFilters", "GuardedTests", "lipsum"]

#: Filters that consume all of their input: an iterator given to one is listed first (each item counted as it
#: comes), so that the result's size can be told before it is built. The result is the same.
_CONSUMING = frozenset({"join", "sum", "sort", "unique", "list", "min", "max", "reverse", "groupby", "dictsort"})
#: Filters that print a value item by item (in Python, or walked here first to size the result).
_WALKING = frozenset({"tojson", "string", "pprint", "xmlattr", "join"})
#: Where `attribute` sits among the arguments of the filters whose attribute is read here, first.
_ATTRIBUTE_AT = {"join": 2, "sum": 1}


def _prepared(name: str, context: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments with an iterator listed (a consuming filter) and `attribute` read off each item (`join`,
    `sum`): exactly what the filter would do first, done where the result can be sized."""
    if not args:
        return args, kwargs
    value = args[0]
    if hasattr(type(value), "__next__"):
        value = list(value)
    at = _ATTRIBUTE_AT.get(name)
    if at is not None:
        attribute = _arg(args, kwargs, at, "attribute")
        if attribute is not None and isinstance(value, (list, tuple, dict, str, range)):
            getter = make_attrgetter(context.environment, attribute)
            value = [getter(item) for item in value]
            if "attribute" in kwargs:
                kwargs = {**kwargs, "attribute": None}
            else:
                args = (*args[:at], None, *args[at + 1 :])
    return (value, *args[1:]), kwargs


def _guard_filter(name: str, function: Callable) -> Callable:
    """`function` with its work counted and its result's size checked (before it is built, where it can be told)
    and counted.

    The guard passes the context (as `pass_context` filters get it), which also keeps jinja2 from running the
    filter at compile time on constant arguments, outside any limit."""
    if getattr(function, "tk_guarded", False) or not callable(function):
        return function
    passes = _PassArg.from_obj(function)
    predict = _FILTER_SIZES.get(name)
    consuming, walking = name in _CONSUMING, name in _WALKING

    @pass_context
    def guarded(context, *args, **kwargs):
        scope = _SCOPE.get()
        if scope is not None:
            if consuming:
                args, kwargs = _prepared(name, context, args, kwargs)
            scope.step(filter_work(name, scope, args))
            if predict is not None and args:
                size, what = predict(scope, args, kwargs)
                if size:
                    scope.need(size, f"the |{name} filter's result ({what})")
                    if walking:
                        scope.step(size * 0.0625)  # an item walked and printed for every 16 bytes or so
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


class _GuardedTable(dict):
    """A table of filters or tests, each one guarded (`guard`) as it is added."""

    guard: Callable[[str, Callable], Callable]

    def __init__(self, functions: dict):
        super().__init__()
        self.update(functions)

    def __setitem__(self, name: str, function: Callable) -> None:
        super().__setitem__(name, type(self).guard(name, function))

    def update(self, *args, **kwargs) -> None:
        for name, function in dict(*args, **kwargs).items():
            self[name] = function

    def setdefault(self, name: str, function: Callable = None):  # type: ignore[override]
        if name not in self:
            self[name] = function
        return self[name]


class GuardedFilters(_GuardedTable):
    """The environment's filters, each one's work counted and its result sized."""

    guard = staticmethod(_guard_filter)


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - jinja2's names
    """jinja2's `lipsum`, refusing a text larger than the memory left."""
    scope = _SCOPE.get()
    if scope is not None and type(n) is int and type(max) is int:
        scope.need(12 * n * max, f"lipsum({n}, max={max})")
    return generate_lorem_ipsum(n, html, min, max)


# -------------------------------------------------------------------------------------------------------- tests

_COMPARING_TESTS = frozenset(
    {"in", "==", "eq", "equalto", "!=", "ne", ">", "gt", "greaterthan", "ge", ">=", "<", "lt", "lessthan", "<=", "le"}
)


def guard_test(name: str, function: Callable) -> Callable:
    """A comparing test (`is eq(x)`, `is in(seq)`, …) charged for its work before it runs; other tests as they
    are (they take constant time)."""
    if name not in _COMPARING_TESTS or getattr(function, "tk_guarded", False) or not callable(function):
        return function
    op = "in" if name == "in" else "eq"

    def guarded(value: Any, other: Any = None, *args: Any, **kwargs: Any) -> Any:
        scope = _SCOPE.get()
        if scope is not None:
            scope.step(compare_work(op, value, other, scope.step_cap - scope.steps))
        return function(value, other, *args, **kwargs)

    guarded.tk_guarded = True  # type: ignore[attr-defined]
    guarded.__name__ = getattr(function, "__name__", name)
    return guarded


class GuardedTests(_GuardedTable):
    """The environment's tests, each comparing one charged for what it compares."""

    guard = staticmethod(guard_test)
