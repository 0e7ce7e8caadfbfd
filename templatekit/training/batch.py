"""`BatchMasker`: `prepare_dataset`'s batch function for any engine (Ray Data, pandas, Spark, plain Python).

    a batch (pyarrow Table, pandas DataFrame or dict of lists) ──the columns it reads, as Python lists──▶
    `Preparer` (the object `prepare_dataset` maps) ──▶ the same token columns, in the batch's own kind

It pickles small (the tokenizer or its folder's path, and the options) and builds what it needs once per worker,
on its first batch: the tokenizer (from the path) and the patched template.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

from ..errors import ArgumentTypeError, InvalidArgumentError
from .options import Limits, Policy, resolve
from .preparer import KWARGS_COLUMN, Preparer, build_preparer

__all__ = ["BatchMasker"]


class BatchMasker:
    """Token ids and exact assistant masks for a batch of conversations: `prepare_dataset`, one batch at a time.

    Args:
        tokenizer_or_path: a fast tokenizer, or the path of a local folder holding one (loaded with
            ``AutoTokenizer.from_pretrained(path, local_files_only=True)``; the masker then pickles as the path
            and each worker loads it once).
        template: the chat template, as `prepare_dataset` takes it (default: the tokenizer's).
        id_column: an integer column naming each row (written as ``source_row``, and named in errors); without
            it, rows are numbered by the ``indices`` given to the call, else by their position in the batch.
        on_error: ``"raise"`` (the default, as `prepare_dataset`): a refused row raises `DatasetRowError` (or
            `TemplateLimitError`). ``"collect"``: every row left out becomes an empty row at the end of the batch,
            with its ``source_row`` and its reason in a ``rejected`` column (None on the rows prepared): a
            conversation the renderer refuses, and a row `max_length` drops.
        policy, limits, the other keywords: `prepare_dataset`'s (``per_turn``, ``add_labels``,
            ``instruction_part``, ``response_part``, ``fallback``, ``template_kwargs``, ``messages_field``,
            ``tools_field``, and the fields of `Policy` and `Limits` by name).

    Called with a batch (a pyarrow Table, a pandas DataFrame, or a dict of lists, with a ``messages`` column
    and optionally ``tools`` and ``chat_template_kwargs``; ``indices`` optional, as `datasets.map` passes them),
    it returns the batch's kind with `prepare_dataset`'s columns: ``input_ids``, ``attention_mask``,
    ``assistant_masks`` (``labels``; ``source_row``, ``turn_index`` with ``per_turn``; ``source_row`` with an
    ``id_column``, ``source_row`` and ``rejected`` with ``on_error="collect"``).

    Example:
        >>> import templatekit
        >>> # masker = templatekit.BatchMasker("models/qwen2.5-tokenizer", max_length=2048, add_labels=True)
        >>> # masker({"messages": [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]})
        >>> # {'input_ids': [[151644, 8948, ...]], 'attention_mask': [[1, ...]], 'assistant_masks': [[0, ...]], ...}
        >>> # ray_dataset.map_batches(MaskerActor, fn_constructor_args=(masker,), batch_format="pyarrow", ...)
    """

    def __init__(
        self,
        tokenizer_or_path: Any,
        template: str | Mapping[str, str] | None = None,
        *,
        policy: Policy | None = None,
        limits: Limits | None = None,
        instruction_part: str | None = None,
        response_part: str | None = None,
        fallback: Any = None,
        template_kwargs: Mapping[str, Any] | None = None,
        per_turn: bool = False,
        add_labels: bool = False,
        messages_field: str = "messages",
        tools_field: str = "tools",
        id_column: str | None = None,
        on_error: str = "raise",
        **keywords: Any,
    ):
        policy, limits = resolve(policy, limits, keywords, caller="BatchMasker")
        self.source = os.fspath(tokenizer_or_path) if isinstance(tokenizer_or_path, os.PathLike) else tokenizer_or_path
        self.id_column = id_column
        self.columns = (messages_field, tools_field)
        ids = id_column is not None or on_error == "collect"
        self.options = dict(template=template, instruction_part=instruction_part, response_part=response_part)
        self.options.update(fallback=fallback, template_kwargs=dict(template_kwargs or {}), columns=self.columns)
        self.options.update(per_turn=per_turn, add_labels=add_labels, ids=ids, on_error=on_error)
        self.policy, self.limits = policy, limits.concrete()  # concrete: they travel to the workers
        # Built here too, so that a tokenizer or template it refuses fails before any worker starts.
        self._preparer: Preparer | None = self._build(warn_stacklevel=5)

    def __getstate__(self) -> dict[str, Any]:
        # The tokenizer (or its path) and the options travel; the preparer is rebuilt once in each worker.
        return {**self.__dict__, "_preparer": None}

    def _build(self, warn_stacklevel: int | None) -> Preparer:
        tokenizer = self.source
        if isinstance(tokenizer, (str, bytes)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        return build_preparer(
            tokenizer, self.policy, self.limits, caller="BatchMasker", warn_stacklevel=warn_stacklevel, **self.options
        )

    @property
    def preparer(self) -> Preparer:
        """The `Preparer` this masker calls (`prepare_dataset`'s map function), built on first use in a worker."""
        if self._preparer is None:
            self._preparer = self._build(warn_stacklevel=None)  # the driver already warned
        return self._preparer

    def __call__(self, batch: Any, indices: Sequence[int] | None = None) -> Any:
        columns, size, kind = self._read(batch)
        if indices is None:
            indices = columns.pop(self.id_column) if self.id_column is not None else range(size)
        table = self.preparer(columns, list(indices))
        if kind == "arrow":
            return table
        return table.to_pandas() if kind == "pandas" else table.to_pydict()

    def _read(self, batch: Any) -> tuple[dict[str, list], int, str]:
        """The columns the masker reads, as Python lists; the batch's row count; and its kind."""
        import pyarrow as pa

        wanted = [*self.columns, KWARGS_COLUMN] + ([self.id_column] if self.id_column is not None else [])
        kind = "arrow" if isinstance(batch, pa.Table) else "dict"
        pandas = sys.modules.get("pandas")  # a DataFrame can only come from a loaded pandas
        if pandas is not None and isinstance(batch, pandas.DataFrame):
            # Through Arrow: nested columns come out of pandas as numpy arrays, the renderer reads lists.
            names, kind = list(batch.columns), "pandas"
            batch = pa.Table.from_pandas(batch[[c for c in wanted if c in names]], preserve_index=False)
        if isinstance(batch, pa.Table):
            names, size = (names if kind == "pandas" else batch.column_names), batch.num_rows
            columns = {name: batch.column(name).to_pylist() for name in wanted if name in batch.column_names}
        elif isinstance(batch, Mapping):
            names = list(batch)
            columns = {name: list(batch[name]) for name in wanted if name in batch}
            size = len(columns.get(self.columns[0], ()))
        else:
            raise ArgumentTypeError(
                f"BatchMasker needs a pyarrow Table, a pandas DataFrame or a dict of lists, got {type(batch).__name__}"
            )
        for name in (self.columns[0], self.id_column):
            if name is not None and name not in columns:
                raise InvalidArgumentError(f"the batch has no column {name!r} (columns: {', '.join(map(str, names))})")
        if self.id_column is not None:
            wrong = [v for v in columns[self.id_column] if isinstance(v, bool) or not isinstance(v, Integral)]
            if wrong:
                raise ArgumentTypeError(f"the id column {self.id_column!r} must hold integers, got {wrong[0]!r}")
        return columns, size, kind
