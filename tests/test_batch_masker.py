"""BatchMasker: prepare_dataset's batch function for any engine, on a real tokenizer and real corpus templates.

Each batch kind (dict of lists, pyarrow Table, pandas DataFrame) must give, row for row, what `prepare_dataset`
writes for the same rows and options; a refused row raises as in prepare_dataset, or (``on_error="collect"``)
comes out as a row of its own with its reason; and the masker pickles small and builds its template once.
"""

from __future__ import annotations

import pickle
import warnings

import datasets
import pandas as pd
import pyarrow as pa
import pytest
import tokenizers_offline
from _paths import corpus_file
from _training import conversations
from tokenizers_offline import with_chat_template

from templatekit import BatchMasker, DatasetRowError, prepare_dataset
from templatekit.errors import ArgumentTypeError, HistoryMismatchWarning, InvalidArgumentError

# Every batch kind (pyarrow, pandas, dict) against prepare_dataset on real tokenizers: about fifteen seconds.
pytestmark = pytest.mark.slow


TOKEN_COLUMNS = ("input_ids", "attention_mask", "assistant_masks", "labels")


@pytest.fixture(scope="module")
def qwen(qwen_tokenizer):
    return with_chat_template(qwen_tokenizer, corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8"))


def as_rows(output) -> list[dict]:
    """Any batch kind the masker returns, as a list of row dicts with Python lists."""
    if isinstance(output, pa.Table):
        return output.to_pylist()
    if isinstance(output, pd.DataFrame):
        return pa.Table.from_pandas(output, preserve_index=False).to_pylist()
    return [dict(zip(output, values)) for values in zip(*output.values())]


def reference(tokenizer, rows, **options) -> list[dict]:
    return list(prepare_dataset(datasets.Dataset.from_dict({"messages": rows}), tokenizer, progress=False, **options))


def batch_of(kind: str, rows: list, ids: list[int] | None = None):
    columns = {"messages": rows, **({"id": ids} if ids is not None else {})}
    if kind == "arrow":
        return pa.table(columns)
    if kind == "pandas":
        return pd.DataFrame(columns)
    return columns


@pytest.mark.parametrize("kind", ["dict", "arrow", "pandas"])
@pytest.mark.parametrize(
    "options",
    [{}, {"per_turn": True}, {"max_length": 34, "truncation": "right"}, {"train_on_eot": "none"}],
    ids=["whole", "per_turn", "truncated", "policy"],
)
def test_every_batch_kind_gives_what_prepare_dataset_writes(qwen, kind, options):
    rows = conversations(40, seed=3)
    expected = reference(qwen, rows, add_labels=True, **options)
    # Two batches, numbered as datasets numbers them (per_turn's source_row is the conversation's index).
    got = []
    for start in (0, 25):
        part = rows[start : start + 25]
        masker = BatchMasker(qwen, add_labels=True, **options)
        got += as_rows(masker(batch_of(kind, part), indices=list(range(start, start + len(part)))))
    assert [list(row) for row in got[:1]] == [list(row) for row in expected[:1]]  # the same columns, in order
    assert got == expected
    if options.get("max_length"):
        assert all(len(row["input_ids"]) <= 34 for row in got) and len(got) < len(rows)


def test_id_column_names_the_rows(qwen):
    rows = conversations(12, seed=5)
    ids = [1000 + 7 * index for index in range(len(rows))]
    got = as_rows(BatchMasker(qwen, id_column="id")(batch_of("arrow", rows, ids)))
    expected = reference(qwen, rows)
    assert [row["source_row"] for row in got] == ids
    assert [{c: row[c] for c in TOKEN_COLUMNS[:3]} for row in got] == expected


def bad_rows() -> tuple[list, dict[int, str]]:
    """Conversations with refused rows among good ones, and the words each refusal's reason must hold."""
    rows = conversations(30, seed=9)
    rows[4] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]
    rows[11] = []
    rows[17] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 3}]
    return rows, {4: "row 4, message 1: the assistant message has no content", 11: "row 11:", 17: "weight"}


@pytest.mark.parametrize("kind", ["dict", "arrow"])
def test_refused_rows_are_collected_with_their_reason(qwen, kind):
    rows, reasons = bad_rows()
    good = [index for index in range(len(rows)) if index not in reasons]
    expected = reference(qwen, [rows[index] for index in good], add_labels=True)
    got = as_rows(BatchMasker(qwen, add_labels=True, on_error="collect")(batch_of(kind, rows)))
    assert len(got) == len(rows)  # every row is there: prepared, or left out with its reason
    prepared = [row for row in got if row["rejected"] is None]
    left_out = {row["source_row"]: row for row in got if row["rejected"] is not None}
    assert [row["source_row"] for row in prepared] == good
    assert [{c: row[c] for c in TOKEN_COLUMNS} for row in prepared] == expected
    assert sorted(left_out) == sorted(reasons)
    for index, words in reasons.items():
        assert words in left_out[index]["rejected"], left_out[index]["rejected"]
        assert left_out[index]["input_ids"] == left_out[index]["assistant_masks"] == []


def test_refused_row_raises_by_default_as_prepare_dataset_does(qwen):
    rows, _ = bad_rows()
    with pytest.raises(DatasetRowError, match="row 4, message 1: the assistant message has no content"):
        BatchMasker(qwen)(batch_of("arrow", rows))


def test_collect_reports_each_turn_a_cut_drops_and_each_conversation_refused(qwen):
    rows, reasons = bad_rows()
    masker = BatchMasker(qwen, on_error="collect", per_turn=True, max_length=40, truncation="right")
    got = as_rows(masker(batch_of("dict", rows)))
    left_out = [row for row in got if row["rejected"] is not None]
    refused = [row for row in left_out if row["turn_index"] == -1]
    cut = [row for row in left_out if row["turn_index"] != -1]
    assert sorted(row["source_row"] for row in refused) == sorted(reasons)
    assert cut and all("max_length=40" in row["rejected"] for row in cut)
    # What the cut leaves, and what it drops, make up every trained turn of the good conversations.
    good = [messages for index, messages in enumerate(rows) if index not in reasons]
    assert len(got) - len(refused) == len(reference(qwen, good, per_turn=True))


def test_pickles_and_builds_its_template_once(qwen):
    rows = conversations(30, seed=2)
    masker = BatchMasker(qwen, on_error="collect", id_column="id")
    batch = batch_of("arrow", rows, list(range(len(rows))))
    first = masker(batch)
    copied = pickle.loads(pickle.dumps(masker))
    assert copied._preparer is None  # nothing built travels: the worker builds it on its first batch
    assert copied(batch).equals(first)
    renderer = copied.preparer.renderer
    for _ in range(3):
        copied(batch)
    assert copied.preparer.renderer is renderer  # once per worker, never per batch


@pytest.mark.slow
def test_a_tokenizer_folder_travels_as_its_path(qwen, tmp_path):
    qwen.save_pretrained(tmp_path)
    rows = conversations(20, seed=4)
    masker = BatchMasker(str(tmp_path), add_labels=True)
    pickled = pickle.dumps(masker)
    assert len(pickled) < 20_000 < len(pickle.dumps(BatchMasker(qwen)))  # the path, not the vocabulary
    assert as_rows(pickle.loads(pickled)(batch_of("dict", rows))) == reference(qwen, rows, add_labels=True)


def test_bad_arguments_and_batches_say_what_is_wrong(qwen):
    rows = conversations(3)
    with pytest.raises(InvalidArgumentError, match="on_error must be one of 'raise', 'collect'"):
        BatchMasker(qwen, on_error="skip")
    with pytest.raises(TypeError, match="unexpected keyword argument 'train_role'"):
        BatchMasker(qwen, train_role="judge")
    with pytest.raises(InvalidArgumentError, match="no column 'messages'"):
        BatchMasker(qwen)({"conversations": rows})
    with pytest.raises(InvalidArgumentError, match="no column 'id'"):
        BatchMasker(qwen, id_column="id")(batch_of("arrow", rows))
    with pytest.raises(ArgumentTypeError, match="the id column 'id' must hold integers, got 'a'"):
        BatchMasker(qwen, id_column="id")({"messages": rows, "id": ["a", "b", "c"]})
    with pytest.raises(ArgumentTypeError, match="pyarrow Table, a pandas DataFrame or a dict of lists"):
        BatchMasker(qwen)(rows)
    with pytest.raises(ArgumentTypeError, match="fast tokenizer"):
        BatchMasker(object())


@pytest.mark.slow
def test_history_warning_names_the_callers_line_once():
    """A template that renders history unlike the turn as generated warns where the masker is built, as
    prepare_dataset does; a worker rebuilding the masker does not warn again."""
    qwen3 = tokenizers_offline.qwen_tokenizer(qwen3=True)
    tokenizer = with_chat_template(qwen3, corpus_file("trl/qwen3.jinja").read_text(encoding="utf-8"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masker = BatchMasker(tokenizer)
        BatchMasker(tokenizer, per_turn=True)
        pickle.loads(pickle.dumps(masker))({"messages": conversations(2)})
    history = [w for w in caught if issubclass(w.category, HistoryMismatchWarning)]
    assert len(history) == 1 and "per_turn=True" in str(history[0].message)
    assert history[0].filename == __file__
