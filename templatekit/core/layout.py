"""Where each trained turn begins and ends in one rendered probe, laid out for plan and verify.

The boundaries come from truth.py (what the model generates after its prompt, read off the template's own
renders); this module adds what must stay outside: other messages' sentinels (forbidden), tool results the
template writes inside the turn (the turn is cut around them), a stop marker one output writes together with
someone else's text (optional), and messages that render nothing generated (optional).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import PatchError
from .analysis import Emission
from .markers import CLOSERS, MARKER, OPENERS
from .probes import SPECIAL_TOKENS, Probe
from .truth import GENERATED_KINDS, Generated, common_prefix, generated_at


@dataclass(frozen=True)
class Turn:
    """A trained message's expected span `[start, end)` in the rendered text."""

    message: int
    start: int
    end: int
    first_generated: int
    last_generated: int
    optional: bool = False  # rendered without any generated text (say, only tool calls the template drops)


@dataclass
class Layout:
    """Expected trained turns, and the character ranges that must never be trained."""

    text: str
    turns: list[Turn]
    forbidden: list[tuple[int, int, str]]  # (start, end, what)
    header: str
    trained: set = None


@dataclass(frozen=True)
class TracedProbe:
    """One probe, traced: its laid-out render and the emissions that wrote it (what plan and fallback read)."""

    probe: Probe
    layout: Layout
    emissions: list[Emission]


def generation_prompt(text_without: str, text_with: str) -> str:
    """The text `add_generation_prompt=True` writes where the render without it ends (some templates end
    a prompt-less render with an end-of-sequence token instead).

    Example:
        >>> generation_prompt("a<u>", "a<u><asst>")
        '<asst>'
        >>> generation_prompt("a<u></s>", "a<u><asst>")
        '<asst>'
        >>> generation_prompt("a<u></s>", "a<u>")  # the prompt only drops an end-of-sequence token
        ''
    """
    common = common_prefix(text_with, text_without)
    if common < len(text_without) and common < len(text_with):
        # The renders part inside a marker (`</s>` vs `<|assistant|>` share `<`): back up to where it starts,
        # never past the end of the text before it (a user's words that end right before the marker).
        while (
            common
            and text_with[common] not in OPENERS
            and not (text_with[common - 1].isspace() or text_with[common - 1] in CLOSERS)
        ):
            common -= 1
    return text_with[common:]


def _generated(probe: Probe, text: str, emissions: list[Emission]) -> dict[int, list[tuple[int, int]]]:
    """Where each message's generated sentinels (content, reasoning, tool calls) first stand in the rendered text."""
    found: dict[int, list[tuple[int, int]]] = {}
    for sentinel in probe.sentinels:
        start = text.find(sentinel.text)
        while start >= 0 and not generated_at(sentinel.kind, start, sentinel.index, emissions):
            start = text.find(sentinel.text, start + 1) if sentinel.kind in GENERATED_KINDS else -1
        if start >= 0:
            found.setdefault(sentinel.index, []).append((start, start + len(sentinel.text)))
    return found


def common_opening(renders: Iterable[tuple[Probe, str, list[Emission], list[int]]]) -> str:
    """The header every trained turn opens with, for templates whose generation prompt writes nothing.

    `renders` yields `(probe, text, emissions, trained message indices)`. A turn's opening is what the
    message writes before its first generated text; the header is the openings' common prefix, cut back
    to where a marker or line ends.

    Example:
        >>> from templatekit.core.analysis import Emission
        >>> from templatekit.core.probes import Probe, Sentinel
        >>> probe = Probe("p", [], sentinels=[Sentinel("A1", "assistant", 0, "content"),
        ...                                   Sentinel("B2", "assistant", 1, "tool_call")])
        >>> text = "<bot><say>A1<bot><act>B2"
        >>> emissions = [Emission(0, "<bot><say>A1", 0, 0), Emission(0, "<bot><act>B2", 12, 1)]
        >>> common_opening([(probe, text, emissions, [0, 1])])
        '<bot>'
    """
    openings = []
    for probe, text, emissions, trained in renders:
        generated = _generated(probe, text, emissions)
        for index in trained:
            found = [start for start, _ in generated.get(index, [])]
            own = [e.start for e in emissions if e.message == index and e.text]
            if found and own and own[0] < min(found):
                openings.append(text[own[0] : min(found)])
    if not openings:
        return ""
    common = 0
    shortest = min(openings, key=len)
    while common < len(shortest) and all(opening[common] == shortest[common] for opening in openings):
        common += 1
    while common and not (shortest[common - 1].isspace() or shortest[common - 1] in ">]:"):
        common -= 1
    return shortest[:common]


def _split_at_gaps(
    turn: Turn,
    text: str,
    emissions: list[Emission],
    forbidden: list[tuple[int, int, str]],
    generated: list[tuple[int, int]],
) -> list[Turn]:
    """The turn in pieces around text that is not the speaker's but that the template writes inside it.

    Some templates write a tool's result into the assistant's turn, between its tool call and its reply.
    The outputs that wrote such text are left out whole; what remains on either side is trained. A piece
    without generated text (an end-of-turn marker after a tool result) may be trained but need not be.
    """
    gaps: list[list[int]] = []
    for start, end, _ in sorted(forbidden):
        if not turn.start < start < end <= turn.end:
            continue
        covering = [e for e in emissions if e.start < end and e.end > start]
        gap = [min(e.start for e in covering), max(e.end for e in covering)]
        if any(gap[0] < g_end and g_start < gap[1] for g_start, g_end in generated):
            return [turn]  # the speaker's own text shares an output with it: nothing to split
        if gaps and gap[0] <= gaps[-1][1]:
            gaps[-1][1] = max(gaps[-1][1], gap[1])
        else:
            gaps.append(gap)
    if not gaps:
        return [turn]
    pieces, start = [], turn.start
    for gap_start, gap_end in [*gaps, [turn.end, turn.end]]:
        inside = [(s, e) for s, e in generated if start <= s and e <= gap_start]
        end = max(len(text[:gap_start].rstrip()), max((e for _, e in inside), default=start))
        if end > start:
            first = min((s for s, _ in inside), default=start)
            last = max((e for _, e in inside), default=start)
            pieces.append(Turn(turn.message, start, end, first, last, optional=not inside))
        start = gap_end
    return pieces


def trained_messages(probe: Probe, train_roles: tuple[str, ...], only_last_turn: bool) -> list[int]:
    """Indices of the probe's messages that are to be trained."""
    indices = [i for i, message in enumerate(probe.messages) if message["role"] in train_roles]
    return indices[-1:] if only_last_turn else indices


def layout_probe(
    probe: Probe,
    text: str,
    emissions: list[Emission],
    header: str,
    trained: list[int],
    truth: dict[int, Generated] | None = None,
) -> Layout:
    """Compute the expected trained turns of `probe` rendered as `text`.

    `truth` holds the turns whose boundaries the template's own renders determine (truth.py); the
    others are read from the header and the outputs the message wrote.
    """
    truth = truth or {}
    forbidden = []
    for sentinel in probe.sentinels:
        if sentinel.index in trained and sentinel.kind in GENERATED_KINDS:
            continue
        start = text.find(sentinel.text)
        while start >= 0:
            forbidden.append((start, start + len(sentinel.text), f"{sentinel.role} {sentinel.kind}"))
            start = text.find(sentinel.text, start + 1)
    generated = _generated(probe, text, emissions)
    turns: list[Turn] = []
    closing = _closing_marker(probe, text, emissions)
    for index in trained:
        positions = generated.get(index, [])
        own = [e for e in emissions if e.message == index and e.text]
        if not positions:
            # Nothing generated is rendered (say, tool calls the template drops): what the message still
            # writes may be trained, but need not be.
            if own and own[0].start < own[-1].end:
                # From where its prompt parts from the text, when that is known and comes before its outputs, to
                # an end-of-sequence token written right after them (as after a reply that ends the conversation).
                begin = min(own[0].start, truth[index].start) if index in truth else own[0].start
                rest = text[own[-1].end :]
                eos = SPECIAL_TOKENS["eos_token"]
                end = own[-1].end + (len(rest) - len(rest.lstrip()) + len(eos) if rest.lstrip().startswith(eos) else 0)
                turns.append(Turn(index, begin, end, begin, begin, optional=True))
            elif index in truth and truth[index].empty:
                # It writes nothing at all: what the template writes from where its prompt parts from the text
                # to the next message (a separator, an end-of-sequence token) may be trained, when no one's text
                # is in it.
                begin = truth[index].start
                end = min(
                    (e.start for e in emissions if e.message is not None and e.message > index), default=len(text)
                )
                if begin < end and not any(start < end and begin < stop for start, stop, _ in forbidden):
                    turns.append(Turn(index, begin, end, begin, begin, optional=True))
            continue
        first = min(start for start, _ in positions)
        last = max(end for _, end in positions)
        if index in truth:
            start, end = truth[index].start, truth[index].end
        else:
            raise PatchError(
                [
                    f"probe {probe.name!r}: cannot tell where message {index}'s turn starts: the prompt for it "
                    "(the conversation before it, with the generation prompt) does not render the text before it"
                ]
            )
        shared = _shared_ending(emissions, forbidden, last, end)
        if shared is not None:  # a stop marker that one output writes together with a tool result: optional
            turns.append(Turn(index, shared, end, shared, shared, optional=True))
            end = shared
        gap = truth[index].gap
        if gap is not None and gap[1] <= end:  # whitespace after the stop marker, before an EOS: not generated
            turns.append(Turn(index, gap[1], end, gap[1], gap[1]))
            end = gap[0]
        turns.extend(_split_at_gaps(Turn(index, start, end, first, last), text, emissions, forbidden, positions))
        after = len(text) - len(text[end:].lstrip())
        if end == last and closing and text.startswith(closing, after):
            turns.append(Turn(index, after, after + len(closing), after, after, optional=True))
    return Layout(text, turns, forbidden, header)


def _shared_ending(emissions: list[Emission], forbidden, last: int, end: int) -> int | None:
    """Where an output that writes the turn's ending and then someone else's text (Gemma 4 writes its
    `<|tool_response>` stop token as the opening of the tool's result) begins, when that is after `last`."""
    for emission in emissions:
        if emission.start < end < emission.end and emission.start >= last:
            if any(emission.start < start < emission.end for start, _, _ in forbidden):
                return emission.start
    return None


def _closing_marker(probe: Probe, text: str, emissions: list[Emission]) -> str:
    """A marker every message after the first opens with, and the render ends with (Jamba's `<|eom|>`).

    Such a marker closes the message before it; the template just writes it late. A turn with no marker of
    its own may have it trained (the model generates it to stop) or not. A role's own header (`<|user|>`)
    is not one: it differs from role to role, and a render does not end with it.
    """
    if probe.add_generation_prompt:
        return ""
    starts = []
    for index in range(1, len(probe.messages)):
        own = [e.start for e in emissions if e.message == index and e.text]
        if own:
            starts.append(text[own[0] :])
    found = MARKER.match(starts[0]) if starts else None
    if found is None or any(not opening.startswith(found.group()) for opening in starts):
        return ""
    # It closes the last message too: the render ends with it (a header opener never ends a render).
    return found.group() if text.rstrip().endswith(found.group()) else ""
