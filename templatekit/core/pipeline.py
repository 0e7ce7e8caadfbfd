"""The pipeline: the one place that runs the core's steps in order, for patching and for checking a template.

source text ─parse─▶ flow ─trace probes─▶ layouts ─plan─▶ regions ─rewrite─▶ patched text ─verify─▶ report
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jinja2 import nodes

from ..errors import PatchError, PlanError, TemplateKitError, TemplateLimitError, TemplateSourceError
from .analysis import Flow, Tracer, build_flow
from .history import history_mismatch
from .inline import inlined_sources
from .layout import Layout, TracedProbe, common_opening, generation_prompt, layout_probe, trained_messages
from .markers import last_marker
from .per_setting import Plan, Variant, merge_plans, setting_test, switch_tests
from .plan import plan_regions
from .probes import ASSISTANT, Probe, build_probes, call_variants
from .regions import Region
from .report import PatchResult, Report
from .rewrite import region_edits
from .sandbox import bounded
from .switches import Setting, settings
from .syntax import ParsedTemplate, lf_line_ends, line_column, parse_template, restore_line_ends
from .tags import has_generation_tags, strip_generation_tags
from .truth import generated_turns
from .verify import foreign_text_trained, render_probe, verify

__all__ = ["Analysis", "analyse", "check_template", "patch_template"]


def _refuse_unsafe(parsed: ParsedTemplate, name: str | None) -> None:
    # Templates are untrusted code: reaching for dunder attributes is how sandbox escapes start.
    for node in parsed.ast.find_all((nodes.Getattr, nodes.Getitem)):
        key = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(key, str) and key.startswith("__"):
            line, column = line_column(parsed.source, getattr(node.lineno, "offset", 0))
            raise TemplateSourceError(
                f"refusing a template that accesses the private attribute {key!r} (a sandbox-escape pattern)",
                source=name,
                line=line,
                column=column,
            )


@dataclass
class Analysis:
    """A template traced over the probe battery: what every later step reads."""

    parsed: ParsedTemplate
    flow: Flow
    probes: list[Probe]
    layouts: dict[str, Layout]
    traces: list[TracedProbe]
    notes: list[str]
    template_kwargs: dict = field(default_factory=dict)
    # The probes of the other content shape (blocks or strings), rendered by the template but not laid out: a
    # patch must train no one else's text in them either.
    unplanned: list[Probe] = field(default_factory=list)
    trained_roles: tuple[str, ...] = (ASSISTANT,)


@dataclass(frozen=True)
class Traceable:
    """A template parsed, its output flow read and its instrumented copy compiled: what every setting's analysis
    of it shares."""

    parsed: ParsedTemplate
    flow: Flow
    tracer: Tracer

    @classmethod
    def of(cls, source: str, name: str | None = None) -> Traceable:
        parsed = parse_template(source, name)
        _refuse_unsafe(parsed, name)
        flow = build_flow(parsed)
        return cls(parsed, flow, Tracer(flow))


def analyse(
    source: str | Traceable,
    train_roles: tuple[str, ...],
    only_last_turn: bool,
    name: str | None = None,
    template_kwargs: dict | None = None,
) -> Analysis:
    """Parse and trace `source` (which must carry no generation tags) over the probe battery, rendered with
    `template_kwargs` (the template's switches, e.g. ``{"enable_thinking": False}``).

    Probes come in two content shapes, plain strings and lists of text blocks. A template that writes
    blocks through an output of their own (a loop over the parts) is analysed with both, so that both
    branches get tags; one that reads only one shape is analysed with that one.
    """
    traceable = source if isinstance(source, Traceable) else Traceable.of(source, name)
    parsed, flow, tracer = traceable.parsed, traceable.flow, traceable.tracer
    speakers = tuple(train_roles) if train_roles else (ASSISTANT,)
    kwargs = dict(template_kwargs or {})
    strings, blocks = (
        _analyse_shape(parsed, flow, tracer, speakers, only_last_turn, shape, kwargs) for shape in (False, True)
    )
    if _generates(strings) and _generates(blocks) and _content_units(blocks) - _content_units(strings):
        for probe in blocks.probes:
            probe.name += "[blocks]"
        blocks.layouts = {f"{key}[blocks]": layout for key, layout in blocks.layouts.items()}
        return Analysis(
            parsed,
            flow,
            strings.probes + blocks.probes,
            {**strings.layouts, **blocks.layouts},
            strings.traces + blocks.traces,
            list(dict.fromkeys(strings.notes + blocks.notes)),
            kwargs,
        )
    for analysis, other in ((strings, blocks), (blocks, strings)):
        if _generates(analysis):
            analysis.unplanned = [probe for probe in other.probes if probe.name in other.layouts]
            analysis.trained_roles = speakers
            return analysis
    if not strings.layouts and not blocks.layouts:
        raise PatchError(["the template rejects every probe conversation"] + strings.notes[:3])
    raise PatchError(["no trained message is rendered: the template has no message loop that writes their content"])


def _generates(analysis: Analysis) -> bool:
    return any(not turn.optional for layout in analysis.layouts.values() for turn in layout.turns)


def _content_units(analysis: Analysis) -> set[int]:
    """The outputs that wrote a trained speaker's content in some probe."""
    units = set()
    for trace in analysis.traces:
        for sentinel in trace.probe.sentinels:
            if sentinel.kind != "content" or sentinel.index not in trace.layout.trained:
                continue
            found = trace.layout.text.find(sentinel.text)
            units |= {e.uid for e in trace.emissions if found >= 0 and e.start <= found < e.end}
    return units


def _analyse_shape(parsed, flow, tracer, speakers, only_last_turn: bool, blocks: bool, kwargs: dict) -> Analysis:
    """Trace the probe battery in one content shape and lay out each probe's trained turns."""
    probes = build_probes(speakers, blocks=blocks, template_kwargs=kwargs)
    rendered: dict[str, tuple[str, list]] = {}
    errors: list[str] = []
    for position, probe in enumerate(probes):
        # A template that rejects a probe's tool calls may take them in another shape (arguments as JSON text).
        for shape in [probe, *call_variants(probe)]:
            try:
                rendered[probe.name] = tracer.trace(shape.messages, **shape.render_kwargs())
            except Exception as error:  # the template rejects this probe; verification skips it too
                failure = f"{probe.name}: {type(error).__name__}: {error}"
                continue
            probes[position] = shape
            break
        else:
            errors.append(failure)
    header = ""
    if "generation_prompt" in rendered and "ends_on_user" in rendered:
        header = generation_prompt(rendered["ends_on_user"][0], rendered["generation_prompt"][0])
    if not header.strip():
        header = common_opening(
            (probe, *rendered[probe.name], trained_messages(probe, speakers, only_last_turn))
            for probe in probes
            if probe.name in rendered
        )
    layouts, traces = {}, []
    quoted, endings = [], []
    for probe in probes:
        if probe.name not in rendered:
            continue
        text, emissions = rendered[probe.name]
        trained = trained_messages(probe, speakers, only_last_turn)
        truth = generated_turns(probe, text, emissions, trained, _tracing(tracer, probe))
        quoted += [probe.name for turn in truth.values() if turn.quoted]
        endings += [(last_marker(turn.marker), turn.where) for turn in truth.values() if not turn.empty]
        layout = layout_probe(probe, text, emissions, header, trained, truth)
        layout.trained = set(trained)
        layouts[probe.name] = layout
        traces.append(TracedProbe(probe, layout, emissions))
    if quoted:
        raise PatchError(
            [
                "the assistant's message is only quoted inside a prompt (the render that ends on it ends with "
                "the same instructions as the generation prompt): a classifier or judge template has no "
                f"assistant turn to train (probe {quoted[0]!r})"
            ]
        )
    notes = [f"probe rejected: {e}" for e in errors]
    notes += _ending_notes(endings)
    return Analysis(parsed, flow, probes, layouts, traces, notes, kwargs)


def _tracing(tracer: Tracer, probe: Probe):
    """`trace(messages, add_generation_prompt)` with the probe's other options; None when the template raises."""

    def trace(messages: list, add_generation_prompt: bool):
        try:
            return tracer.trace(messages, **{**probe.render_kwargs(), "add_generation_prompt": add_generation_prompt})
        except Exception:  # the template rejects this prefix: the turn falls back to its header
            return None

    return trace


_WRITTEN_BY = {
    "turn": "written by the turn itself",
    "next message": "written by the next message's branch, tagged there",
    "after the turn": "written after the turn (at the end of the conversation)",
    "next role token": "a role token written right after the turn, trained where it follows the turn",
}


def _ending_notes(endings: list[tuple[str, str]]) -> list[str]:
    """One note per way the trained turns end: the stop marker and where the template writes it."""
    notes = []
    for marker, where in dict.fromkeys(endings):
        if marker:
            notes.append(f"the turn ends with {marker!r}, {_WRITTEN_BY.get(where, where)}")
        else:
            notes.append(
                "some turns have no end-of-turn marker of their own: the model will not learn to stop from "
                "these tags there; add an end-of-sequence token to the data"
            )
    return notes


def _condition(region: Region, train_roles: tuple[str, ...], only_last_turn: bool) -> str:
    if len(region.targets) != 1:
        raise PlanError("a region shared with untrained messages has no single message variable to test")
    target = next(iter(region.targets))
    roles = "[" + ", ".join(f'"{role}"' for role in train_roles) + "]"
    condition = f"{target}.role in {roles}"
    if only_last_turn:
        condition += f' and {target} is sameas (messages | selectattr("role", "in", {roles}) | list | last)'
    return condition


def _closing_condition(
    region: Region, train_roles: tuple[str, ...], only_last_turn: bool, wrote_content: bool = False
) -> str:
    """The test under which a stop marker written outside the turn's own outputs belongs to a trained turn."""
    roles = "[" + ", ".join(f'"{role}"' for role in train_roles) + "]"
    if region.closes == "after":
        return f"messages and messages[-1].role in {roles}"
    if only_last_turn:
        raise PlanError("text written by another message's branch cannot be limited to the last turn")
    if region.closes == "previous":
        return f"loop.nextitem is defined and loop.nextitem.role in {roles}"
    content = " and loop.previtem.content" if wrote_content else ""
    return f"loop.previtem is defined and loop.previtem.role in {roles}{content}"


def _plan(analysis: Analysis, truth: Analysis, train_roles, only_last_turn) -> tuple[Plan | None, Report]:
    """The first plan of `analysis`'s source that verifies against `truth` (the original template's analysis under
    the same setting), tried plainest first; the plainest plan's report when none does."""
    reports = []
    for pair_branches in (False, True):
        plan, report = _try_plan(analysis, truth, train_roles, only_last_turn, pair_branches)
        if plan is not None:
            return plan, report
        reports.append(report)
    return None, reports[0]


def _try_plan(
    analysis: Analysis, truth: Analysis, train_roles, only_last_turn, pair_branches: bool
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
    attempts = [(False, False), (True, False)] if not only_last_turn else [(True, False)]
    if any(region.closes == "next" for region in regions):
        attempts.append((attempts[0][0], True))
    last_report = None
    for guard_all, wrote_content in attempts:
        try:
            groups = []
            for region in regions:
                guarded = region.guard or (guard_all and bool(region.targets))
                if region.closes:
                    condition = _closing_condition(region, train_roles, only_last_turn, wrote_content)
                else:
                    condition = _condition(region, train_roles, only_last_turn) if guarded else None
                if region.when is not None:
                    condition = f"({region.when})" + (f" and ({condition})" if condition else "")
                groups.append(tuple(region_edits(analysis.parsed, region, condition)))
            plan = Plan(analysis.parsed.source, tuple(groups))
            patched = plan.text
        except PlanError as error:
            last_report = Report(ok=False, reasons=[str(error)])
            continue
        report = _verify_setting(patched, truth)
        if report.ok:
            return plan, report
        last_report = report
    return None, last_report


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

    @property
    def names(self) -> list[str]:
        return [setting.name for setting in [*self.analyses, *self.alike]]


def analyse_settings(
    source: str,
    train_roles: tuple[str, ...],
    only_last_turn: bool,
    name: str | None = None,
    template_kwargs: dict | None = None,
    settings_of: str | None = None,
) -> Settings:
    """`analyse` under every setting of the template's switches (those of `settings_of`'s source, default
    `source`'s own). The first setting (the caller's `template_kwargs`) must analyse; a setting the template
    rejects (it raises, or renders no trained turn) is left out, and one that renders like another shares its
    analysis."""
    traceable = Traceable.of(source, name)
    first = analyse(traceable, train_roles, only_last_turn, name, template_kwargs)
    switches_source = first.parsed if settings_of is None else parse_template(settings_of)
    default, *others = settings(switches_source.ast, template_kwargs)
    found = Settings({default: first})
    seen = {_rendering(first): default}
    for setting in others:
        try:
            analysis = analyse(traceable, train_roles, only_last_turn, name, setting.kwargs)
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


def _verify_setting(patched: str, truth: Analysis) -> Report:
    """`verify` on `truth`'s probes, and on the probes of the content shape it was not planned from, that nothing
    but the trained speakers' own text is trained there either."""
    report = verify(truth.parsed.source, patched, truth.probes, truth.layouts)
    if report.ok:
        report.reasons = foreign_text_trained(patched, truth.unplanned, truth.trained_roles)
        report.ok = not report.reasons
    return report


def _patch_settings(planned: Settings, truth: Settings, train_roles, only_last_turn) -> tuple[str | None, Report]:
    """One template that verifies under every setting of `truth`, planned from `planned` (the same template, or a
    rewrite of it): the default setting's plan, and where another setting needs the tags elsewhere, that part
    written once per setting under a test of the switch (`per_setting.merge_plans`)."""
    settings_list = list(truth.analyses)
    default = settings_list[0]
    base, report = _plan(planned.analyses[default], truth.analyses[default], train_roles, only_last_turn)
    if base is None:
        return None, report
    failing = [s for s in settings_list[1:] if not _verify_setting(base.text, truth.analyses[s]).ok]
    if not failing:
        report.settings = truth.names
        return base.text, report
    groups: list[tuple[Plan, list[Setting]]] = []
    for setting in failing:
        held = next((group for plan, group in groups if _verify_setting(plan.text, truth.analyses[setting]).ok), None)
        if held is not None:
            held.append(setting)
            continue
        plan, own = _plan(planned.analyses[setting], truth.analyses[setting], train_roles, only_last_turn)
        if plan is None:
            return None, Report(
                ok=False,
                reasons=[f"with {setting.name}: {reason}" for reason in own.reasons[:3]],
            )
        groups.append((plan, [setting]))
    merged = _merge_settings(planned.default, truth, base, groups)
    if merged is None:
        names = ", ".join(s.name for _, group in groups for s in group)
        return None, Report(
            ok=False,
            reasons=[
                f"the tags must sit differently with {names}, and no test of the switch written around the part "
                "that differs verifies under every setting"
            ],
        )
    patched, report = merged
    report.settings = truth.names
    report.notes.append(
        "the tags sit differently per setting of "
        + ", ".join(dict.fromkeys(key for _, group in groups for s in group for key, _ in s.items))
        + ": that part is written once per setting, under a test of the switch"
    )
    return patched, report


def _merge_settings(
    planned: Analysis, truth: Settings, base: Plan, groups: list[tuple[Plan, list[Setting]]]
) -> tuple[str, Report] | None:
    """The base plan merged with each group's plan under a test true for that group's settings: the template's own
    tests of the switch first, then one written from scratch; each choice verified under every setting."""
    chosen: list[Variant] = []
    patched, reports = base.text, []
    for index, (plan, group) in enumerate(groups):
        later = {setting for _, others in groups[index + 1 :] for setting in others}
        for test in _group_tests(planned.parsed, group):
            try:
                candidate = merge_plans(planned.parsed, planned.flow, base, [*chosen, Variant(test, plan)])
            except PlanError:
                return None
            checked = [_verify_setting(candidate, analysis) for analysis in truth.analyses.values()]
            if all(report.ok for setting, report in zip(truth.analyses, checked) if setting not in later):
                chosen.append(Variant(test, plan))
                patched, reports = candidate, checked
                break
        else:
            return None
    return patched, reports[0]


def _group_tests(parsed: ParsedTemplate, group: list[Setting]) -> list[str]:
    """Tests that may tell `group`'s settings from the others: the template's own tests of the switch (when all the
    group's settings set the same one), then one written from scratch."""
    keys = {key for setting in group for key, _ in setting.items}
    own = switch_tests(parsed, next(iter(keys))) if len(keys) == 1 else []
    scratch = " or ".join(f"({setting_test(s)})" for s in group) if len(group) > 1 else setting_test(group[0])
    return [*own, scratch]


def _patch_inlined(
    analyses: Settings, train_roles, only_last_turn, failed: Report, fixed: dict
) -> tuple[str | None, Report]:
    """The plan of a rewrite with one macro written out at its only call, when it verifies against the
    original template's own truth under every setting; else `failed` (the original's report)."""
    original = analyses.default.parsed.source
    for rewrite in inlined_sources(analyses.default.parsed):
        try:
            inlined = analyse_settings(rewrite.source, train_roles, only_last_turn, None, fixed, settings_of=original)
        except PatchError:
            continue
        inlined.analyses = {s: inlined.analyses.get(s, inlined.default) for s in analyses.analyses}
        patched, report = _patch_settings(inlined, analyses, train_roles, only_last_turn)
        if patched is not None:
            report.notes.append(rewrite.note)
            return patched, report
    return None, failed


@bounded  # timeout= and max_memory= (templatekit.core.sandbox): a template that outruns them raises TemplateLimitError
def check_template(
    template: str,
    *,
    train_roles: tuple[str, ...] = (ASSISTANT,),
    only_last_turn: bool = False,
    template_kwargs: dict | None = None,
) -> Report:
    """Verify a template's own generation tags.

    `ok` only when the template carries tags, renders exactly like itself without them, and trains exactly
    the trained turns on every probe, under every setting of the template's switches (`template_kwargs` fixes
    some); the settings it fails under are in `Report.switch_problems`, those verified in `Report.settings`.

    Example:
        >>> check_template("{% for m in messages %}{{ m.content }}{% endfor %}").reasons
        ['the template carries no {% generation %} tags']
    """
    template = lf_line_ends(template)
    if not has_generation_tags(template):
        parse_template(template)
        return Report(ok=False, reasons=["the template carries no {% generation %} tags"])
    untagged = strip_generation_tags(template)
    analyses = analyse_settings(untagged, tuple(train_roles), only_last_turn, template_kwargs=template_kwargs)
    report = Report(ok=True, tagged=True)
    for setting, analysis in analyses.analyses.items():
        checked = _verify_setting(template, analysis)
        if setting is next(iter(analyses.analyses)):
            report = checked
        elif not checked.ok:
            report.switch_problems[setting.name] = checked.reasons[:3]
    report.tagged = True
    if report.ok and report.switch_problems:
        report.ok = False
        report.reasons = [f"with {setting}: {reasons[0]}" for setting, reasons in report.switch_problems.items()]
    if report.ok:
        report.settings = analyses.names
        _finish(report, analyses, template_kwargs, tuple(train_roles))
    else:
        _note_history(report, analyses.default, train_roles)
    return report


def _note_history(report: Report, analysis: Analysis, train_roles: tuple[str, ...]) -> None:
    """A note (not a failure) when the template renders a past turn unlike the turn as generated."""
    speakers = tuple(train_roles) or (ASSISTANT,)
    probes = build_probes(speakers, template_kwargs=analysis.template_kwargs)
    report.history_mismatch = history_mismatch(analysis.parsed.source, speakers, probes)
    if report.history_mismatch:
        report.notes.append(report.history_mismatch)


def _finish(report: Report, analyses: Settings, fixed: dict | None, train_roles: tuple[str, ...]) -> None:
    """The notes every verified template gets: the history note, then the settings verified."""
    _note_history(report, analyses.default, train_roles)
    if fixed:
        report.notes.append(f"verified for data rendered with template_kwargs={fixed!r}")
    if len(report.settings) > 1:
        report.notes.append(f"verified under every setting of its switches: {', '.join(report.settings)}")
    if analyses.skipped:
        report.notes.append(f"settings the template rejects (not verified): {', '.join(analyses.skipped)}")


@bounded
def patch_template(
    template: str,
    *,
    train_roles: tuple[str, ...] = (ASSISTANT,),
    only_last_turn: bool = False,
    retag: bool = True,
    template_kwargs: dict | None = None,
) -> PatchResult:
    """Insert verified `{% generation %}` tags around everything the trained speakers generate.

    The patch holds under every setting of the template's own switches (``enable_thinking`` undefined, True and
    False, each string ``reasoning_effort`` is compared with, ...): where the tags must sit differently under
    some setting, that part of the template is written once per setting, under a test of the switch. The
    settings verified are in `Report.settings`. `template_kwargs` fixes switches to the values all data is
    rendered with (then only the others vary).

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
    train_roles = tuple(train_roles)
    fixed = dict(template_kwargs or {})
    original, template = template, lf_line_ends(template)
    status = "patched"
    source = template
    if has_generation_tags(template):
        existing = check_template(
            template, train_roles=train_roles, only_last_turn=only_last_turn, template_kwargs=template_kwargs
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
    analyses = analyse_settings(source, train_roles, only_last_turn, template_kwargs=template_kwargs)
    analysis = analyses.default
    if status == "retagged":
        for probe in analysis.probes:
            a, b = render_probe(template, probe), render_probe(source, probe)
            if a.text != b.text:
                raise PatchError([f"removing the existing tags changes the rendering (probe {probe.name!r})"])
    patched, report = _patch_settings(analyses, analyses, train_roles, only_last_turn)
    if patched is None:
        patched, report = _patch_inlined(analyses, train_roles, only_last_turn, report, fixed)
    report.notes = analysis.notes + report.notes
    if patched is None:
        raise PatchError(report.reasons[:8], report=report)
    if status == "retagged":
        report.notes.insert(0, "the template's own generation tags failed verification and were replaced")
    _finish(report, analyses, fixed, train_roles)
    return PatchResult(restore_line_ends(patched, original), original, report, status)
