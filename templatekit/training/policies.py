"""Loss policies: which of the trained turns, and which parts of them, the loss sees.

The renderer (`spans.py`) finds one span per rendered turn of a trained role, from generation tags or from
delimiters. This module checks the conversation, ties each span to the message it came from, and narrows
the spans by the `Policy` (a value object every training entry point takes, or builds from the keywords of
the same names: `templatekit.training.options.resolve`):

* `train_roles`: the speakers whose turns are trained (default: the assistant).
* a per-message `weight` key, as in OpenAI's fine-tuning format: `0` leaves that message untrained,
  `1` (or no key) trains it. A weight on a message of an untrained role changes nothing.
* `last_response_only`: only the last trained turn (after weights) is kept.
* `train_on_eot`: the end-of-turn marker of every trained turn (`"all"`), only of the last (`"last"`),
  or of none (`"none"`).
* `train_reasoning=False`: a turn's reasoning, from its start through the marker that closes the
  reasoning (and the whitespace after it), is left untrained; the answer stays trained.
* `mask_out`: strings (say `"</think>"`) cut out of trained spans wherever they occur inside them.

Conversation rules (`check_messages`), each raising `ConversationError` naming the message:
messages are a list of dicts with a string `role`; `content` is a string or a list of content blocks
(dicts); a message may lack content only when it carries `tool_calls`; `weight` is 0 or 1. Roles the
template does not know are passed to it as they are: most templates raise (reported with the message's
role), some drop the message silently. A trained message that the template does not render as a trained
turn (dropped, or merged into another) makes the renderer raise rather than train the wrong message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from ..errors import ConversationError, InvalidArgumentError

__all__ = [
    "ConversationError",
    "MessageSpan",
    "Policy",
    "apply_policy",
    "attribute",
    "check_messages",
    "cut_out",
]

TRAIN_ON_EOT = ("all", "last", "none")
# Roles every probe exercises; any other role is "unknown" to a template until it renders it.
COMMON_ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True)
class Policy:
    """What the loss trains, beyond "the turns of the trained roles".

    A new option is a field here and its rule in `apply`: `SpanRenderer`, `render_with_spans`, `prepare_dataset`
    and `audit_conversations` pass the object through whole, and take the field as a keyword too.

    Example:
        >>> Policy(train_on_eot="last").train_on_eot
        'last'
        >>> Policy(train_on_eot="sometimes")
        Traceback (most recent call last):
        ...
        templatekit.errors.InvalidArgumentError: train_on_eot must be one of ('all', 'last', 'none'), got 'sometimes'
    """

    train_roles: tuple[str, ...] = ("assistant",)
    last_response_only: bool = False
    train_on_eot: str = "all"
    train_reasoning: bool = True
    mask_out: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.train_roles, str):
            object.__setattr__(self, "train_roles", (self.train_roles,))
        if isinstance(self.mask_out, str):
            object.__setattr__(self, "mask_out", (self.mask_out,))
        object.__setattr__(self, "train_roles", tuple(self.train_roles))
        object.__setattr__(self, "mask_out", tuple(m for m in self.mask_out if m))
        if not self.train_roles or not all(isinstance(r, str) and r for r in self.train_roles):
            raise InvalidArgumentError(f"train_roles must be non-empty role names, got {self.train_roles!r}")
        if self.train_on_eot not in TRAIN_ON_EOT:
            raise InvalidArgumentError(f"train_on_eot must be one of {TRAIN_ON_EOT}, got {self.train_on_eot!r}")

    @property
    def narrows(self) -> bool:
        """Whether anything beyond the plain spans is asked for: an option other than the roles set otherwise than
        its default, whatever the option (weights are seen per conversation).

        Example:
            >>> Policy().narrows, Policy(train_roles=("judge",)).narrows, Policy(mask_out="</think>").narrows
            (False, False, True)
        """
        return any(getattr(self, f.name) != f.default for f in fields(self) if f.name != "train_roles")

    def apply(
        self,
        text: str,
        turns: Sequence[MessageSpan],
        weighted: Sequence[int] | None,
        *,
        eots: Sequence[str] = (),
        reasoning_close: str = "",
    ) -> list[tuple[int, int]]:
        """Narrow the attributed turns by weights and this policy; return the trained character spans.

        `weighted` lists the messages of weight 1; `None` keeps every turn (no weight asks otherwise, so the
        turns need not be tied to messages).

        `eots` are the template's end-of-turn markers (one is trained at the end of each turn) and
        `reasoning_close` the marker that ends reasoning inside a turn; both come from the renderer, which
        learned them from the template's probe renders.

        Example:
            >>> text = "U: hi\\nA: <think>hm</think>Yes<eot>\\nU: ok\\nA: Fine<eot>"
            >>> first, second = text.index("<think>"), text.index("Fine")
            >>> turns = [MessageSpan(1, first, text.index("\\nU: ok")), MessageSpan(3, second, len(text))]
            >>> spans = Policy(train_on_eot="last", train_reasoning=False).apply(
            ...     text, turns, [1, 3], eots=["<eot>"], reasoning_close="</think>")
            >>> [text[s:e] for s, e in spans]
            ['Yes', 'Fine<eot>']
        """
        keep = set(weighted) if weighted is not None else None
        chosen = [t for t in turns if keep is None or t.message in keep]
        if self.last_response_only:
            chosen = chosen[-1:]
        spans = []
        for number, turn in enumerate(chosen):
            start, end = turn.start, turn.end
            drop_eot = self.train_on_eot == "none" or (self.train_on_eot == "last" and number < len(chosen) - 1)
            if drop_eot:
                marker = next((m for m in eots if m and text.endswith(m, start, end)), "")
                end -= len(marker)
            if not self.train_reasoning and reasoning_close:
                closed = text.find(reasoning_close, start, end)
                if closed >= 0:
                    start = closed + len(reasoning_close)
                    while start < end and text[start].isspace():
                        start += 1
            if end > start:
                spans.append((start, end))
        for needle in self.mask_out:
            spans = cut_out(spans, text, needle)
        return spans


@dataclass(frozen=True)
class MessageSpan:
    """One trained span `[start, end)` and the index of the message it belongs to (-1: not tied to one)."""

    message: int
    start: int
    end: int


def _weight(message: Mapping, index: int) -> int:
    weight = message.get("weight", 1)
    if weight is None:
        return 1
    if isinstance(weight, bool) or (isinstance(weight, (int, float)) and weight in (0, 1)):
        return int(weight)
    raise ConversationError(f"weight must be 0 or 1, got {weight!r}", message=index)


def check_messages(messages: Sequence[Mapping], train_roles: Sequence[str]) -> tuple[list[int], list[int]]:
    """Validate a conversation; return the indices of its trained-role messages and those of weight 1.

    Example:
        >>> check_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0}],
        ...                ("assistant",))
        ([1], [])
    """
    # `type(...) is` first: this runs once per conversation in prepare_dataset, and ABC checks are slow.
    if type(messages) is not list and (isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence)):
        raise ConversationError(f"a conversation must be a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ConversationError("the conversation has no messages")
    roles, weighted = [], []
    for index, message in enumerate(messages):
        if type(message) is not dict and not isinstance(message, Mapping):
            raise ConversationError(f"a message must be a dict, got {type(message).__name__}", message=index)
        role = message.get("role")
        if type(role) is not str and not isinstance(role, str) or not role:
            raise ConversationError(f"a message needs a string 'role', got {role!r}", message=index)
        content = message.get("content")
        if content is None:
            if not message.get("tool_calls"):
                raise ConversationError(f"the {role} message has no content (and no tool_calls)", message=index)
        elif type(content) is not str and not isinstance(content, str):
            if not isinstance(content, list) or not all(isinstance(block, Mapping) for block in content):
                raise ConversationError(
                    f"content must be a string or a list of content blocks, got {type(content).__name__}",
                    message=index,
                )
        weight = _weight(message, index) if "weight" in message else 1
        if role in train_roles:
            roles.append(index)
            if weight:
                weighted.append(index)
    return roles, weighted


def unknown_roles(messages: Sequence[Mapping], train_roles: Sequence[str]) -> str:
    """A phrase naming the messages whose role the template was never probed with ("" when none)."""
    known = COMMON_ROLES | set(train_roles)
    odd = [f"message {i} has role {m['role']!r}" for i, m in enumerate(messages) if m.get("role") not in known]
    return "; ".join(odd)


def attribute(
    spans: Sequence[tuple[int, int]], messages: Sequence[Mapping], trained: Sequence[int]
) -> list[MessageSpan]:
    """Tie each rendered trained span to its message: the k-th span is the k-th trained-role message.

    Templates render messages in order and every verified trained turn is one span, so the order decides;
    a count that differs means the template dropped or merged trained messages, and guessing would train
    the wrong text, so it raises.

    Example:
        >>> attribute([(5, 9)], [{"role": "user"}, {"role": "assistant"}], [1])
        [MessageSpan(message=1, start=5, end=9)]
    """
    if len(spans) != len(trained):
        roles = sorted({messages[i]["role"] for i in trained}) or ["(none)"]
        raise ConversationError(
            f"the template rendered {len(spans)} trained turn(s) for {len(trained)} message(s) of role "
            f"{'/'.join(roles)}: it drops or merges some of them (for instance an empty message), so which "
            "text belongs to which message is unknown; remove those messages or give them content"
        )
    return [MessageSpan(index, start, end) for index, (start, end) in zip(trained, spans)]


def cut_out(spans: list[tuple[int, int]], text: str, needle: str) -> list[tuple[int, int]]:
    """Remove every occurrence of `needle` inside the spans from them.

    Example:
        >>> cut_out([(0, 11)], "a</think>b!", "</think>")
        [(0, 1), (9, 11)]
    """
    out = []
    for start, end in spans:
        cursor = start
        at = text.find(needle, start, end)
        while at >= 0:
            if at > cursor:
                out.append((cursor, at))
            cursor = at + len(needle)
            at = text.find(needle, cursor, end)
        if end > cursor:
            out.append((cursor, end))
    return out


def apply_policy(
    text: str,
    turns: Sequence[MessageSpan],
    weighted: Sequence[int] | None,
    policy: Policy,
    *,
    eots: Sequence[str] = (),
    reasoning_close: str = "",
) -> list[tuple[int, int]]:
    """`policy.apply(...)`: the trained character spans of the attributed turns (see `Policy.apply`).

    Example:
        >>> apply_policy("A: Yes<eot>", [MessageSpan(1, 3, 11)], [1], Policy(train_on_eot="none"), eots=["<eot>"])
        [(3, 6)]
    """
    return policy.apply(text, turns, weighted, eots=eots, reasoning_close=reasoning_close)
