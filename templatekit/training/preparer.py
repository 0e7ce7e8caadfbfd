"""One batch of conversations to token columns: the map function of every engine (`datasets`, Ray Data).

    batch ──split_rows──▶ output rows (one per conversation, or per trained turn)
          ──SpanRenderer.render──▶ text + trained character spans (a refused row raises, or is collected)
          ──BatchEncoder (on a worker thread, chunk by chunk)──▶ flat ids + masks ──truncate_rows──▶ columns

`build_preparer` is everything done before the first row (the tokenizer checked, the template picked and patched,
the limits made concrete); `prepare_dataset` maps its `Preparer` with `datasets`, `templatekit.BatchMasker` wraps
the same object for any engine.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ArgumentTypeError, DatasetRowError, InvalidArgumentError, TemplateKitError, TemplateLimitError
from .encoding import BatchEncoder, EncodedRows, render_and_encode
from .masks import labels_from_mask
from .options import Limits, Policy
from .per_turn import Unit, per_turn_columns, split_rows, trained_turns, warn_history
from .spans import SpanRenderer, row_kwargs
from .truncation import drop_message, truncate_rows
from .vision_inputs import refuse_processor

__all__ = ["KWARGS_COLUMN", "ON_ERROR", "OUTPUT_COLUMNS", "Preparer", "build_preparer", "resolve_template"]

OUTPUT_COLUMNS = ("input_ids", "attention_mask", "assistant_masks")
#: TRL's column of per-row `apply_chat_template` keywords (``{"enable_thinking": False}``), read when present.
KWARGS_COLUMN = "chat_template_kwargs"
#: What a refused row does: stop the work with its error, or become a row of the `rejected` column.
ON_ERROR = ("raise", "collect")

# A stream's dropped rows are reported where prepare_dataset reports the others (users filter on that logger).
logger = logging.getLogger("templatekit.training.dataset")


def resolve_template(tokenizer: Any, template: str | Mapping[str, str] | None) -> str:
    """The template text to prepare with: `template`, a name among the tokenizer's templates, or its default."""
    named = getattr(tokenizer, "chat_template", None)
    if template is None:
        template = named
    elif isinstance(template, str) and isinstance(named, Mapping) and template in named:
        template = named[template]
    if isinstance(template, Mapping):
        if "default" not in template:
            raise InvalidArgumentError(
                f"the tokenizer holds named chat templates {sorted(template)} but none is called 'default'; "
                "pass template=NAME or the template text"
            )
        template = template["default"]
    if not isinstance(template, str) or not template.strip():
        raise InvalidArgumentError("no chat template: the tokenizer has none and template= was not given")
    return template


@functools.lru_cache(maxsize=8)
def _cached_renderer(template: str, options: tuple[tuple[str, Any], ...]) -> SpanRenderer:
    return SpanRenderer(template, **dict(options))


def _build_renderer(template: str, options: dict[str, Any]) -> SpanRenderer:
    """A SpanRenderer, reused for the same template and policy: building one patches and verifies the template
    (far slower than rendering a batch), and prepare_dataset is often called once per split."""
    key = tuple(
        sorted((name, tuple(sorted(v.items())) if isinstance(v, Mapping) else v) for name, v in options.items())
    )
    try:
        hash(key)
    except TypeError:  # an unhashable option (e.g. a custom fallback object): build afresh
        return SpanRenderer(template, **options)
    return _cached_renderer(template, key)


def build_preparer(
    tokenizer: Any,
    policy: Policy,
    limits: Limits,
    *,
    template: str | Mapping[str, str] | None,
    caller: str,
    instruction_part: str | None = None,
    response_part: str | None = None,
    fallback: Any = None,
    template_kwargs: Mapping[str, Any] | None = None,
    warn_stacklevel: int | None = 4,
    **options: Any,
) -> Preparer:
    """What every engine does before the first row, in one place: the tokenizer checked, the template picked,
    the limits made concrete (they travel to worker processes), and the renderer built, so that a template it
    refuses fails here. `instruction_part`, `response_part`, `fallback` and `template_kwargs` say how spans are
    found (`SpanRenderer`'s); `options` are `Preparer`'s keywords. `warn_stacklevel` names the user's frame in
    the `HistoryMismatchWarning` (None: no warning, for a worker rebuilding what its driver already checked)."""
    refuse_processor(tokenizer)  # its images would be lost in TRL's trainer: the message points to VisionCollator
    if not getattr(tokenizer, "is_fast", False):
        raise ArgumentTypeError(f"{caller} needs a fast tokenizer (its char-to-token maps place the masks)")
    text = resolve_template(tokenizer, template)
    finding = dict(
        instruction_part=instruction_part,
        response_part=response_part,
        fallback=fallback,
        template_kwargs=dict(template_kwargs or {}),
    )
    preparer = Preparer(text, tokenizer, policy, limits.concrete(), finding, **options)
    _ = preparer.renderer
    if warn_stacklevel is not None and not preparer.per_turn and not policy.last_response_only:
        warn_history(text, policy.train_roles, preparer.limits.sandbox(), stacklevel=warn_stacklevel)
    return preparer


class Preparer:
    """The batched map function. Picklable for worker processes: the renderer is rebuilt in each one.

    Called with a batch (a dict of column lists) and the rows' numbers; returns the output columns as an Arrow
    table when it writes only new columns, else as a dict of lists. ``ids`` writes ``source_row`` (the row's
    number) on every row; ``on_error="collect"`` turns a refused row into an empty one at the end of the batch,
    with its ``source_row`` and its reason in ``rejected`` (None on the other rows), instead of raising.
    """

    def __init__(
        self,
        template: str,
        tokenizer: Any,
        policy: Policy,
        limits: Limits,
        finding: dict[str, Any],
        *,
        columns: tuple[str, str],
        keep: Sequence[str] = (),
        add_labels: bool = False,
        per_turn: bool = False,
        stream: bool = False,
        ids: bool = False,
        on_error: str = "raise",
    ):
        if on_error not in ON_ERROR:
            raise InvalidArgumentError(f"on_error must be one of {', '.join(map(repr, ON_ERROR))}, got {on_error!r}")
        self.template = template
        self.tokenizer = tokenizer
        self.policy, self.limits = policy, limits  # the renderer's, and max_length and truncation read here
        # SpanRenderer's keywords: how spans are found (`fallback`, explicit parts, `template_kwargs`) and the
        # value objects. A per-turn row's last message is its one trained turn.
        renderer_policy = replace(policy, last_response_only=True) if per_turn else policy
        self.renderer_options = {**finding, "policy": renderer_policy, "limits": limits}
        self.messages_field, self.tools_field = columns
        self.keep = list(keep)  # input columns carried into the output (rows may be dropped, so they are copied)
        self.stream = stream  # an IterableDataset: the dropped rows are logged here, on the first one
        # Arrow output when the result holds only the new columns (else the kept input columns are copied):
        # datasets then stores the columns without a per-token copy.
        self.arrow = not stream and not keep
        self.dropped = 0
        self.add_labels = add_labels
        self.per_turn = per_turn  # one row per trained turn
        self.ids = ids or per_turn
        self.on_error = on_error
        # What apply_chat_template hands every template: bos_token, eos_token, ... (templates concatenate them).
        self.render_kwargs = dict(tokenizer.special_tokens_map)
        self._renderer = self._encoder = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Rebuilt on first use: keeps pickling (and datasets' fingerprint) cheap.
        state["_renderer"] = state["_encoder"] = None
        return state

    @property
    def encoder(self) -> BatchEncoder:
        if self._encoder is None:
            self._encoder = BatchEncoder(self.tokenizer)
        return self._encoder

    @property
    def renderer(self):
        if self._renderer is None:
            self._renderer = _build_renderer(self.template, self.renderer_options)
        return self._renderer

    def _render(self, messages: Any, tools: Any, row: int, settings: Any = None) -> tuple[str, Sequence[Sequence[int]]]:
        # The renderer checks the conversation (roles, content, weights) and that every trained message is
        # rendered as its own turn; its errors name the message, and here they gain the row.
        try:
            # One patched template holds under every setting of the template's switches: the row's own keywords
            # (TRL's `chat_template_kwargs`) go to the render; a key Arrow filled with None was not set.
            own = row_kwargs(settings)
            return self.renderer.render(messages, tools=tools or None, **{**self.render_kwargs, **own})
        except TemplateLimitError as error:  # still a limit error, now naming the row
            raise TemplateLimitError(
                error.limit, f"row {row}: {error.detail}", source=error.source, line=error.line, column=error.column
            ) from None
        except TemplateKitError as error:
            index = getattr(error, "message", None)  # ConversationError: the message's index
            index = index if isinstance(index, int) else None
            raise DatasetRowError(getattr(error, "problem", str(error)), row=row, message=index) from error
        except Exception as error:  # anything else the template or the renderer raised, still with its row
            raise DatasetRowError(f"{type(error).__name__}: {error}", row=row) from error

    def _turns(self, messages: Any, tools: Any, row: int) -> list[int]:
        """The trained turns of one conversation (trained role, weight 1), each the last message of its row."""
        try:
            return trained_turns(messages, self.policy.train_roles, self.policy.last_response_only)
        except TemplateKitError:
            self._render(messages, tools, row)  # raises the renderer's own error, naming the row and message
            raise

    def encode(
        self, batch: Mapping[str, list], indices: Sequence[int]
    ) -> tuple[list[Unit], EncodedRows, list[int], dict[int, str]]:
        """The batch's output rows: their units, ids and masks (truncated), the positions of the units kept, and
        the refused rows (batch position: reason; with ``on_error="collect"``, else the first error is raised)."""
        refused: dict[int, str] = {}

        def attempt(position: int, work: Any, *args: Any) -> Any:
            """`work(*args)`; a row it refuses raises, or is noted with its reason (None: the row is left out)."""
            if position in refused:
                return None
            try:
                return work(*args)
            except TemplateKitError as error:
                if self.on_error == "raise":
                    raise
                refused[position] = str(error)
                return None

        def turns(position: int, messages: Any, tools: Any, row: int) -> list[int]:
            return attempt(position, self._turns, messages, tools, row) or []

        units = split_rows(
            batch[self.messages_field], batch.get(self.tools_field), indices, turns if self.per_turn else None
        )
        settings = batch.get(KWARGS_COLUMN) or [None] * len(indices)

        def render(position: int) -> tuple[str, Sequence[Sequence[int]]]:
            source, row, _, messages, tools = units[position]
            return attempt(source, self._render, messages, tools, row, settings[source]) or ("", ())

        # Chunks of the batch are tokenized on a worker thread (the Rust tokenizer releases the GIL) while the
        # next chunk is rendered here.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="templatekit-tokenize") as pool:
            encoded = render_and_encode(len(units), render, self.encoder, pool)
        if refused:  # every row of a refused conversation goes, those rendered before its error too
            lengths = np.diff(encoded.offsets).tolist()
            valid = [index for index, unit in enumerate(units) if unit[0] not in refused]
            encoded = encoded.take([(index, 0, lengths[index]) for index in valid])
            units = [units[index] for index in valid]
        encoded, kept = truncate_rows(encoded, self.limits.max_length, self.limits.truncation)
        if len(kept) < len(units) and self.stream:
            self._log_stream_drop(len(units) - len(kept))
        return units, encoded, kept, refused

    def __call__(self, batch: Mapping[str, list], indices: Sequence[int]) -> Any:
        units, encoded, kept, refused = self.encode(batch, indices)
        sources = [units[position][0] for position in kept]  # each output row's position in the batch
        extra: dict[str, list] = {}
        if self.per_turn:
            extra = per_turn_columns(units, kept)
        elif self.ids:
            extra = {"source_row": [units[position][1] for position in kept]}
        rejected = None
        if self.on_error == "collect":  # every row left out, empty, after the others, with its reason
            left_out = self._left_out(units, kept, refused, indices)
            extra = {name: values + [row[name] for row in left_out] for name, values in extra.items()}
            rejected = {"rejected": [None] * len(kept) + [row["rejected"] for row in left_out]}
            empty = EncodedRows.from_lists([[]] * len(left_out), [[]] * len(left_out))
            encoded = EncodedRows.concatenate([encoded, empty])
            sources += [row["position"] for row in left_out]
        if self.arrow:
            return arrow_table(encoded, self.add_labels, extra, rejected)
        rows = [encoded.row(index) for index in range(len(encoded))]
        input_ids, masks = [ids for ids, _ in rows], [mask for _, mask in rows]
        output = {
            **{column: [batch[column][position] for position in sources] for column in self.keep},
            **extra,
            "input_ids": input_ids,
            "attention_mask": [[1] * len(ids) for ids in input_ids],
            "assistant_masks": masks,
        }
        if self.add_labels:
            output["labels"] = [labels_from_mask(ids, mask) for ids, mask in zip(input_ids, masks)]
        return {**output, **(rejected or {})}

    def _left_out(
        self, units: Sequence[Unit], kept: Sequence[int], refused: Mapping[int, str], indices: Sequence[int]
    ) -> list[dict[str, Any]]:
        """The rows `on_error="collect"` reports: each conversation refused, then each row `max_length` dropped."""
        rows = [
            {"position": position, "source_row": indices[position], "turn_index": -1, "rejected": reason}
            for position, reason in sorted(refused.items())
        ]
        cut = drop_message(self.limits.max_length, self.limits.truncation, 1)
        for index in sorted(set(range(len(units))) - set(kept)):
            position, row, turn = units[index][:3]
            rows.append({"position": position, "source_row": row, "turn_index": turn, "rejected": f"row {row}: {cut}"})
        return rows

    def _log_stream_drop(self, count: int) -> None:
        """A stream's count is known only once it is read to the end: say so on the first drop, once."""
        self.dropped += count
        if self.dropped == count:
            logger.warning(
                "prepare_dataset: %s; this stream is read lazily, so the total is not known in advance",
                drop_message(self.limits.max_length, self.limits.truncation, None),
            )


#: Arrow types of the extra columns (the token columns are int32, the masks int8).
_EXTRA_TYPES = {"source_row": "int64", "turn_index": "int32", "rejected": "string"}


def arrow_table(
    encoded: EncodedRows, add_labels: bool, extra: Mapping[str, list], after: Mapping[str, list] | None = None
):
    """The batch's columns as one Arrow table (int32 ids, int8 masks), straight from the flat arrays: `extra`
    before the token columns, `after` after them.

    Converting Python lists token by token is most of what `datasets.map` costs on a tokenized batch.
    """
    import pyarrow as pa

    offsets = encoded.offsets.astype(np.int32)
    ids = encoded.ids.astype(np.int32)
    columns = {
        **{name: pa.array(values, type=pa.type_for_alias(_EXTRA_TYPES[name])) for name, values in extra.items()},
        "input_ids": pa.ListArray.from_arrays(offsets, ids),
        "attention_mask": pa.ListArray.from_arrays(offsets, np.ones(len(ids), dtype=np.int8)),
        "assistant_masks": pa.ListArray.from_arrays(offsets, encoded.mask),
    }
    if add_labels:
        columns["labels"] = pa.ListArray.from_arrays(offsets, np.where(encoded.mask == 1, ids, -100).astype(np.int32))
    for name, values in (after or {}).items():
        columns[name] = pa.array(values, type=pa.type_for_alias(_EXTRA_TYPES[name]))
    return pa.table(columns)
