"""Trained tokens through a processor's media expansion: the rendered text's trained spans, moved onto the tokens the
processor gives the model.

A chat template writes one placeholder per image (`<|image_pad|>`, `<image>`); the processor replaces it with the
image's tokens (hundreds of them) and tokenizes the result. Two routes place the trained spans on those tokens:

* **records** (`from_records`): the processor says what it replaced (transformers' `text_replacement_offsets`:
  each placeholder's span and its replacement). The expanded text is rebuilt from them and tokenized again; it
  must give exactly the processor's ids, and then each span edge moves by the characters the expansions before it
  added;
* **tokens** (`from_tokens`): a processor with its own `__call__` and no records (Idefics2, mllama, ...). The
  rendered text is tokenized again and matched to the processor's ids token by token (`difflib`, longest runs of
  identical tokens): a processor's tokens that match a rendered token take its mask, the others are untrained.

Either way media tokens are never trained, and one check decides: the trained tokens must be exactly the trained
(non-media) tokens of the rendered text tokenized alone, in order, so that the masks equal templatekit's text spans
token for token. A row where they are not (the processor rewrote trained text, a token joins trained text and an
image) raises `MediaAlignmentError`: refused, never guessed.
"""

from __future__ import annotations

import difflib
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MediaAlignmentError
from .masks import spans_to_token_mask
from .vision_inputs import MediaVocabulary

__all__ = ["AlignedRow", "Encode", "align_row", "from_records", "from_tokens"]

#: Tokenize one text as the processor does: `(ids, offsets)`.
Encode = Callable[[str], tuple[list[int], list[tuple[int, int]]]]


@dataclass(frozen=True)
class AlignedRow:
    """One conversation as the model sees it.

    `input_ids` are the processor's; `trained` and `media` are 0/1 per token (a media token is never trained);
    `text` is the expanded text (exact on the records route, rebuilt from the tokens on the tokens route) and
    `offsets` each token's characters in it; `spans` the trained characters of `text`; `route` says which route
    aligned the row; `sources` the character of the rendered text each token ends at (where to cut the rendered
    text to keep the tokens up to it)."""

    input_ids: list[int]
    trained: list[int]
    media: list[int]
    text: str
    offsets: list[tuple[int, int]]
    spans: list[tuple[int, int]]
    route: str
    sources: list[int]


def _expected(text: str, spans: Sequence[Sequence[int]], encode: Encode, media: MediaVocabulary):
    """The rendered text tokenized alone: its ids, offsets, mask (the project's rule) and trained non-media ids."""
    ids, offsets = encode(text)
    mask = spans_to_token_mask(offsets, spans)
    return ids, offsets, mask, [token for token, m in zip(ids, mask) if m and token not in media.ids]


def _check_survival(expected: list[int], ids: Sequence[int], trained: Sequence[int], describe: Callable) -> None:
    """The trained tokens must be the text-only trained tokens, in order; else the row is refused."""
    got = [token for token, t in zip(ids, trained) if t]
    if got == expected:
        return
    at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    want = describe(expected[at : at + 3]) if at < len(expected) else "nothing more"
    have = describe(got[at : at + 3]) if at < len(got) else "nothing more"
    raise MediaAlignmentError(
        f"the trained tokens do not survive the processor's media expansion: trained token {at} of the text alone "
        f"is {want}, among the processor's tokens it is {have} ({len(expected)} trained tokens expected, "
        f"{len(got)} found); the processor changed trained text or joined it with an image's tokens"
    )


def _expansions(text: str, records: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple[int, int, int, int]]]:
    """The expanded text rebuilt from the records, and each placeholder's `(start, end)` in `text` with its
    replacement's `(start, end)` in the expanded text. Raises `ValueError` when the records do not fit the text."""
    parts, regions, last, length = [], [], 0, 0
    for record in sorted(records, key=lambda r: tuple(r["span"])):
        start, end = record["span"]
        replacement = record["replacement"]
        if start < last or text[start:end] != record["text"]:
            raise ValueError(f"a replacement record does not match the rendered text at character {start}")
        parts += [text[last:start], replacement]
        begin = length + start - last
        length = begin + len(replacement)
        if tuple(record.get("new_span", (begin, length))) != (begin, length):
            raise ValueError(f"a replacement record's new span does not match its text at character {start}")
        regions.append((start, end, begin, length))
        last = end
    parts.append(text[last:])
    return "".join(parts), regions


def _moved(edge: int, regions: Sequence[tuple[int, int, int, int]], *, closing: bool) -> int:
    """A rendered-text character edge in the expanded text: shifted by every expansion before it; an edge inside a
    placeholder goes to its replacement's start (an opening edge) or end (a closing one)."""
    at = bisect_right([start for start, *_ in regions], edge - 1 if closing else edge) - 1
    if at < 0:
        return edge
    start, end, begin, finish = regions[at]
    if edge >= end:
        return edge + finish - end
    return finish if closing else begin


def from_records(
    text: str,
    spans: Sequence[Sequence[int]],
    ids: Sequence[int],
    records: Sequence[Mapping[str, Any]],
    encode: Encode,
    media: MediaVocabulary,
    describe: Callable[[Sequence[int]], str],
) -> AlignedRow | None:
    """Align by the processor's replacement records; None when they do not rebuild the processor's tokens (then the
    tokens route decides)."""
    try:
        expanded, regions = _expansions(text, records)
    except (ValueError, KeyError, TypeError):
        return None
    expanded_ids, offsets = encode(expanded)
    if list(expanded_ids) != list(ids):
        return None  # the processor changed more than its placeholders: the records do not tell it all
    moved = [(_moved(s, regions, closing=False), _moved(e, regions, closing=True)) for s, e in spans if e > s]
    mask = spans_to_token_mask(offsets, moved)
    starts = [begin for *_, begin, _ in regions]
    media_flags = []
    for token, (start, end) in zip(ids, offsets):
        at = bisect_right(starts, end - 1) - 1 if end > start else -1
        inside = at >= 0 and start < regions[at][3]
        media_flags.append(int(token in media.ids or inside))
    trained = [int(m and not f) for m, f in zip(mask, media_flags)]
    _check_survival(_expected(text, spans, encode, media)[3], ids, trained, describe)
    sources = [_source(end, regions) for _, end in offsets]
    return AlignedRow(list(ids), trained, media_flags, expanded, list(offsets), moved, "records", sources)


def _source(edge: int, regions: Sequence[tuple[int, int, int, int]]) -> int:
    """An expanded-text edge back in the rendered text: inside (or at the end of) a replacement, its placeholder's
    end; elsewhere, less the characters the expansions before it added."""
    at = bisect_right([begin for *_, begin, _ in regions], edge - 1) - 1
    if at < 0:
        return edge
    _, end, _, finish = regions[at]
    return end if edge <= finish else edge - (finish - end)


def from_tokens(
    text: str,
    spans: Sequence[Sequence[int]],
    ids: Sequence[int],
    encode: Encode,
    media: MediaVocabulary,
    describe: Callable[[Sequence[int]], str],
) -> AlignedRow:
    """Align by matching the rendered text's own tokens to the processor's, identical token for identical token."""
    text_ids, text_offsets, text_mask, expected = _expected(text, spans, encode, media)
    partner: list[int | None] = [None] * len(ids)
    matcher = difflib.SequenceMatcher(None, text_ids, list(ids), autojunk=False)
    for tag, i1, i2, j1, _ in matcher.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                partner[j1 + k] = i1 + k
    flags = [
        int(token in media.ids or (partner[j] is None and token in media.special_ids)) for j, token in enumerate(ids)
    ]
    _inserted_between_media(flags, partner)
    trained = [int(p is not None and text_mask[p] and not f) for p, f in zip(partner, flags)]
    _check_survival(expected, ids, trained, describe)
    shown, offsets, spans_shown = _rebuilt(text, text_offsets, text_mask, ids, partner, describe)
    sources, reached = [], 0
    for p in partner:
        reached = max(reached, text_offsets[p][1]) if p is not None else reached
        sources.append(reached)
    return AlignedRow(list(ids), trained, flags, shown, offsets, spans_shown, "tokens", sources)


def _inserted_between_media(flags: list[int], partner: Sequence[int | None]) -> None:
    """Tokens the processor inserted between two of its media tokens are media too (Idefics3's line breaks between
    image tiles); inserted text next to an image (Idefics2's space after one) is not."""
    j = 0
    while j < len(flags):
        if partner[j] is not None:
            j += 1
            continue
        run_end = j
        while run_end < len(flags) and partner[run_end] is None:
            run_end += 1
        marked = [k for k in range(j, run_end) if flags[k]]
        for k in range(marked[0], marked[-1]) if marked else ():
            flags[k] = 1
        j = run_end


def _rebuilt(text, text_offsets, text_mask, ids, partner, describe) -> tuple[str, list, list]:
    """A display text for the tokens route: the rendered text where a token matched, the decoded token where the
    processor inserted one; each token's characters in it and the trained ones (for `show`)."""
    parts, offsets, spans, length, consumed = [], [], [], 0, 0
    for token, p in zip(ids, partner):
        begin, end = text_offsets[p] if p is not None else (0, 0)
        if end <= begin:  # inserted by the processor, or an added BOS (zero-width in the text): shown decoded
            piece, start = describe([token], quoted=False), length
        else:
            # From where the text's previous token ended (characters no token covers go with this one), so that
            # text the processor replaced is not shown twice; characters shared with an earlier token, once.
            since = max(consumed, text_offsets[p - 1][1] if p > 0 else 0)
            piece = text[since:end] if end > since else ""
            start = length + max(0, begin - since) if piece else length
            consumed = max(consumed, end)
        parts.append(piece)
        length += len(piece)
        offsets.append((start, length))
        if p is not None and text_mask[p] and length > start:
            spans.append((start, length))
    return "".join(parts), offsets, spans


def align_row(
    text: str,
    spans: Sequence[Sequence[int]],
    ids: Sequence[int],
    records: Sequence[Mapping[str, Any]] | None,
    encode: Encode,
    media: MediaVocabulary,
    describe: Callable[..., str],
) -> AlignedRow:
    """One row: by the records when the processor gave them and they rebuild its tokens, else token by token.

    Example (no processor needed: the "processor" here expands `<image>` into three `<image>` tokens):
        >>> from templatekit.training.vision_inputs import MediaVocabulary
        >>> vocab = {"A": 1, ":": 2, "<image>": 3, "hi": 4, "!": 5}
        >>> def encode(text):
        ...     ids, offsets, at = [], [], 0
        ...     while at < len(text):
        ...         piece = next(p for p in sorted(vocab, key=len, reverse=True) if text.startswith(p, at))
        ...         ids.append(vocab[piece]); offsets.append((at, at + len(piece))); at += len(piece)
        ...     return ids, offsets
        >>> media = MediaVocabulary(("<image>",), frozenset({3}), frozenset({3}))
        >>> text = "A:<image>hi!"
        >>> row = align_row(text, [(9, 12)], [1, 2, 3, 3, 3, 4, 5], None, encode, media, lambda ids, **_: str(ids))
        >>> row.trained, row.media, row.route
        ([0, 0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 0, 0], 'tokens')
    """
    if records:
        aligned = from_records(text, spans, ids, records, encode, media, describe)
        if aligned is not None:
            return aligned
    return from_tokens(text, spans, ids, encode, media, describe)
