"""What compiling a template costs, charged like any other work: steps and memory, told from its size first.

jinja2 lexes, parses, generates Python and compiles it in calls no hook reaches, and its cost grows with the
template: a megabyte of dense Jinja takes a minute and gigabytes to patch. So a template is sized before it is
parsed (by its characters) and before its code is generated (by its nodes), and refused there when its compile
would not fit the memory or the steps left. The cost is kept on the compiled template and charged again each time
a cache hands it out, so that a cached template costs the same as a fresh one: the verdict is one.
"""

from __future__ import annotations

from typing import Any

from jinja2 import nodes

from .codegen import walk
from .scope import _SCOPE, LimitScope, enabled
from .settings import DEFAULT_LIMITS

__all__ = ["charge_compiled", "check_source_size", "compile_cost"]

#: Memory parsing may take per character of source, at most (a long list literal: its tokens, their places, its AST).
COMPILE_BYTES_PER_CHAR = 512
#: Memory the work on a compiled template may take per node of its AST (the patcher's readings of it, its code).
BYTES_PER_NODE = 8 << 10
#: Steps a compile takes: a fixed part, and each node's share of generating and compiling Python code
#: (about 25 microseconds a node, 1.5 milliseconds at least, measured on the corpus).
COMPILE_STEPS, STEPS_PER_NODE = 15_000, 250


def _charge(steps: float, need: float, what: str) -> None:
    """Charge the work on the whole template: an error names its first line."""
    scope = _SCOPE.get()
    if scope is None and not enabled():  # the limits switched off (benchmarks)
        return
    if scope is None:
        with LimitScope(DEFAULT_LIMITS):  # outside every scope (a compile at import time): the default limits
            _charge(steps, need, what)
        return
    scope.need(need, what, 1)
    scope.step(steps, 1)


def check_source_size(source: str) -> None:
    """Refuse, before parsing it, a template whose parsing alone would take more memory than is left.

    Example:
        >>> from templatekit.core.sandbox import limit_scope
        >>> with limit_scope(max_memory="1M"):
        ...     check_source_size("{{ [" + "1," * 5000 + "1] }}")
        Traceback (most recent call last):
        ...
        templatekit.errors.TemplateLimitError: <template>:1: memory limit exceeded: compiling a template of 10,009 characters would take 4.9 MiB, more than the 1 MiB limit
    """
    _charge(0, COMPILE_BYTES_PER_CHAR * len(source), f"compiling a template of {len(source):,} characters")


def compile_cost(ast: nodes.Template) -> tuple[int, int]:
    """Charge compiling `ast` (steps, and the memory it needs) before its code is generated; the cost, for
    `charge_compiled` to charge when the compiled template comes out of a cache."""
    count = sum(1 for _ in walk([ast]))
    cost = (COMPILE_STEPS + STEPS_PER_NODE * count, BYTES_PER_NODE * count)
    _charge(*cost, f"compiling a template of {count:,} nodes")
    return cost


def charge_compiled(template: Any) -> Any:
    """`template`, its compile charged once in the operation under way (the outermost scope), whether it was
    compiled in it or came out of a cache: a template costs the same however warm the caches are."""
    scope = _SCOPE.get()
    cost = getattr(template, "tk_cost", None)
    if scope is None or cost is None:
        return template
    while scope.parent is not None:
        scope = scope.parent
    if scope.compiled is None:
        scope.compiled = set()
    if template not in scope.compiled:
        scope.compiled.add(template)
        _charge(0 if getattr(template, "tk_fresh", False) else cost[0], cost[1], "compiling the template")
    template.tk_fresh = False
    return template
