"""Prove a tagged template: same text as the original on every probe, and spans that train exactly the turns.

Rendering is transformers' own `render_jinja_template`, the code that TRL's masks come from (its preparation
of the conversation and its `AssistantTracker`), with the template compiled in a bounded twin of transformers'
environment (`chat_render`), so what passes here is what training sees and no render outruns the limits.
Every probe render reads the clock at one fixed instant (`syntax.probe_clock`), so a template that writes the
date gets the same verdict at any time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

from ..errors import TemplateLimitError
from .chat_render import render_chat
from .layout import Layout, Turn
from .probes import Probe, render_key
from .report import Report
from .syntax import PROBE_INSTANT, probe_clock


@dataclass(frozen=True)
class Rendered:
    """One probe rendered by transformers: text and generation spans, or the error it raised."""

    text: str | None
    spans: list[tuple[int, int]]
    error: str | None = None


#: The renders kept by `renders_kept` (None outside one): (template, conversation and options, spans) → Rendered.
_KEPT: ContextVar[dict | None] = ContextVar("templatekit_kept_renders", default=None)


@contextmanager
def renders_kept() -> Iterator[None]:
    """Within the block, `render_probe` renders each template, probe and `spans` once and hands out that render
    again: one patch verifies the same original, probe by probe, against every plan it tries and under every
    setting (about 40% of its renders were repeats). A render is a function of these alone (the clock stands at
    the probe instant); an error the template raises is kept too, a limit reached is not. Nested blocks share the
    outer one's renders, and they are let go when it ends.

    Example:
        >>> from templatekit.core.probes import build_probes
        >>> probe = build_probes()[0]
        >>> with renders_kept():
        ...     render_probe("{{ messages[0].content }}", probe) is render_probe("{{ messages[0].content }}", probe)
        True
    """
    if _KEPT.get() is not None:
        yield
        return
    token = _KEPT.set({})
    try:
        yield
    finally:
        _KEPT.reset(token)


def render_probe(template: str, probe: Probe, *, spans: bool = False) -> Rendered:
    """Render `probe` as transformers does (sandboxed, bounded) at the probe instant.

    The template's own errors are returned, not raised; going past a limit raises `TemplateLimitError`. Within
    `renders_kept`, a render made before is handed out again (and tells the probe clock it was read, if it was).
    """
    kept = _KEPT.get()
    if kept is None:
        return _render_probe(template, probe, spans)[0]
    conversation = render_key(probe.messages, probe.render_kwargs())
    if conversation is None:  # not plain data: rendered afresh
        return _render_probe(template, probe, spans)[0]
    key = (template, spans, conversation)
    if key not in kept:
        kept[key] = _render_probe(template, probe, spans)
        return kept[key][0]
    rendered, read_clock = kept[key]
    if read_clock:
        with probe_clock() as clock:  # the scope of the caller (`verify`'s), which notes a template that reads it
            clock.read = True
    return rendered


def _render_probe(template: str, probe: Probe, spans: bool) -> tuple[Rendered, bool]:
    """The render, and whether it read the clock."""
    with probe_clock() as clock:
        earlier, clock.read = clock.read, False
        try:
            rendered = _rendered(template, probe, spans)
        finally:
            read_clock, clock.read = clock.read, earlier or clock.read
    return rendered, read_clock


def _rendered(template: str, probe: Probe, spans: bool) -> Rendered:
    try:
        texts, indices = render_chat(
            conversations=[probe.messages],
            chat_template=template,
            return_assistant_tokens_mask=spans,
            **probe.render_kwargs(),
        )
    except TemplateLimitError:
        raise
    except Exception as error:  # any template error is a finding, not a crash
        return Rendered(None, [], f"{type(error).__name__}: {error}")
    return Rendered(texts[0], [tuple(span) for span in indices[0]] if spans else [])


def _excerpt(text: str, start: int, end: int) -> str:
    snippet = text[start:end]
    return repr(snippet if len(snippet) <= 40 else snippet[:18] + "…" + snippet[-18:])


def merge_adjacent(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join spans that touch or overlap: adjacent spans train the same characters as one.

    Example:
        >>> merge_adjacent([(5, 9), (0, 3), (3, 5), (12, 14)])
        [(0, 9), (12, 14)]
    """
    merged: list[tuple[int, int]] = []
    for start, end in sorted(span for span in spans if span[1] > span[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _joined(turns: list[Turn]) -> list[Turn]:
    """Turns that touch (two replies the template writes back to back) checked as one span."""
    joined: list[Turn] = []
    for turn in sorted(turns, key=lambda t: t.start):
        previous = joined[-1] if joined else None
        if previous is not None and not (turn.optional or previous.optional) and turn.start == previous.end:
            joined[-1] = replace(previous, end=turn.end, last_generated=turn.last_generated)
        else:
            joined.append(turn)
    return joined


def check_spans(layout: Layout, spans: list[tuple[int, int]], imprecise: list[str] | None = None) -> list[str]:
    """Reasons the spans do not train exactly the expected turns (empty when they do).

    Whitespace trained right after a turn's stop marker is imprecise, not wrong (the model never predicts past its
    stop token): given a list `imprecise`, such findings go there instead of the reasons.
    """
    # Empty spans (a tagged region that rendered nothing, e.g. empty content) mark no characters.
    text, reasons = layout.text, []
    spans = merge_adjacent(spans)
    for turn in _joined(layout.turns):
        holder = next(((s, e) for s, e in spans if s <= turn.start and e >= turn.end), None)
        if turn.optional:
            continue  # may be trained or not; what else a span covers is checked for the turns around it
        if holder is None:
            got = [(s, e) for s, e in spans if s < turn.end and e > turn.start]
            reasons.append(
                f"message {turn.message}: expected {_excerpt(text, turn.start, turn.end)} trained, "
                + (f"got {', '.join(_excerpt(text, s, e) for s, e in got)}" if got else "nothing of it is trained")
            )
            continue
        # An optional piece next to the turn (a marker the next message writes) may share its span.
        optional = {i for t in layout.turns if t.optional for i in range(t.start, t.end)}
        lead = "".join(text[i] for i in range(holder[0], turn.start) if i not in optional)
        tail = "".join(text[i] for i in range(turn.end, holder[1]) if i not in optional)
        if lead.strip():
            reasons.append(f"message {turn.message}: the header {lead!r} is trained")
        if tail and not tail.strip() and imprecise is not None:
            imprecise.append(f"message {turn.message}: {tail!r} after the stop marker is trained")
        elif tail:
            reasons.append(f"message {turn.message}: {tail!r} after the end of the turn is trained")
    for start, end, what in layout.forbidden:
        if any(s < end and e > start for s, e in spans):
            reasons.append(f"{what} text {_excerpt(text, start, end)} is trained")
    for s, e in spans:
        if e > s and not any(s < turn.end and e > turn.start for turn in layout.turns):
            reasons.append(f"{_excerpt(text, s, e)} is trained outside any trained turn")
    return reasons


def verify(
    original: str,
    tagged: str,
    probes: list[Probe],
    layouts: dict[str, Layout],
    strict: bool = True,
) -> Report:
    """Render every probe with both templates and check the tagged one's spans against `layouts`.

    A probe the original rejects is skipped; one only the tagged template rejects fails. Renders read the
    clock at `PROBE_INSTANT`; a template that reads it is verified for that instant, and a note says so.
    Not `strict`, whitespace trained after a stop marker is accepted with a note (`Report.imprecise`).
    """
    with probe_clock() as clock:
        report = _verify(original, tagged, probes, layouts, strict)
    if clock.read:
        report.notes.append(
            "the template reads the clock (strftime_now), so its text changes with the date: "
            f"verified as rendered at {PROBE_INSTANT:%Y-%m-%d %H:%M:%S}"
        )
    return report


def _verify(original: str, tagged: str, probes: list[Probe], layouts: dict[str, Layout], strict: bool) -> Report:
    report = Report(ok=True, tagged=True)
    imprecise: list[str] | None = None if strict else []
    for probe in probes:
        before = render_probe(original, probe)
        if before.error is not None:
            report.probes_skipped += 1
            continue
        after = render_probe(tagged, probe, spans=True)
        if after.error is not None:
            report.reasons.append(f"probe {probe.name!r}: the tagged template raises {after.error}")
            continue
        if after.text != before.text:
            at = next(
                (i for i, (a, b) in enumerate(zip(before.text, after.text)) if a != b),
                min(len(before.text), len(after.text)),
            )
            report.reasons.append(
                f"probe {probe.name!r}: rendering differs at character {at}: "
                f"original {_excerpt(before.text, at, at + 30)}, tagged {_excerpt(after.text, at, at + 30)}"
            )
            continue
        layout = layouts.get(probe.name)
        if layout is None or layout.text != before.text:
            report.probes_skipped += 1
            report.notes.append(f"probe {probe.name!r}: no reference layout; checked rendering only")
            continue
        found: list[str] | None = None if imprecise is None else []
        problems = check_spans(layout, after.spans, found)
        report.reasons.extend(f"probe {probe.name!r}: {problem}" for problem in problems)
        if found:
            imprecise.extend(f"probe {probe.name!r}: {finding}" for finding in found)
        report.probes_passed += not problems
    if report.probes_passed == 0 and not report.reasons:
        report.reasons.append("no probe could be checked: the original template rejected every probe conversation")
    report.ok = not report.reasons
    if report.ok and imprecise:
        report.imprecise = imprecise
        report.notes.append(
            f"imprecise: whitespace after the stop marker is trained ({imprecise[0]}; {len(imprecise)} in all): the "
            "model never predicts past its stop token, so this does no harm; strict checking refuses it"
        )
    return report


def foreign_text_trained(tagged: str, probes: list[Probe], trained_roles: tuple[str, ...]) -> list[str]:
    """Reasons `tagged` trains someone else's text (a system, user or tool sentinel, or an untrained speaker's) in
    one of `probes`: a check that needs no layout, for conversation shapes the plan was not made from."""
    reasons = []
    for probe in probes:
        rendered = render_probe(tagged, probe, spans=True)
        if rendered.text is None:
            continue
        for sentinel in probe.sentinels:
            if sentinel.role in trained_roles and sentinel.kind != "tool_schema":
                continue
            start = rendered.text.find(sentinel.text)
            end = start + len(sentinel.text)
            if start >= 0 and any(s < end and e > start for s, e in rendered.spans):
                reasons.append(f"probe {probe.name!r}: {sentinel.role} {sentinel.kind} text is trained")
    return reasons
