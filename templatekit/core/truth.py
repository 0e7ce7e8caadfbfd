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

from .analysis import Emission
from .markers import MARKER, ROLE_STOP
from .probes import ASSISTANT, SPECIAL_TOKENS, Probe

GENERATED_KINDS = ("content", "reasoning", "tool_name", "tool_call")
# A user message appended to a conversation that ends on the turn, to see how the turn ends when it goes on.
FOLLOW_UP = {"role": "user", "content": "tkfollowupq"}
Trace = Callable[[list, bool], "tuple[str, list[Emission]] | None"]


@dataclass(frozen=True)
class Generated:
    """Turn `message` generates `text[start:end]`; `marker` is the stop marker it ends with ("" if none)."""

    message: int
    start: int
    end: int
    marker: str = ""
    where: str = ""  # how the marker is written: "turn", "next message", "next role token"
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
    if header.strip() and (found := text.rfind(header, anchor_end, first)) >= 0:
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
    return spaced if spaced is not None and spaced > start else start


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
                if i == index and kinds[text[s:e]] in GENERATED_KINDS
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
        if end == last and next_start < len(text):
            # A render that ends on the turn ends it otherwise (Gemma 4 opens a tool's response there): the
            # marker the turn's own outputs write right after it ends it.
            end, where = _own_marker(text, emissions, index, last, header), "turn"
        final = MARKER.match(text, last) if next_start == len(text) and end == last else None
        if final is not None and not header.strip().startswith(final.group()):
            # The last reply ends with a marker of its own that history turns do not write (gpt-oss writes
            # `<|return|>` there, `<|end|>` elsewhere): it is the stop token the model generates.
            end, where = final.end(), "turn"
        own_end = end
        end, where = _stop_after(text, end, last, next_start, where, header)
        stop_start = len(text[:end]) - len(text[own_end:end].lstrip())
        gap = (own_end, stop_start) if last < own_end < stop_start < end else None
        in_alone = alone[0].rfind(closing) if alone is not None else -1
        quoted = (
            in_alone >= 0
            and not _follows_prompt(probe, text, prompt, start)
            and quoted_in_prompt(prompt, alone[0], in_alone + len(closing))
        )
        turns[index] = Generated(index, start, end, text[last:end].strip(), where, quoted, gap)
    return turns


def _empty_turn_start(probe: Probe, text: str, emissions: list[Emission], index: int, trace: Trace) -> int | None:
    """Where the prompt for a turn that renders nothing generated parts from `text`, when that is before the
    message's own first output (a separator the previous message writes only when a message follows)."""
    writes = [e.start for e in emissions if e.message == index and e.text]
    given = _prompt_and_header(probe, index, trace) if writes and probe.messages[index]["role"] == ASSISTANT else None
    if given is None:
        return None
    start = _turn_start(probe, text, *given, writes[0], index)
    return start if start is not None and start < writes[0] else None


def _prompt_and_header(probe: Probe, index: int, trace: Trace) -> tuple[str, str] | None:
    """The prompt the model is given for turn `index` and what its generation prompt adds (its header), or
    None when the template rejects the conversation before the turn."""
    prompt, bare = trace(probe.messages[:index], True), trace(probe.messages[:index], False)
    if prompt is None:
        return None
    return prompt[0], _added_prompt(bare[0], prompt[0]) if bare is not None else ""


def _own_marker(text: str, emissions: list[Emission], index: int, last: int, header: str) -> int:
    """The end of a marker written right at `last` by the message's own outputs, else `last`.

    Whitespace the outputs write before it is generated too (an end-of-sentence token after a space); the
    trained speaker's own header written there is no stop.
    """
    reach = last
    for emission in emissions:
        if emission.message == index and emission.start <= reach < emission.end:
            reach = emission.end
    gap = len(text[last:reach]) - len(text[last:reach].lstrip())
    marker = MARKER.match(text, last + gap, reach)
    if marker is None or (gap and header.strip().startswith(marker.group())):
        return last
    return marker.end()


def _stop_after(text: str, end: int, last: int, next_start: int, where: str, header: str) -> tuple[int, str]:
    """The turn's end moved over a stop token written right after it by the next message or after the loop.

    A role token counts only when it is not the trained speaker's own header (`header`, what the generation
    prompt writes): two replies in a row are not one that stops.
    """
    rest = text[end:next_start] if next_start < len(text) else text[end:]
    gap = len(rest) - len(rest.lstrip())
    eos = SPECIAL_TOKENS["eos_token"]
    if rest[gap:].startswith(eos):
        return end + gap + len(eos), "after the turn" if next_start == len(text) else "next message"
    stop = ROLE_STOP.match(text, end + gap) if end == last and next_start < len(text) else None
    if stop is not None and not header.strip().startswith(stop.group()):
        return stop.end(), "next role token"
    return end, where


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
