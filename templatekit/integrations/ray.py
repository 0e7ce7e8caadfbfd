"""Ray Data: `prepare_dataset` on a cluster, with `BatchMasker` in an actor pool.

    ray Dataset (messages, ...) ──map_batches(MaskerActor: one BatchMasker per worker, kept)──▶ materialized once
        ├── rows prepared (source_row, input_ids, attention_mask, assistant_masks[, labels]) ──▶ `.dataset`
        └── rows left out (source_row, reason: refused by the template, or dropped by max_length) ──▶ `.rejected`

Ray is an optional extra (``pip install 'templatekit[ray]'``) and is imported only here, when this module is.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError
from ..training.batch import BatchMasker

__all__ = ["ROW_ID", "MaskerActor", "PreparedRayDataset", "prepare_ray_dataset"]

logger = logging.getLogger(__name__)

#: The column of row ids added when the dataset names none (`id_column`): what ``source_row`` then holds.
ROW_ID = "source_row"


class MaskerActor:
    """One Ray Data worker: the `BatchMasker` it is given, built on its first batch and kept for every other.

    A worker that reserved one CPU or less tokenizes on one thread (``TOKENIZERS_PARALLELISM=false`` unless set):
    the pool is the parallelism, and the tokenizer's own threads would contend with the other workers of its node
    (on 2 cores, 2 workers map 20,000 conversations about 15% faster so).
    """

    def __init__(self, masker: BatchMasker):
        import ray

        self.masker = masker
        if ray.get_runtime_context().get_assigned_resources().get("CPU", 0) <= 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def __call__(self, batch: Any) -> Any:
        return self.masker(batch)


@dataclass(frozen=True)
class PreparedRayDataset:
    """What `prepare_ray_dataset` returns.

    Attributes:
        dataset: the rows prepared: ``source_row`` (the input row's id), ``input_ids``, ``attention_mask``,
            ``assistant_masks`` (``labels``; ``turn_index`` with ``per_turn``). `write_parquet` it for TRL.
        rejected: the rows left out, one per row: ``source_row`` and ``reason`` (a conversation the template or
            the renderer refuses, named by row and message; or a row `max_length` drops).
        rejected_count: how many rows `rejected` holds.
    """

    dataset: Any
    rejected: Any
    rejected_count: int


def prepare_ray_dataset(
    ds: Any,
    tokenizer: Any,
    *,
    template: str | Mapping[str, str] | None = None,
    id_column: str | None = None,
    batch_size: int = 1000,
    compute: Any = None,
    num_cpus: float = 1,
    map_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> PreparedRayDataset:
    """`prepare_dataset` on a Ray Dataset: exact assistant masks in an actor pool, rows left out reported.

    Each worker of the actor pool builds its `BatchMasker` once (the tokenizer, from a path when given one, and
    the patched template) and keeps it for every batch. The mapped dataset is materialized once and its rows left
    out are counted where its blocks lie; only when there are any is it split into the rows prepared and the rows
    left out (`dataset` is otherwise the materialized blocks less their ``rejected`` column).

    Args:
        ds: a `ray.data.Dataset` with a column of conversations (``messages``; optionally ``tools`` and
            ``chat_template_kwargs``).
        tokenizer: a fast tokenizer, the path of a local folder holding one, or a `BatchMasker` built with
            ``on_error="collect"`` and an ``id_column`` (its options are then its own: pass no others).
        template: the chat template (default: the tokenizer's), as `prepare_dataset` takes it.
        id_column: an integer column naming each row (unique), written as ``source_row``. Without it one is
            added with Ray's ``monotonically_increasing_id()``: unique, not consecutive, and computed before the
            workers (a worker's batch run again keeps its ids); pass your own for ids that mean something.
        batch_size: rows per batch (each rendered and tokenized together).
        compute: the actor pool, a ``ray.data.ActorPoolStrategy``: ``ActorPoolStrategy(size=8)`` for a fixed
            pool; None: Ray's default, an autoscaling pool from one worker up. A pool that takes every CPU leaves
            none to read the input with: keep it below the cluster's CPUs when the input is read from files.
        num_cpus: CPUs each worker reserves.
        map_options: more keywords for ``Dataset.map_batches`` (``memory``, ``runtime_env``, ...). Ray Data's
            default for an actor pool holds: a worker that dies is started again and its batch is run again.
        options: `prepare_dataset`'s (``per_turn``, ``add_labels``, ``policy``, ``limits``, ``max_length``, ...).

    Returns:
        A `PreparedRayDataset`: `dataset` (the rows prepared), `rejected` (the rows left out, with their reason)
        and `rejected_count`; when that count is not zero it is also logged, as a warning, with the first reason.

    Example:
        >>> # import ray
        >>> # from templatekit.integrations.ray import prepare_ray_dataset
        >>> # ray.init(address="auto")
        >>> # ds = ray.data.read_parquet("s3://bucket/conversations/")
        >>> # prepared = prepare_ray_dataset(ds, "/models/qwen2.5-tokenizer", id_column="id", max_length=4096)
        >>> # prepared.dataset.write_parquet("s3://bucket/prepared/")   # datasets.load_dataset("parquet", ...)
        >>> # prepared.rejected.take(5)   # [{'source_row': 17, 'reason': 'row 17, message 2: ...'}, ...]
    """
    from ray.data.expressions import col, monotonically_increasing_id

    if isinstance(tokenizer, BatchMasker):
        masker = tokenizer
        if options or template is not None or id_column is not None:
            raise InvalidArgumentError("prepare_ray_dataset: a BatchMasker carries its own options; pass no others")
        if masker.id_column is None or masker.options["on_error"] != "collect":
            raise InvalidArgumentError(
                "prepare_ray_dataset needs a BatchMasker built with on_error='collect' and an id_column"
            )
    else:
        if id_column is None:
            id_column = ROW_ID
            ds = ds.with_column(ROW_ID, monotonically_increasing_id())
        masker = BatchMasker(tokenizer, template, id_column=id_column, on_error="collect", **options)
    mapped = ds.map_batches(
        MaskerActor,
        fn_constructor_args=(masker,),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=compute,
        num_cpus=num_cpus,
        **(map_options or {}),
    ).materialize()
    count = _count_rejected(mapped)
    rejected = mapped.filter(expr=col("rejected").is_not_null()).select_columns(["source_row", "rejected"])
    rejected = rejected.rename_columns({"rejected": "reason"})
    if not count:  # the usual case: no pass over the rows now; `rejected` stays a (lazy, empty) view of the blocks
        return PreparedRayDataset(mapped.drop_columns(["rejected"]), rejected, 0)
    prepared = mapped.filter(expr=col("rejected").is_null()).drop_columns(["rejected"])
    rejected = rejected.materialize()
    first = rejected.take(1)[0]
    logger.warning(
        "prepare_ray_dataset: %d row%s left out (see .rejected), the first: %s",
        count,
        "" if count == 1 else "s",
        first["reason"],
    )
    return PreparedRayDataset(prepared, rejected, count)


def _count_rejected(mapped: Any, here: str | None = None) -> int:
    """The rows of the materialized `mapped` that hold a reason, counted where the blocks lie: the blocks in this
    node's object store read in place (no copy, no task: on one machine, all of them), each other node's in one
    task there. `here` is this node's id (default: the driver's)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = mapped.to_arrow_refs()
    here = here or ray.get_runtime_context().get_node_id()
    located = ray.experimental.get_object_locations(refs)
    local, elsewhere = [], {}
    for ref in refs:
        nodes = located.get(ref, {}).get("node_ids") or [here]
        if here in nodes:
            local.append(ref)
        else:
            elsewhere.setdefault(nodes[0], []).append(ref)
    count = _count_blocks(local)
    task = _node_counter()
    tasks = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote(blocks)
        for node, blocks in elsewhere.items()
    ]
    return count + sum(ray.get(tasks))


def _count_blocks(refs: list) -> int:
    """The rows that hold a reason in the blocks `refs`, read where this process runs, one block at a time (a
    spilled block comes back alone; the ``rejected`` column is None on the rows prepared)."""
    import ray

    count = 0
    for ref in refs:
        block = ray.get(ref)
        count += block.num_rows - block.column("rejected").null_count if "rejected" in block.column_names else 0
    return count


@functools.cache
def _node_counter() -> Any:
    """The Ray task that counts the rejected rows of the blocks of one node, run on that node (made once: a remote
    function is exported each time it is defined)."""
    import ray

    # A list of refs (Ray passes them unresolved), fetched on that node, where they lie: read in place.
    return ray.remote(num_cpus=1)(_count_blocks)
