"""What the model generates for each trained turn, read off the template's own renders (docs/design.md, invariant 2).

For assistant turn k of a probe rendered as `text`, the model is given `render(messages[:k],
add_generation_prompt=True)` and must write everything after it, up to and including the stop marker:

- **start**: the prompt and `text` are aligned from the last message both share (the one before turn k),
  so that templates which move text around the conversation (a system prompt folded into the last user
  turn) still align locally. The turn starts where the prompt's tail stops matching `text`.
- **end**: `render(messages[:k + 1])` ends the conversation on turn k; what it shares with `text` after
  the turn's last generated text is the turn's own ending (an end-of-turn marker, EOS after a space, EOS
  written after the loop), less trailing whitespace. An end-of-sequence token that the *next* message's
  branch writes right after the turn also ends it. A turn with no marker of its own is ended by the next
  message's special token (`<|user|>`) when that is what follows it: the model generates it to stop.

Sentinels only say whose text is where; the boundaries come from the renders, never from the plan, so
the verifier checks the patch against an independent truth.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from . import endings
from .analysis import Emission
from .endings import Where
from .markers import MARKER
from .probes import ASSISTANT, Probe

GENERATED_KINDS = ("content", "reasoning", "tool_name", "tool_call", "tool_id")
# Generated only where the message's own outputs write it: a call's id also stands in the tool result that answers it.
_OWN_OUTPUT_KINDS = ("tool_id",)
# A user message appended to a conversation that ends on the turn, to see how the turn ends when it goes on.
FOLLOW_UP = {"role": "user", "content": "tkfollowupq"}
Trace = Callable[[list, bool], "tuple[str, list[Emission]] | None"]


#: How a turn's stop marker is written: by the turn's own outputs, by the next message's branch, after the message
#: loop, or as the next role's token ("" when the turn has none of its own).


@dataclass(frozen=True)
class Generated:
    """Turn `message` generates `text[start:end]`; `marker` is the stop marker it ends with ("" if none)."""

    message: int
    start: int
    end: int
    marker: str = ""
    where: Where = ""
    quoted: bool = False  # the render that ends on this turn ends like the prompt: the turn is only quoted
    # Whitespace between the turn's own stop marker and an end-of-sequence token written after it
    # (`<|end|>\n</s>`): it follows a stop marker, so it is not generated, but the token after it is.
    gap: tuple[int, int] | None = None
    # The turn renders nothing generated (tool calls the template drops): only where its prompt parts from the
    # text is known, and what the template writes from there to the message's own outputs may be trained.
    empty: bool = False


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of `a` and `b`.

    Example:
        >>> common_prefix("<|im_start|>assistant\\n", "<|im_start|>assistant\\nhi")
        22
    """
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


def back_to_marker_start(text: str, at: int, floor: int = 0) -> int:
    """`at` moved back to the start of a marker or word of `text` that runs across it.

    Two renders that part inside `<think>` / `<tool_call>` share the `<`; the boundary is before it.

    Example:
        >>> back_to_marker_start("x<think>", 2)
        1
    """
    for match in MARKER.finditer(text, max(floor, at - 48), min(len(text), at + 48)):
        if match.start() < at < match.end():
            at = match.start()
    while floor < at < len(text) and text[at - 1].isalnum() and text[at].isalnum():
        at -= 1
    return max(at, floor)


def _parting(a: str, a_from: int, b: str, b_from: int, b_to: int) -> int:
    """How far `a[a_from:]` and `b[b_from:b_to]` agree, backed up out of any marker either parts inside."""
    shared = common_prefix(a[a_from:], b[b_from:b_to])
    if not shared:
        return 0
    in_a = back_to_marker_start(a, a_from + shared, a_from) - a_from
    in_b = back_to_marker_start(b, b_from + shared, b_from) - b_from
    return min(in_a, in_b)


def _occurrences(probe: Probe, text: str) -> list[tuple[int, int, int]]:
    """(start, end, message index) of every sentinel found in `text`."""
    found = []
    for sentinel in probe.sentinels:
        start = text.find(sentinel.text)
        while start >= 0:
            found.append((start, start + len(sentinel.text), sentinel.index))
            start = text.find(sentinel.text, start + 1)
    return sorted(found)


def _turn_start(probe: Probe, text: str, prompt: str, header: str, first: int, index: int) -> int | None:
    """Where turn `index` starts in `text`: after the generation prompt `header` where the turn opens with
    it, else where the prompt's tail (aligned from the last sentinel both share) stops matching `text`."""
    before = [occ for occ in _occurrences(probe, text) if occ[1] <= first and occ[2] != index]
    if not before or not _occurrences(probe, prompt):
        return _parting(prompt, 0, text, 0, first)
    # Align from the last text before the turn that the prompt writes too (a template may drop or move
    # other messages' text, such as earlier tool calls, depending on where the conversation ends).
    anchor_start, anchor_end, _ = before[-1]
    last_start = prompt.rfind(text[anchor_start:anchor_end])
    if last_start < 0:
        return None
    last_end = last_start + anchor_end - anchor_start
    # What the prompt writes before its header: history writing more than that before the header (a turn opening of
    # its own, `<|turn>model\n` where the prompt after a tool result has none) generates it. Other whitespace
    # between the same pieces is no more.
    before_header = re.sub(r"\s", "", prompt[last_end : len(prompt) - len(header)]) if prompt.endswith(header) else None

    def opens_after(at: int) -> bool:
        return before_header is None or before_header.endswith(re.sub(r"\s", "", text[anchor_end:at]))

    if header.strip() and (found := text.rfind(header, anchor_end, first)) >= 0 and opens_after(found):
        return found + len(header)
    start = anchor_end + _parting(prompt, last_end, text, anchor_end, first)
    # A template that writes the reply's header whatever `add_generation_prompt` says (with other spacing
    # than in history): the prompt's tail still names it.
    tail = prompt[last_end:].strip()
    if tail and (found := text.rfind(tail, start, first)) >= 0:
        return found + len(tail)
    # The prompt's tail written again with other whitespace between its pieces (indentation a template
    # writes in one place and not the other): still the prompt.
    spaced = _spaced_match(tail, text, anchor_end, first)
    if spaced is not None and spaced > start:
        return spaced
    # The prompt writes something history does not before its header (a note appended to the last user message
    # only while it is last): the turn still opens after as much of the generation prompt as history writes, when
    # all history writes before that header the prompt writes before it too (history adds nothing of its own).
    opened = _header_opening(header, text, start, first)
    if opened is not None and before_header is not None and opens_after(opened[0]):
        return opened[1]
    return start


def _header_opening(header: str, text: str, begin: int, end: int) -> tuple[int, int] | None:
    """Where the longest beginning of `header` (at least its first marker) written in `text[begin:end]` starts and
    ends, at its last place there; None when its first marker is not there.

    Example:
        >>> _header_opening("<a>\\n<t>\\n", "x<a>\\n<t></t>hi", 0, 12)
        (1, 8)
    """
    opening = MARKER.match(header.lstrip())
    if opening is None:
        return None
    lead = header[: len(header) - len(header.lstrip()) + opening.end()]
    at = text.rfind(lead, begin, end)
    if at < 0:
        return None
    return at, back_to_marker_start(text, at + common_prefix(header, text[at:end]), at)


def _spaced_match(tail: str, text: str, begin: int, end: int) -> int | None:
    """Where `tail` ends in `text[begin:end]` when the latter starts with it up to whitespace, else None.

    Example:
        >>> _spaced_match("<a>\\n<b>", "x  <a><b>hi", 1, 11)
        9
    """
    pattern = r"\s*".join(re.escape(piece) for piece in tail.split())
    found = re.compile(r"\s*" + pattern).match(text, begin, end) if pattern else None
    return found.end() if found is not None else None


def _speaker_header(header: str, role: str, before: str) -> str | None:
    """The generation prompt's header with the word that names the assistant replaced by `role`, as it
    stands last in `before` (the text before the speaker's first generated text), or None.

    Example:
        >>> _speaker_header("<start_of_turn>model:", "judge", "<start_of_turn>judge:")
        '<start_of_turn>judge:'
    """
    found = []
    for word in dict.fromkeys(re.findall(r"[A-Za-z]+", header)):
        candidate = header.replace(word, role)
        if (at := before.rfind(candidate)) >= 0:
            found.append((at, candidate))
    return max(found)[1] if found else None


def _follows_prompt(probe: Probe, text: str, prompt: str, start: int) -> bool:
    """True when everything the prompt writes after its last message's text stands right before `start`."""
    in_prompt = _occurrences(probe, prompt)
    tail = prompt[in_prompt[-1][1] :] if in_prompt else prompt
    return text.endswith(tail, 0, start) or tail.rstrip() == text[start - len(tail.rstrip()) : start]


def _next_start(text: str, emissions: list[Emission], occurrences, index: int, last: int) -> int:
    """Where the next message's text begins after `last`: its first output or its first sentinel."""
    starts = [s for s, _, i in occurrences if s >= last and i != index]
    starts += [e.start for e in emissions if e.text and e.start >= last and e.message not in (None, index)]
    return min(starts, default=len(text))


def _added_prompt(bare: str, prompt: str) -> str:
    """What `add_generation_prompt=True` appends to the render of the same messages."""
    return prompt[back_to_marker_start(prompt, common_prefix(bare, prompt)) :]


def generated_turns(
    probe: Probe,
    text: str,
    emissions: list[Emission],
    trained: list[int],
    trace: Trace,
) -> dict[int, Generated]:
    """The generated span of each trained turn of `probe` (rendered as `text`) that has generated text.

    `trace(messages, add_generation_prompt)` renders with the probe's other options and returns the text
    and its emissions, or None when the template raises. A turn whose prompt cannot be rendered or
    aligned is left out: the caller falls back to reading its header.

    Example:
        >>> import jinja2
        >>> from templatekit.core.probes import build_probes
        >>> chatml = jinja2.Template(
        ...     "{% for m in messages %}<|im_start|>{{ m.role }}:{{ m.content }}<|im_end|> {% endfor %}"
        ...     "{% if add_generation_prompt %}<|im_start|>assistant:{% endif %}")
        >>> probe = build_probes()[0]
        >>> text = chatml.render(messages=probe.messages)
        >>> trace = lambda m, g: (chatml.render(messages=m, add_generation_prompt=g), [])
        >>> turn = generated_turns(probe, text, [], [1], trace)[1]
        >>> text[turn.start:turn.end], turn.marker
        ('tkassistcon1q<|im_end|>', '<|im_end|>')
    """
    occurrences = _occurrences(probe, text)
    kinds = {s.text: s.kind for s in probe.sentinels}
    turns: dict[int, Generated] = {}
    for index in trained:
        # The first place each generated sentinel stands: a template may repeat a call's name in its result.
        own = list(
            {
                text[s:e]: (s, e)
                for s, e, i in reversed(occurrences)
                if i == index and generated_at(kinds[text[s:e]], s, index, emissions)
            }.values()
        )
        if not own:
            if (parted := _empty_turn_start(probe, text, emissions, index, trace)) is not None:
                turns[index] = Generated(index, parted, parted, empty=True)
            continue
        first, last = min(s for s, _ in own), max(e for _, e in own)
        closing = next(text[s:e] for s, e in own if e == last)
        given = _prompt_and_header(probe, index, trace)
        if given is None:
            continue
        prompt, header = given
        headers = header  # the assistant's own header, and the speaker's below: neither stops a turn
        role = probe.messages[index]["role"]
        if role != ASSISTANT:
            # The generation prompt opens the assistant's turn; another trained speaker's turn opens with the
            # same header naming that speaker instead (`model` in Gemma's). Without one, nothing tells where
            # the speaker's turn starts: it is left out, and the template refused.
            header = _speaker_header(header, role, text[:first])
            if header is None:
                continue
        start = _turn_start(probe, text, prompt, header, first, index)
        if start is None:
            continue
        next_start = _next_start(text, emissions, occurrences, index, last)
        alone = trace(probe.messages[: index + 1], False)
        # The turn's own ending: what a render that ends on it shares with one that goes on after it.
        going_on = (text, emissions, last)
        if next_start == len(text):
            followed = trace([*probe.messages[: index + 1], FOLLOW_UP], False)
            found = followed[0].rfind(closing) if followed is not None else -1
            going_on = (*followed, found + len(closing)) if found >= 0 else None
        end, where = last, ""
        if alone is not None and going_on is not None and (found := alone[0].rfind(closing)) >= 0:
            on_text, on_emissions, on_last = going_on
            bound = _next_start(on_text, on_emissions, _occurrences(probe, on_text), index, on_last)
            shared = _parting(alone[0], found + len(closing), on_text, on_last, bound)
            end = max(last, len(text[: last + shared].rstrip()))
            where = "turn" if end > last else ""
            ending = alone[0][found + len(closing) + shared :].strip()
            if (
                next_start < len(text)
                and MARKER.fullmatch(ending)
                and not text[last + shared : next_start].strip()
                and text.startswith(ending, next_start)
            ):
                # The marker that ends a conversation stopping on this turn is written by the next message's
                # branch when it goes on (Jamba's `<|eom|>`): it still ends this turn.
                end, where = next_start + len(ending), "next message"
            elif end > last and MARKER.fullmatch(ending) and next_start < len(text):
                # A conversation that stops on the turn ends it with one marker (`</s>`), one that goes on with
                # another that the turn's own outputs write right after the shared ending (`<|im_end|>`): that
                # one is the stop token where the conversation goes on.
                end = endings.own_marker(text, emissions, index, end, header)
        if alone is not None and alone[0].rfind(closing) < 0 and next_start < len(text):
            # The turn renders its last generated text only when the conversation goes on (a call's id that the
            # template drops from the last message): it ends with what its own outputs write up to a stop marker.
            end, where = endings.own_tail(text, emissions, index, last, next_start, header), "turn"
        if end == last and next_start < len(text):
            # A render that ends on the turn ends it otherwise (Gemma 4 opens a tool's response there): the
            # marker the turn's own outputs write right after it ends it.
            end, where = endings.own_marker(text, emissions, index, last, header), "turn"
        if next_start == len(text) and probe.messages[index].get("tool_calls"):
            end, where = endings.call_ending(probe, text, emissions, index, last, header, (end, where))
        final = MARKER.match(text, last) if next_start == len(text) and end == last else None
        if final is not None and not header.strip().startswith(final.group()):
            # The last reply ends with a marker of its own that history turns do not write (gpt-oss writes
            # `<|return|>` there, `<|end|>` elsewhere): it is the stop token the model generates.
            end, where = final.end(), "turn"
        own_end = end
        end, where = endings.stop_after(text, end, last, next_start, where, (header, headers))
        stop_start = len(text[:end]) - len(text[own_end:end].lstrip())
        gap = (own_end, stop_start) if last < own_end < stop_start < end else None
        in_alone = alone[0].rfind(closing) if alone is not None else -1
        quoted = (
            in_alone >= 0
            and not _follows_prompt(probe, text, prompt, start)
            and not _opens_like_prompt(probe, text, prompt, first, index)
            and (
                quoted_in_prompt(prompt, alone[0], in_alone + len(closing))
                or _header_missing(header, text[_previous_end(occurrences, index, first) : first])
            )
        )
        turns[index] = Generated(index, start, end, text[last:end].strip(), where, quoted, gap)
    return turns


def generated_at(kind: str, start: int, index: int, emissions: list[Emission]) -> bool:
    """True when a sentinel of `kind` of message `index` found at `start` is text that message generates there: its
    content, reasoning or calls anywhere; a call's id only where the message's own outputs write it.

    Example:
        >>> generated_at("tool_id", 3, 1, [Emission(0, "abcdef", 0, 2)]), generated_at("content", 3, 1, [])
        (False, True)
    """
    if kind not in GENERATED_KINDS:
        return False
    if kind not in _OWN_OUTPUT_KINDS:
        return True
    return any(e.message == index and e.start <= start < e.end for e in emissions)


def _empty_turn_start(probe: Probe, text: str, emissions: list[Emission], index: int, trace: Trace) -> int | None:
    """Where the prompt for a turn that renders nothing generated parts from `text`, when that is before the
    message's own first output (a separator the previous message writes only when a message follows), or, for a
    message that writes nothing at all, where the prompt parts from the text."""
    writes = [e.start for e in emissions if e.message == index and e.text]
    given = _prompt_and_header(probe, index, trace) if probe.messages[index]["role"] == ASSISTANT else None
    if given is None:
        return None
    if not writes:
        parted = common_prefix(given[0], text)
        return parted if parted < len(text) else None
    start = _turn_start(probe, text, *given, writes[0], index)
    return start if start is not None and start < writes[0] else None


def _prompt_and_header(probe: Probe, index: int, trace: Trace) -> tuple[str, str] | None:
    """The prompt the model is given for turn `index` and what its generation prompt adds (its header), or
    None when the template rejects the conversation before the turn."""
    prompt, bare = trace(probe.messages[:index], True), trace(probe.messages[:index], False)
    if prompt is None:
        return None
    return prompt[0], _added_prompt(bare[0], prompt[0]) if bare is not None else ""


def _opens_like_prompt(probe: Probe, text: str, prompt: str, first: int, index: int) -> bool:
    """True when, after the message before the turn, history writes what the prompt writes there up to past a
    marker and into a header (` <step> Source: assistant`, `<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>`): the turn
    opens as the generation prompt does, whatever the prompt adds after it. A judge quotes the message otherwise."""
    before = [occ for occ in _occurrences(probe, text) if occ[1] <= first and occ[2] != index]
    if not before:
        return False
    anchor_start, anchor_end, _ = before[-1]
    at = prompt.rfind(text[anchor_start:anchor_end])
    if at < 0:
        return False
    tail = prompt[at + anchor_end - anchor_start :]
    shared = tail[: common_prefix(tail, text[anchor_end:first])]
    marker = MARKER.search(shared)
    return marker is not None and re.search(r"\w", shared[marker.end() :]) is not None


def _previous_end(occurrences: list[tuple[int, int, int]], index: int, first: int) -> int:
    """Where the last text of another message before `first` ends (0 when none comes before)."""
    return max((end for _, end, owner in occurrences if end <= first and owner != index), default=0)


def _header_missing(header: str, between: str) -> bool:
    """True when the generation prompt's header opens with a marker that history does not write between the message
    before the turn and the turn's first generated text (`between`): history does not write the speaker's turns as
    turns (a reward model quotes them as `Assistant: ...` inside one prompt).

    Example:
        >>> _header_missing("<|im_start|>assistant\\n", "\\nAssistant: "), _header_missing("<a>", "</u><a>")
        (True, False)
    """
    opening = MARKER.match(header.strip())
    return opening is not None and opening.group() not in between


def quoted_in_prompt(prompt: str, text: str, last: int) -> bool:
    """True when `text` (ending on the turn) ends like the generation prompt does, after the turn's text.

    A safety classifier or judge quotes the assistant's message inside its own instructions and then asks
    for a verdict: the render that ends on the "assistant" message and the generation prompt share a long
    ending (the instructions and the model's header) that comes after the quoted message. A chat template
    ends such a render with the turn's stop marker instead.

    Example:
        >>> quoted_in_prompt("Q: u\\nIs it safe? Answer:\\n", "Q: u\\nA: a\\nIs it safe? Answer:\\n", 10)
        True
        >>> quoted_in_prompt("<u>u</u><a>", "<u>u</u><a>a</a>", 13)
        False
    """
    shared = 0
    while shared < min(len(prompt), len(text)) and prompt[-1 - shared] == text[-1 - shared]:
        shared += 1
    ending = text[max(last, len(text) - shared) :]
    return len(re.sub(r"\s", "", ending)) >= 12
