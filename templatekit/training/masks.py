"""Character spans to token masks.

A chat template with generation tags tells us which *characters* of the rendered text the assistant
generated. Training needs a mask over *tokens*. The bridge is the tokenizer's offset mapping: one
``(start, end)`` character range per token. This module turns character spans into a 0/1 token mask
with one stated rule:

    A token is trained (1) if and only if at least one of its characters lies inside a span.

Consequences of the rule:

* A token that straddles a span edge (for example ``"▁Hello"`` whose ``"▁"`` is the space before the
  span, or a word piece that continues past the span end) is trained. This is the rule transformers
  applies for ``return_assistant_tokens_mask=True``: it marks every token from ``char_to_token`` of a
  span's first character to ``char_to_token`` of its last character, so both edge tokens are in.
  One difference: when a span's last character is split over several byte-level tokens (a rare emoji
  or CJK character; the first piece may also carry the space before it), ``char_to_token`` names only
  the first of them and transformers leaves the others out; here all of them are trained, since the
  model generates all.
* A zero-width token (offsets ``(a, a)``, such as a BOS that the post-processor adds) covers no
  character and is never trained.
* Empty spans (``start >= end``) train nothing; overlapping or touching spans behave as their union.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["encode_with_mask", "encoding_token_mask", "labels_from_mask", "spans_to_token_mask"]


def _merge_spans(spans: Iterable[Sequence[int]]) -> tuple[list[int], list[int]]:
    """Sorted, disjoint, non-empty spans as two parallel lists of starts and ends."""
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted((int(s), int(e)) for s, e in spans if int(e) > int(s)):
        if ends and start <= ends[-1]:
            if end > ends[-1]:
                ends[-1] = end
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def spans_to_token_mask(offsets: Sequence[Sequence[int]], spans: Iterable[Sequence[int]]) -> list[int]:
    """Mark the tokens that overlap the character spans.

    Rule: token ``i`` with offsets ``(s, e)`` is trained (``1``) iff ``e > s`` and some span ``(a, b)``
    shares at least one character with it, i.e. ``max(s, a) < min(e, b)``. A token straddling a span
    edge is therefore trained; a zero-width token (``s == e``, e.g. an added BOS) never is.

    Args:
        offsets: one ``(start, end)`` character range per token, end exclusive (a tokenizer's
            ``offset_mapping``).
        spans: character ranges ``(start, end)``, end exclusive, in any order; they may overlap.

    Returns:
        A list of ``0``/``1`` with one entry per token.

    Runs in ``O(T + S log S)`` for ``T`` tokens and ``S`` spans when token starts never decrease (the
    normal case); otherwise it falls back to a binary search for the tokens that go backwards.

    Example:
        >>> text = "User: hi\\nBot: Hello world</s>"
        >>> # tokens: BOS (added, zero-width), "User", ":", " hi", "\\n", "Bot", ":", " Hello", " wor", "ld", "</s>"
        >>> offsets = [(0, 0), (0, 4), (4, 5), (5, 8), (8, 9), (9, 12), (12, 13), (13, 19), (19, 23), (23, 25), (25, 29)]
        >>> span = (text.index("Hello"), text.index("wor") + 2)  # starts after the space, ends mid-token "wo|r"
        >>> spans_to_token_mask(offsets, [span])  # " Hello" and " wor" straddle the edges: trained
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
        >>> spans_to_token_mask([(0, 0), (0, 5), (5, 9)], [(0, 9)])   # zero-width BOS is never trained
        [0, 1, 1]
    """
    starts, ends = _merge_spans(spans)
    n_spans = len(starts)
    mask = [0] * len(offsets)
    if n_spans == 0:
        return mask
    j = 0  # index of the first span whose end lies after the current token's start
    previous_start = -1
    for i, (tok_start, tok_end) in enumerate(offsets):
        if tok_end <= tok_start:
            continue
        if tok_start < previous_start:
            # Offsets went backwards (unusual): restart the pointer with a binary search.
            j = bisect_right(ends, tok_start)
        previous_start = tok_start
        while j < n_spans and ends[j] <= tok_start:
            j += 1
        if j == n_spans:
            # Every span ends at or before this token; later tokens may only go backwards.
            continue
        if starts[j] < tok_end:
            mask[i] = 1
    return mask


def encode_with_mask(
    tokenizer: Any, text: str, spans: Iterable[Sequence[int]], *, add_special_tokens: bool = False
) -> tuple[list[int], list[int]]:
    """Tokenize `text` and mark the tokens that overlap `spans` (the rule of `spans_to_token_mask`).

    `add_special_tokens=False` matches `apply_chat_template`, whose templates write BOS themselves; with
    `True`, tokens the post-processor adds have zero-width offsets and stay untrained.

    Returns `(input_ids, mask)`.

    Example:
        >>> # ids, mask = encode_with_mask(tokenizer, text, spans)
        >>> # labels = [i if m else -100 for i, m in zip(ids, mask)]
    """
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return list(encoded["input_ids"]), spans_to_token_mask(encoded["offset_mapping"], spans)


def labels_from_mask(input_ids: Sequence[int], mask: Sequence[int], *, ignore_index: int = -100) -> list[int]:
    """Labels for a causal LM: the token id where the mask is 1, `ignore_index` elsewhere.

    Example:
        >>> labels_from_mask([5, 6, 7], [0, 1, 1])
        [-100, 6, 7]
    """
    return [token if bit else ignore_index for token, bit in zip(input_ids, mask)]


def encoding_token_mask(encoding: Any, spans: Sequence[Sequence[int]], text_length: int) -> list[int]:
    """`spans_to_token_mask` for one encoding, touching only the span edges instead of every offset.

    The token holding a span's first character and the one holding its last character bound the trained
    tokens (edge tokens straddle and are trained, as the rule says). Byte-level BPE can split one character
    over several tokens (sharing its offsets, or the last piece alone); `char_to_token` names the first, so
    the following tokens that still start inside the span are added.
    With ``add_special_tokens=False`` every token covers text, so no zero-width token lies inside a span.
    Where a character belongs to no token (a normaliser removed it), the exact rule runs over all offsets.
    """
    length = len(encoding)
    mask = [0] * length
    for start, end in spans:
        end = min(end, text_length)
        if end <= start:
            continue
        first = encoding.char_to_token(start)
        last = encoding.char_to_token(end - 1)
        if first is None or last is None:
            return spans_to_token_mask(encoding.offsets, spans)
        # Later tokens that still start inside the span hold the rest of a split last character.
        while last + 1 < length:
            following = encoding.token_to_chars(last + 1)
            if following is None or following[0] >= end or following[1] <= following[0]:
                break
            last += 1
        mask[first : last + 1] = [1] * (last + 1 - first)
    return mask
