"""prepare_dataset's speed levers keep its output exact: tokenizing while rendering (training/encoding.py) and
its own map fingerprint (training/fingerprint.py), on the real Qwen2.5 tokenizer built offline."""

from __future__ import annotations

import copy
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import tokenizers_offline
from _paths import corpus_file

from templatekit import prepare_dataset
from templatekit.training.encoding import CHUNK_ROWS, render_and_encode
from templatekit.training.fingerprint import map_fingerprint, tokenizer_digest

datasets = pytest.importorskip("datasets")
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex bright jade pots".split()


@pytest.fixture(scope="module")
def tokenizer():
    tok = copy.deepcopy(tokenizers_offline.qwen_tokenizer())
    tok.chat_template = corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")
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


@pytest.mark.parametrize("count", [1, CHUNK_ROWS, 2 * CHUNK_ROWS + 3])
def test_tokenizing_while_rendering_gives_the_batch_calls_ids_and_offsets(tokenizer, count):
    lines = texts(count)
    expected = tokenizer(lines, add_special_tokens=False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        overlapped = render_and_encode(count, lambda i: (lines[i], [(0, 1)]), tokenizer, pool)
    sequential = render_and_encode(count, lambda i: (lines[i], [(0, 1)]), tokenizer, None)
    for rows in (overlapped, sequential):
        assert [text for text, _, _, _ in rows] == lines
        assert [ids for _, _, ids, _ in rows] == expected["input_ids"]
        assert [encoding.offsets for _, _, _, encoding in rows] == [e.offsets for e in expected.encodings]


def test_a_backend_that_truncates_is_encoded_through_transformers(tokenizer):
    truncating = copy.deepcopy(tokenizer)
    truncating.backend_tokenizer.enable_truncation(max_length=5)
    lines = texts(10)
    rows = render_and_encode(10, lambda i: (lines[i], []), truncating, None)
    # transformers' own call turns the backend's truncation off unless asked: the ids are the full ones.
    assert [ids for _, _, ids, _ in rows] == tokenizer(lines, add_special_tokens=False)["input_ids"]


def test_a_render_error_stops_the_work_and_propagates(tokenizer):
    lines = texts(3 * CHUNK_ROWS)

    def render(index):
        if index == 2 * CHUNK_ROWS + 1:
            raise ValueError("row is broken")
        return lines[index], []

    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(ValueError, match="row is broken"):
        render_and_encode(len(lines), render, tokenizer, pool)


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
    other = copy.deepcopy(tokenizer)
    other.chat_template = corpus_file("trl/llama3_1.jinja").read_text(encoding="utf-8")
    relabelled = prepare_dataset(rows, other, progress=False)
    assert relabelled._fingerprint != first._fingerprint
    assert relabelled["input_ids"] != first["input_ids"]
