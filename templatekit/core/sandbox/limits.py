"""Bounded time, memory and recursion for every render of an untrusted chat template.

A chat template is code from a stranger. jinja2's sandbox stops it from reaching Python's internals, but not
from looping for hours, doubling a string sixty times or calling a macro from itself. Here the sandbox itself
keeps count, so no subprocess is needed:

* **time**: every `for` loop's iterable goes through `LimitedEnvironment.tk_iter`, which checks the deadline
  when the loop starts and, for long or lazy iterables, every few iterations; every call, filter and
  operator checks it too. A watchdog thread interrupts, shortly after the deadline, the rare Python-level
  work that no hook sees (a filter's own loop over a huge input, say).
* **memory**: everything a template builds goes through a hook that knows the size of the result *before*
  building it: `+`, `*`, `**` and `%` (`call_binop`), `~` (`tk_concat`), slices, string methods, `format`,
  filters (`center`, `indent`, `join`, `replace`, `format`, `wordwrap`, `tojson`, `batch`, …), and what the
  template writes (`{{ … }}` through `finalize`, literal text once per loop iteration). Sizes are added up
  over the whole operation (all of one patch and its verification, or one conversation rendered), garbage
  included, against `Limits.max_memory`; a value that would take the sum past it is never built.
* **recursion**: macro, `caller()` and recursive `loop(…)` calls count their depth (`Limits.max_depth`),
  and a `RecursionError` or `MemoryError` from Python becomes the same error.

Breaching a limit raises `TemplateLimitError`, naming the limit and the line (and column, for templates
parsed with offsets) where it happened. The first breach in a scope is sticky: if code between the render
and the scope swallows it as "the template raised", the scope raises it again on exit.

`limit_scope()` sets the limits for what runs inside it (this thread or task only); `bounded` gives a function
`timeout=` and `max_memory=` keywords. Rendering is byte-identical to jinja2's: the hooks check, then do
exactly what the plain operator, filter or call does.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import itertools
import os
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from time import monotonic
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, _PassArg, generate_lorem_ipsum, pass_context
from markupsafe import Markup

from .errors import TemplateLimitError

__all__ = [
    "DEFAULT",
    "DEFAULT_LIMITS",
    "Limits",
    "LimitedEnvironment",
    "TemplateLimitError",
    "active_limits",
    "bounded",
    "format_size",
    "limit_scope",
    "parse_size",
]

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"

    def __reduce__(self) -> str:
        return "DEFAULT"  # pickled as a reference: still `DEFAULT` in another process


#: Stands for "the limit in force": the enclosing scope's, else the default one.
DEFAULT: Any = _Default()


@dataclass(frozen=True)
class Limits:
    """What one template may use.

    Attributes:
        timeout: wall-clock seconds for one operation on a template (patching and verifying it, checking it,
            or rendering one conversation with it); None for no limit.
        max_memory: bytes the template may build in that operation: every string, list and dict it makes
            (garbage included) and what it writes; None for no limit.
        max_depth: how deep macro, `caller()` and recursive-loop calls may nest; None for Python's own limit.

    Example:
        >>> Limits(timeout=2).max_memory == Limits().max_memory == 1 << 30
        True
    """

    timeout: float | None = 10.0
    max_memory: int | None = GIB
    max_depth: int | None = 100

    def replace(self, *, timeout: Any = DEFAULT, max_memory: Any = DEFAULT, max_depth: Any = DEFAULT) -> Limits:
        """These limits with the given ones changed (`DEFAULT` keeps a value)."""
        return Limits(
            self.timeout if timeout is DEFAULT else _seconds(timeout),
            self.max_memory if max_memory is DEFAULT else _bytes(max_memory),
            self.max_depth if max_depth is DEFAULT else _depth(max_depth),
        )


DEFAULT_LIMITS = Limits()


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")
    return seconds


def _bytes(value: Any) -> int | None:
    if value is None:
        return None
    size = parse_size(value) if isinstance(value, str) else int(value)
    if size <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {value!r}")
    return size


def _depth(value: Any) -> int | None:
    if value is None:
        return None
    depth = int(value)
    if depth <= 0:
        raise ValueError(f"max_depth must be a positive number, got {value!r}")
    return depth


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from `512M`, `1G`, `1.5GiB`, `64k` or a plain number (binary units: 1K = 1024).

    Example:
        >>> parse_size("512M"), parse_size("1G"), parse_size("1.5GiB"), parse_size(4096)
        (536870912, 1073741824, 1610612736, 4096)
    """
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 1G, 2048K or a number of bytes)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": GIB << 10}[unit])


def format_size(size: float) -> str:
    """A byte count for people.

    Example:
        >>> format_size(1 << 30), format_size(1536 * 1024), format_size(100)
        ('1 GiB', '1.5 MiB', '100 bytes')
    """
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(size)} bytes"


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


# ------------------------------------------------------------------------------------------------------ scopes


class _Interrupt(BaseException):
    """Raised asynchronously in a thread by the watchdog when its deadline has long passed. A BaseException,
    so that no `except Exception` between the template and the scope can swallow it."""


_INF = float("inf")


class _Scope:
    """The limits in force, the deadline, and what has been spent, for one operation on one template.

    The hooks read `deadline`, `spent` and `cap` directly (they run for every operation a template does)."""

    __slots__ = ("limits", "deadline", "cap", "spent", "depth", "max_depth", "error", "parent", "ident", "fired")

    def __init__(self, limits: Limits, parent: _Scope | None):
        deadline = monotonic() + limits.timeout if limits.timeout is not None else _INF
        cap = limits.max_memory if limits.max_memory is not None else _INF
        max_depth = limits.max_depth if limits.max_depth is not None else sys.maxsize
        if parent is not None:
            deadline = min(deadline, parent.deadline)
            cap = min(cap, parent.cap - parent.spent)
            max_depth = min(max_depth, parent.max_depth)
        self.limits = limits
        self.deadline = deadline
        self.cap = cap
        self.spent = 0
        self.depth = 0
        self.max_depth = max_depth
        self.error: TemplateLimitError | None = None
        self.parent = parent
        self.ident = 0
        self.fired = False

    # -- checks, called by the hooks

    def tick(self, line: int = 0, offset: int = -1) -> None:
        if monotonic() > self.deadline:
            self.late(line, offset)

    def late(self, line: int = 0, offset: int = -1):
        self.fail("time", f"the template ran past {_format_seconds(self.limits.timeout)}", line, offset)

    def need(self, size: float, what: str, line: int = 0, offset: int = -1) -> None:
        """Refuse to build something of `size` bytes if it would take the total past the cap."""
        if self.spent + size > self.cap:
            self.too_big(size, what, line, offset)

    def charge(self, size: float, line: int = 0, offset: int = -1) -> None:
        self.spent += size
        if self.spent > self.cap:
            self.too_big(size, "", line, offset)

    def too_big(self, size: float, what: str, line: int, offset: int):
        cap = format_size(self.limits.max_memory or self.cap)
        if what and size > self.cap:
            detail = f"{what} would take {format_size(size)}, more than the {cap} limit"
        elif what:
            detail = f"{what} ({format_size(size)}) would take what the template builds past {cap}"
        else:
            detail = f"what the template builds and writes would pass {cap}"
        self.fail("memory", detail, line, offset)

    def enter(self, line: int, offset: int) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            self.depth -= 1
            detail = f"calls nest deeper than {self.max_depth} (macro, caller or loop recursion)"
            self.fail("recursion", detail, line, offset)

    def fail(self, limit: str, detail: str, line: int = 0, offset: int = -1):
        # The first error is raised again for later breaches: a fresh traceback each time, or it grows by the
        # whole stack on every raise (a recursion limit raised once per probe got slower with each one).
        raise self.record(_located_error(limit, detail, line, offset)).with_traceback(None)

    def record(self, error: TemplateLimitError) -> TemplateLimitError:
        if self.error is None:
            self.error = error
        return self.error

    # -- what a hook returns

    def account(self, value: Any, line: int = 0, offset: int = -1) -> Any:
        """Charge for a value just built; a lazy sequence is wrapped so that its items are counted."""
        kind = type(value)
        if kind is str:
            self.spent += len(value) if value.isascii() else 4 * len(value)
        elif kind is list or kind is tuple or kind is dict or kind is set:
            self.spent += 8 * len(value) + 64
        elif kind is types.GeneratorType:
            return _loop(value, self, 8, line, offset)  # a generator's items, 8 bytes each
        elif isinstance(value, str):
            self.spent += _str_bytes(value)
        else:
            return value
        if self.spent > self.cap:
            self.too_big(0, "", line, offset)
        return value


_SCOPE: ContextVar[_Scope | None] = ContextVar("templatekit_limits", default=None)
_ENABLED = True
_ON_SWITCH: list[Callable[[], None]] = []  # caches of compiled templates, emptied when the switch flips


def set_enabled(enabled: bool) -> None:
    """Switch the limits off (False) or on, for the whole process: only for measuring what they cost
    (`benchmarks/limits_overhead.py`). Off, templates compile without hooks and scopes do nothing."""
    global _ENABLED
    _ENABLED = bool(enabled)
    for clear in _ON_SWITCH:
        clear()


def on_switch(clear: Callable[[], None]) -> Callable[[], None]:
    """Register a cache of compiled templates to empty when `set_enabled` flips the switch."""
    _ON_SWITCH.append(clear)
    return clear


def enabled() -> bool:
    return _ENABLED


def active_limits() -> Limits:
    """The limits in force here: the innermost scope's, else the defaults."""
    scope = _SCOPE.get()
    return scope.limits if scope is not None else DEFAULT_LIMITS


class LimitScope:
    """The context manager `limit_scope` returns (a class, not a generator: renders open one each)."""

    __slots__ = ("limits", "scope", "token")

    def __init__(self, limits: Limits):
        self.limits = limits
        self.scope: _Scope | None = None

    def __enter__(self) -> Limits:
        if not _ENABLED:
            return self.limits
        parent = _SCOPE.get()
        scope = self.scope = _Scope(self.limits, parent)
        self.token = _SCOPE.set(scope)
        if scope.deadline < _INF:
            _WATCHDOG.watch(scope)
        return self.limits

    def __exit__(self, kind, error, tb) -> bool:
        scope = self.scope
        if scope is None:
            return False
        self.scope = None
        reset = False
        while True:  # an interrupt delivered while leaving is dropped: the work is done
            try:
                if not reset:
                    reset = True
                    _SCOPE.reset(self.token)
                if scope.ident:
                    _WATCHDOG.release(scope)  # cancels an interrupt not yet delivered
                break
            except _Interrupt:
                continue
        parent = scope.parent
        if parent is not None:
            parent.spent += scope.spent
            if scope.error is not None and parent.error is None:
                parent.error = scope.error
        if kind is None:
            if scope.error is not None:
                raise scope.error.with_traceback(None)
            return False
        if issubclass(kind, TemplateLimitError):
            scope.record(error)
            return False
        if issubclass(kind, _Interrupt):
            raise scope.record(_interrupted(scope, tb)) from None
        if issubclass(kind, (RecursionError, MemoryError)):
            raise _python_limit(scope, error) from None
        if scope.error is not None and issubclass(kind, Exception):
            raise scope.error from error  # the template's limit error, caught and reported as something else
        return False


def limit_scope(
    limits: Limits | None = None, *, timeout: Any = DEFAULT, max_memory: Any = DEFAULT, max_depth: Any = DEFAULT
) -> LimitScope:
    """A context manager that runs its block under `limits` (the enclosing scope's, or the defaults, with the
    keywords changed).

    A scope inside another can only tighten it: the earlier deadline and the smaller remaining memory win,
    and what the inner scope spends counts for the outer one. Leaving the scope raises the first
    `TemplateLimitError` raised in it, even if the code inside caught it.

    Example:
        >>> from templatekit.syntax import make_environment
        >>> template = make_environment().from_string("{{ 'y' * 1000 }}")
        >>> with limit_scope(max_memory=512):
        ...     template.render()
        Traceback (most recent call last):
        ...
        templatekit.errors.TemplateLimitError: <template>:1:4: memory limit exceeded: a string repeated with * would take 1000 bytes, more than the 512 bytes limit
    """
    if limits is None:
        parent = _SCOPE.get()
        limits = parent.limits if parent is not None else DEFAULT_LIMITS
    if timeout is not DEFAULT or max_memory is not DEFAULT or max_depth is not DEFAULT:
        limits = limits.replace(timeout=timeout, max_memory=max_memory, max_depth=max_depth)
    return LimitScope(limits)


def bounded(function: Callable) -> Callable:
    """Give `function` the keywords `timeout` (seconds) and `max_memory` (bytes, or `"512M"`), and run it in a
    `limit_scope` with them: the defaults (10 s, 1 GiB) apply when they are not given.

    Example:
        >>> @bounded
        ... def work(text):
        ...     return active_limits().timeout
        >>> work("x"), work("x", timeout=3)
        (10.0, 3.0)
    """

    @functools.wraps(function)
    def wrapper(*args, timeout: Any = DEFAULT, max_memory: Any = DEFAULT, **kwargs):
        with limit_scope(timeout=timeout, max_memory=max_memory):
            return function(*args, **kwargs)

    signature = inspect.signature(function)
    extra = [
        inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_LIMITS.timeout),
        inspect.Parameter("max_memory", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_LIMITS.max_memory),
    ]
    parameters = list(signature.parameters.values())
    tail = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    head = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    wrapper.__signature__ = signature.replace(parameters=head + extra + tail)  # type: ignore[attr-defined]
    if wrapper.__doc__:
        wrapper.__doc__ += _BOUNDED_DOC
    return wrapper


_BOUNDED_DOC = """

    Limits (`templatekit.limits`): `timeout` seconds (default 10) and `max_memory` bytes or `"512M"` (default
    1 GiB) for all the work on the template; None for no limit. Going past one raises `TemplateLimitError`.
    """


def _grace(timeout: float | None) -> float:
    """How long after the deadline the watchdog waits for the hooks to notice it themselves."""
    return min(max(0.5, 0.2 * (timeout or 0)), 5.0)


# ---------------------------------------------------------------------------------------------------- watchdog


def _async_raise(ident: int, exception: type[BaseException] | None) -> None:
    try:
        set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    except AttributeError:  # not CPython: the hooks alone keep time
        return
    set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exception) if exception is not None else None)


class _Watchdog:
    """One daemon thread that interrupts a thread whose innermost scope's deadline (plus a grace) has passed.

    A scope is watched by putting it in `active` under its thread's id, restoring the outer one when it ends:
    a dictionary store, so renders pay next to nothing. The thread polls a few times a second. It sets
    `fired` before it looks, and a scope that ends with `fired` set cancels, under the lock, an interrupt
    not yet delivered: no interrupt lands outside the scope it was meant for.
    """

    POLL = 0.1

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.active: dict[int, _Scope] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def watch(self, scope: _Scope) -> None:
        ident = scope.ident = threading.get_ident()
        self.active[ident] = scope
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="templatekit-watchdog", daemon=True)
            self.thread.start()

    def release(self, scope: _Scope) -> None:
        ident, scope.ident = scope.ident, 0
        if not ident:
            return
        parent = scope.parent
        while parent is not None and not parent.ident:
            parent = parent.parent
        if parent is not None:
            self.active[ident] = parent
        else:
            self.active.pop(ident, None)
        if scope.fired:
            with self.lock:
                _async_raise(ident, None)  # not delivered yet: cancel it

    def _run(self) -> None:
        while True:
            time.sleep(self.POLL)
            now = monotonic()
            for ident, scope in list(self.active.items()):
                if scope.fired or now < scope.deadline + _grace(scope.limits.timeout):
                    continue
                with self.lock:
                    scope.fired = True
                    if self.active.get(ident) is scope and scope.ident:
                        _async_raise(ident, _Interrupt)


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # a forked child has no watchdog thread (and maybe a held lock)
    os.register_at_fork(after_in_child=_WATCHDOG._reset)


def _interrupted(scope: _Scope, tb) -> TemplateLimitError:
    detail = f"the template ran past {_format_seconds(scope.limits.timeout)}"
    return _located_error("time", detail, 0, -1, tb)


# ---------------------------------------------------------------------------------------------------- location


def _template_frame(tb=None):
    """The innermost frame running a compiled template: from a traceback, or from the current stack."""
    found = None
    if tb is not None:
        while tb is not None:
            if "__jinja_template__" in tb.tb_frame.f_globals:
                found = (tb.tb_frame, tb.tb_lineno)
            tb = tb.tb_next
        return found
    frame = sys._getframe(2)
    for _ in range(64):
        if frame is None:
            return None
        if "__jinja_template__" in frame.f_globals:
            return frame, frame.f_lineno
        frame = frame.f_back
    return None


def _located_error(limit: str, detail: str, line: int, offset: int, tb=None) -> TemplateLimitError:
    column = None
    found = _template_frame(tb)
    template = found[0].f_globals["__jinja_template__"] if found else None
    if not line and found:
        try:
            line = template.get_corresponding_lineno(found[1])
        except Exception:  # noqa: BLE001 - a place is a courtesy
            line = 0
    source = getattr(template, "tk_source", None)
    if offset >= 0 and isinstance(source, str) and offset <= len(source):
        line = source.count("\n", 0, offset) + 1
        column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return TemplateLimitError(limit, detail, line=line or None, column=column)


def attach_source(template: jinja2.Template, source: str) -> jinja2.Template:
    """Let errors in `template` (compiled from an AST parsed out of `source`) name their column."""
    template.tk_source = source  # type: ignore[attr-defined]
    return template


# ------------------------------------------------------------------------------------------------------- sizes


def _str_bytes(text: str) -> int:
    return len(text) if text.isascii() else 4 * len(text)


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


def _loop(iterable, scope: _Scope, weight: int, line: int, offset: int) -> Iterator:
    """The items of a lazy or long iterable, checking the deadline every 16 and charging `weight` bytes each."""
    count = 0
    for item in iterable:
        count += 1
        if not count & 15:
            scope.tick(line, offset)
        if weight:
            scope.charge(weight, line, offset)
        yield item


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


# ---------------------------------------------------------------------------------------------- the environment


def _place(node: nodes.Node) -> tuple[int, int]:
    lineno = getattr(node, "lineno", None) or 0
    return int(lineno), getattr(lineno, "offset", -1)


def _literal_bytes(body: list[nodes.Node]) -> int:
    """The literal text one iteration of a loop with this body may write. A nested loop's text is its own (its
    iterable charges it per iteration), and expressions hold no literal text: neither is walked, so that
    compiling stays linear in the template's size."""
    size = 0
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.TemplateData):
            size += len(node.data)
        elif not isinstance(node, (nodes.For, nodes.Expr)):
            stack.extend(node.iter_child_nodes())
    return size


def _limited_binop(op: str):
    @optimizeconst
    def visitor(self: LimitedCodeGenerator, node: nodes.BinExpr, frame) -> None:
        line, offset = _place(node)
        self.write(f"environment.tk_binop(context, {op!r}, {line}, {offset}, ")
        self.visit(node.left, frame)
        self.write(", ")
        self.visit(node.right, frame)
        self.write(")")

    return visitor


class LimitedCodeGenerator(CodeGenerator):
    """jinja2's code generator, with the limit hooks written into the template's Python code."""

    visit_Add = _limited_binop("+")
    visit_Mul = _limited_binop("*")
    visit_Pow = _limited_binop("**")
    visit_Mod = _limited_binop("%")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_iterables: dict[int, tuple[int, int, int]] = {}

    def visit_For(self, node: nodes.For, frame) -> None:
        # jinja2 allows no custom node types: the iterable is recognised by identity when it is visited.
        self._loop_iterables[id(node.iter)] = (_literal_bytes(node.body), *_place(node))
        try:
            super().visit_For(node, frame)
        finally:
            del self._loop_iterables[id(node.iter)]

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        loop = self._loop_iterables.get(id(node)) if self._loop_iterables else None
        if loop is None:
            return super().visit(node, *args, **kwargs)
        self.write("environment.tk_iter(")
        super().visit(node, *args, **kwargs)
        self.write(f", {loop[0]}, {loop[1]}, {loop[2]})")

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        if frame.eval_ctx.volatile:  # as jinja2 writes it
            markup = "context.eval_ctx.volatile"
        else:
            markup = "True" if frame.eval_ctx.autoescape else "False"
        line, offset = _place(node)
        self.write("environment.tk_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write(f"), {markup}, {line}, {offset})")

    @optimizeconst
    def visit_Getitem(self, node: nodes.Getitem, frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        line, offset = _place(node)
        self.write("environment.tk_slice(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
            self.write(", ")
        self.write(f"), {line}, {offset})")

    @optimizeconst
    def visit_Call(self, node: nodes.Call, frame, forward_caller: bool = False) -> None:
        line, offset = _place(node)
        self.write(f"environment.tk_call(context, {line}, {offset}, ")
        self.visit(node.node, frame)
        extra_kwargs = {"caller": "caller"} if forward_caller else None
        loop_kwargs = {"_loop_vars": "_loop_vars"} if frame.loop_frame else {}
        block_kwargs = {"_block_vars": "_block_vars"} if frame.block_frame else {}
        if extra_kwargs:
            extra_kwargs.update(loop_kwargs, **block_kwargs)
        elif loop_kwargs or block_kwargs:
            extra_kwargs = dict(loop_kwargs, **block_kwargs)
        self.signature(node, frame, extra_kwargs)
        self.write(")")


class LimitedTemplate(jinja2.Template):
    """A template whose renders run inside the limits in force (a default scope when none is)."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        scope = _SCOPE.get()
        if scope is None:
            if not _ENABLED:
                return super().render(*args, **kwargs)
            with LimitScope(DEFAULT_LIMITS):
                return self.render(*args, **kwargs)
        depth = _start_render(scope)
        try:
            return super().render(*args, **kwargs)
        except (RecursionError, MemoryError) as error:
            raise _python_limit(scope, error) from None
        finally:
            scope.depth = depth

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        scope = _SCOPE.get()
        if scope is None:
            if not _ENABLED:
                yield from super().generate(*args, **kwargs)
                return
            with LimitScope(DEFAULT_LIMITS):
                yield from self.generate(*args, **kwargs)
            return
        depth = _start_render(scope)
        try:
            yield from super().generate(*args, **kwargs)
        except (RecursionError, MemoryError) as error:
            raise _python_limit(scope, error) from None
        finally:
            scope.depth = depth


def _start_render(scope: _Scope) -> int:
    """Start a render in `scope`: its call depth counts from zero; the outer depth is returned to restore."""
    if scope.error is not None:  # a limit already reached in this operation: it is doomed, render nothing more
        raise scope.error.with_traceback(None)
    depth, scope.depth = scope.depth, 0
    return depth


def _python_limit(scope: _Scope, error: BaseException) -> TemplateLimitError:
    """Python's own `RecursionError` or `MemoryError` in a render, as the limit it stands for."""
    if isinstance(error, RecursionError):
        found = _located_error("recursion", "Python's recursion limit was reached", 0, -1, error.__traceback__)
    else:
        found = _located_error("memory", "Python ran out of memory", 0, -1, error.__traceback__)
    return scope.record(found)


def _finalize(value: Any) -> Any:
    """What `{{ … }}` writes: counted (and, for a value that is not text, its size checked first)."""
    scope = _SCOPE.get()
    if scope is None:
        return value
    kind = type(value)
    if kind is str:
        scope.spent += len(value) if value.isascii() else 4 * len(value)
        if scope.spent > scope.cap:
            scope.too_big(0, "", 0, -1)
    elif kind not in _SMALL:
        size = _printed(value, _remaining(scope))
        scope.need(size, "the text of a value written")
        scope.charge(size)
    return value


class _BoundedFormatterMixin:
    _env: LimitedEnvironment

    def format_field(self, value: Any, format_spec: str) -> Any:
        scope = _SCOPE.get()
        if scope is not None:
            widths = [int(number) if len(number) < 19 else float("inf") for number in re.findall(r"\d+", format_spec)]
            size = max(widths, default=0) * 4 + _printed(value, _remaining(scope))
            scope.need(size, "a formatted field")
        result = super().format_field(value, format_spec)  # type: ignore[misc]
        if scope is not None:
            scope.charge(_str_bytes(result) if isinstance(result, str) else 64)
        return result


class _BoundedFormatter(_BoundedFormatterMixin, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_BoundedFormatterMixin, SandboxedEscapeFormatter):
    pass


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, counting time, memory and call depth (see the module docstring).

    Templates render exactly as in `ImmutableSandboxedEnvironment` with the same options, extensions,
    filters and globals, until a limit is reached.

    Example:
        >>> env = LimitedEnvironment(trim_blocks=True)
        >>> env.from_string("{% for i in range(3) %}{{ i ~ '-' }}{% endfor %}").render()
        '0-1-2-'
        >>> with limit_scope(timeout=0.2):
        ...     env.from_string("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}").render()
        Traceback (most recent call last):
        ...
        templatekit.errors.TemplateLimitError: <template>:1:31: time limit exceeded: the template ran past 0.2 s
    """

    code_generator_class = LimitedCodeGenerator
    template_class = LimitedTemplate
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    #: Parse with source offsets, so that an error can name its column (a little slower to compile).
    offsets = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("finalize") is not None:
            raise TypeError("LimitedEnvironment counts output through finalize; it takes no finalize of its own")
        kwargs["finalize"] = _finalize
        super().__init__(*args, **kwargs)
        self.filters = _GuardedFilters(self.filters)
        self.globals["lipsum"] = lipsum

    # -- parsing: with source offsets, so that errors can name a column

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        from .syntax import parse_with_offsets

        plain = self.offsets and all(
            type(ext).preprocess is jinja2.ext.Extension.preprocess
            and type(ext).filter_stream is jinja2.ext.Extension.filter_stream
            for ext in self.extensions.values()
        )
        if plain:
            try:
                return parse_with_offsets(self, source, name)
            except Exception:  # noqa: BLE001 - jinja2's own parser gives its own error below
                pass
        return super()._parse(source, name, filename)

    def from_string(self, source, globals=None, template_class=None):  # noqa: A002 - jinja2's signature
        template = super().from_string(source, globals, template_class)
        if isinstance(source, str):
            template.tk_source = source
        return template

    # -- hooks called by the compiled template

    def tk_iter(self, iterable: Any, weight: int, line: int, offset: int) -> Any:
        scope = _SCOPE.get()
        if scope is None:
            return iterable
        if monotonic() > scope.deadline:
            scope.late(line, offset)
        if type(iterable) in _SIZED:
            count = len(iterable)
            if weight:
                scope.charge(weight * count, line, offset)
            if count <= _SHORT:
                return iterable
            return _loop(iterable, scope, 0, line, offset)
        return _loop(iterable, scope, weight, line, offset)

    def tk_binop(self, context, op: str, line: int, offset: int, left: Any, right: Any) -> Any:
        scope = _SCOPE.get()
        if scope is None:
            return self.binop_table[op](left, right)
        left_kind = type(left)
        if op == "+" and left_kind is str and type(right) is str:  # the common case, inline
            size = len(left) + len(right)
            if not (left.isascii() and right.isascii()):
                size *= 4
            if size > _BIG and scope.spent + size > scope.cap:
                scope.too_big(size, "a string built with +", line, offset)
            result = left + right
            scope.spent += size
            if scope.spent > scope.cap:
                scope.too_big(size, "a string built with +", line, offset)
            return result
        size = _binop_bytes(op, left, right, scope, line, offset)
        if size:
            if scope.spent + size > scope.cap:
                scope.too_big(size, _what(op, left), line, offset)
            result = self.binop_table[op](left, right)
            scope.spent += size
            return result
        return scope.account(self.binop_table[op](left, right), line, offset)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        return self.tk_binop(context, operator, 0, -1, left, right)

    def tk_concat(self, parts: tuple, markup: bool, line: int, offset: int) -> str:
        scope = _SCOPE.get()
        if scope is not None:
            size = 0.0
            for part in parts:
                if type(part) is str:
                    size += len(part) if part.isascii() else 4 * len(part)
                else:
                    size += _printed(part, _remaining(scope))
            if scope.spent + size > scope.cap:
                scope.too_big(size, "a string joined with ~", line, offset)
            scope.spent += size
        return markup_join(parts) if markup else str_join(parts)

    def tk_slice(self, value: Any, part: slice, line: int, offset: int) -> Any:
        scope = _SCOPE.get()
        if scope is not None and isinstance(value, (str, list, tuple)):
            try:
                count = len(range(*part.indices(len(value))))
            except (TypeError, ValueError):
                count = 0  # a bad slice: indexing raises jinja2's own error below
            if isinstance(value, str):
                size = count * (1 if value.isascii() else 4)
            else:
                size = 8 * count + 64
            scope.need(size, "a slice", line, offset)
            scope.charge(size, line, offset)
        return value[part]

    def tk_call(self, context, line: int, offset: int, function: Any, /, *args: Any, **kwargs: Any) -> Any:
        scope = _SCOPE.get()
        if scope is None:
            return self.call(context, function, *args, **kwargs)
        if monotonic() > scope.deadline:
            scope.late(line, offset)
        kind = type(function)
        if kind is types.BuiltinMethodType:
            if isinstance(function.__self__, str):
                size = _method_bytes(function, args, kwargs, scope)
                if size and scope.spent + size > scope.cap:
                    scope.too_big(size, f"str.{function.__name__}()'s result", line, offset)
        elif kind is not types.MethodType and isinstance(function, (Macro, LoopContext)):
            if isinstance(function, LoopContext) and args:  # loop(children): the children are a loop too
                args = (self.tk_iter(args[0], 0, line, offset), *args[1:])
            scope.enter(line, offset)
            try:
                result = self.call(context, function, *args, **kwargs)
            finally:
                scope.depth -= 1
            return scope.account(result, line, offset)
        # What SandboxedEnvironment.call does, without a frame of its own (this runs for every call).
        if getattr(function, "unsafe_callable", False) or getattr(function, "alters_data", False):
            raise SecurityError(f"{function!r} is not safely callable")
        result = context.call(function, *args, **kwargs)
        kind = type(result)
        if kind is str:
            scope.spent += len(result) if result.isascii() else 4 * len(result)
            if scope.spent > scope.cap:
                scope.too_big(0, "", line, offset)
            return result
        if kind in _SMALL:
            return result
        return scope.account(result, line, offset)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """jinja2's sandboxed `str.format` / `format_map`, with each field's size checked."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        text = value.__self__
        if not isinstance(text, str):
            return None
        text_type = type(text)
        is_format_map = value.__name__ == "format_map"
        if isinstance(text, Markup):
            formatter: SandboxedFormatter = _BoundedEscapeFormatter(self, escape=text.escape)
        else:
            formatter = _BoundedFormatter(self)
        vformat = formatter.vformat

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return text_type(vformat(text, args, kwargs))

        return functools.update_wrapper(wrapper, value)


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


# ------------------------------------------------------------------------------ environments that mirror others


def mirror_environment(reference: jinja2.Environment, *, offsets: bool = True) -> LimitedEnvironment:
    """A `LimitedEnvironment` configured exactly like `reference`: the same options, the same extension
    classes (in order), filters, tests, globals and policies. `offsets=False` parses with jinja2's own
    parser (faster to compile; errors then name the line only).

    Example:
        >>> from jinja2.sandbox import ImmutableSandboxedEnvironment
        >>> twin = mirror_environment(ImmutableSandboxedEnvironment(trim_blocks=True))
        >>> twin.trim_blocks, isinstance(twin, LimitedEnvironment)
        (True, True)
    """
    if reference.finalize is not None or reference.is_async:
        raise ValueError("cannot mirror an environment with a finalize function or async rendering")
    options = {
        name: getattr(reference, name)
        for name in (
            "block_start_string",
            "block_end_string",
            "variable_start_string",
            "variable_end_string",
            "comment_start_string",
            "comment_end_string",
            "line_statement_prefix",
            "line_comment_prefix",
            "trim_blocks",
            "lstrip_blocks",
            "newline_sequence",
            "keep_trailing_newline",
            "optimized",
            "undefined",
            "autoescape",
        )
    }
    environment = LimitedEnvironment(extensions=[type(ext) for ext in reference.extensions.values()], **options)
    environment.offsets = offsets
    environment.filters.update(reference.filters)
    environment.tests = dict(reference.tests)
    environment.globals.update(reference.globals)
    environment.globals["lipsum"] = lipsum
    environment.policies = dict(reference.policies)
    return environment
