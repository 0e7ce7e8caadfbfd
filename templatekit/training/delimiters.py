"""Trained spans found by the strings a template writes around each turn: the delimiters and their scanner.

`find_spans` runs once per conversation (in `prepare_dataset`, in the Unsloth drop-in), so it only scans:
each set of strings is one compiled alternation (longest first, so the longest part wins where two begin
at the same place) and every search starts where the previous one stopped. Learning the delimiters from a
template is `fallback.derive_delimiters`'s job.

A trained turn starts right after a *response part* (its header) and ends

* right after an *end-of-turn marker* (trained), when one begins before the next boundary, or
* before the next *instruction part* or response part (the header of whatever comes next), less the
  whitespace before it, when the template writes no marker of its own there;

and two more rules, each switched on only when the template's probe renders show the need:

* a *join* `(before, after)`: a turn that would end just after `before` goes on when `after` follows;
  channel formats close a turn's reasoning or first tool call with a marker and reopen the same turn
  with a header (`<|end|>` + `<|start|>assistant`), and the model generates both;
* *continuation*: after an end-of-turn marker and whitespace, text that no instruction or response part
  begins is the same speaker again (a template that writes a reply after a tool result, or a second reply, with no
  header of its own).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Delimiters", "find_spans"]


@dataclass(frozen=True)
class Delimiters:
    """The strings that bound trained turns in a rendering.

    * `response_parts`: a trained turn starts right after one of these (its header).
    * `eot`: the end-of-turn marker closing a trained turn; it is trained. Empty when the template writes
      none, and then a turn ends, less trailing whitespace, where the next instruction or response part
      begins, or where the text ends.
    * `instruction_parts`: what opens anything after a trained turn (the header of an untrained turn, a
      tool result); a trained turn never runs past one.
    * `eot_alternatives`: other end-of-turn markers, when turns close differently (one mid-conversation,
      another last).
    * `reasoning_close`: the marker that closes reasoning inside a trained turn (learned from a probe with
      reasoning; empty when the template does not render reasoning).
    * `header_space`: whitespace the template writes after a header; skipped when a caller's explicit
      response part lacks it.
    * `generation_prompt`: what `add_generation_prompt=True` appends; a rendering that ends with it holds
      no turn there.
    * `joins`: `(before, after)` pairs: a turn about to end right after `before` goes on over `after`.
    * `continues`: whether text after an end-of-turn marker (and whitespace) that no instruction or
      response part begins continues the trained speaker.
    * `split_turns`: whether one message may render as several spans (a turn written around tool results).

    Example:
        >>> d = Delimiters(("<|im_start|>assistant\\n",), "<|im_end|>", ("<|im_start|>user\\n",))
        >>> text = "<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n"
        >>> [text[s:e] for s, e in find_spans(text, d)]
        ['Hello<|im_end|>']
    """

    response_parts: tuple[str, ...]
    eot: str = ""
    instruction_parts: tuple[str, ...] = ()
    eot_alternatives: tuple[str, ...] = ()
    reasoning_close: str = ""
    header_space: str = ""
    generation_prompt: str = ""
    joins: tuple[tuple[str, str], ...] = ()
    continues: bool = False
    split_turns: bool = False

    @property
    def eots(self) -> tuple[str, ...]:
        """Every end-of-turn marker, the main one first (empty when the template writes none)."""
        return (self.eot, *self.eot_alternatives) if self.eot else ()


@functools.lru_cache(maxsize=512)
def alternation(needles: tuple[str, ...]) -> re.Pattern | None:
    """One pattern matching any of `needles`, the longest first where several match at one position (cached).

    Example:
        >>> alternation(("<|im_start|>", "<|im_start|>assistant\\n")).match("<|im_start|>assistant\\nHi").group()
        '<|im_start|>assistant\\n'
    """
    unique = sorted({needle for needle in needles if needle}, key=lambda needle: (-len(needle), needle))
    return re.compile("|".join(map(re.escape, unique))) if unique else None


def _joined(text: str, joins: Sequence[tuple[str, str]], end: int, limit: int) -> int:
    """Where the turn goes on when a join sits at `end` (its `before` ends there, its `after` follows), else -1."""
    for before, after in joins:
        if end >= len(before) and text.startswith(before, end - len(before)) and text.startswith(after, end):
            if end + len(after) <= limit:
                return end + len(after)
    return -1


def _turn_end(
    text: str, d: Delimiters, start: int, limit: int, bounds: re.Pattern | None, eots: re.Pattern | None
) -> tuple[int, int, bool]:
    """`(end, boundary, closed)` of the turn starting at `start`: `closed` when an end-of-turn marker ends it."""
    longest = max(map(len, d.eots), default=0)
    cursor = start
    while True:
        hit = bounds.search(text, cursor, limit) if bounds is not None else None
        boundary = hit.start() if hit is not None else limit
        # The marker may begin at the boundary itself (`</s>` closing the turn and opening nothing else).
        marker = eots.search(text, cursor, min(limit, boundary + longest)) if eots is not None else None
        if marker is not None and marker.start() <= boundary:
            end, closed = marker.end(), True
        elif d.split_turns and hit is not None and not text[hit.end() : limit].strip():
            # A turn closed by opening someone else's part (Gemma 4 opens a tool's response after a call) that
            # ends the conversation: that opener is its stop token (mid-conversation it comes with the result).
            end, closed = hit.end(), False
        else:
            end, closed = cursor + len(text[cursor:boundary].rstrip()), False
        resumed = _joined(text, d.joins, end, limit) if d.joins else -1
        if resumed < 0:
            return end, boundary, closed
        cursor = resumed


def _continuation(text: str, end: int, limit: int, openers: re.Pattern | None) -> int:
    """Where the same speaker goes on after an end-of-turn marker at `end`, or -1 when something else opens."""
    at = end
    while at < limit and text[at].isspace():
        at += 1
    if at >= limit or (openers is not None and openers.match(text, at)):
        return -1
    return at


def find_spans(
    text: str, delimiters: Delimiters, *, add_generation_prompt: bool = False, stop: int | None = None
) -> list[tuple[int, int]]:
    """The trained character spans of a rendered `text`, found by `delimiters` (scanning `text[:stop]`).

    Each response part opens a span; the span runs to the end of the first end-of-turn marker that begins
    before the next instruction or response part (the marker may be the instruction part itself), or, when
    there is none, to that next part less trailing whitespace (see the module docstring for joins and
    continuation).

    Example:
        >>> d = Delimiters(("[/INST]",), "</s>", ("[INST]",))
        >>> text = "<s>[INST] hi [/INST] Hello</s>[INST] more [/INST] Bye</s>"
        >>> [text[s:e] for s, e in find_spans(text, d)]
        [' Hello</s>', ' Bye</s>']
    """
    d = delimiters
    limit = len(text) if stop is None else stop
    prompt = d.generation_prompt
    if add_generation_prompt and prompt and text.endswith(prompt, 0, limit):
        limit -= len(prompt)  # the open turn the prompt starts is not trained
    heads = alternation(tuple(d.response_parts))
    if heads is None:
        return []
    bounds = alternation(tuple(d.instruction_parts) + tuple(d.response_parts))
    eots = alternation(d.eots)
    spans: list[tuple[int, int]] = []
    found = heads.search(text, 0, limit)
    while found is not None:
        start = found.end()
        if d.header_space and text.startswith(d.header_space, start):
            start += len(d.header_space)
        while True:
            end, boundary, closed = _turn_end(text, d, start, limit, bounds, eots)
            if end > start:
                spans.append((start, end))
            following = _continuation(text, end, limit, bounds) if closed and d.continues else -1
            if following < 0:
                break
            start = following
        found = heads.search(text, max(end, boundary), limit)
    return spans
