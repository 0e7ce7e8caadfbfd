"""prepare_dataset: conversations in, `input_ids` + `attention_mask` + `assistant_masks` (+ `labels`) out.

One batch of rows at a time (inside `datasets.map`):

    each conversation ──SpanRenderer.render──▶ text + trained character spans
    all texts ──one batched fast-tokenizer call──▶ token ids + encodings (char ↔ token maps, in Rust)
    spans ──char_to_token at each span edge──▶ 0/1 token mask (the rule of `templatekit.training.masks`)

The texts are tokenized with ``add_special_tokens=False``, as `apply_chat_template(tokenize=True)` and TRL's
SFTTrainer do: the chat template writes BOS itself, and the tokenizer's post-processor would add a second one.

The result trains as is in TRL's `SFTTrainer` (checked against TRL 1.16): a dataset with an `input_ids`
column is taken as pre-tokenized, and `assistant_masks` is folded into `labels` (-100 outside the mask) whatever
`assistant_only_loss` says. Leave `SFTConfig(assistant_only_loss=False)` (the default): with `True`, TRL insists
on a conversational (`messages`) dataset and raises on a tokenized one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import ArgumentTypeError, InvalidArgumentError
from .fingerprint import map_fingerprint
from .options import Limits, Policy, resolve
from .per_turn import count_turns
from .preparer import OUTPUT_COLUMNS, build_preparer
from .truncation import TRUNCATION_MODES, drop_message, truncate_row

__all__ = ["TRUNCATION_MODES", "prepare_dataset", "truncate_row"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Switch datasets' progress bars off for one call when asked, and restore the user's setting."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    if not enabled and was_enabled:
        datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled and was_enabled:
            datasets_logging.enable_progress_bar()


def _output_features(dataset: Any, add_labels: bool, keep: list[str], per_turn: bool = False):
    """Arrow types for the new columns (int32 ids, int8 masks), plus the kept input columns when known."""
    from datasets import Features, Sequence, Value

    columns = {
        **({"source_row": Value("int64"), "turn_index": Value("int32")} if per_turn else {}),
        "input_ids": Sequence(Value("int32")),
        "attention_mask": Sequence(Value("int8")),
        "assistant_masks": Sequence(Value("int8")),
    }
    if add_labels:
        columns["labels"] = Sequence(Value("int32"))
    if keep:
        if dataset.features is None:
            return None  # a stream of unknown schema: let datasets infer
        columns = {**{name: dataset.features[name] for name in keep}, **columns}
    return Features(columns)


def prepare_dataset(
    dataset: Any,
    tokenizer: Any,
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    template: str | Mapping[str, str] | None = None,
    instruction_part: str | None = None,
    response_part: str | None = None,
    fallback: Any = None,
    template_kwargs: Mapping[str, Any] | None = None,
    per_turn: bool = False,
    add_labels: bool = False,
    batch_size: int = 1000,
    num_proc: int | None = None,
    messages_field: str = "messages",
    tools_field: str = "tools",
    remove_columns: bool = True,
    progress: bool = True,
    **keywords: Any,
) -> Any:
    """Tokenize a dataset of conversations with exact assistant masks, ready for TRL's `SFTTrainer`.

    Every conversation is rendered by `templatekit.training.spans.SpanRenderer` (generation tags when the template can
    be patched, the delimiter fallback otherwise), then the whole batch is tokenized in one fast-tokenizer
    call with ``add_special_tokens=False`` (the template already writes BOS). A token is in `assistant_masks`
    iff one of its characters lies in a trained span (the rule of `templatekit.training.masks.spans_to_token_mask`).

    Args:
        dataset: a `datasets.Dataset` or `datasets.IterableDataset` with a column of conversations (lists of
            ``{"role": ..., "content": ...}`` messages) and optionally a column of tool schemas.
        tokenizer: a fast (Rust-backed) tokenizer; its ``special_tokens_map`` is passed to the template, as
            ``apply_chat_template`` does.
        template: the chat template; default ``tokenizer.chat_template``. A dict of named templates (or a
            tokenizer holding one) uses ``"default"``; a string naming one of the tokenizer's templates uses it.
        policy: the loss policy (`Policy`: `train_roles`, `last_response_only`, `train_on_eot`, `train_reasoning`,
            `mask_out`), passed to `SpanRenderer` unchanged; its fields are keywords here too.
        limits: `Limits`: `max_length`, `truncation` (below), `max_steps`, `max_memory` and `timeout`; keywords here too.
        instruction_part, response_part, fallback: how the spans are found, passed to `SpanRenderer` (see there).
        template_kwargs: the template's switches every conversation is rendered with, as ``apply_chat_template``
            takes them (``{"enable_thinking": False}``); the tags are planned and verified for them. A switch that
            moves what the model generates (Qwen3's ``enable_thinking=False`` writes the empty think block into the
            prompt) must be given here, not left to the template's default. A ``chat_template_kwargs`` column
            (TRL's per-row keywords) adds each row's own, over these; its tags are planned for that row's setting.
        max_length: the most tokens a row may have (``None``: no limit). No row of the result is longer.
        truncation: what happens to a longer row: ``"right"`` (the default) keeps its first ``max_length``
            tokens; ``"left"`` keeps its last ones, so the last turn survives (the start, BOS and system prompt
            included, is cut); ``"drop"`` drops the row. Tokens are kept or cut whole, so no token straddles
            the cut (a character that byte-level BPE splits over several tokens may lose some of its pieces),
            and every kept token has the mask it has in the whole row. In every mode a row whose trained
            tokens were all cut is dropped; how many rows were dropped is logged once per call (a warning
            on the ``templatekit.training.dataset`` logger; for an `IterableDataset`, read lazily, on the
            first dropped row).
        per_turn: one row per trained turn k (weight 1; the last one alone with ``last_response_only``):
            ``apply_chat_template(messages[:k + 1])``'s text, training only turn k, as the model generates it (for
            templates that render history otherwise, e.g. Qwen3; without it they warn: `HistoryMismatchWarning`).
            Rows gain ``source_row`` and ``turn_index``; ``max_length``/``truncation`` act on each row as usual.
        add_labels: also write ``labels`` (``input_ids`` with -100 where the mask is 0).
        batch_size: rows rendered and tokenized together.
        num_proc: worker processes for a `Dataset` (each rebuilds the renderer); ignored for an
            `IterableDataset`, which maps lazily while it is read.
        messages_field, tools_field: the column names of the conversations and of the tool schemas.
        remove_columns: drop the input columns, keeping only the new ones.
        progress: show datasets' progress bar (a `Dataset` only; an `IterableDataset` maps lazily).
        max_steps, max_memory, timeout: the limits on the template (`templatekit.core.sandbox`, fields of `limits`):
            steps of work (default 50,000,000), bytes or `"512M"` (default 1 GiB), and seconds of wall clock (a
            backstop, default 60) for patching and verifying it, then again for each conversation rendered; None
            for no limit.
        keywords: the fields of `policy` and `limits` by name (``max_length=2048``); they override the objects'.

    Returns:
        A dataset of the same kind with ``input_ids``, ``attention_mask`` and ``assistant_masks`` (and ``labels``;
        and ``source_row``, ``turn_index`` with ``per_turn``).

    Raises:
        InvalidArgumentError (a ValueError): the dataset has no rows or no such column, no chat template is
            found, ``truncation`` is not one of ``"right"``, ``"left"``, ``"drop"``, or ``max_length`` is not a
            positive integer.
        ArgumentTypeError (a TypeError): the dataset is not a `datasets` dataset, the tokenizer is not a fast
            tokenizer (char-to-token maps are needed), or it is a vision processor (a pre-tokenized dataset
            trains without its images in TRL's SFTTrainer: use `templatekit.VisionCollator`).
        TemplateLimitError: the template goes past a limit (while it is patched, or rendering a row: the
            message names the row).
        DatasetRowError: a conversation the renderer refuses, named by row (and message): not a non-empty
            list of messages, a message without a string role, content neither a string nor a list of blocks,
            no content and no tool calls, a weight other than 0/1, a role or shape the template raises on, or
            a trained message the template drops or merges (so which text belongs to which message is unknown).

    Documented behaviour rather than errors: a role the template renders but that is not in ``train_roles``
    stays untrained; a row whose trained messages all carry ``weight: 0`` gets an all-zero mask (and is kept, cut
    or not); a row cut by ``max_length`` keeps whatever part of its mask survives, and is dropped when none does.

    Example:
        >>> from datasets import Dataset
        >>> # tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
        >>> # data = Dataset.from_dict({"messages": [[{"role": "user", "content": "Hi"},
        >>> #                                         {"role": "assistant", "content": "Hello!"}]]})
        >>> # prepared = prepare_dataset(data, tokenizer, add_labels=True)
        >>> # tokenizer.decode([t for t, m in zip(prepared[0]["input_ids"], prepared[0]["assistant_masks"]) if m])
        >>> # 'Hello!<|im_end|>'
        >>> # SFTTrainer(model=model, args=SFTConfig(...), train_dataset=prepared, processing_class=tokenizer)
    """
    policy, limits = resolve(policy, limits, keywords, caller="prepare_dataset")
    from datasets import Dataset, IterableDataset

    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise ArgumentTypeError(
            f"prepare_dataset needs a datasets.Dataset or IterableDataset, got {type(dataset).__name__}"
        )
    columns = dataset.column_names
    if isinstance(dataset, IterableDataset):
        first = next(iter(dataset), None)  # a stream's emptiness and columns are only known by reading
        if first is None:
            raise InvalidArgumentError("the dataset is empty: no conversation to prepare")
        columns = columns or list(first)
    elif len(dataset) == 0:
        raise InvalidArgumentError("the dataset is empty: no conversation to prepare")
    if messages_field not in columns:
        raise InvalidArgumentError(f"the dataset has no column {messages_field!r} (columns: {', '.join(columns)})")

    replaced = list(columns) if remove_columns else [c for c in columns if c in OUTPUT_COLUMNS or c == "labels"]
    keep = [c for c in columns if c not in replaced]
    stream = isinstance(dataset, IterableDataset)
    preparer = build_preparer(
        tokenizer,
        policy,
        limits,
        template=template,
        caller="prepare_dataset",
        instruction_part=instruction_part,
        response_part=response_part,
        fallback=fallback,
        template_kwargs=template_kwargs,
        columns=(messages_field, tools_field),
        keep=keep,
        add_labels=add_labels,
        per_turn=per_turn,
        stream=stream,
    )
    text, limits = preparer.template, preparer.limits  # the template chosen, the limits made concrete
    options = dict(
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        # Every input column: rows may be dropped, so the kept ones are copied by the preparer, row for row.
        remove_columns=list(columns),
        features=_output_features(dataset, add_labels, keep, per_turn),
    )
    if stream:
        return dataset.map(preparer, **options)
    written = dict(preparer.renderer_options, add_labels=add_labels, per_turn=per_turn, keep=keep)
    written.update(messages_field=messages_field, tools_field=tools_field)
    with _progress_bars(progress):
        prepared = dataset.map(
            preparer,
            num_proc=num_proc,
            new_fingerprint=map_fingerprint(dataset, text, written, tokenizer),
            desc="templatekit: rendering and tokenizing" if progress else None,
            **options,
        )
    # Counted here: worker processes each see only their shard. A per-turn row is one trained turn.
    expected = len(dataset)
    if per_turn:
        expected = count_turns(dataset, messages_field, policy.train_roles, policy.last_response_only)
    dropped = expected - len(prepared) if limits.max_length is not None else 0
    if dropped:
        logger.warning("prepare_dataset: %s", drop_message(limits.max_length, limits.truncation, dropped))
    return prepared
