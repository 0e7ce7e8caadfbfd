"""The backstop for what Python cannot interrupt: work on one template in a child process under hard limits.

The hooks count every step a template takes and size what it builds before it is built, and a watchdog thread
interrupts Python code past the wall-clock backstop. Neither reaches into one long C call (a regular expression,
a compile of a huge template, a library's own loop) or memory a library takes for itself. `run_isolated` runs
the work in a forked child with an address-space limit (RLIMIT_AS: what the child maps at the fork, plus
`max_memory`, plus `HEADROOM` for the interpreter's own work) and a CPU-time limit (RLIMIT_CPU, from the
wall-clock backstop), and the parent kills it at the backstop. The result comes back pickled; a child that is
killed becomes one `TemplateLimitError`, so a command over many templates reports that one and goes on.

A fork costs a few milliseconds: the child shares the parent's memory (modules imported, environments built)
until it writes to it. Where there is no `fork` (Windows), the work runs in this process, under the hooks alone.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

try:
    import resource
except ImportError:  # Windows: no resource limits, and no fork either
    resource = None  # type: ignore[assignment]

from ...errors import TemplateLimitError
from .scope import OUT_OF_MEMORY, active_limits, enabled, limit_scope
from .settings import MIB, Limits, _format_seconds, _late_detail, format_size

__all__ = ["HEADROOM", "available", "run_isolated"]

#: Address space a child may take beyond `max_memory`: the interpreter's own work on a template (parsing,
#: planning, verifying, tokenizing), which the hooks do not count, and the address space threads reserve.
HEADROOM = 1024 * MIB
# Seconds past the wall-clock backstop (after the child's own watchdog, which waits up to 5 s) before the CPU-time
# limit stops the child, and before the parent kills a child still at work.
_CPU_GRACE, _KILL_GRACE = 6, 10.0
_T = TypeVar("_T")


def available() -> bool:
    """True where work can be isolated (a `fork`, and resource limits), and the limits are switched on."""
    return hasattr(os, "fork") and resource is not None and enabled()


def run_isolated(
    function: Callable[..., _T], /, *args: Any, limits: Limits | None = None, operations: int | None = 1, **kwargs: Any
) -> _T:
    """`function(*args, **kwargs)` in a forked child under `limits` (the limits in force by default), with hard
    limits on its address space and CPU time as well; its result, or the error it raised. A child killed at a
    hard limit raises `TemplateLimitError`. Without `fork`, the call runs here.

    `operations`: how many operations the work holds. One (the default) runs all of it in one scope of `limits`.
    More (patching a template, then rendering a conversation with it), or None (a whole dataset, one operation a
    row), leaves each to the scope the function opens itself, and gives the child that many wall-clock backstops
    (None: none; its address space is limited all the same).

    Example:
        >>> run_isolated(sum, [1, 2, 3])
        6
    """
    limits = limits if limits is not None else active_limits()
    if not available():
        with limit_scope(limits) if operations == 1 else contextlib.nullcontext():
            return function(*args, **kwargs)
    backstop = None if limits.timeout is None or operations is None else limits.timeout * operations
    for stream in (sys.stdout, sys.stderr):  # what is buffered now is written once, by the parent
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of fork in a process with threads (the watchdog's)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(write_end, limits if operations == 1 else None, backstop, limits.max_memory, (function, args, kwargs))
    os.close(write_end)
    try:
        payload, status = _collect(pid, read_end, backstop)
    finally:
        os.close(read_end)
    if payload is None:
        raise _killed(status, limits, backstop)
    outcome, value = pickle.loads(payload)
    if outcome == "returned":
        return value
    if isinstance(value, MemoryError):
        raise _memory_error(limits) from None
    if isinstance(value, TemplateLimitError) and value.detail == OUT_OF_MEMORY:  # at the address-space limit
        hard = _memory_error(limits)
        raise TemplateLimitError("memory", hard.detail, source=value.source, line=value.line, column=value.column)
    raise value


def _child(write_end: int, limits: Limits | None, backstop: float | None, memory: int | None, call: tuple) -> None:
    """Run `call` under `limits` (None: the scopes it opens itself), its CPU time limited from the `backstop`
    seconds and its address space from `memory`; write its outcome, pickled; exit."""
    function, args, kwargs = call
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C stops the child at once; the parent reports it
        faulthandler.disable()  # a crash is the parent's to report, in one line
        # A tokenizer's thread pool would reserve address space per thread (and a pool forked mid-work deadlocks).
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        _set_hard_limits(memory, backstop)
        try:
            with limit_scope(limits) if limits is not None else contextlib.nullcontext():
                payload = pickle.dumps(("returned", function(*args, **kwargs)))
        except BaseException as error:  # noqa: BLE001 - whatever it is, the parent raises it
            payload = _pickled_error(error)
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view) :]
    except BaseException:  # noqa: BLE001 - even a failure to report ends the child, which the parent reads as a kill
        code = 70
    finally:
        # No flush of stdout or stderr: a thread of the parent may have held their locks at the fork. The child
        # writes nothing to stdout; stderr is line-buffered.
        os._exit(code)


def _pickled_error(error: BaseException) -> bytes:
    try:
        return pickle.dumps(("raised", error))
    except Exception:  # noqa: BLE001 - an error that cannot be pickled comes back as its text
        return pickle.dumps(("raised", RuntimeError(f"{type(error).__name__}: {error}")))


def _mapped_bytes() -> int:
    """The address space this process maps now (VmSize), or 0 where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _set_hard_limits(memory: int | None, backstop: float | None) -> None:
    if memory is not None:
        mapped = _mapped_bytes()
        if mapped:
            cap = mapped + memory + HEADROOM
            _lower(resource.RLIMIT_AS, cap, cap)
    if backstop is not None:
        seconds = int(backstop) + _CPU_GRACE
        _lower(resource.RLIMIT_CPU, seconds, seconds + 5)


def _lower(kind: int, soft: int, hard: int) -> None:
    """Lower a resource limit to (soft, hard), never raising one that is already lower."""
    old_soft, old_hard = resource.getrlimit(kind)
    if old_hard != resource.RLIM_INFINITY:
        hard = min(hard, old_hard)
    if old_soft != resource.RLIM_INFINITY:
        soft = min(soft, old_soft)
    resource.setrlimit(kind, (min(soft, hard), hard))


def _collect(pid: int, read_end: int, backstop: float | None) -> tuple[bytes | None, int]:
    """The child's payload (None when it sent none whole) and its exit status; the child is killed at the
    wall-clock backstop plus a grace, if it is still at work then."""
    deadline = time.monotonic() + backstop + _KILL_GRACE if backstop is not None else None
    chunks: list[bytes] = []
    killed = False
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ready, _, _ = select.select([read_end], [], [], wait)
        except InterruptedError:
            continue
        if not ready:
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        chunk = os.read(read_end, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if killed:
        return None, -1
    exited = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return (b"".join(chunks) if exited and chunks else None), status


def _killed(status: int, limits: Limits, backstop: float | None) -> TemplateLimitError:
    if status == -1:
        return TemplateLimitError("time", _late_detail(limits.timeout))
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU:
            return TemplateLimitError(
                "time",
                f"the work used more CPU time than its {_format_seconds(backstop)} wall-clock backstop allows: "
                "raise it with --timeout SECONDS (timeout=), or turn it off with --timeout none",
            )
        if number == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        return _memory_error(limits, f"the process working on the template was killed ({name})")
    return _memory_error(limits, "the process working on the template stopped without a result")


def _memory_error(limits: Limits, what: str = "Python ran out of memory") -> TemplateLimitError:
    """The memory limit, as the child's hard limit met it."""
    if limits.max_memory is None:
        return TemplateLimitError("memory", what)
    return TemplateLimitError(
        "memory",
        f"{what} at its hard limit ({format_size(limits.max_memory)} for the template, plus "
        f"{format_size(HEADROOM)} for the interpreter); raise it with --max-memory SIZE (max_memory=)",
    )
