"""The sandbox: bounded work, memory and recursion for every render of an untrusted chat template.

A chat template is code from a stranger. jinja2's sandbox stops it from reaching Python's internals, but not
from looping for hours, doubling a string sixty times, comparing two values built from shared parts (2**60
items each, in one C call) or calling a macro from itself. Here the sandbox itself keeps count:

* **work, in steps**: every `for` loop's iterable goes through `LimitedEnvironment.tk_iter`, which counts each
  iteration by the size of the loop's body; every call, filter and comparing test counts too, comparisons,
  `in`, hashes and sorts by the *logical* size of what they compare (a part met again counted again, its size
  looked up: `work.logical_size`), and every byte built (`settings.STEPS_PER_BYTE`). Compiling a template counts
  by its nodes (`compiling`). A count, not a clock: the same template gets the same verdict on any machine,
  under any load (`Limits.max_steps`).
* **memory**: everything a template builds goes through a hook that knows the size of the result *before*
  building it: `+`, `*`, `**` and `%` (`call_binop`), `~` (`tk_concat`), slices, `str` and `bytes` methods,
  `format`, filters (`center`, `indent`, `join`, `replace`, `format`, `urlize`, `wordwrap`, `tojson`, `sum`, …),
  and what the template writes (`{{ … }}` through `finalize`, literal text once per loop iteration); a template
  is sized before it is parsed and compiled. Sizes are added up over the whole operation (all of one patch and
  its verification, or one conversation rendered), garbage included, against `Limits.max_memory`; a value that
  would take the sum past it is never built.
* **recursion**: macro, `caller()` and recursive `loop(…)` calls count their depth (`Limits.max_depth`),
  and a `RecursionError` or `MemoryError` from Python becomes the same error.
* **the backstops**: a watchdog thread interrupts Python code past a generous wall clock (`Limits.timeout`,
  60 s; None turns it off), and `isolation.run_isolated` (the CLI's way, `isolate=True` in the library) runs the
  work in a forked child under RLIMIT_AS and RLIMIT_CPU, for what Python cannot interrupt.

Breaching a limit raises `TemplateLimitError`, naming the limit and the line (and column, for templates
parsed with offsets) where it happened, and how to raise it. The first breach in a scope is sticky: if code
between the render and the scope swallows it as "the template raised", the scope raises it again on exit.

`limit_scope()` sets the limits for what runs inside it (this thread or task only); `bounded` gives a function
`max_steps=`, `max_memory=`, `timeout=` and `isolate=` keywords. Rendering is byte-identical to jinja2's: the
hooks check, then do exactly what the plain operator, filter or call does.

Modules: `settings` (the limits and their defaults), `scope` (where they are in force, the watchdog), `location`
(the place an error names), `sizes` (how big a result will be), `work` (how many steps an operation takes),
`filters` (the guarded filters and tests), `compiling` (what a compile costs), `codegen` and `environment` (the
hooks compiled into templates), `isolation` (the child process).
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
