"""One template for every setting of the template's switches (docs/design.md, invariant 6).

The template is analysed under each setting (`switches.settings`); the default setting's plan is verified under
every other; where some setting needs the tags elsewhere, that setting's own plan is merged in, the part that
differs written once per setting under a test of the switch (`per_setting.merge_plans`), and the merged template
verified under every setting again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from ..errors import PatchError, PlanError, TemplateKitError, TemplateLimitError
from .guards import Guard
from .inline import inlined_sources
from .per_setting import Plan, Variant, merge_plans, setting_test
from .planning import Goal, plan_patch, verify_setting
from .report import Report
from .switches import Setting, settings, switch_tests
from .syntax import ParsedTemplate, parse_template
from .traced import Analysis, Traceable, analyse

__all__ = ["Settings", "analyse_settings", "patch_every_setting", "patch_inlined", "verify_every_setting"]


@dataclass
class Settings:
    """The template analysed under each setting of its switches (`switches.settings`): the first is the caller's
    own (or none); `alike` maps a setting that renders every probe as an earlier one does to that one."""

    analyses: dict[Setting, Analysis]
    alike: dict[Setting, Setting] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def default(self) -> Analysis:
        return next(iter(self.analyses.values()))

    def analysis_of(self, setting: Setting) -> Analysis:
        """The analysis for `setting`, or for the setting it renders like."""
        return self.analyses.get(setting) or self.analyses[self.alike.get(setting, next(iter(self.analyses)))]

    @property
    def names(self) -> list[str]:
        return [setting.name for setting in [*self.analyses, *self.alike]]


def analyse_settings(
    source: str,
    goal: Goal,
    name: str | None = None,
    template_kwargs: dict | None = None,
    settings_of: str | None = None,
    only: Collection[Setting] | None = None,
) -> Settings:
    """`analyse` under every setting of the template's switches (those of `settings_of`'s source, default
    `source`'s own; `only` some of them). The first setting (the caller's `template_kwargs`) must analyse; a
    setting the template rejects (it raises, or renders no trained turn) is left out, and one that renders like
    another shares its analysis."""
    traceable = Traceable.of(source, name)
    first = analyse(traceable, goal.train_roles, goal.only_last_turn, name, template_kwargs)
    switches_source = first.parsed if settings_of is None else parse_template(settings_of)
    default, *others = settings(switches_source.ast, template_kwargs)
    found = Settings({default: first})
    seen = {_rendering(first): default}
    for setting in others:
        if only is not None and setting not in only:
            continue
        try:
            # The default setting decided the template writes turns (no judge): a switch does not make it one.
            analysis = analyse(traceable, goal.train_roles, goal.only_last_turn, name, setting.kwargs, False)
        except TemplateLimitError:
            raise
        except TemplateKitError:  # the template takes no such value (it raises, or renders no turn)
            found.skipped.append(setting.name)
            continue
        key = _rendering(analysis)
        if key in seen:
            found.alike[setting] = seen[key]
            continue
        seen[key] = setting
        found.analyses[setting] = analysis
    return found


def _rendering(analysis: Analysis) -> tuple:
    """What the truth is read from: each probe's text and trained turns."""
    return tuple(sorted((name, layout.text, tuple(layout.turns)) for name, layout in analysis.layouts.items()))


def verify_every_setting(patched: str, truth: Settings, strict: bool) -> dict[Setting, Report]:
    """`patched` verified under each setting `truth` holds an analysis for."""
    return {setting: verify_setting(patched, analysis, strict) for setting, analysis in truth.analyses.items()}


def _outcome(patched: str, reports: dict[Setting, Report], truth: Settings) -> tuple[str, Report]:
    """The default setting's report for `patched`, naming every setting verified and what any of them found
    imprecise."""
    report = next(iter(reports.values()))
    report.settings = truth.names
    imprecise = [finding for other in reports.values() for finding in other.imprecise]
    if imprecise and not report.imprecise:
        report.imprecise = imprecise
        report.notes += [note for other in reports.values() for note in other.notes if note.startswith("imprecise:")][
            :1
        ]
    return patched, report


def patch_every_setting(planned: Settings, truth: Settings, goal: Goal) -> tuple[str | None, Report]:
    """One template that verifies under every setting of `truth`, planned from `planned` (the same template, or a
    rewrite of it): the default setting's plan, and where another setting needs the tags elsewhere, that part
    written once per setting under a test of the switch (`per_setting.merge_plans`)."""
    settings_list = list(truth.analyses)
    default = settings_list[0]
    base, report = plan_patch(planned.analyses[default], truth.analyses[default], goal)
    if base is None:
        return None, report
    reports = verify_every_setting(base.text, truth, goal.strict)
    failing = [setting for setting, checked in reports.items() if not checked.ok]
    if not failing:
        return _outcome(base.text, reports, truth)
    groups: list[tuple[Plan, list[Setting]]] = []
    for setting in failing:
        analysis = truth.analyses[setting]
        held = next((group for plan, group in groups if verify_setting(plan.text, analysis, goal.strict).ok), None)
        if held is not None:
            held.append(setting)
            continue
        plan, own = plan_patch(planned.analyses[setting], analysis, goal)
        if plan is None:
            return None, Report(ok=False, reasons=[f"with {setting.name}: {reason}" for reason in own.reasons[:3]])
        groups.append((plan, [setting]))
    merged = _merge_settings(planned.default, truth, base, groups, goal)
    if merged is None:
        names = ", ".join(s.name for _, group in groups for s in group)
        return None, Report(
            ok=False,
            reasons=[
                f"the tags must sit differently with {names}, and no test of the switch written around the part "
                "that differs verifies under every setting"
            ],
        )
    patched, report = _outcome(*merged, truth)
    report.notes.append(
        "the tags sit differently per setting of "
        + ", ".join(dict.fromkeys(key for _, group in groups for s in group for key, _ in s.items))
        + ": that part is written once per setting, under a test of the switch"
    )
    return patched, report


def _merge_settings(
    planned: Analysis, truth: Settings, base: Plan, groups: list[tuple[Plan, list[Setting]]], goal: Goal
) -> tuple[str, dict[Setting, Report]] | None:
    """The base plan merged with each group's plan under a test true for that group's settings: the template's own
    tests of the switch first, then one written from scratch; each choice verified under every setting."""
    chosen: list[Variant] = []
    patched, reports = base.text, {}
    for index, (plan, group) in enumerate(groups):
        later = {setting for _, others in groups[index + 1 :] for setting in others}
        for test in _group_tests(planned.parsed, group):
            try:
                candidate = merge_plans(planned.parsed, planned.flow, base, [*chosen, Variant(test, plan)])
            except PlanError:
                return None
            checked = verify_every_setting(candidate, truth, goal.strict)
            if all(report.ok for setting, report in checked.items() if setting not in later):
                chosen.append(Variant(test, plan))
                patched, reports = candidate, checked
                break
        else:
            return None
    return patched, reports


def _group_tests(parsed: ParsedTemplate, group: list[Setting]) -> list[Guard]:
    """Tests that may tell `group`'s settings from the others: the template's own tests of the switch (when all the
    group's settings set the same one), then one written from scratch."""
    keys = {key for setting in group for key, _ in setting.items}
    own = switch_tests(parsed, next(iter(keys))) if len(keys) == 1 else []
    return [*own, Guard.any_of(setting_test(setting) for setting in group)]


def patch_inlined(analyses: Settings, goal: Goal, failed: Report, fixed: dict) -> tuple[str | None, Report]:
    """The plan of a rewrite with one macro written out at its only call, when it verifies against the
    original template's own truth under every setting; else `failed` (the original's report)."""
    original = analyses.default.parsed.source
    for rewrite in inlined_sources(analyses.default.parsed):
        try:
            # The rewrite renders as the original does: only the settings that rendered apart there are analysed.
            inlined = analyse_settings(rewrite.source, goal, None, fixed, original, only=set(analyses.analyses))
        except PatchError:
            continue
        inlined.analyses = {setting: inlined.analysis_of(setting) for setting in analyses.analyses}
        patched, report = patch_every_setting(inlined, analyses, goal)
        if patched is not None:
            report.notes.append(rewrite.note)
            return patched, report
    return None, failed
