"""One template for every setting of a switch: where two plans tag the same source differently, that part is
written once per setting, under a test of the switch (docs/design.md, invariant 6).

A plan is its edits in groups, one group per region (an opening and a closing tag, or one replacement that writes a
region twice under a role test). Groups that every plan shares stay as they are. Around the groups that differ,
the smallest run of whole statements of one body that holds them, and cuts no group in two, becomes

    {% if <test of the variant's setting> %}<the run, tagged as the variant>{% else %}<the run, tagged as the base>{% endif %}

with the whitespace markers the run had (a `{%-` it opened with, a newline a block tag would now eat). Runs that
only some variants touch choose between those variants only, so two switches that move different parts of the
template combine freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import PlanError
from .analysis import Body, Flow, Stmt
from .guards import Guard
from .regions import Edit
from .rewrite import apply_edits, choice_edit
from .switches import Setting
from .syntax import ParsedTemplate

__all__ = ["Plan", "Variant", "merge_plans", "setting_test"]

Group = tuple[Edit, ...]


@dataclass(frozen=True)
class Plan:
    """A patch as data: edits to `source`, grouped by the region that made them."""

    source: str
    groups: tuple[Group, ...]

    @property
    def text(self) -> str:
        return apply_edits(self.source, [edit for group in self.groups for edit in group])


@dataclass(frozen=True)
class Variant:
    """A plan that holds under the settings where `test` is true."""

    test: Guard
    plan: Plan


def _span(group: Group) -> tuple[int, int]:
    return min(edit.start for edit in group), max(edit.end for edit in group)


def _run(flow: Flow, low: int, high: int) -> tuple[Body, int, int]:
    """The innermost body, and the first and last of its items, whose run of whole items covers `[low, high]`."""
    body = flow.root
    while True:
        touched = [item for item in body.items if item.start < high and item.end > low]
        if not touched:
            raise PlanError(f"no statement holds the edits at offsets {low}..{high}")
        only = touched[0]
        if len(touched) == 1 and isinstance(only, Stmt):
            inner = next(
                (b for b in only.bodies if b.items and b.items[0].start <= low and high <= b.items[-1].end), None
            )
            if inner is not None:
                body = inner
                continue
        return body, touched[0].index, touched[-1].index


def _place(group: Group, start: int, end: int) -> str:
    """Where a group's edits fall: all "inside" `[start, end]`, all "outside" it, or "across" its edges."""
    if all(start <= edit.start and edit.end <= end for edit in group):
        return "inside"
    if all(edit.end <= start or edit.start >= end for edit in group):
        return "outside"
    return "across"


def _clusters(flow: Flow, plans: Sequence[Plan], differing: list[Group]) -> list[tuple[Body, int, int]]:
    """Disjoint runs of whole items that hold every differing group and cut no group of any plan in two."""
    everything = [group for plan in plans for group in plan.groups]
    runs: dict[tuple[int, int], tuple[Body, int, int]] = {}
    for low, high in sorted(_span(group) for group in differing):
        while True:
            body, first, last = _run(flow, low, high)
            start, end = body.items[first].start, body.items[last].end
            grow = [_span(g) for g in everything if _place(g, start, end) == "across"]
            grow += [(s, e) for s, e in runs if s < end and e > start and not (start <= s and e <= end)]
            if not grow:
                break
            low, high = min([start, *(s for s, _ in grow)]), max([end, *(e for _, e in grow)])
        if any(s <= start and end <= e for s, e in runs):
            continue  # inside a run found already
        runs = {key: run for key, run in runs.items() if not (start <= key[0] and key[1] <= end)}
        runs[(start, end)] = (body, first, last)
    joined: list[tuple[Body, int, int]] = []
    for body, first, last in (runs[key] for key in sorted(runs)):
        if joined and joined[-1][0] is body and joined[-1][2] + 1 == first:
            joined[-1] = (body, joined[-1][1], last)  # next to the run before: one choice for both
        else:
            joined.append((body, first, last))
    return joined


def merge_plans(parsed: ParsedTemplate, flow: Flow, base: Plan, variants: Sequence[Variant]) -> str:
    """The template tagged as `base` where every plan agrees, and per variant under its test where they differ.

    Raises `PlanError` when the differing edits cannot be held by whole statements of one body.
    """
    shared = set(base.groups)
    for variant in variants:
        shared &= set(variant.plan.groups)
    differing = [g for plan in [base, *(v.plan for v in variants)] for g in plan.groups if g not in shared]
    if not differing:
        return base.text
    edits: list[Edit] = []
    spans = []
    for body, first, last in _clusters(flow, [base, *(v.plan for v in variants)], differing):
        head, tail = body.items[first], body.items[last]

        def inside(plan: Plan) -> list[Edit]:
            return [e for g in plan.groups if _place(g, head.start, tail.end) == "inside" for e in g]

        branches = [(v.test, inside(v.plan)) for v in variants if inside(v.plan) != inside(base)]
        if branches:
            edits.append(choice_edit(parsed, head, tail, branches, inside(base)))
            spans.append((head.start, tail.end))
    for group in base.groups:
        if all(_place(group, start, end) == "outside" for start, end in spans):
            edits.extend(group)
    return apply_edits(parsed.source, edits)


def setting_test(setting: Setting) -> Guard:
    """A test written from scratch that is true exactly when the switches have `setting`'s values.

    Example:
        >>> str(setting_test(Setting((("enable_thinking", False),))))
        'enable_thinking is defined and enable_thinking == false'
    """
    guards = [Guard.switch_is(key, value) for key, value in setting.items]
    return guards[0] if len(guards) == 1 else Guard(" and ".join(f"({guard})" for guard in guards))
