"""Truncation: rows cut to `max_length` tokens, keeping the start or the end, or dropped.

Tokens are kept or cut whole, so no token straddles the cut, and each kept token keeps the mask it had in the
whole row. A row whose trained tokens were all cut is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .encoding import EncodedRows

__all__ = ["TRUNCATION_MODES", "drop_message", "truncate_row", "truncate_rows"]

#: What `truncation=` accepts: keep the start, keep the end, or drop rows longer than `max_length`.
TRUNCATION_MODES = ("right", "left", "drop")


def truncate_row(
    ids: list[int], mask: list[int], max_length: int | None, truncation: str = "right"
) -> tuple[list[int], list[int]] | None:
    """One row cut to `max_length` tokens as `truncation` says, or None when the row is dropped.

    `right` keeps the first `max_length` tokens, `left` the last ones, `drop` drops a longer row whole. Tokens
    are kept or cut whole, so no token straddles the cut, and each kept token keeps the mask it had in the
    whole row. A row that had trained tokens and keeps none is dropped (None); a row that had none (every
    trained message weighted 0) is kept as it is.

    Example:
        >>> truncate_row([1, 2, 3, 4], [0, 0, 1, 1], 2, "left"), truncate_row([1, 2, 3, 4], [0, 0, 1, 1], 2, "right")
        (([3, 4], [1, 1]), None)
    """
    kept = _kept_range(mask, max_length, truncation)
    return None if kept is None else (ids[kept[0] : kept[1]], mask[kept[0] : kept[1]])


def _kept_range(mask: Sequence[int], max_length: int | None, truncation: str) -> tuple[int, int] | None:
    """The range of a row's tokens that `truncate_row` keeps, or None when it drops the row."""
    length = len(mask)
    if max_length is None or length <= max_length:
        return 0, length
    if truncation == "drop":
        return None
    start, end = (length - max_length, length) if truncation == "left" else (0, max_length)
    if any(mask) and not any(mask[start:end]):
        return None
    return start, end


def truncate_rows(encoded: EncodedRows, max_length: int | None, truncation: str) -> tuple[EncodedRows, list[int]]:
    """`truncate_row` on every row: the rows kept, and their positions in `encoded`."""
    if max_length is None or len(encoded) == 0 or int(np.diff(encoded.offsets).max()) <= max_length:
        return encoded, list(range(len(encoded)))
    ranges = []
    for row, (start, end) in enumerate(zip(encoded.offsets[:-1].tolist(), encoded.offsets[1:].tolist())):
        kept = _kept_range(encoded.mask[start:end], max_length, truncation)
        if kept is not None:
            ranges.append((row, *kept))
    return encoded.take(ranges), [row for row, _, _ in ranges]


def drop_message(max_length: int | None, truncation: str, count: int | None) -> str:
    rows = "rows" if count is None else f"{count} row{'s' if count != 1 else ''}"
    if truncation == "drop":
        return f"dropping {rows} longer than max_length={max_length} (truncation='drop')"
    hint = "; truncation='left' keeps the end of each row" if truncation == "right" else ""
    return f"dropping {rows} whose trained tokens were all cut by max_length={max_length} (truncation={truncation!r}{hint})"
