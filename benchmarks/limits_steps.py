"""What a step of the sandbox's budget costs on this machine (`limits_overhead.py --steps`).

For loops of a dozen shapes (an empty body, calls, filters, macros, attribute lookups, comparisons, namespaces,
`selectattr`, `tojson`, …) the time per iteration, the steps counted per iteration and the nanoseconds per step;
then the most steps any corpus template's patch takes, against the default budget. The weights aim at steps of
roughly equal cost, so that the budget's worst case (the slowest shape, run until the budget is spent) stays far
below the wall-clock backstop, while no real template comes near the budget.
"""

from __future__ import annotations

import time
from pathlib import Path

import templatekit
from templatekit.core.sandbox import DEFAULT_LIMITS, limit_scope
from templatekit.core.syntax import make_environment
from templatekit.core.tags import mentions_generation_tag

PREAMBLE = (
    "{% macro m(x) %}{{ x }}{% endmacro %}{% set d = {'a': {'b': {'c': 1}}} %}{% set s = 'x' * 1000 %}"
    "{% set ns = namespace(x=0) %}{% set ms = [{'role': 'user', 'content': 'hi'}] * 10 %}"
)
SHAPES = {
    "empty body": "",
    "filter": "{{ j|string }}",
    "method call": "{{ 'a'.upper() }}",
    "macro call": "{{ m(j) }}",
    "attributes": "{% if d.a.b.c == 2 and d.a.b.c == 3 %}x{% endif %}",
    "list compare": "{% if [j] == [1, 2] %}x{% endif %}",
    "in a string": "{% if 'zz' in s %}x{% endif %}",
    "dict literal": "{% set x = {'a': j, 'b': j, 'c': [j, j, j]} %}",
    "concatenation": "{% set x = 'abc' ~ j ~ 'def' %}",
    "namespace set": "{% set ns.x = ns.x + 1 %}",
    "test": "{% if j is divisibleby 3 %}{% endif %}",
    "selectattr": "{{ ms|selectattr('role', 'eq', 'user')|list|length }}",
    "tojson": "{{ ms|tojson }}",
}
ITERATIONS = 20_000


def _per_step(body: str) -> tuple[float, float]:
    template = make_environment().from_string(PREAMBLE + f"{{% for j in range({ITERATIONS}) %}}{body}{{% endfor %}}")
    best, work = float("inf"), 0.0
    for _ in range(3):
        scope = limit_scope(max_steps=None, timeout=None, max_memory=None)
        with scope:
            started = time.perf_counter()
            template.render()
            best = min(best, time.perf_counter() - started)
        work = scope.work
    return best, work


def _corpus_largest(corpus: Path) -> tuple[float, str]:
    largest, name = 0.0, ""
    for path in sorted(corpus.glob("**/*.jinja")):
        text = path.read_text(encoding="utf-8")
        scope = limit_scope(max_steps=None, timeout=None, max_memory=None)
        try:
            with scope:
                if not (mentions_generation_tag(text) and templatekit.check_template(text).ok):
                    templatekit.patch_template(text, retag=True)
        except templatekit.TemplateKitError:
            pass
        if scope.work > largest:
            largest, name = scope.work, str(path.relative_to(corpus))
    return largest, name


def main(corpus: Path) -> int:
    print(f"{'loop body':<16} {'us/iteration':>13} {'steps/iteration':>16} {'ns/step':>8}")
    costs = []
    for name, body in SHAPES.items():
        seconds, work = _per_step(body)
        costs.append(seconds / work * 1e9)
        print(f"{name:<16} {seconds / ITERATIONS * 1e6:13.2f} {work / ITERATIONS:16.1f} {costs[-1]:8.1f}", flush=True)
    budget = DEFAULT_LIMITS.max_steps
    print(
        f"slowest step {max(costs):.0f} ns: the default budget of {budget:,} steps is {max(costs) * budget / 1e9:.1f} s"
    )
    largest, name = _corpus_largest(corpus)
    print(f"largest corpus patch: {largest:,.0f} steps ({name}), {largest / budget * 100:.0f} % of the budget")
    return 0
