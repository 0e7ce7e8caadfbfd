"""spans_to_token_mask: a token is trained iff at least one of its characters lies inside a span."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from templatekit.training.masks import spans_to_token_mask


def naive_mask(offsets, spans):
    """The rule, written out literally: some character of the token lies in some span."""
    mask = []
    for start, end in offsets:
        chars = set(range(start, end))
        mask.append(int(any(chars & set(range(a, b)) for a, b in spans)))
    return mask


def transformers_rule(encoding, spans):
    """What transformers' apply_chat_template(return_assistant_tokens_mask=True) does with one span:
    mark the tokens from char_to_token(first char) to char_to_token(last char)."""
    mask = [0] * len(encoding["input_ids"])
    for start, end in spans:
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        for i in range(first, last + 1):
            mask[i] = 1
    return mask


def trained_tokens(tokenizer, text, spans, add_special_tokens=False):
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    mask = spans_to_token_mask(enc["offset_mapping"], spans)
    assert len(mask) == len(enc["input_ids"])
    return [tokenizer.convert_ids_to_tokens(i) for i, m in zip(enc["input_ids"], mask) if m], mask, enc


# --- plain cases ------------------------------------------------------------------------------


def test_no_spans_and_no_tokens():
    assert spans_to_token_mask([], []) == []
    assert spans_to_token_mask([], [(0, 5)]) == []
    assert spans_to_token_mask([(0, 2), (2, 4)], []) == [0, 0]


def test_empty_spans_train_nothing():
    assert spans_to_token_mask([(0, 2), (2, 4)], [(1, 1), (3, 2)]) == [0, 0]


def test_touching_is_not_overlapping():
    # span [2, 4) shares no character with [0, 2) or [4, 6)
    assert spans_to_token_mask([(0, 2), (2, 4), (4, 6)], [(2, 4)]) == [0, 1, 0]


def test_straddling_tokens_are_trained():
    offsets = [(0, 3), (3, 6), (6, 9)]
    assert spans_to_token_mask(offsets, [(4, 5)]) == [0, 1, 0]  # strictly inside one token
    assert spans_to_token_mask(offsets, [(2, 7)]) == [1, 1, 1]  # one character of each edge token
    assert spans_to_token_mask(offsets, [(2, 3)]) == [1, 0, 0]


def test_zero_width_tokens_never_trained():
    offsets = [(0, 0), (0, 3), (3, 3), (3, 6), (6, 6)]
    assert spans_to_token_mask(offsets, [(0, 6)]) == [0, 1, 0, 1, 0]


def test_unsorted_overlapping_spans_act_as_union():
    offsets = [(i, i + 1) for i in range(10)]
    spans = [(7, 9), (1, 3), (2, 5), (8, 8), (4, 6)]
    assert spans_to_token_mask(offsets, spans) == [0, 1, 1, 1, 1, 1, 0, 1, 1, 0]


def test_spans_beyond_text_and_tuples_or_lists():
    assert spans_to_token_mask([[0, 2], [2, 4]], [[3, 100]]) == [0, 1]
    assert spans_to_token_mask(((0, 2), (2, 4)), iter([(10, 20)])) == [0, 0]


def test_offsets_going_backwards():
    # e.g. two encodings concatenated: starts drop back to 0 halfway
    offsets = [(0, 2), (2, 4), (4, 6), (0, 2), (2, 4), (4, 6)]
    assert spans_to_token_mask(offsets, [(3, 5)]) == [0, 1, 1, 0, 1, 1]
    assert spans_to_token_mask(offsets, [(0, 1)]) == [1, 0, 0, 1, 0, 0]


def test_repeated_offsets_of_multibyte_pieces():
    # byte-level BPE splits one rare character into tokens sharing its offsets
    offsets = [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert spans_to_token_mask(offsets, [(1, 2)]) == [0, 0, 1, 1]


def test_fast_on_long_inputs():
    offsets = [(i * 3, i * 3 + 3) for i in range(200_000)]
    spans = [(i * 60 + 10, i * 60 + 40) for i in range(10_000)]
    started = time.perf_counter()
    mask = spans_to_token_mask(offsets, spans)
    assert time.perf_counter() - started < 2.0
    assert sum(mask) == 10_000 * 11  # chars 10..39 of each 60 touch tokens 3..13 of each 20


# --- real tokenizers --------------------------------------------------------------------------


def test_qwen_span_ending_mid_word(qwen_tokenizer):
    text = "<|im_start|>assistant\nHello wonderful world<|im_end|>\n"
    start = text.index("Hello")
    end = text.index("wonderful") + len("wonder")  # "wonder|ful": mid-token
    tokens, _, _ = trained_tokens(qwen_tokenizer, text, [(start, end)])
    assert tokens == ["Hello", "Ġwonderful"]


def test_qwen_assistant_span_with_end_of_turn(qwen_tokenizer):
    text = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello wonderful world<|im_end|>\n"
    start = text.index("Hello")
    end = text.index("<|im_end|>", start) + len("<|im_end|>")
    tokens, mask, enc = trained_tokens(qwen_tokenizer, text, [(start, end)])
    assert tokens == ["Hello", "Ġwonderful", "Ġworld", "<|im_end|>"]
    assert enc["input_ids"][-1] == qwen_tokenizer.convert_tokens_to_ids("Ċ") and mask[-1] == 0
    assert mask == transformers_rule(enc, [(start, end)])


def test_mistral_metaspace_token_straddles_span_start(mistral_tokenizer):
    # "▁Hello" carries the space before the span; the model generates it, so it must be trained.
    text = "[INST] Hi [/INST] Hello wonderful world</s>"
    start = text.index("Hello")
    tokens, mask, enc = trained_tokens(mistral_tokenizer, text, [(start, len(text))], add_special_tokens=True)
    assert tokens == ["▁Hello", "▁wonderful", "▁world", "</s>"]
    assert enc["input_ids"][0] == mistral_tokenizer.bos_token_id and mask[0] == 0


def test_llama3_zero_width_bos_never_trained(llama3_tokenizer):
    text = "Hello world<|eot_id|>"
    tokens, mask, enc = trained_tokens(llama3_tokenizer, text, [(0, len(text))], add_special_tokens=True)
    assert enc["offset_mapping"][0] == (0, 0) and mask[0] == 0
    assert tokens == ["Hello", "Ġworld", "<|eot_id|>"]


def test_llama3_multibyte_character_pieces(llama3_tokenizer):
    # " 𝔘" is split into byte pieces that share offsets; a span of just "𝔘" trains all of them
    text = "ab 𝔘 cd"
    char = text.index("𝔘")
    tokens, mask, enc = trained_tokens(llama3_tokenizer, text, [(char, char + 1)])
    pieces = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s <= char < e]
    assert len(pieces) > 1
    assert [i for i, m in enumerate(mask) if m] == pieces


# --- properties -------------------------------------------------------------------------------

SPAN = st.tuples(st.integers(0, 60), st.integers(0, 60))


@st.composite
def monotone_offsets(draw):
    """Offsets like a tokenizer's: non-decreasing starts, some zero-width, some repeated."""
    offsets, position = [], 0
    for _ in range(draw(st.integers(0, 30))):
        position += draw(st.integers(0, 3))
        kind = draw(st.sampled_from(["token", "token", "token", "zero", "repeat"]))
        if kind == "repeat" and offsets:
            offsets.append(offsets[-1])
        elif kind == "zero":
            offsets.append((position, position))
        else:
            offsets.append((position, position + draw(st.integers(1, 5))))
    return offsets


@given(offsets=monotone_offsets(), spans=st.lists(SPAN, max_size=6))
def test_matches_naive_definition_monotone(offsets, spans):
    assert spans_to_token_mask(offsets, spans) == naive_mask(offsets, spans)


@given(
    offsets=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10)).map(lambda t: (t[0], t[0] + t[1]))),
    spans=st.lists(SPAN, max_size=6),
)
def test_matches_naive_definition_any_order(offsets, spans):
    assert spans_to_token_mask(offsets, spans) == naive_mask(offsets, spans)


@given(offsets=monotone_offsets(), spans=st.lists(SPAN, max_size=6))
def test_order_of_spans_does_not_matter(offsets, spans):
    assert spans_to_token_mask(offsets, spans) == spans_to_token_mask(offsets, list(reversed(spans)))


TEXT = st.lists(
    st.sampled_from(
        ["Hello", " world", "wonder", "ful", " ", "\n", "\n\n", "!", "12345", "é", "漢字", "𝔘", "'s", "<|im_end|>"]
    ),
    min_size=1,
    max_size=20,
).map("".join)


@pytest.mark.parametrize("name", ["qwen_tokenizer", "llama3_tokenizer", "mistral_tokenizer"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_matches_transformers_char_to_token_rule(request, name, data):
    """On a real tokenizer's contiguous offsets, the rule equals transformers' char_to_token rule."""
    tokenizer = request.getfixturevalue(name)
    text = data.draw(TEXT)
    a = data.draw(st.integers(0, len(text) - 1))
    b = data.draw(st.integers(a + 1, len(text)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    ours = spans_to_token_mask(offsets, [(a, b)])
    theirs = transformers_rule(enc, [(a, b)])
    # The one stated difference: the byte pieces after the first one of a split last character. The first
    # piece may also carry a leading space (offsets (8, 10) for " 漢", then (9, 10) for its other bytes).
    last = enc.char_to_token(b - 1)
    extra = [i for i in range(last + 1, len(offsets)) if offsets[i][0] < b and offsets[i][1] == b]
    assert ours == [1 if i in extra else m for i, m in enumerate(theirs)]


def test_split_last_character_trained_whole_unlike_char_to_token(qwen_tokenizer):
    """A span ending in a character split over several byte tokens trains all its pieces."""
    text = "ok 𝔘"
    tokens, mask, enc = trained_tokens(qwen_tokenizer, text, [(0, len(text))])
    assert mask == [1] * len(mask)
    assert qwen_tokenizer.decode([i for i, m in zip(enc["input_ids"], mask) if m]) == text
    theirs = transformers_rule(enc, [(0, len(text))])
    assert theirs[-1] == 0  # transformers drops the last byte piece of "𝔘"
