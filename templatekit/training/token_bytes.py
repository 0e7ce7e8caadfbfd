"""Two exact shortcuts through a fast tokenizer's backend, for tokenizing many rendered conversations.

* **A normalizer that changes nothing is skipped.** Qwen's tokenizers normalize to NFC; on a text already in
  NFC that is the identity, yet it costs a quarter of the encoding time (it tracks an alignment per character).
  `unnormalized_twin` is the same tokenizer without it (sharing the model, ~1 ms to build), used only for texts
  `in_normal_form`.
* **Token edges from byte lengths instead of offsets.** In a byte-level BPE (GPT-2, Llama 3, Qwen) every token
  stands for a fixed run of the text's UTF-8 bytes, and the tokens of a text spell it exactly. The running sum
  of the tokens' byte lengths then gives every token's place in the text, so the encoder can skip computing
  offsets (`encode_batch_fast`) and masks come from a few numpy operations. `TokenByteLengths` reads the lengths
  off the vocabulary, lazily, for the ids met; `byte_exact` says when a backend qualifies. Whatever it says,
  the encoder checks each row: the lengths must add up to the text's byte count, or the row is encoded again
  with offsets.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import numpy as np

__all__ = ["TokenByteLengths", "byte_exact", "in_normal_form", "unicode_form", "unnormalized_twin"]

_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
# Pre-tokenizers that only split the text (never drop or rewrite a character), in the behaviours that keep it all.
_SPLITTERS = {"Split", "Digits", "Punctuation", "UnicodeScripts"}
_KEEPING = {None, "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"}


def _state(component: Any) -> dict | None:
    """A tokenizer component (normalizer, pre-tokenizer, processor) as its JSON description."""
    return None if component is None else json.loads(component.__getstate__())


def unicode_form(backend: Any) -> str | None:
    """The Unicode normal form the backend's normalizer applies when that is all it does, else None.

    Example:
        >>> from tokenizers import Tokenizer, models, normalizers
        >>> backend = Tokenizer(models.BPE())
        >>> backend.normalizer = normalizers.Sequence([normalizers.NFC()])
        >>> unicode_form(backend)
        'NFC'
    """
    state = _state(backend.normalizer)
    if state is not None and state.get("type") == "Sequence" and len(state.get("normalizers", ())) == 1:
        state = state["normalizers"][0]
    return state["type"] if state is not None and state.get("type") in _FORMS else None


def in_normal_form(text: str, form: str) -> bool:
    """True when normalizing `text` to `form` leaves it unchanged, whichever Unicode version the tokenizer's
    normalizer follows: ASCII always is; other text must be normalized and hold no character that this
    Python's Unicode database does not know (a newer version might decompose it).

    Example:
        >>> in_normal_form("caf\\u00e9", "NFC"), in_normal_form("cafe\\u0301", "NFC")
        (True, False)
    """
    if text.isascii():
        return True
    if not unicodedata.is_normalized(form, text):
        return False
    return all(unicodedata.category(char) != "Cn" for char in set(text) if not char.isascii())


def unnormalized_twin(backend: Any) -> Any | None:
    """The backend without its normalizer, sharing everything else (model, pre-tokenizer, added tokens), or
    None when the normalizer is not a plain Unicode form or the twin would number a token differently.

    It encodes a text `in_normal_form` exactly as the backend does: the normalizer would leave it unchanged.
    """
    from tokenizers import Tokenizer

    if unicode_form(backend) is None:
        return None
    twin = Tokenizer(backend.model)  # the same model object, not a copy
    twin.pre_tokenizer = backend.pre_tokenizer
    twin.post_processor = backend.post_processor
    twin.decoder = backend.decoder
    added = backend.get_added_tokens_decoder()
    for token_id in sorted(added):  # in id order, so that each gets its id again
        token = added[token_id]
        (twin.add_special_tokens if token.special else twin.add_tokens)([token])
    if hasattr(backend, "encode_special_tokens"):
        twin.encode_special_tokens = backend.encode_special_tokens
    if any(twin.token_to_id(token.content) != token_id for token_id, token in added.items()):
        return None
    return twin


def byte_exact(backend: Any) -> bool:
    """True when the backend is a byte-level BPE whose tokens spell the text byte for byte and whose offsets
    are untrimmed, so that token edges can be read from byte lengths.

    That needs: a BPE model without byte fallback; pre-tokenizers that only split, and one ByteLevel that adds
    no prefix space; a normalizer that is none or a Unicode form (the encoder uses it only on texts in that form);
    added tokens that swallow no whitespace; and no post-processor that trims offsets (the offsets path would
    then mask differently).

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> backend = Tokenizer(models.BPE())
        >>> backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        >>> byte_exact(backend), byte_exact(Tokenizer(models.WordPiece()))
        (True, False)
    """
    if type(backend.model).__name__ != "BPE" or getattr(backend.model, "byte_fallback", True):
        return False
    if backend.normalizer is not None and unicode_form(backend) is None:
        return False
    pre = _state(backend.pre_tokenizer)
    steps = pre.get("pretokenizers", []) if pre is not None and pre.get("type") == "Sequence" else [pre]
    byte_levels = [step for step in steps if step is not None and step.get("type") == "ByteLevel"]
    if len(byte_levels) != 1 or byte_levels[0].get("add_prefix_space"):
        return False
    others = [step for step in steps if step is not byte_levels[0]]
    if any(
        step is None or step.get("type") not in _SPLITTERS or step.get("behavior") not in _KEEPING for step in others
    ):
        return False
    if any(token.lstrip or token.rstrip for token in backend.get_added_tokens_decoder().values()):
        return False
    post = _state(backend.post_processor)
    processors = post.get("processors", []) if post is not None and post.get("type") == "Sequence" else [post]
    return not any(
        step and step.get("type") in ("ByteLevel", "RobertaProcessing") and step.get("trim_offsets")
        for step in processors
    )


class TokenByteLengths:
    """How many UTF-8 bytes of the text each token id stands for, read off the vocabulary for the ids met.

    A byte-level vocabulary writes each byte as one character of a fixed 256-character alphabet, so a token's
    length in characters is its length in bytes; an added token stands for its own text. An id outside that
    (a character off the alphabet, an empty token) gets -1, and a row holding one is encoded with offsets.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> backend = Tokenizer(models.BPE({"h": 0, "\\u00c3": 1, "\\u00a9": 2, "h\\u00c3": 3}, [("h", "\\u00c3")]))
        >>> backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        >>> TokenByteLengths(backend)(np.array([3, 2, 0]))  # "hé" is h, then 0xC3 0xA9
        array([2, 1, 1])
    """

    def __init__(self, backend: Any):
        from tokenizers.pre_tokenizers import ByteLevel

        self.backend = backend
        self.alphabet = frozenset(ByteLevel.alphabet())
        self.added = {token_id: token.content for token_id, token in backend.get_added_tokens_decoder().items()}
        self.table = np.zeros(backend.get_vocab_size(with_added_tokens=True), dtype=np.int64)  # 0: not looked up

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """The byte length of each id in `ids` (-1 where it is unknown)."""
        if len(ids) and int(ids.max()) >= len(self.table):
            grown = np.zeros(int(ids.max()) + 1, dtype=np.int64)
            grown[: len(self.table)] = self.table
            self.table = grown
        lengths = self.table[ids]
        if (lengths == 0).any():
            for token_id in np.unique(ids[lengths == 0]).tolist():
                self.table[token_id] = self._length(token_id)
            lengths = self.table[ids]
        return lengths

    def _length(self, token_id: int) -> int:
        if token_id in self.added:
            return len(self.added[token_id].encode("utf-8")) or -1
        token = self.backend.id_to_token(token_id)
        if not token or not self.alphabet.issuperset(token):
            return -1
        return len(token)
