"""Analysis: a template traced over the probe battery under one setting, and each probe's trained turns laid out.

source ─parse─▶ flow ─trace probes─▶ truth (truth.py) ─▶ layouts (layout.py): what plan and verify read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from jinja2 import nodes

from ..errors import PatchError, TemplateSourceError
from .analysis import Flow, Tracer, build_flow
from .layout import Layout, TracedProbe, common_opening, generation_prompt, layout_probe, trained_messages
from .markers import last_marker
from .probes import ASSISTANT, Probe, build_probes, call_variants, render_key, without_content
from .syntax import ParsedTemplate, line_column, parse_template
from .truth import generated_turns

__all__ = ["Analysis", "Traceable", "analyse"]


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
    judge_check: bool = True,
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
    kept: dict = {}  # every trace of this analysis, by conversation and options (`_traced`)
    strings, blocks = (
        _analyse_shape(parsed, flow, tracer, kept, speakers, only_last_turn, shape, kwargs, judge_check)
        for shape in (False, True)
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


def _shapes(probe: Probe) -> Iterator[Probe]:
    """The probe, then its tool calls in the other shapes (`call_variants`), copied only when the template has
    rejected the probe as it is (most take it: each copy is a deep copy of the conversation)."""
    yield probe
    yield from call_variants(probe)


def _content_none_variants(probe: Probe) -> Iterator[Probe]:
    """`without_content(probe)`, then the same with its arguments as JSON text (made only when asked for); nothing
    when the probe has no message that only calls tools."""
    variant = without_content(probe)
    if variant is None:
        return
    yield variant
    for shape in call_variants(probe)[:1]:
        yield without_content(shape)


def _analyse_shape(
    parsed, flow, tracer, kept: dict, speakers, only_last_turn: bool, blocks: bool, kwargs: dict, judge_check: bool
) -> Analysis:
    """Trace the probe battery in one content shape and lay out each probe's trained turns (`kept`: `_traced`)."""
    probes = build_probes(speakers, blocks=blocks, template_kwargs=kwargs)
    rendered: dict[str, tuple[str, list]] = {}
    errors: list[str] = []
    for position, probe in enumerate(probes):
        # A template that rejects a probe's tool calls may take them in another shape (arguments as JSON text).
        for shape in _shapes(probe):
            try:
                rendered[probe.name] = _traced(tracer, kept, shape.messages, shape.render_kwargs())
            except Exception as error:  # the template rejects this probe; verification skips it too
                failure = f"{probe.name}: {type(error).__name__}: {error}"
                continue
            probes[position] = shape
            break
        else:
            errors.append(failure)
    # A message that only calls tools, with `content: None` rather than "": analysed too where the template writes it
    # through other outputs (DeepSeek writes its first call with the header there), unless it writes the word None.
    for probe in list(probes):
        if probe.name not in rendered:
            continue
        # Its arguments as given, else as JSON text (a branch for calls without content may need that).
        for variant in _content_none_variants(probe):
            try:
                text, emissions = _traced(tracer, kept, variant.messages, variant.render_kwargs())
            except Exception:  # the template takes only one of the two
                continue
            written = {e.uid for e in rendered[probe.name][1] if e.text}
            if {e.uid for e in emissions if e.text} - written and "None" not in text:
                probes.append(variant)
                rendered[variant.name] = (text, emissions)
            break
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
        truth = generated_turns(probe, text, emissions, trained, _tracing(tracer, probe, kept))
        quoted += [probe.name for turn in truth.values() if turn.quoted]
        endings += [(last_marker(turn.marker), turn.where) for turn in truth.values() if not turn.empty]
        layout = layout_probe(probe, text, emissions, header, trained, truth)
        layout.trained = set(trained)
        layouts[probe.name] = layout
        traces.append(TracedProbe(probe, layout, emissions))
    if quoted and judge_check:
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


def _traced(tracer: Tracer, kept: dict, messages: list, options: dict) -> tuple[str, list]:
    """`tracer.trace(messages, **options)`, traced once per analysis: kept in `kept` by the conversation and the
    options, and handed out again (or what the template raised, raised again). The probes share their first
    messages, their prompts and prefixes are traced for the truth, and the two content shapes share the messages
    without content: about a sixth of the traces would repeat another. A trace is only read once made."""
    key = render_key(messages, options)
    if key is None:  # not plain data: traced afresh
        return tracer.trace(messages, **options)
    if key not in kept:
        try:
            kept[key] = tracer.trace(messages, **options)
        except Exception as error:  # noqa: BLE001 - the template's (or a limit's) error, raised again to every caller
            kept[key] = error
    found = kept[key]
    if isinstance(found, Exception):
        raise found
    return found


def _tracing(tracer: Tracer, probe: Probe, kept: dict):
    """`trace(messages, add_generation_prompt)` with the probe's other options (`_traced`); None when the template
    raises."""
    options = probe.render_kwargs()

    def trace(messages: list, add_generation_prompt: bool):
        try:
            return _traced(tracer, kept, messages, {**options, "add_generation_prompt": add_generation_prompt})
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
