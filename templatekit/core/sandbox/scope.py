"""Where limits are in force: scopes (`limit_scope`, `bounded`), the on/off switch, the watchdog thread that
interrupts Python-level work no hook sees, and the place in the template an error names."""

from __future__ import annotations

import ctypes
import functools
import inspect
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from time import monotonic
from typing import Any

from ...errors import TemplateLimitError
from .location import _located_error
from .settings import DEFAULT, DEFAULT_LIMITS, STEPS_PER_BYTE, Limits, _late_detail, format_size

# ------------------------------------------------------------------------------------------------------ scopes


class _Interrupt(BaseException):
    """Raised asynchronously in a thread by the watchdog when its deadline has long passed. A BaseException,
    so that no `except Exception` between the template and the scope can swallow it."""


_INF = float("inf")


class _Scope:
    """The limits in force, the deadline, and what has been spent, for one operation on one template.

    The hooks read `deadline`, `spent` and `cap` directly (they run for every operation a template does)."""

    __slots__ = (
        "limits",
        "deadline",
        "cap",
        "spent",
        "steps",
        "step_cap",
        "depth",
        "max_depth",
        "error",
        "parent",
        "ident",
        "fired",
        "compiled",
    )

    def __init__(self, limits: Limits, parent: _Scope | None):
        deadline = monotonic() + limits.timeout if limits.timeout is not None else _INF
        cap = limits.max_memory if limits.max_memory is not None else _INF
        step_cap = limits.max_steps if limits.max_steps is not None else _INF
        max_depth = limits.max_depth if limits.max_depth is not None else sys.maxsize
        if parent is not None:
            deadline = min(deadline, parent.deadline)
            cap = min(cap, parent.cap - parent.spent)
            step_cap = min(step_cap, parent.step_cap - parent.work())
            max_depth = min(max_depth, parent.max_depth)
        self.limits = limits
        self.deadline = deadline
        self.cap = cap
        self.spent = 0
        self.steps = 0
        self.step_cap = step_cap
        self.depth = 0
        self.max_depth = max_depth
        self.error: TemplateLimitError | None = None
        self.parent = parent
        self.ident = 0
        self.fired = False
        self.compiled: set[Any] | None = None  # the outermost scope's: templates whose compile is charged

    # -- checks, called by the hooks

    def work(self) -> float:
        """The steps done so far: those counted, and every byte built (`STEPS_PER_BYTE` a byte)."""
        return self.steps + self.spent * STEPS_PER_BYTE

    def tick(self, line: int = 0, offset: int = -1) -> None:
        if self.steps + self.spent * STEPS_PER_BYTE > self.step_cap:
            self.out_of_steps(line, offset)
        if monotonic() > self.deadline:
            self.late(line, offset)

    def step(self, count: float, line: int = 0, offset: int = -1) -> None:
        """Count `count` steps of work (before doing it, where it can be told)."""
        self.steps += count
        if self.steps + self.spent * STEPS_PER_BYTE > self.step_cap:
            self.out_of_steps(line, offset)

    def out_of_steps(self, line: int = 0, offset: int = -1):
        budget = self.limits.max_steps or self.step_cap
        detail = (
            f"the template did more than {budget:,.0f} steps of work (loop iterations, calls, comparisons, "
            "characters built); raise the budget with --max-steps N (max_steps=N)"
        )
        self.fail("step", detail, line, offset)

    def late(self, line: int = 0, offset: int = -1):
        self.fail("time", _late_detail(self.limits.timeout), line, offset)

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
            return _loop(value, self, 8, line, offset, 16)  # a filter's items: each runs a test or a filter
        elif isinstance(value, str):
            self.spent += _str_bytes(value)
        elif isinstance(value, (bytes, bytearray)):
            self.spent += len(value)
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
    """The context manager `limit_scope` returns (a class, not a generator: renders open one each). Once left,
    `work` holds the steps done in it (bytes built included): how close to `max_steps` the work came."""

    __slots__ = ("limits", "scope", "token", "work")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.scope: _Scope | None = None
        self.work = 0.0

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
        self.work = scope.work()
        parent = scope.parent
        if parent is not None:
            parent.spent += scope.spent
            parent.steps += scope.steps
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
    limits: Limits | None = None,
    *,
    timeout: Any = DEFAULT,
    max_memory: Any = DEFAULT,
    max_depth: Any = DEFAULT,
    max_steps: Any = DEFAULT,
) -> LimitScope:
    """A context manager that runs its block under `limits` (the enclosing scope's, or the defaults, with the
    keywords changed).

    A scope inside another can only tighten it: the earlier deadline, the smaller remaining memory and step
    budget win, and what the inner scope spends counts for the outer one. Leaving the scope raises the first
    `TemplateLimitError` raised in it, even if the code inside caught it.

    Example:
        >>> from templatekit.core.syntax import make_environment
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
    changed = {"timeout": timeout, "max_memory": max_memory, "max_depth": max_depth, "max_steps": max_steps}
    if any(value is not DEFAULT for value in changed.values()):
        limits = limits.replace(**changed)
    return LimitScope(limits)


def bounded(function: Callable) -> Callable:
    """Give `function` the keywords `max_steps`, `max_memory` (bytes, or `"512M"`), `timeout` (seconds of wall
    clock, a backstop) and `isolate`, and run it in a `limit_scope` with them (the defaults apply when they are
    not given); with `isolate=True`, in a child process under hard limits as well (`isolation.run_isolated`).

    Example:
        >>> @bounded
        ... def work(text):
        ...     return active_limits().max_steps
        >>> work("x"), work("x", max_steps=3)
        (50000000, 3)
    """

    @functools.wraps(function)
    def wrapper(
        *args,
        max_steps: Any = DEFAULT,
        max_memory: Any = DEFAULT,
        timeout: Any = DEFAULT,
        isolate: bool = False,
        **kwargs,
    ):
        with limit_scope(timeout=timeout, max_memory=max_memory, max_steps=max_steps) as limits:
            if isolate:
                from .isolation import run_isolated  # on use: the child process is the rare, heavy case

                return run_isolated(function, *args, limits=limits, **kwargs)
            return function(*args, **kwargs)

    signature = inspect.signature(function)
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter("max_steps", keyword, default=DEFAULT_LIMITS.max_steps),
        inspect.Parameter("max_memory", keyword, default=DEFAULT_LIMITS.max_memory),
        inspect.Parameter("timeout", keyword, default=DEFAULT_LIMITS.timeout),
        inspect.Parameter("isolate", keyword, default=False),
    ]
    parameters = list(signature.parameters.values())
    tail = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    head = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    wrapper.__signature__ = signature.replace(parameters=head + extra + tail)  # type: ignore[attr-defined]
    if wrapper.__doc__:
        wrapper.__doc__ += _BOUNDED_DOC
    return wrapper


_BOUNDED_DOC = """

    Limits (`templatekit.core.sandbox`): `max_steps` (default 50,000,000 steps of work) and `max_memory` bytes or
    `"512M"` (default 1 GiB) for all the work on the template, and `timeout`, a wall-clock backstop in seconds
    (default 60); None for no limit. Going past one raises `TemplateLimitError`. `isolate=True` does the work in
    a child process with hard limits (address space, CPU time) as well, for what Python cannot interrupt.
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
    return _located_error("time", _late_detail(scope.limits.timeout), 0, -1, tb)


def _str_bytes(text: str) -> int:
    return len(text) if text.isascii() else 4 * len(text)


def _loop(iterable, scope: _Scope, weight: int, line: int, offset: int, steps: int = 1) -> Iterator:
    """The items of a lazy or long iterable, charging `weight` bytes and `steps` steps each, and checking the
    budget and the deadline every 16."""
    count = 0
    for item in iterable:
        count += 1
        scope.steps += steps
        if weight:
            scope.charge(weight, line, offset)
        if not count & 15:
            scope.tick(line, offset)
        yield item


def _start_render(scope: _Scope) -> int:
    """Start a render in `scope`: its call depth counts from zero; the outer depth is returned to restore."""
    if scope.error is not None:  # a limit already reached in this operation: it is doomed, render nothing more
        raise scope.error.with_traceback(None)
    depth, scope.depth = scope.depth, 0
    return depth


OUT_OF_MEMORY = "Python ran out of memory"


def _python_limit(scope: _Scope, error: BaseException) -> TemplateLimitError:
    """Python's own `RecursionError` or `MemoryError` in a render, as the limit it stands for."""
    if isinstance(error, RecursionError):
        found = _located_error("recursion", "Python's recursion limit was reached", 0, -1, error.__traceback__)
    else:
        found = _located_error("memory", OUT_OF_MEMORY, 0, -1, error.__traceback__)
    return scope.record(found)
