"""`prepare_dataset(per_turn=True)`: one row per trained turn, each turn rendered as the model generates it.

A template may render history unlike the turn being generated (Qwen3 drops the reasoning of earlier turns):
trained on the whole conversation, every turn but the last is then trained in a form the model never produces.
With `per_turn`, the row of turn k is `messages[:k + 1]` rendered as `apply_chat_template` renders it, with only
its last turn trained (`last_response_only`), so each turn is trained exactly as generated after its prompt.
Without it, `warn_history` warns when `templatekit.core.history` finds such a template.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ..core.history import history_mismatch
from ..core.sandbox import Limits, limit_scope
from ..errors import HistoryMismatchWarning
from .policies import check_messages

__all__ = ["count_turns", "per_turn_columns", "split_rows", "trained_turns", "warn_history"]

#: One output row to be: (position in the batch, dataset row, trained message or -1, messages, tools).
Unit = tuple[int, int, int, Any, Any]


def trained_turns(messages: Any, train_roles: Sequence[str], last_only: bool = False) -> list[int]:
    """The indices of the messages that get a row: trained role and weight 1 (the last one alone with `last_only`).

    Raises `ConversationError` for a malformed conversation, as the renderer does.

    Example:
        >>> messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        ...             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "weight": 0},
        ...             {"role": "user", "content": "e"}, {"role": "assistant", "content": "f"}]
        >>> trained_turns(messages, ("assistant",)), trained_turns(messages, ("assistant",), last_only=True)
        ([1, 5], [5])
    """
    _, weighted = check_messages(messages, tuple(train_roles))
    return weighted[-1:] if last_only else weighted


def split_rows(
    conversations: list, tools_column: list | None, indices: list[int], turns: Callable[..., list[int]] | None
) -> list[Unit]:
    """A batch's conversations as output rows: one each (`turns` None), or `messages[:k + 1]` for every k in
    `turns(position, messages, tools, row)`."""
    units: list[Unit] = []
    tools_column = tools_column or [None] * len(conversations)
    for position, (messages, tools, row) in enumerate(zip(conversations, tools_column, indices)):
        if turns is None:
            units.append((position, row, -1, messages, tools))
        else:
            units += [(position, row, k, messages[: k + 1], tools) for k in turns(position, messages, tools, row)]
    return units


def per_turn_columns(units: Sequence[Unit], kept: Sequence[int]) -> dict[str, list[int]]:
    """The `source_row` and `turn_index` of the kept rows."""
    return {"source_row": [units[i][1] for i in kept], "turn_index": [units[i][2] for i in kept]}


def count_turns(dataset: Any, messages_field: str, train_roles: Sequence[str], last_only: bool) -> int:
    """The rows `per_turn` makes from a `Dataset` before truncation (read column by column, a batch at a time)."""
    total = 0
    for batch in dataset.select_columns([messages_field]).iter(batch_size=1000):
        total += sum(len(trained_turns(messages, train_roles, last_only)) for messages in batch[messages_field])
    return total


@functools.lru_cache(maxsize=8)
def _history_note(template: str, train_roles: tuple[str, ...], limits: Limits) -> str | None:
    with limit_scope(limits):
        return history_mismatch(template, train_roles)


def warn_history(template: str, train_roles: tuple[str, ...], limits: Limits, stacklevel: int = 3) -> None:
    """Warn with a `HistoryMismatchWarning` when the template renders a past turn unlike the turn as generated.

    The default `stacklevel` names the caller of `prepare_dataset`; Python shows a warning once per place.
    """
    note = _history_note(template, tuple(train_roles), limits)
    if note:
        warnings.warn(
            f"prepare_dataset: {note.split('; ')[0]}; every turn but the last of each conversation is trained in a "
            "form the model does not generate: pass per_turn=True to train each turn as generated",
            HistoryMismatchWarning,
            stacklevel=stacklevel,
        )
