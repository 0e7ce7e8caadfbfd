"""Render conversations and tokenize them at once: the Rust tokenizer works while Python renders the next chunk.

A fast tokenizer's batch call releases the GIL, so tokenizing chunk i on a worker thread while the main thread
renders chunk i+1 hides most of one behind the other. The output is the same as rendering everything and
then making one batched call: each text is encoded on its own, whatever chunk it falls in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Rows per tokenizer call: large enough that the call's fixed cost is paid rarely, small enough that the first
# chunk (rendered before any tokenizing can start) and the last (tokenized after all rendering) are short.
CHUNK_ROWS = 256

_ENCODE_OPTIONS = dict(add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)


def render_and_encode(
    count: int,
    render: Callable[[int], tuple[str, Sequence[Sequence[int]]]],
    tokenizer: Any,
    pool: ThreadPoolExecutor | None,
) -> list[tuple[str, Sequence[Sequence[int]], list[int], Any]]:
    """`(text, spans, input_ids, encoding)` for `render(0) ... render(count - 1)`, in order.

    `pool` (one worker) tokenizes each chunk while the next is rendered; None tokenizes after rendering, in one
    call. An error raised by `render` stops the work and propagates; the chunks already sent are waited for.

    Example:
        >>> class Words:  # a stand-in with a fast tokenizer's batch interface, for the shape of the result
        ...     def __call__(self, texts, **options):
        ...         return {"input_ids": [[len(w) for w in t.split()] for t in texts]}
        >>> rows = render_and_encode(2, lambda i: (f"row {i}", [(0, 3)]), Words(), None)
        >>> [(text, ids) for text, _, ids, _ in rows]
        [('row 0', [3, 1]), ('row 1', [3, 1])]
    """
    rendered: list[tuple[str, Sequence[Sequence[int]]]] = []
    pending: list[Future] = []
    try:
        for start in range(0, count, CHUNK_ROWS):
            chunk = [render(index) for index in range(start, min(count, start + CHUNK_ROWS))]
            rendered += chunk
            if pool is not None:
                pending.append(pool.submit(_encode, tokenizer, [text for text, _ in chunk]))
    finally:
        if len(pending) * CHUNK_ROWS < count:  # rendering failed: let the chunks already sent finish quietly
            for future in pending:
                future.exception()
    if pool is None:
        chunks = [_encode(tokenizer, [text for text, _ in rendered])] if rendered else []
    else:
        chunks = [future.result() for future in pending]
    ids = [row for chunk_ids, _ in chunks for row in chunk_ids]
    encodings = [encoding for _, chunk_encodings in chunks for encoding in chunk_encodings]
    return [(text, spans, row_ids, encoding) for (text, spans), row_ids, encoding in zip(rendered, ids, encodings)]


def _encode(tokenizer: Any, texts: list[str]) -> tuple[list[list[int]], list[Any]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        # What `tokenizer(texts, add_special_tokens=False)` computes, without transformers' per-row Python
        # wrapping: its call encodes with the backend exactly so when truncation and padding are off.
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [encoding.ids for encoding in encodings], encodings
    encoded = tokenizer(texts, **_ENCODE_OPTIONS)
    return encoded["input_ids"], getattr(encoded, "encodings", None) or [None] * len(texts)
