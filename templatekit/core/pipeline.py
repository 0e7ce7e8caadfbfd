"""The pipeline: the one place that runs the core's steps in order, for patching and for checking a template.

source text ─parse─▶ flow ─trace probes (every setting)─▶ layouts ─plan─▶ regions ─rewrite─▶ patched text
        ─verify (every setting)─▶ report
"""

from __future__ import annotations

from ..errors import PatchError
from .every_setting import Settings, analyse_settings, patch_every_setting, patch_inlined, verify_every_setting
from .history import history_mismatch
from .planning import Goal
from .probes import ASSISTANT, build_probes
from .report import PatchResult, Report
from .sandbox import bounded
from .syntax import lf_line_ends, parse_template, restore_line_ends
from .tags import has_generation_tags, strip_generation_tags
from .traced import Analysis, analyse
from .verify import render_probe, renders_kept

__all__ = ["Analysis", "analyse", "check_template", "patch_template"]


@bounded  # timeout= and max_memory= (templatekit.core.sandbox): a template that outruns them raises TemplateLimitError
@renders_kept()  # every setting and every plan verify the same original: each probe is rendered once
def check_template(
    template: str,
    *,
    train_roles: tuple[str, ...] = (ASSISTANT,),
    only_last_turn: bool = False,
    template_kwargs: dict | None = None,
    strict: bool = False,
) -> Report:
    """Verify a template's own generation tags.

    `ok` only when the template carries tags, renders exactly like itself without them, and trains exactly
    the trained turns on every probe, under every setting of the template's switches (`template_kwargs` fixes
    some); the settings it fails under are in `Report.switch_problems`, those verified in `Report.settings`.
    Whitespace trained right after a stop marker (TRL's own `<|im_end|>\\n`) is accepted with a note
    (`Report.imprecise`) unless `strict`.

    Example:
        >>> check_template("{% for m in messages %}{{ m.content }}{% endfor %}").reasons
        ['the template carries no {% generation %} tags']
    """
    goal = Goal(tuple(train_roles), only_last_turn, strict)
    template = lf_line_ends(template)
    if not has_generation_tags(template):
        parse_template(template)
        return Report(ok=False, reasons=["the template carries no {% generation %} tags"])
    analyses = analyse_settings(strip_generation_tags(template), goal, template_kwargs=template_kwargs)
    reports = verify_every_setting(template, analyses, strict)
    report = next(iter(reports.values()))
    report.tagged = True
    report.switch_problems = {s.name: checked.reasons[:3] for s, checked in reports.items() if not checked.ok}
    report.switch_problems.pop(next(iter(reports)).name, None)
    if report.ok and report.switch_problems:
        report.ok = False
        report.reasons = [f"with {setting}: {reasons[0]}" for setting, reasons in report.switch_problems.items()]
    if report.ok:
        report.settings = analyses.names
        _finish(report, analyses, template_kwargs, goal)
    else:
        _note_history(report, analyses.default, goal)
    return report


def _note_history(report: Report, analysis: Analysis, goal: Goal) -> None:
    """A note (not a failure) when the template renders a past turn unlike the turn as generated."""
    probes = build_probes(goal.train_roles, template_kwargs=analysis.template_kwargs)
    report.history_mismatch = history_mismatch(analysis.parsed.source, goal.train_roles, probes)
    if report.history_mismatch:
        report.notes.append(report.history_mismatch)


def _finish(report: Report, analyses: Settings, fixed: dict | None, goal: Goal) -> None:
    """The notes every verified template gets: the history note, then the settings verified."""
    _note_history(report, analyses.default, goal)
    if fixed:
        report.notes.append(f"verified for data rendered with template_kwargs={fixed!r}")
    if len(report.settings) > 1:
        report.notes.append(f"verified under every setting of its switches: {', '.join(report.settings)}")
    if analyses.skipped:
        report.notes.append(f"settings the template rejects (not verified): {', '.join(analyses.skipped)}")


@bounded
@renders_kept()
def patch_template(
    template: str,
    *,
    train_roles: tuple[str, ...] = (ASSISTANT,),
    only_last_turn: bool = False,
    retag: bool = True,
    template_kwargs: dict | None = None,
    strict: bool = False,
) -> PatchResult:
    """Insert verified `{% generation %}` tags around everything the trained speakers generate.

    The patch holds under every setting of the template's own switches (``enable_thinking`` undefined, True and
    False, each string ``reasoning_effort`` is compared with, ...): where the tags must sit differently under
    some setting, that part of the template is written once per setting, under a test of the switch. The
    settings verified are in `Report.settings`. `template_kwargs` fixes switches to the values all data is
    rendered with (then only the others vary). Whitespace after a stop marker is left untrained wherever a tag
    placement can; where none can, it is trained and noted (`Report.imprecise`), or, `strict`, refused.

    Raises `PatchError` (with `.reasons`) when no patch passes verification, and `TemplateSourceError`
    for malformed or unsafe templates. A template that already carries correct tags is returned as is;
    tags that fail verification are stripped and the template patched again (status "retagged", with a
    note saying so), or, with `retag=False`, raise.

    Example:
        >>> template = (
        ...     "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        ...     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        ... )
        >>> result = patch_template(template)
        >>> "{% generation %}" in result.template, result.report.ok
        (True, True)
    """
    goal = Goal(tuple(train_roles), only_last_turn, strict)
    fixed = dict(template_kwargs or {})
    original, template = template, lf_line_ends(template)
    status = "patched"
    source = template
    if has_generation_tags(template):
        existing = check_template(
            template, train_roles=goal.train_roles, only_last_turn=only_last_turn, template_kwargs=fixed, strict=strict
        )
        if existing.ok:
            return PatchResult(original, original, existing, "already_tagged")
        if not retag:
            raise PatchError(
                ["the template already carries generation tags that fail verification (retag=False keeps them)"]
                + existing.reasons[:5],
                report=existing,
            )
        source = strip_generation_tags(template)
        status = "retagged"
    analyses = analyse_settings(source, goal, template_kwargs=template_kwargs)
    analysis = analyses.default
    if status == "retagged":
        for probe in analysis.probes:
            a, b = render_probe(template, probe), render_probe(source, probe)
            if a.text != b.text:
                raise PatchError([f"removing the existing tags changes the rendering (probe {probe.name!r})"])
    patched, report = patch_every_setting(analyses, analyses, goal)
    if patched is None:
        patched, report = patch_inlined(analyses, goal, report, fixed)
    report.notes = analysis.notes + report.notes
    if patched is None:
        raise PatchError(report.reasons[:8], report=report)
    if status == "retagged":
        report.notes.insert(0, "the template's own generation tags failed verification and were replaced")
    _finish(report, analyses, fixed, goal)
    return PatchResult(restore_line_ends(patched, original), original, report, status)
