"""prepare_ray_dataset on Ray Data in local mode (2 CPUs), against prepare_dataset on the same rows.

One local Ray for the module (it takes seconds to start). 20,000 short conversations must come out identical,
row by row, to prepare_dataset's; rows the template refuses are counted and reported with their reason; a worker
killed in the middle of the run (Ray starts it again and runs its batch again) changes nothing: no row lost, none
twice; and the Parquet written loads with `datasets` and trains as is in TRL's SFTTrainer.
"""

from __future__ import annotations

import copy
import logging
import math

import _ray_faults
import datasets
import pyarrow as pa
import pytest
import ray
from _paths import corpus_file
from _training import conversations, sft_config, tiny_qwen2

from templatekit import BatchMasker, prepare_dataset
from templatekit.errors import InvalidArgumentError
from templatekit.integrations.ray import _count_rejected, prepare_ray_dataset

pytestmark = pytest.mark.slow

ROWS = 20_000
TOKEN_COLUMNS = ("input_ids", "attention_mask", "assistant_masks", "labels")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # The fault lives with the tests, which workers cannot import: it travels by value.
    ray.cloudpickle.register_pickle_by_value(_ray_faults)
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(_ray_faults)
    ray.shutdown()


@pytest.fixture(scope="module")
def qwen(qwen_tokenizer):
    tokenizer = copy.copy(qwen_tokenizer)
    tokenizer.chat_template = corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")
    return tokenizer


@pytest.fixture(scope="module")
def rows():
    return conversations(ROWS, seed=23)


@pytest.fixture(scope="module")
def expected(qwen, rows):
    """prepare_dataset's rows, by index."""
    prepared = prepare_dataset(datasets.Dataset.from_dict({"messages": rows}), qwen, add_labels=True, progress=False)
    return prepared.to_list()


def ray_rows(local_ray, rows, start: int = 0):
    return local_ray.data.from_items([{"id": start + i, "messages": m} for i, m in enumerate(rows)])


def by_source_row(dataset) -> dict[int, dict]:
    """The rows of a Ray dataset by ``source_row``; fails on a row that comes twice."""
    found: dict[int, dict] = {}
    for row in dataset.iter_rows():
        assert row["source_row"] not in found, f"row {row['source_row']} came out twice"
        found[row["source_row"]] = {
            name: list(value) if name in TOKEN_COLUMNS else value for name, value in row.items()
        }
    return found


@pytest.fixture(scope="module")
def prepared(local_ray, qwen, rows):
    compute = local_ray.data.ActorPoolStrategy(size=2)
    return prepare_ray_dataset(ray_rows(local_ray, rows), qwen, id_column="id", add_labels=True, compute=compute)


def test_twenty_thousand_rows_equal_prepare_dataset_row_by_row(prepared, expected):
    assert prepared.rejected_count == 0 and prepared.rejected.count() == 0
    assert prepared.rejected.columns() == ["source_row", "reason"]  # empty, with the columns it has when not
    got = by_source_row(prepared.dataset)
    assert sorted(got) == list(range(ROWS))
    for index, row in enumerate(expected):
        assert {name: got[index][name] for name in TOKEN_COLUMNS} == row, f"row {index}"
    assert prepared.dataset.columns() == ["source_row", *TOKEN_COLUMNS]


def test_parquet_output_loads_with_datasets_row_for_row(prepared, expected, tmp_path):
    prepared.dataset.write_parquet(str(tmp_path / "prepared"))
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "prepared" / "*.parquet"), split="train")
    assert loaded.column_names == ["source_row", *TOKEN_COLUMNS]
    assert len(loaded) == ROWS
    for row in loaded:
        assert {name: row[name] for name in TOKEN_COLUMNS} == expected[row["source_row"]]


@pytest.mark.e2e
def test_parquet_output_trains_as_is_in_trl(prepared, qwen, tmp_path):
    """A pre-tokenized dataset for TRL: SFTTrainer takes the Parquet as it is and trains on exactly its masks."""
    from trl import SFTTrainer

    prepared.dataset.limit(9).write_parquet(str(tmp_path / "prepared"))
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "prepared" / "*.parquet"), split="train")
    masks = {tuple(row["input_ids"]): row["assistant_masks"] for row in loaded}
    config = sft_config(tmp_path / "out", assistant_only_loss=False, per_device_train_batch_size=3)
    trainer = SFTTrainer(model=tiny_qwen2(qwen), args=config, train_dataset=loaded, processing_class=qwen)
    result = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(result.training_loss)
    seen = 0
    for batch in trainer.get_train_dataloader():
        for input_ids, attention, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            length = int(attention.sum())
            ids, labels = input_ids.tolist()[:length], labels.tolist()[:length]
            assert labels == [token if keep else -100 for token, keep in zip(ids, masks[tuple(ids)])]
            seen += 1
    assert seen == 9


def test_rejected_rows_are_counted_and_reported(local_ray, qwen, rows, expected, tmp_path, caplog):
    """Rows the template refuses go to `rejected` with their reason, counted and logged; the tokenizer travels as
    its folder's path, loaded once in each worker."""
    qwen.save_pretrained(tmp_path / "tokenizer")
    part = [list(messages) for messages in rows[:600]]
    part[5] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]
    part[250] = []
    part[599] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]
    with caplog.at_level(logging.WARNING, logger="templatekit.integrations.ray"):
        result = prepare_ray_dataset(
            ray_rows(local_ray, part), str(tmp_path / "tokenizer"), id_column="id", add_labels=True, batch_size=100
        )
    assert result.rejected_count == 3
    rejected = {row["source_row"]: row["reason"] for row in result.rejected.iter_rows()}
    assert sorted(rejected) == [5, 250, 599]
    assert rejected[5] == "row 5, message 1: the assistant message has no content (and no tool_calls)"
    assert rejected[250] == "row 250: the conversation has no messages"
    assert "row 599, message 1" in rejected[599] and "weight" in rejected[599]
    assert result.rejected.columns() == ["source_row", "reason"]
    assert "3 rows left out (see .rejected), the first: row " in caplog.text
    got = by_source_row(result.dataset)
    assert sorted(got) == sorted(set(range(600)) - {5, 250, 599})
    for index, row in got.items():
        assert {name: row[name] for name in TOKEN_COLUMNS} == expected[index], f"row {index}"


def test_rows_a_cut_drops_are_reported_with_per_turn(local_ray, qwen, rows):
    part = rows[:300]
    options = dict(per_turn=True, max_length=40)
    reference = prepare_dataset(datasets.Dataset.from_dict({"messages": part}), qwen, progress=False, **options)
    result = prepare_ray_dataset(ray_rows(local_ray, part), qwen, id_column="id", **options)
    got = sorted(result.dataset.iter_rows(), key=lambda row: (row["source_row"], row["turn_index"]))
    assert [(row["source_row"], row["turn_index"], list(row["input_ids"])) for row in got] == [
        (row["source_row"], row["turn_index"], row["input_ids"]) for row in reference
    ]
    every_turn = len(
        prepare_dataset(datasets.Dataset.from_dict({"messages": part}), qwen, progress=False, per_turn=True)
    )
    assert result.rejected_count == every_turn - len(reference) > 0  # each turn the cut dropped, reported
    assert all("max_length=40" in row["reason"] for row in result.rejected.iter_rows())


def test_a_worker_killed_mid_run_loses_no_row_and_repeats_none(local_ray, qwen, rows, expected, tmp_path):
    count = 4_000
    marker = tmp_path / "died"
    masker = _ray_faults.DyingMasker(
        qwen, id_column="id", on_error="collect", add_labels=True, marker=str(marker), die_on=3
    )
    result = prepare_ray_dataset(
        ray_rows(local_ray, rows[:count]), masker, batch_size=200, compute=local_ray.data.ActorPoolStrategy(size=2)
    )
    assert marker.exists()  # a worker did die, on its third batch of ten or so
    assert result.rejected_count == 0
    got = by_source_row(result.dataset)  # fails on a row that came out twice
    assert sorted(got) == list(range(count))  # and none is missing
    for index, row in got.items():
        assert {name: row[name] for name in TOKEN_COLUMNS} == expected[index], f"row {index}"


def test_a_masker_passed_in_must_collect_and_name_rows(local_ray, qwen):
    data = ray_rows(local_ray, conversations(4))
    with pytest.raises(InvalidArgumentError, match="on_error='collect' and an id_column"):
        prepare_ray_dataset(data, BatchMasker(qwen))
    with pytest.raises(InvalidArgumentError, match="carries its own options"):
        prepare_ray_dataset(data, BatchMasker(qwen, id_column="id", on_error="collect"), max_length=10)


def test_without_an_id_column_rows_get_unique_ids(local_ray, qwen, rows, expected):
    data = local_ray.data.from_items([{"messages": m} for m in rows[:500]])
    result = prepare_ray_dataset(data, qwen, add_labels=True)
    got = list(result.dataset.iter_rows())
    assert len({row["source_row"] for row in got}) == len(got) == 500
    # The rows themselves are prepare_dataset's, in some order.
    key = sorted(tuple(row["input_ids"]) for row in got)
    assert key == sorted(tuple(row["input_ids"]) for row in expected[:500])


def test_rows_left_out_are_counted_where_their_blocks_lie(local_ray):
    """The count reads the blocks in this node's object store in place, and sends one task to each node holding
    others (here: this node seen as another, through `here`); blocks without rows or without the column count 0."""
    table = pa.table({"source_row": [1, 2, 3, 4, 5], "rejected": [None, "row 2: x", None, "row 4: y", "row 5: z"]})
    blocks = [table.slice(0, 2), table.slice(2, 3), table.slice(5, 0), pa.table({"source_row": [6]})]
    mapped = local_ray.data.from_arrow(blocks).materialize()
    assert _count_rejected(mapped) == 3
    assert _count_rejected(mapped, here="0" * 56) == 3
