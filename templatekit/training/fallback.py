"""Delimiter fallback: learn, from a template's own probe renders, the strings that bound its trained turns.

When a template cannot be patched with generation tags, the trained text can still be found in a rendering
by the strings the template writes around each turn (`delimiters.py` scans for them). They are learned here
from the renders the patcher's verifier reads: `core.pipeline.analyse` traces the probe conversations (sentinel
contents, see `probes.py`) and lays each rendering out into the turns that must be trained (`layout.py`:
header out, everything generated and the end-of-turn marker in, a turn split around a tool result the
template writes inside it). Nothing comes from a model's name or a template's text. The rules, each
learned from those laid-out turns:

1. **End-of-turn markers**: what the template writes after a turn's last content up to the turn's end
   (`<|im_end|>`, `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`); several when turns close differently.
2. **Response parts**: for each turn, an ending of the template text before it that starts where a
   marker, a word or a line starts; of those occurring least where no turn starts, the longest that the
   turn header writes (`<|im_start|>assistant\\n<think>\\n`, not just `<think>\\n`, nor the previous
   turn's `<|im_end|>\\n` with it), else the shortest (`<tool_response|>` after a tool result written
   inside the turn, without the result's own framing).
3. **Instruction parts**: what opens the text after each turn, its leading marker (`<|observation|>`,
   `</s>`) or else its first line, and the markers of every untrained message's header that never occur
   inside a turn: a turn never runs past one. A turn whose template writes no marker of its own ends
   before it.
4. **Continuation**: a turn preceded, since the previous trained turn, by whitespace only (a reply the
   template writes after a tool result or a dropped message without a header) is found by continuing
   after the end-of-turn marker when no instruction or response part follows.
5. **Joins**: where a laid-out turn holds an end marker followed by a header (channel formats: reasoning,
   then `<|end|><|start|>assistant`, then the answer; two tool calls as two messages of one turn), that
   pair is learned as a join, and the turn goes on over it.

The result is then checked on every probe with the verifier's own `check_spans`, the same truth the
generation tags are held to; delimiters that miss it are refused with the reasons.

Known limit, shared with every delimiter method: a conversation whose *content* contains a response part
or an end-of-turn marker verbatim is cut there. Generation tags do not have this weakness, which is why
`SpanRenderer` prefers them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..core.layout import Layout, Turn, generation_prompt
from ..core.markers import CLOSERS, MARKER, MARKER_AT_END, OPENERS
from ..core.pipeline import Analysis, analyse
from ..core.probes import ASSISTANT, Probe
from ..core.sandbox import bounded
from ..core.tags import strip_generation_tags
from ..core.truth import GENERATED_KINDS
from ..core.verify import check_spans
from ..errors import FallbackError, PatchError
from .delimiters import Delimiters, find_spans

__all__ = ["derive_delimiters"]

# Quotes and brackets: what marks data (a tool result's JSON, a schema's field names), not a header.
_DATA = re.compile(r"[\"'{}()\[\]]")


# ---------------------------------------------------------------------------------------------------------
# What the laid-out probe renders show


@dataclass
class _Piece:
    """One laid-out trained turn (or piece of one) and the template text around it."""

    turn: Turn
    context: str  # template text before it, since the previous sentinel or trained piece
    context_start: int
    continued: bool  # only whitespace since the previous trained piece: the template wrote no header
    closer: str | None  # text from its last content to its end; None when it does not end on content
    follower: str  # text after it up to the next sentinel or piece, less leading whitespace


@dataclass
class _Seen:
    """One probe rendering, laid out."""

    probe: Probe
    layout: Layout
    limit: int  # where scanning stops: before the generation prompt the probe asked for
    pieces: list[_Piece]
    untrained: list[str]  # template text before each untrained message's text


def _occurrences(text: str, needle: str) -> list[int]:
    found, at = [], text.find(needle)
    while at >= 0:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def _observe(probe: Probe, layout: Layout, prompt: str) -> _Seen:
    text = layout.text
    located = sorted((at, at + len(s.text), s) for s in probe.sentinels for at in _occurrences(text, s.text))
    turns = sorted(layout.turns, key=lambda t: (t.start, t.end))
    pieces = []
    for number, turn in enumerate(turns):
        sentinel_end = max((e for _, e, _ in located if e <= turn.start), default=0)
        piece_end = turns[number - 1].end if number else 0
        begin = max(sentinel_end, piece_end)
        context = text[begin : turn.start]
        continued = bool(number) and piece_end >= sentinel_end and not context.strip()
        last = next((s for _, e, s in located if e == turn.last_generated and s.kind in GENERATED_KINDS), None)
        closer = text[turn.last_generated : turn.end] if last is not None and last.kind == "content" else None
        # An optional piece (a marker that may or may not be trained) neither follows nor is followed here.
        following = [s for s, _, _ in located if s >= turn.end]
        following += [t.start for t in turns if t.start >= turn.end and not t.optional]
        follower = "" if turn.optional else text[turn.end : min(following, default=len(text))].lstrip()
        pieces.append(_Piece(turn, context, begin, continued, None if turn.optional else closer, follower))
    untrained = []
    for start, _, sentinel in located:
        if sentinel.index in layout.trained or sentinel.kind not in ("content",):
            continue
        before = max([e for _, e, _ in located if e <= start] + [t.end for t in turns if t.end <= start], default=0)
        untrained.append(text[before:start])
    limit = len(text)
    if probe.add_generation_prompt and prompt and text.endswith(prompt):
        limit -= len(prompt)
    return _Seen(probe, layout, limit, pieces, untrained)


def _leading(text: str) -> str:
    """What opens `text`: its leading marker, or else its first line (with the line end)."""
    found = MARKER.match(text)
    if found:
        return found.group()
    line_end = text.find("\n")
    return text if line_end < 0 else text[: line_end + 1]


# ---------------------------------------------------------------------------------------------------------
# Rule 1: end-of-turn markers


def _end_markers(seen: list[_Seen]) -> tuple[str, tuple[str, ...]]:
    """The texts closing turns that end on content, the most frequent first (rule 1)."""
    closers = Counter(p.closer for s in seen for p in s.pieces if p.closer)
    ranked = sorted(closers, key=lambda closer: (-closers[closer], closer))
    return (ranked[0], tuple(ranked[1:])) if ranked else ("", ())


# ---------------------------------------------------------------------------------------------------------
# Rule 2: response parts


def _candidates(piece: _Piece) -> list[str]:
    """Endings of the text before a piece that start where a marker, a word or a line starts."""
    context, out = piece.context, []
    for i in range(len(context)):
        rest = context[i:]
        if not rest.strip() or context[i].isspace():
            continue
        opens_marker = context[i] in OPENERS
        after_space = i > 0 and context[i - 1].isspace()
        after_marker = i > 0 and context[i - 1] in CLOSERS and MARKER_AT_END.search(context, 0, i) is not None
        # The text's very first character starts a word too; elsewhere the context begins right after content.
        if opens_marker or after_space or after_marker or (i == 0 and piece.context_start == 0):
            out.append(rest)
    return out


def _in_optional(seen: _Seen, position: int) -> bool:
    """Whether `position` lies in an optional piece of `seen` (one that may or may not be trained)."""
    return any(p.turn.optional and p.turn.start <= position <= p.turn.end for p in seen.pieces)


class _Starts:
    """Scores a response-part candidate: how often it occurs where no laid-out turn starts.

    Not counted: an occurrence inside an optional piece (which may or may not be trained), and one inside
    a turn right after a marker, which the join rule will keep inside (a header the model writes mid-turn).
    """

    def __init__(self, seen: list[_Seen]):
        self.seen = seen
        self.starts = [{p.turn.start for p in s.pieces} for s in seen]
        self.covered = [[(p.turn.start, p.turn.end) for p in s.pieces] for s in seen]
        self.cache: dict[str, int] = {}

    def misplaced(self, candidate: str) -> int:
        if candidate not in self.cache:
            count = 0
            for s, starts, covered in zip(self.seen, self.starts, self.covered):
                for at in _occurrences(s.layout.text, candidate):
                    end = at + len(candidate)
                    if end > s.limit or end in starts:
                        continue
                    inside = any(a < end <= b for a, b in covered)
                    if inside and (_in_optional(s, end) or MARKER_AT_END.search(s.layout.text, 0, at)):
                        continue
                    count += 1
            self.cache[candidate] = count
        return self.cache[candidate]


def _response_parts(seen: list[_Seen]) -> tuple[str, ...]:
    """One part per header shape (rule 2): for each turn, among its candidates with the fewest misplaced
    occurrences, the longest that the generation prompt writes too (the header as the template writes it
    to open a turn: `<|im_start|>assistant\\n<think>\\n`, not just `<think>\\n`), else the shortest (a tool
    result's closing such as `<tool_response|>`, without the result's own framing before it)."""
    scorer = _Starts(seen)
    parts: list[str] = []
    for s in seen:
        for piece in s.pieces:
            if piece.turn.optional or piece.continued:
                continue
            candidates = _candidates(piece)
            if not candidates or any(piece.context.endswith(part) for part in parts):
                continue
            role = s.probe.messages[piece.turn.message]["role"]
            # The layout's header: the generation prompt, or the opening every turn shares when the prompt
            # writes nothing. A trained speaker other than the assistant sits where the assistant's name is.
            header = s.layout.header.replace(ASSISTANT, role) if role != ASSISTANT else s.layout.header

            def rank(candidate: str, header: str = header) -> tuple[int, int, int]:
                written = candidate in header
                return scorer.misplaced(candidate), not written, -len(candidate) if written else len(candidate)

            parts.append(min(candidates, key=rank))
    return tuple(dict.fromkeys(parts))


# ---------------------------------------------------------------------------------------------------------
# Rules 3-5: what stops a turn, what continues one


def _instruction_parts(seen: list[_Seen]) -> tuple[str, ...]:
    """What opens the text after each trained piece, and every header the template writes before an
    untrained message (rule 3).

    The second kind covers role orders the probes do not show after a trained turn (a custom speaker
    followed by the assistant, a system message mid-conversation). Each header is kept only when it never
    begins inside a laid-out turn: framing that the model also writes must not cut a turn.
    """
    parts = [_leading(p.follower) for s in seen for p in s.pieces if p.follower.strip()]
    headers: list[str] = []
    for s in seen:
        for context in s.untrained:
            # The marker nearest the message's text names its role (`<|im_start|>`, `<|USER_TOKEN|>`); with
            # none, the last line does (`### Instruction:`). Text before it may be a system prompt's prose.
            # Quotes and brackets mark data (a tool result's JSON, a schema's field names), not a header.
            markers = [m for m in MARKER.findall(context) if not _DATA.search(m[1:-1])]
            lines = [line.strip() for line in context.splitlines() if any(ch.isalnum() for ch in line)]
            headers += markers[-1:] or [line for line in lines[-1:] if not _DATA.search(line)]
    for header in dict.fromkeys(headers):
        inside = any(
            p.turn.start <= at < p.turn.end
            for s in seen
            for at in _occurrences(s.layout.text, header)
            for p in s.pieces
            if not p.turn.optional
        )
        if not inside:
            parts.append(header)
    return tuple(dict.fromkeys(part for part in parts if part.strip()))


def _joins(seen: list[_Seen], delimiters: Delimiters) -> tuple[tuple[str, str], ...]:
    """`(marker, header)` pairs found inside laid-out turns where the scan would cut them (rule 5)."""
    joins: list[tuple[str, str]] = []
    for s in seen:
        text = s.layout.text
        spans = find_spans(text, delimiters, add_generation_prompt=s.probe.add_generation_prompt)
        for piece in s.pieces:
            turn = piece.turn
            if turn.optional:
                continue
            inside = [(a, b) for a, b in spans if a < turn.end and b > turn.start]
            # Two spans inside one turn: the first ends on a marker, the gap is the header the scan skipped.
            for (_, end), (start, _) in zip(inside, inside[1:]):
                marker = MARKER_AT_END.search(text, 0, end)
                gap = text[end:start]
                if marker is not None and turn.start < end and gap.strip():
                    joins.append((marker.group(), gap))
    return tuple(dict.fromkeys(joins))


def _reasoning_close(seen: list[_Seen]) -> str:
    """The template text between a turn's reasoning and its content (learned where both render)."""
    for s in seen:
        text = s.layout.text
        for piece in s.pieces:
            mine = [x for x in s.probe.sentinels if x.index == piece.turn.message]
            thought = next((x.text for x in mine if x.kind == "reasoning"), None)
            said = next((x.text for x in mine if x.kind == "content"), None)
            if thought and said and piece.turn.start <= text.find(thought) < text.find(said) <= piece.turn.end:
                between = text[text.find(thought) + len(thought) : text.find(said)].strip()
                if between:
                    return between
    return ""


def _closing_markers(seen: list[_Seen]) -> tuple[str, ...]:
    """Optional pieces right where a turn ends: a marker the template writes late (with the next message)
    that closes a turn which has no end-of-turn marker of its own. Only a marker that also follows the last
    turn of some rendering counts: one that merely opens every header (`<|turn>`) never ends a text."""
    found, final = [], set()
    for s in seen:
        text = s.layout.text
        ends = {p.turn.end for p in s.pieces if not p.turn.optional}
        found += [text[p.turn.start : p.turn.end] for p in s.pieces if p.turn.optional and p.turn.start in ends]
        if ends:
            final.add(text[max(ends) :].strip())
    return tuple(dict.fromkeys(marker for marker in found if marker.strip() and marker in final))


def _split_turns(seen: list[_Seen]) -> bool:
    """Whether a message renders as pieces that do not touch (a turn written around a tool result)."""
    for s in seen:
        ends: dict[int, int] = {}
        for piece in s.pieces:
            turn = piece.turn
            if turn.optional:
                continue
            if turn.message in ends and ends[turn.message] < turn.start:
                return True
            ends[turn.message] = turn.end
    return False


# ---------------------------------------------------------------------------------------------------------
# Checking and the entry point


def _problems(seen: list[_Seen], delimiters: Delimiters) -> list[str]:
    reasons = []
    for s in seen:
        spans = find_spans(s.layout.text, delimiters, add_generation_prompt=s.probe.add_generation_prompt)
        reasons += [f"probe {s.probe.name!r}: {problem}" for problem in check_spans(s.layout, spans)]
    return reasons


def _analyse(template: str, speakers: tuple[str, ...]) -> tuple[Analysis, list[_Seen], str]:
    try:
        analysis = analyse(strip_generation_tags(template), speakers, False)
    except PatchError as error:
        raise FallbackError(error.reasons) from None
    layouts = analysis.layouts
    prompt = ""
    if "ends_on_user" in layouts and "generation_prompt" in layouts:
        prompt = generation_prompt(layouts["ends_on_user"].text, layouts["generation_prompt"].text)
    seen = [_observe(trace.probe, trace.layout, prompt) for trace in analysis.traces]
    return analysis, seen, prompt


@bounded
def derive_delimiters(
    template: str,
    train_roles: Sequence[str] = (ASSISTANT,),
    *,
    response_part: str | Sequence[str] | None = None,
    instruction_part: str | Sequence[str] | None = None,
) -> Delimiters:
    """Learn, and check on the probes, the delimiters that bound the trained turns of `template`.

    Explicit `response_part` / `instruction_part` override the learned ones (as in Unsloth's
    `train_on_responses_only`); with an explicit response part nothing is checked (it may name a role the
    probes do not have) and only the end-of-turn markers and header spacing are learned, so the marker
    stays trained. Raises `FallbackError` saying why when the learned delimiters miss the probes' truth.

    Example:
        >>> template = (
        ...     "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        ...     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        ... )
        >>> d = derive_delimiters(template)
        >>> d.response_parts, d.eot, d.instruction_parts
        (('<|im_start|>assistant\\n',), '<|im_end|>', ('<|im_start|>',))
    """
    speakers = tuple(train_roles) or (ASSISTANT,)
    _, seen, prompt = _analyse(template, speakers)
    if not any(not p.turn.optional for s in seen for p in s.pieces):
        raise FallbackError(["no trained turn is rendered: the template writes no content of " + "/".join(speakers)])
    eot, alternatives = _end_markers(seen)
    header_space = prompt[len(prompt.rstrip()) :] if prompt.strip() else ""
    instruction = _instruction_parts(seen)
    if instruction_part is not None:
        instruction = (instruction_part,) if isinstance(instruction_part, str) else tuple(instruction_part)
    if response_part is not None:
        # The caller's parts may name speakers the probes do not have (a custom role), so they are taken as
        # given, as Unsloth does; only the end-of-turn markers and header spacing come from the probes.
        parts = (response_part,) if isinstance(response_part, str) else tuple(response_part)
        space = "" if any(p.endswith(header_space) for p in parts) else header_space
        return Delimiters(parts, eot, instruction, alternatives, _reasoning_close(seen), space, prompt)
    parts = _response_parts(seen)
    if not parts:
        raise FallbackError(["no header precedes the trained turns"])
    continued = any(p.continued and not p.turn.optional for s in seen for p in s.pieces)
    delimiters = Delimiters(
        parts,
        eot,
        instruction,
        alternatives,
        _reasoning_close(seen),
        "",
        prompt,
        continues=continued,
        split_turns=_split_turns(seen),
    )
    attempts = [delimiters]
    closing = _closing_markers(seen)
    if closing:
        # Train the optional marker that closes a turn with none of its own (the model must learn to stop),
        # where the truth allows it; else leave it out, as the truth also allows.
        more = closing if delimiters.eot else closing[1:]
        attempts.insert(0, replace(delimiters, eot=eot or closing[0], eot_alternatives=alternatives + more))
    problems: list[str] = []
    for attempt in attempts:
        joins = _joins(seen, attempt)
        attempt = replace(attempt, joins=joins) if joins else attempt
        problems = _problems(seen, attempt)
        if not problems:
            return attempt
    summary = f"with response part(s) {list(parts)!r} and end of turn {eot!r}: "
    raise FallbackError([summary + problems[0]] + problems[1:4])
