"""One plan for one setting: regions (plan.py) written as edits (rewrite.py) under the tests a region needs (the
trained roles, the last turn), tried plainest first and verified against the template's own truth.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PlanError
from .guards import Guard
from .per_setting import Plan
from .plan import plan_regions
from .probes import ASSISTANT
from .regions import Region
from .report import Report
from .rewrite import region_edits
from .traced import Analysis
from .verify import foreign_text_trained, verify

__all__ = ["Goal", "plan_patch", "verify_setting"]


@dataclass(frozen=True)
class Goal:
    """What a patch must train: the turns of `train_roles` (only the last with `only_last_turn`); `strict` refuses
    whitespace trained after a stop marker, which is otherwise accepted with a note (imprecise, not wrong).

    Example:
        >>> Goal().train_roles, Goal(("bot",), strict=True).strict
        (('assistant',), True)
    """

    train_roles: tuple[str, ...] = (ASSISTANT,)
    only_last_turn: bool = False
    strict: bool = False


def verify_setting(patched: str, truth: Analysis, strict: bool = True) -> Report:
    """`verify` on `truth`'s probes, and on the probes of the content shape it was not planned from, that nothing
    but the trained speakers' own text is trained there either."""
    report = verify(truth.parsed.source, patched, truth.probes, truth.layouts, strict)
    if report.ok:
        report.reasons = foreign_text_trained(patched, truth.unplanned, truth.trained_roles)
        report.ok = not report.reasons
    return report


def _condition(region: Region, goal: Goal) -> Guard:
    """The test under which a region also written for untrained messages is trained: the message's role."""
    if len(region.targets) != 1:
        raise PlanError("a region shared with untrained messages has no single message variable to test")
    target = next(iter(region.targets))
    condition = Guard.role_in(target, goal.train_roles)
    return condition & Guard.last_of_roles(target, goal.train_roles) if goal.only_last_turn else condition


def _closing_condition(region: Region, goal: Goal, wrote_content: bool = False) -> Guard:
    """The test under which a stop marker written outside the turn's own outputs belongs to a trained turn."""
    if region.closes == "after":
        return Guard.last_message_role_in(goal.train_roles)
    if goal.only_last_turn:
        raise PlanError("text written by another message's branch cannot be limited to the last turn")
    if region.closes == "previous":
        return Guard.next_role_in(goal.train_roles)
    condition = Guard.previous_role_in(goal.train_roles, wrote_content)
    if region.names_role and len(region.targets) == 1:
        # The next message's role token: a stop where another speaker's turn opens, not where the turn goes on or
        # hands over to the assistant (whose header the model does not write to stop).
        speakers = dict.fromkeys([*goal.train_roles, ASSISTANT])
        condition = condition & Guard.role_not_in(next(iter(region.targets)), speakers)
    return condition


def plan_patch(analysis: Analysis, truth: Analysis, goal: Goal) -> tuple[Plan | None, Report]:
    """The first plan of `analysis`'s source that verifies against `truth` (the original template's analysis under
    the same setting), tried plainest first; the plainest plan's report when none does. Plans that leave
    whitespace after the stop marker untrained are tried before those that train it, which only a goal that is
    not `strict` accepts."""
    reports = []
    for strict in (True,) if goal.strict else (True, False):
        for pair_branches in (False, True):
            plan, report = _try_plan(analysis, truth, goal, pair_branches, strict)
            if plan is not None:
                return plan, report
            reports.append(report)
    return None, reports[0]


def _try_plan(
    analysis: Analysis, truth: Analysis, goal: Goal, pair_branches: bool, strict: bool
) -> tuple[Plan | None, Report]:
    try:
        regions = plan_regions(analysis.flow, analysis.traces, lambda layout: layout.trained, pair_branches)
    except PlanError as error:
        return None, Report(ok=False, reasons=[str(error)])
    if not regions:
        return None, Report(ok=False, reasons=["no trained turn was found in any probe rendering"])
    # Plainest first: guards only where a region also writes untrained messages, then on every region; then a stop
    # token written by the next message trained only after a previous message that wrote content of its own (a
    # template that drops tool calls writes nothing for such a message).
    attempts = [(False, False), (True, False)] if not goal.only_last_turn else [(True, False)]
    if any(region.closes == "next" for region in regions):
        attempts.append((attempts[0][0], True))
    last_report = None
    for guard_all, wrote_content in attempts:
        try:
            groups = []
            for region in regions:
                guarded = region.guard or (guard_all and bool(region.targets))
                if region.closes:
                    condition = _closing_condition(region, goal, wrote_content)
                else:
                    condition = _condition(region, goal) if guarded else None
                if region.when is not None:
                    condition = region.when & condition if condition is not None else region.when
                groups.append(tuple(region_edits(analysis.parsed, region, condition)))
            plan = Plan(analysis.parsed.source, tuple(groups))
            patched = plan.text
        except PlanError as error:
            last_report = Report(ok=False, reasons=[str(error)])
            continue
        report = verify_setting(patched, truth, strict)
        if report.ok:
            return plan, report
        last_report = report
    return None, last_report
