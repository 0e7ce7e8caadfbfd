"""Rendered conversations to token ids and assistant masks, by the cheapest exact route the tokenizer allows.

    texts + trained character spans ──BatchEncoder──▶ EncodedRows (flat ids, flat mask, row offsets)

Three routes, all giving what `tokenizer(texts, add_special_tokens=False)` and the mask rule of
`templatekit.training.masks` give (tests compare them on real tokenizers):

* **bytes**: a byte-level BPE, text in its normalizer's form: encoded without offsets and without the no-op
  normalizer, token edges read from byte lengths (`templatekit.training.token_bytes`), masks by numpy;
* **offsets**: any other fast tokenizer's backend: offsets in Rust, masks from `char_to_token` at span edges;
* **transformers**: a backend set to truncate or pad: transformers' own call, which turns those off.

`render_and_encode` tokenizes each chunk of rows on a worker thread while the next chunk is rendered: a fast
tokenizer's batch call releases the GIL. Each text is encoded on its own, whatever chunk it falls in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .masks import encoding_token_mask
from .token_bytes import TokenByteLengths, byte_exact, in_normal_form, unicode_form, unnormalized_twin

__all__ = ["CHUNK_ROWS", "BatchEncoder", "EncodedRows", "render_and_encode"]

# Rows per tokenizer call: large enough that the call's fixed cost is paid rarely, small enough that the first
# chunk (rendered before any tokenizing can start) and the last (tokenized after all rendering) are short.
CHUNK_ROWS = 256

Rendered = tuple[str, Sequence[Sequence[int]]]  # a text and its trained character spans


@dataclass
class EncodedRows:
    """Token ids and 0/1 masks of many rows, flat: row i is ``ids[offsets[i]:offsets[i + 1]]``.

    Example:
        >>> rows = EncodedRows.from_lists([[5, 6], [7]], [[0, 1], [1]])
        >>> len(rows), rows.row(0), rows.offsets.tolist()
        (2, ([5, 6], [0, 1]), [0, 2, 3])
    """

    ids: np.ndarray  # int64
    mask: np.ndarray  # int8
    offsets: np.ndarray  # int64, one more than rows

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, index: int) -> tuple[list[int], list[int]]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.ids[start:end].tolist(), self.mask[start:end].tolist()

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]]) -> EncodedRows:
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in ids], out=offsets[1:])
        flat_ids = np.fromiter((token for row in ids for token in row), dtype=np.int64, count=int(offsets[-1]))
        flat_mask = np.fromiter((bit for row in masks for bit in row), dtype=np.int8, count=int(offsets[-1]))
        return cls(flat_ids, flat_mask, offsets)

    @classmethod
    def concatenate(cls, parts: Sequence[EncodedRows]) -> EncodedRows:
        if not parts:
            return cls.from_lists([], [])
        starts = np.cumsum([0] + [part.offsets[-1] for part in parts[:-1]])
        offsets = np.concatenate([[0]] + [part.offsets[1:] + start for part, start in zip(parts, starts)])
        return cls(np.concatenate([p.ids for p in parts]), np.concatenate([p.mask for p in parts]), offsets)

    def take(self, ranges: Sequence[tuple[int, int, int]]) -> EncodedRows:
        """Rows made of token ranges ``(row, start, end)`` (within the row), in the order given."""
        lengths = np.array([end - start for _, start, end in ranges], dtype=np.int64)
        offsets = np.zeros(len(ranges) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if ranges:
            index = np.concatenate([np.arange(self.offsets[r] + s, self.offsets[r] + e) for r, s, e in ranges])
        else:
            index = np.zeros(0, dtype=np.int64)
        return EncodedRows(self.ids[index], self.mask[index], offsets)


class BatchEncoder:
    """Encodes rendered rows with `tokenizer` (``add_special_tokens=False``) and masks their trained spans.

    Example:
        >>> # encoder = BatchEncoder(tokenizer)
        >>> # rows = encoder.encode([("<|im_start|>assistant\\nHi<|im_end|>", [(22, 34)])])
        >>> # rows.row(0)  ->  ([151644, 77091, 198, 13048, 151645], [0, 0, 0, 1, 1])
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # transformers' call encodes with the backend exactly so when truncation and padding are off.
        self.backend = (
            backend if backend is not None and backend.truncation is None and backend.padding is None else None
        )
        self.form = unicode_form(self.backend) if self.backend is not None else None
        self.twin = unnormalized_twin(self.backend) if self.form is not None else None
        exact = self.backend is not None and byte_exact(self.backend)
        self.byte_lengths = TokenByteLengths(self.backend) if exact else None

    def encode(self, rendered: Sequence[Rendered]) -> EncodedRows:
        """Ids and masks for each `(text, spans)`, in order."""
        if self.backend is None:
            encoded = self.tokenizer(
                [text for text, _ in rendered],
                add_special_tokens=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            masks = [encoding_token_mask(e, spans, len(text)) for e, (text, spans) in zip(encoded.encodings, rendered)]
            return EncodedRows.from_lists(encoded["input_ids"], masks)
        # A text in its normalizer's form is encoded without the normalizer (the twin): the same tokens.
        plain = [self.form is None or in_normal_form(text, self.form) for text, _ in rendered]
        rows: list[tuple[list[int], list[int]] | None] = [None] * len(rendered)
        if self.byte_lengths is not None:
            chosen = [index for index, ok in enumerate(plain) if ok]
            flat, good = self._by_bytes([rendered[index] for index in chosen])
            if len(chosen) == len(rendered) and good.all():
                return flat
            for position, index in enumerate(chosen):
                if good[position]:
                    rows[index] = flat.row(position)
        for twin in (True, False):  # the rest by offsets, through the twin where it applies
            chosen = [i for i, row in enumerate(rows) if row is None and (plain[i] and self.twin is not None) == twin]
            backend = self.twin if twin else self.backend
            encodings = (
                backend.encode_batch([rendered[i][0] for i in chosen], add_special_tokens=False) if chosen else []
            )
            for index, encoding in zip(chosen, encodings):
                text, spans = rendered[index]
                rows[index] = (encoding.ids, encoding_token_mask(encoding, spans, len(text)))
        return EncodedRows.from_lists([ids for ids, _ in rows], [mask for _, mask in rows])

    def _by_bytes(self, rendered: Sequence[Rendered]) -> tuple[EncodedRows, np.ndarray]:
        """Encode without offsets and mask by byte positions. Also returns which rows can be trusted: those
        whose tokens' byte lengths are all known and add up to their text's byte count."""
        backend = self.twin if self.twin is not None else self.backend
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        id_rows = [encoding.ids for encoding in encode([text for text, _ in rendered], add_special_tokens=False)]
        offsets = np.zeros(len(id_rows) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in id_rows], out=offsets[1:])
        ids = np.fromiter((token for row in id_rows for token in row), dtype=np.int64, count=int(offsets[-1]))
        lengths = self.byte_lengths(ids)
        known = np.maximum(lengths, 0)
        ends = np.cumsum(known)  # each token's end, in bytes from the start of the first row
        row_bytes = np.array([len(text) if text.isascii() else len(text.encode("utf-8")) for text, _ in rendered])
        before = np.concatenate([[0], ends])[offsets]  # bytes before each row's first token (and after the last)
        unknown = np.concatenate([[0], np.cumsum(lengths < 0)])[offsets]
        good = (np.diff(before) == row_bytes) & (np.diff(unknown) == 0)
        mask = self._byte_mask(rendered, before[:-1], ends - known, ends, good)
        return EncodedRows(ids, mask, offsets), good

    @staticmethod
    def _byte_mask(rendered, row_start, starts, ends, good) -> np.ndarray:
        """A token is trained iff its bytes meet a span's bytes (the rule of `training.masks`, in bytes: a span
        holds whole characters, so a token meets its bytes iff it shares a character with it)."""
        first, after = [], []
        for (text, spans), base, ok in zip(rendered, row_start.tolist(), good.tolist()):
            if not ok:
                continue
            ascii_text = text.isascii()
            for start, end in spans:
                end = min(end, len(text))
                if end <= start:
                    continue
                if not ascii_text:
                    start, end = len(text[:start].encode("utf-8")), len(text[:end].encode("utf-8"))
                first.append(base + start)
                after.append(base + end)
        change = np.zeros(len(ends) + 1, dtype=np.int32)
        # The first token ending after the span's first byte, and the first starting at or after its end.
        np.add.at(change, np.searchsorted(ends, np.array(first, dtype=np.int64), side="right"), 1)
        np.add.at(change, np.searchsorted(starts, np.array(after, dtype=np.int64), side="left"), -1)
        return (np.cumsum(change[:-1]) > 0).astype(np.int8)


def render_and_encode(
    count: int,
    render: Callable[[int], Rendered],
    encoder: BatchEncoder,
    pool: ThreadPoolExecutor | None,
) -> EncodedRows:
    """Ids and masks of `render(0) ... render(count - 1)`, in order.

    `pool` (one worker) encodes each chunk while the next is rendered; None encodes after rendering, in one
    call. An error raised by `render` stops the work and propagates; the chunks already sent are waited for.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> words = Tokenizer(models.WordLevel({"row": 0, "0": 1, "1": 2, "[UNK]": 3}, unk_token="[UNK]"))
        >>> words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        >>> encoder = BatchEncoder(PreTrainedTokenizerFast(tokenizer_object=words))
        >>> rows = render_and_encode(2, lambda i: (f"row {i}", [(4, 5)]), encoder, None)
        >>> rows.row(0), rows.row(1)
        (([0, 1], [0, 1]), ([0, 2], [0, 1]))
    """
    rendered: list[Rendered] = []
    pending: list[Future] = []
    try:
        for start in range(0, count, CHUNK_ROWS):
            chunk = [render(index) for index in range(start, min(count, start + CHUNK_ROWS))]
            if pool is None:
                rendered += chunk
            else:
                pending.append(pool.submit(encoder.encode, chunk))
    finally:
        if len(pending) * CHUNK_ROWS < count and pool is not None:  # rendering failed: let sent chunks finish
            for future in pending:
                future.exception()
    if pool is None:
        return encoder.encode(rendered)
    return EncodedRows.concatenate([future.result() for future in pending])
