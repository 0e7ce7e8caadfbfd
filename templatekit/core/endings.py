"""Where a generated turn ends: the stop token its own outputs write, one written by the next message or after the
loop, and the end of a call that ends the conversation. `truth.generated_turns` reads these off each render."""

from __future__ import annotations

from typing import Literal

from .analysis import Emission
from .markers import MARKER, MARKER_AT_END, ROLE_STOP
from .probes import ASSISTANT, SPECIAL_TOKENS, Probe

__all__ = ["Where", "call_ending", "own_marker", "own_tail", "stop_after"]

#: Who writes a turn's stop token: the turn itself, the next message, the template after the loop, or the next
#: role's token (a template with no stop token of its own).
Where = Literal["", "turn", "next message", "after the turn", "next role token"]


def call_ending(
    probe: Probe, text: str, emissions: list[Emission], index: int, last: int, header: str, found: tuple[int, Where]
) -> tuple[int, Where]:
    """The end of a call that ends the conversation (an agent's step), past `found` when the render writes more of
    it: the call's closing brackets and its stop token are generated, though a conversation that goes on may write
    the call otherwise (with its id, or not at all).

    What the message's own outputs write after its last generated text, up to a marker, and one marker written after
    the loop (Jamba's `<|eom|>`); where no output is known to be the message's, the rest of the render, when it ends
    with a marker and holds no header and no one's text.
    """
    end, where = found
    if any(e.message == index and e.start <= last < e.end for e in emissions):
        tail = own_tail(text, emissions, index, last, len(text), header)
        end, where = (tail, "turn") if tail > end else (end, where)
        closing = MARKER.fullmatch(text[end:].strip())
        roles = {ASSISTANT, *(message["role"] for message in probe.messages)}
        if closing and not any(role in closing.group() for role in roles):  # a stop, not a turn's opening
            return len(text.rstrip()), "after the turn"
        return end, where
    rest = text[last:].rstrip()
    if (
        not any(e.message is not None and e.end > last for e in emissions)
        and MARKER_AT_END.search(rest)
        and not (header.strip() and header.strip() in rest)
        and not any(sentinel.text in rest for sentinel in probe.sentinels)
    ):
        return max(end, last + len(rest)), "turn"
    return end, where


def own_marker(text: str, emissions: list[Emission], index: int, last: int, header: str) -> int:
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


def own_tail(text: str, emissions: list[Emission], index: int, last: int, stop: int, header: str) -> int:
    """The end of what the message's own outputs write from `last` on (before `stop`), less trailing whitespace,
    when it ends with a marker and holds no generation-prompt header; else `last`.

    Example:
        >>> own_tail('x"}]</c>\\n<|end|>\\n<u>', [Emission(0, 'x"}]</c>\\n<|end|>\\n', 0, 1)], 1, 1, 17, "<a>")
        16
    """
    reach = last
    for emission in emissions:
        if emission.message == index and emission.start <= reach < emission.end:
            reach = min(emission.end, stop)
    tail = text[last:reach].rstrip()
    if header.strip() and header.strip() in tail:
        return last
    return last + len(tail) if MARKER_AT_END.search(tail) else last


def stop_after(
    text: str, end: int, last: int, next_start: int, where: Where, headers: tuple[str, ...]
) -> tuple[int, Where]:
    """The turn's end moved over a stop token written right after it by the next message or after the loop.

    A role token counts only when it opens none of `headers` (the trained speaker's, and the assistant's that the
    generation prompt writes): two replies in a row are not one that stops, nor is a turn handed to the assistant.
    """
    rest = text[end:next_start] if next_start < len(text) else text[end:]
    gap = len(rest) - len(rest.lstrip())
    eos = SPECIAL_TOKENS["eos_token"]
    if rest[gap:].startswith(eos):
        return end + gap + len(eos), "after the turn" if next_start == len(text) else "next message"
    stop = ROLE_STOP.match(text, end + gap) if end == last and next_start < len(text) else None
    if stop is not None and not any(header.strip().startswith(stop.group()) for header in headers):
        return stop.end(), "next role token"
    return end, where
