"""prepare_dataset(max_length=N, truncation="right" | "left" | "drop"), with the real Qwen2.5 tokenizer built
offline and generated conversations of several turns.

In every mode: no row is longer than N; a row whose trained tokens were all cut is dropped, and the number
dropped is logged once; every kept token has the mask it has in the untruncated row (tokens are kept or cut
whole, so none straddles the cut).
"""

from __future__ import annotations

import logging
import random

import datasets as datasets  # noqa: E402
import pytest
from _paths import corpus_file
from tokenizers_offline import with_chat_template

from templatekit import prepare_dataset
from templatekit.errors import InvalidArgumentError
from templatekit.training.dataset import truncate_row

Dataset, IterableDataset = datasets.Dataset, datasets.IterableDataset

LOGGER = "templatekit.training.dataset"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def conversations(count: int, *, seed: int = 0) -> list[list[dict]]:
    """Conversations of 1-4 turns with long user turns and short unique replies (sentinels)."""
    rng = random.Random(seed)
    rows = []
    for row in range(count):
        messages = [{"role": "system", "content": f"system {row} " + " ".join(rng.choices(WORDS, k=20))}]
        for turn in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": f"q{row}.{turn} " + " ".join(rng.choices(WORDS, k=30))})
            messages.append(
                {"role": "assistant", "content": f"answer{row}x{turn} " + " ".join(rng.choices(WORDS, k=3))}
            )
        rows.append(messages)
    return rows


@pytest.fixture(scope="module")
def tokenizer(qwen_tokenizer):
    tokenizer = with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))
    return tokenizer


@pytest.fixture(scope="module")
def rows():
    return conversations(30, seed=11)


@pytest.fixture(scope="module")
def full(tokenizer, rows):
    """The untruncated rows, each with its conversation (kept as a column)."""
    data = Dataset.from_dict({"messages": rows})
    prepared = prepare_dataset(data, tokenizer, add_labels=True, remove_columns=False, progress=False)
    return [dict(row) for row in prepared]


def prepared_rows(tokenizer, rows, **options) -> list[dict]:
    data = Dataset.from_dict({"messages": rows})
    return [dict(row) for row in prepare_dataset(data, tokenizer, remove_columns=False, progress=False, **options)]


def key(row: dict) -> str:
    return repr(row["messages"])


def expected(full: list[dict], limit: int, truncation: str) -> list[dict]:
    """What each mode must give, computed here from the untruncated rows."""
    out = []
    for row in full:
        ids, mask = row["input_ids"], row["assistant_masks"]
        if len(ids) > limit:
            if truncation == "drop":
                continue
            kept = slice(-limit, None) if truncation == "left" else slice(0, limit)
            ids, mask = ids[kept], mask[kept]
            if not any(mask):
                continue
        out.append({**row, "input_ids": ids, "assistant_masks": mask, "attention_mask": [1] * len(ids)})
    return out


@pytest.mark.parametrize("truncation", ["right", "left", "drop"])
def test_each_mode(tokenizer, rows, full, truncation, caplog):
    lengths = sorted(len(r["input_ids"]) for r in full)
    limit = lengths[len(lengths) // 2]  # half the rows are longer
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = prepared_rows(tokenizer, rows, max_length=limit, truncation=truncation, add_labels=True)
    want = expected(full, limit, truncation)
    for row in want:
        row["labels"] = [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"])]
    assert got == want
    assert all(len(row["input_ids"]) <= limit for row in got)
    assert all(any(row["assistant_masks"]) for row in got)
    # The masks on the kept tokens are those of the untruncated row (tokens are kept or cut whole).
    whole = {key(row): row for row in full}
    for row in got:
        source = whole[key(row)]
        n = len(row["input_ids"])
        at = len(source["input_ids"]) - n if truncation == "left" else 0
        assert row["input_ids"] == source["input_ids"][at : at + n]
        assert row["assistant_masks"] == source["assistant_masks"][at : at + n]
    # One message per call, with the number of rows dropped.
    dropped = len(rows) - len(got)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    if truncation == "drop":
        assert dropped == sum(1 for r in full if len(r["input_ids"]) > limit) > 0
    if dropped:
        assert len(messages) == 1 and f"dropping {dropped} row" in messages[0], messages
    else:
        assert messages == []


def test_left_keeps_the_last_assistant_turn(tokenizer, rows, full):
    limit = 40
    got = prepared_rows(tokenizer, rows, max_length=limit, truncation="left")
    assert len(got) == len(rows)  # every row ends on a reply, so the end always trains something
    for row in got:
        last = [m for m in row["messages"] if m["role"] == "assistant"][-1]["content"]
        trained = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
        assert trained.endswith(last + "<|im_end|>")
        assert len(row["input_ids"]) <= limit


def test_right_drops_rows_with_nothing_trained_and_counts_them(tokenizer, rows, full, caplog):
    # The system prompt and first question are longer than 60 tokens: cut at 60 from the right, nothing trains.
    limit = 60
    doomed = [r for r in full if len(r["input_ids"]) > limit and not any(r["assistant_masks"][:limit])]
    assert len(doomed) == len(rows)  # every row here
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = Dataset.from_dict({"messages": rows})
        got = prepare_dataset(data, tokenizer, max_length=limit, progress=False)
    assert len(got) == 0
    [message] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert f"dropping {len(rows)} rows whose trained tokens were all cut by max_length={limit}" in message
    assert "truncation='left'" in message  # the hint


def test_weight_zero_rows_are_kept_even_when_cut(tokenizer):
    rows = conversations(3, seed=2)
    for messages in rows:
        for message in messages:
            if message["role"] == "assistant":
                message["weight"] = 0
    got = prepared_rows(tokenizer, rows, max_length=30, truncation="left")
    assert len(got) == 3 and all(not any(r["assistant_masks"]) and len(r["input_ids"]) == 30 for r in got)


@pytest.mark.slow
def test_num_proc_counts_across_workers(tokenizer, rows, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = Dataset.from_dict({"messages": rows})
        single = prepare_dataset(data, tokenizer, max_length=200, truncation="drop", batch_size=4, progress=False)
        double = prepare_dataset(
            data, tokenizer, max_length=200, truncation="drop", batch_size=4, num_proc=2, progress=False
        )
    assert double.to_dict() == single.to_dict()
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    dropped = len(rows) - len(single)
    assert dropped > 0 and messages == [messages[0]] * 2 and f"dropping {dropped} rows longer than" in messages[0]


@pytest.mark.parametrize("truncation", ["right", "left", "drop"])
def test_iterable_dataset_same_as_dataset(tokenizer, rows, truncation, caplog):
    limit = 120
    eager = prepare_dataset(
        Dataset.from_dict({"messages": rows}), tokenizer, max_length=limit, truncation=truncation, progress=False
    )
    stream = IterableDataset.from_generator(lambda: ({"messages": m} for m in rows))
    lazy = prepare_dataset(stream, tokenizer, max_length=limit, truncation=truncation, batch_size=4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert list(lazy) == list(eager)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == (1 if len(eager) < len(rows) else 0), messages


def test_kept_columns_follow_their_rows(tokenizer, rows):
    data = Dataset.from_dict({"messages": rows, "id": list(range(len(rows)))})
    got = prepare_dataset(data, tokenizer, max_length=200, truncation="drop", remove_columns=False, progress=False)
    full = prepare_dataset(data, tokenizer, remove_columns=False, progress=False)
    by_id = {row["id"]: row for row in full}
    assert 0 < len(got) < len(rows)
    for row in got:
        assert row["input_ids"] == by_id[row["id"]]["input_ids"] and row["messages"] == by_id[row["id"]]["messages"]


@pytest.mark.parametrize("truncation", ["middle", None, "RIGHT"])
def test_bad_truncation_names_the_allowed_values(tokenizer, rows, truncation):
    data = Dataset.from_dict({"messages": rows[:2]})
    with pytest.raises(ValueError, match=r"truncation must be one of 'right', 'left', 'drop'") as caught:
        prepare_dataset(data, tokenizer, max_length=10, truncation=truncation, progress=False)
    assert isinstance(caught.value, InvalidArgumentError)


@pytest.mark.parametrize("max_length", [0, -3, 2.5, True])
def test_bad_max_length(tokenizer, rows, max_length):
    with pytest.raises(InvalidArgumentError, match="max_length must be a positive integer"):
        prepare_dataset(Dataset.from_dict({"messages": rows[:2]}), tokenizer, max_length=max_length, progress=False)


def test_truncate_row_rule():
    ids, mask = [10, 11, 12, 13, 14, 15], [0, 1, 1, 0, 0, 0]
    assert truncate_row(ids, mask, None, "drop") == (ids, mask)
    assert truncate_row(ids, mask, 6, "drop") == (ids, mask)  # not longer: kept whole in every mode
    assert truncate_row(ids, mask, 3, "right") == ([10, 11, 12], [0, 1, 1])
    assert truncate_row(ids, mask, 3, "left") is None  # its trained tokens were all cut
    assert truncate_row(ids, mask, 5, "left") == ([11, 12, 13, 14, 15], [1, 1, 0, 0, 0])
    assert truncate_row(ids, mask, 5, "drop") is None
    assert truncate_row(ids, [0] * 6, 3, "right") == ([10, 11, 12], [0, 0, 0])  # nothing was trained: kept
