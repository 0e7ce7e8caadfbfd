"""The sandbox: bounded time, memory and recursion for every render of an untrusted chat template.

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

Modules: `settings` (the limits and their defaults), `scope` (where they are in force, the watchdog),
`sizes` (how big a result will be), `codegen` and `environment` (the hooks compiled into templates).
"""

from __future__ import annotations

from ...errors import TemplateLimitError
from .compiling import charge_compiled, check_source_size, compile_cost
from .environment import LimitedEnvironment, mirror_environment
from .location import attach_source
from .scope import LimitScope, active_limits, bounded, enabled, limit_scope, on_switch, set_enabled
from .settings import DEFAULT, DEFAULT_LIMITS, Limits, format_size, parse_size
from .sizes import check_printable

__all__ = [
    "DEFAULT",
    "DEFAULT_LIMITS",
    "LimitScope",
    "LimitedEnvironment",
    "Limits",
    "TemplateLimitError",
    "active_limits",
    "attach_source",
    "bounded",
    "charge_compiled",
    "check_printable",
    "check_source_size",
    "compile_cost",
    "enabled",
    "format_size",
    "limit_scope",
    "mirror_environment",
    "on_switch",
    "parse_size",
    "set_enabled",
]
