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
from .plan import plan_regions
from .probes import ASSISTANT, Probe, build_probes
from .regions import Region
from .report import PatchResult, Report
from .rewrite import apply_edits, region_edits
from .sandbox import bounded
from .switches import MAX_SWITCHES, template_switches
from .syntax import ParsedTemplate, line_column, parse_template
from .tags import has_generation_tags, strip_generation_tags
from .truth import generated_turns
from .verify import render_probe, verify

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


def analyse(
    source: str,
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
    parsed = parse_template(source, name)
    _refuse_unsafe(parsed, name)
    flow = build_flow(parsed)
    tracer = Tracer(flow)
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
    for analysis in (strings, blocks):
        if _generates(analysis):
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
    for probe in probes:
        try:
            rendered[probe.name] = tracer.trace(probe.messages, **probe.render_kwargs())
        except Exception as error:  # the template rejects this probe; verification skips it too
            errors.append(f"{probe.name}: {type(error).__name__}: {error}")
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


def _closing_condition(region: Region, train_roles: tuple[str, ...], only_last_turn: bool) -> str:
    """The test under which a stop marker written outside the turn's own outputs belongs to a trained turn."""
    roles = "[" + ", ".join(f'"{role}"' for role in train_roles) + "]"
    if region.closes == "after":
        return f"messages and messages[-1].role in {roles}"
    if only_last_turn:
        raise PlanError("text written by another message's branch cannot be limited to the last turn")
    if region.closes == "previous":
        return f"loop.nextitem is defined and loop.nextitem.role in {roles}"
    return f"loop.previtem is defined and loop.previtem.role in {roles}"


def _patch(analysis: Analysis, train_roles, only_last_turn) -> tuple[str | None, Report]:
    """The first plan that verifies, tried plainest first; the plainest plan's report when none does."""
    reports = []
    for pair_branches in (False, True):
        patched, report = _try_plan(analysis, train_roles, only_last_turn, pair_branches)
        if patched is not None:
            return patched, report
        reports.append(report)
    return None, reports[0]


def _try_plan(analysis: Analysis, train_roles, only_last_turn, pair_branches: bool) -> tuple[str | None, Report]:
    source = analysis.parsed.source
    try:
        regions = plan_regions(analysis.flow, analysis.traces, lambda layout: layout.trained, pair_branches)
    except PlanError as error:
        return None, Report(ok=False, reasons=[str(error)])
    if not regions:
        return None, Report(ok=False, reasons=["no trained turn was found in any probe rendering"])
    attempts = [False, True] if not only_last_turn else [True]
    last_report = None
    for guard_all in attempts:
        try:
            edits = []
            for region in regions:
                guarded = region.guard or (guard_all and bool(region.targets))
                if region.closes:
                    condition = _closing_condition(region, train_roles, only_last_turn)
                else:
                    condition = _condition(region, train_roles, only_last_turn) if guarded else None
                if region.when is not None:
                    condition = f"({region.when})" + (f" and ({condition})" if condition else "")
                edits += region_edits(analysis.parsed, region, condition)
            patched = apply_edits(source, edits)
        except PlanError as error:
            last_report = Report(ok=False, reasons=[str(error)])
            continue
        report = verify(source, patched, analysis.probes, analysis.layouts)
        if report.ok:
            return patched, report
        last_report = report
    return None, last_report


def _patch_inlined(analysis: Analysis, train_roles, only_last_turn, failed: Report) -> tuple[str | None, Report]:
    """The plan of a rewrite with one macro written out at its only call, when it verifies against the
    original template's own truth; else `failed` (the original's report)."""
    for rewrite in inlined_sources(analysis.parsed):
        inlined = analyse(rewrite.source, train_roles, only_last_turn, template_kwargs=analysis.template_kwargs)
        patched, _ = _patch(inlined, train_roles, only_last_turn)
        if patched is None:
            continue
        report = verify(analysis.parsed.source, patched, analysis.probes, analysis.layouts)
        if report.ok:
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
    the trained turns on every probe, rendered with `template_kwargs`. The template's other switches are
    checked both ways too (`Report.switch_problems`).

    Example:
        >>> check_template("{% for m in messages %}{{ m.content }}{% endfor %}").reasons
        ['the template carries no {% generation %} tags']
    """
    if not has_generation_tags(template):
        parse_template(template)
        return Report(ok=False, reasons=["the template carries no {% generation %} tags"])
    untagged = strip_generation_tags(template)
    analysis = analyse(untagged, tuple(train_roles), only_last_turn, template_kwargs=template_kwargs)
    report = verify(untagged, template, analysis.probes, analysis.layouts)
    report.tagged = True
    if report.ok:
        _finish(report, analysis, template, train_roles, only_last_turn)
    else:
        _note_history(report, analysis, train_roles)
    return report


def _note_history(report: Report, analysis: Analysis, train_roles: tuple[str, ...]) -> None:
    """A note (not a failure) when the template renders a past turn unlike the turn as generated."""
    speakers = tuple(train_roles) or (ASSISTANT,)
    probes = build_probes(speakers, template_kwargs=analysis.template_kwargs)
    report.history_mismatch = history_mismatch(analysis.parsed.source, speakers, probes)
    if report.history_mismatch:
        report.notes.append(report.history_mismatch)


def _check_switches(report: Report, analysis: Analysis, tagged: str, train_roles, only_last_turn: bool) -> None:
    """Verify `tagged` again with each of the template's switches set True and False (those `template_kwargs`
    leaves open), against the truth of that setting; record the settings it does not hold for."""
    source, fixed = analysis.parsed.source, analysis.template_kwargs
    if fixed:
        report.notes.append(f"verified for data rendered with template_kwargs={fixed!r}")
    switches = [name for name in template_switches(analysis.parsed.ast) if name not in fixed]
    held = []
    for name in switches[:MAX_SWITCHES]:
        for value in (True, False):
            try:
                setting = analyse(source, train_roles, only_last_turn, template_kwargs={**fixed, name: value})
            except TemplateLimitError:
                raise
            except TemplateKitError:  # the template takes no such value (it raises, or renders no turn)
                continue
            checked = verify(source, tagged, setting.probes, setting.layouts)
            if checked.probes_passed == 0 and not checked.ok:
                continue
            if checked.ok:
                held.append(f"{name}={value}")
            else:
                report.switch_problems[f"{name}={value}"] = checked.reasons[:3]
    for setting, reasons in report.switch_problems.items():
        name, value = setting.split("=", 1)
        report.notes.append(
            f"with {setting} the tags train the wrong text ({reasons[0]}); for data rendered that way, patch with "
            f"template_kwargs={{{name!r}: {value}}} (CLI: --template-kwarg {name}={value.lower()})"
        )
    if held:
        report.notes.append(f"also verified with {', '.join(held)}")
    if len(switches) > MAX_SWITCHES:
        report.notes.append(f"switches not checked (more than {MAX_SWITCHES}): {', '.join(switches[MAX_SWITCHES:])}")


def _finish(report: Report, analysis: Analysis, patched: str, train_roles, only_last_turn: bool) -> None:
    """The notes every verified patch gets: the history note, then the switch check."""
    _note_history(report, analysis, train_roles)
    _check_switches(report, analysis, patched, train_roles, only_last_turn)


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

    The template is verified as rendered with `template_kwargs` (its switches, as passed to
    ``apply_chat_template``, e.g. ``{"enable_thinking": False}``; default none). Its other switches are then
    checked both ways: the settings the tags do not hold for are in `Report.switch_problems`, and a note says
    to patch with them for data rendered so.

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
    status = "patched"
    source = template
    if has_generation_tags(template):
        existing = check_template(
            template, train_roles=train_roles, only_last_turn=only_last_turn, template_kwargs=template_kwargs
        )
        if existing.ok:
            return PatchResult(template, template, existing, "already_tagged")
        if not retag:
            raise PatchError(
                ["the template already carries generation tags that fail verification (retag=False keeps them)"]
                + existing.reasons[:5],
                report=existing,
            )
        source = strip_generation_tags(template)
        status = "retagged"
    analysis = analyse(source, train_roles, only_last_turn, template_kwargs=template_kwargs)
    if status == "retagged":
        for probe in analysis.probes:
            a, b = render_probe(template, probe), render_probe(source, probe)
            if a.text != b.text:
                raise PatchError([f"removing the existing tags changes the rendering (probe {probe.name!r})"])
    patched, report = _patch(analysis, train_roles, only_last_turn)
    if patched is None:
        patched, report = _patch_inlined(analysis, train_roles, only_last_turn, report)
    report.notes = analysis.notes + report.notes
    if patched is None:
        raise PatchError(report.reasons[:8], report=report)
    if status == "retagged":
        report.notes.insert(0, "the template's own generation tags failed verification and were replaced")
    _finish(report, analysis, patched, train_roles, only_last_turn)
    return PatchResult(patched, template, report, status)
