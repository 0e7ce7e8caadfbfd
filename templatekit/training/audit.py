"""Audit a dataset against a chat template before training on it: what trains, and what the template drops.

`audit_conversations` renders every conversation with a `SpanRenderer` (the verified generation tags, or the
delimiter fallback where the template cannot be patched, as `prepare_dataset` does) and reports:

* how much each row trains: tokens with a tokenizer (the rule of `templatekit.training.masks`: a token is
  trained iff one of its characters lies in a trained span), characters without one (`AuditReport.unit`);
* rows that train nothing, and with `max_length` rows longer than that (and those whose trained tokens the cut
  would remove, by `truncation` as `prepare_dataset` applies it);
* message fields the template never renders (a `thinking` key where the template reads `reasoning_content`,
  tool calls a template ignores, `tools` it never prints). Found by rendering: each field's text is replaced by
  a unique sentinel in a copy of the conversation, and a sentinel missing from the render is a field lost.
  One extra render per field path per row, for the first `field_check_rows` rows that carry the path;
* roles neither common (system, user, assistant, tool) nor named in the template's role tests, and
  conversations the template rejects (its `raise_exception`, or an error inside it), with the first message.

Identifiers (`messages[].tool_calls[].id`, `messages[].tool_call_id`) that the template does not render are
reported apart, as metadata: most templates leave them out on purpose. A `type` key is structure, never checked;
`role` and templatekit's own `weight` are never checked either. Empty values (None, "", [], {}) are not lost.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError, TemplateKitError
from .masks import spans_to_token_mask
from .options import Limits, Policy, resolve
from .policies import COMMON_ROLES
from .roles import template_roles
from .spans import SpanRenderer, row_kwargs
from .truncation import truncate_row

__all__ = ["METADATA_FIELDS", "AuditReport", "audit_conversations", "template_roles"]

#: Field paths that are identifiers rather than text to learn: reported apart when the template leaves them out.
METADATA_FIELDS = frozenset({"messages[].tool_calls[].id", "messages[].tool_call_id", "messages[].id"})
_NOT_CHECKED = frozenset({"role", "weight"})  # the role is structure; weight is templatekit's own loss weight
_STRUCTURE_KEYS = frozenset({"type"})  # discriminators ("function", "text"): replacing them changes the shape
#: Keywords a row's chat_template_kwargs cannot set: the render takes them from the row or sets them itself.
_RENDER_ARGUMENTS = frozenset(
    {"messages", "tools", "documents", "add_generation_prompt", "continue_final_message", "template", "self"}
)


@dataclass
class AuditReport:
    """What `audit_conversations` found. Counts are rows unless named otherwise.

    `trained_min`, `trained_median`, `trained_max` count trained units per rendered row: tokens when `unit` is
    "tokens", characters when it is "characters" (no tokenizer). `rows_truncated` and
    `rows_truncated_losing_trained` are None without `max_length`. `fields_not_rendered` maps a field path
    (`messages[].thinking`, `messages[].tool_calls[].function.arguments`, `tools`) to the rows where it held a
    value that the render left out; `fields_checked` to the rows on which it was checked (at most
    `field_check_rows`), `fields_seen` to the rows that carry it. `unknown_roles` counts messages per role.
    """

    rows: int = 0
    unit: str = "characters"
    mode: str = ""  # "tags" or "delimiters": how the trained spans were found
    trained: list[int] = field(default_factory=list, repr=False)  # per rendered row
    rows_without_trained: int = 0
    max_length: int | None = None
    truncation: str = "right"
    rows_truncated: int | None = None
    rows_truncated_losing_trained: int | None = None
    fields_not_rendered: dict[str, int] = field(default_factory=dict)
    metadata_not_rendered: dict[str, int] = field(default_factory=dict)
    fields_checked: dict[str, int] = field(default_factory=dict)
    fields_seen: dict[str, int] = field(default_factory=dict)
    field_check_rows: int | None = None
    unknown_roles: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    first_rejection: str | None = None
    examples: dict[str, str] = field(default_factory=dict)  # a row name for each problem kind / field path
    notes: list[str] = field(default_factory=list)
    bad_rows: list[tuple[str, str]] = field(default_factory=list)  # (row name, what is wrong), every one, in order

    def bad(self, name: str, problem: str) -> None:
        """Record that row `name` fails the audit, and why (every such row is listed, not only the first)."""
        self.bad_rows.append((name, problem))

    @property
    def bad_row_count(self) -> int:
        """How many rows fail the audit (a row with several problems counts once)."""
        return len({name for name, _ in self.bad_rows})

    @property
    def trained_min(self) -> int | None:
        return min(self.trained) if self.trained else None

    @property
    def trained_median(self) -> float | None:
        return statistics.median(self.trained) if self.trained else None

    @property
    def trained_max(self) -> int | None:
        return max(self.trained) if self.trained else None

    @property
    def problems(self) -> list[str]:
        """One readable line per problem that fails the audit (exit code 1), then the informational ones."""
        lines = []
        unit = "tokens" if self.unit == "tokens" else "characters"
        if self.rows_without_trained:
            lines.append(
                f"{self.rows_without_trained} row(s) train nothing: no trained {unit} "
                f"(first: {self.examples['without_trained']})"
            )
        for path, count in sorted(self.fields_not_rendered.items()):
            lines.append(
                f"{path}: the template never renders it in {count} of {self.fields_checked[path]} row(s) checked "
                f"(first: {self.examples[path]})"
            )
        if self.rejected:
            lines.append(f"{self.rejected} conversation(s) rejected by the template (first: {self.first_rejection})")
        if self.rows_truncated_losing_trained:
            lines.append(
                f"{self.rows_truncated_losing_trained} row(s) longer than max_length={self.max_length} lose trained "
                f"tokens when cut (truncation={self.truncation!r}; first: {self.examples['truncated_losing']})"
            )
        for role, count in sorted(self.unknown_roles.items()):
            lines.append(
                f"role {role!r} ({count} message(s)) is neither a common role nor one the template tests for "
                f"(first: {self.examples['role:' + role]})"
            )
        for path, count in sorted(self.metadata_not_rendered.items()):
            lines.append(f"{path}: not rendered in {count} row(s) (an identifier; most templates leave it out)")
        return lines

    @property
    def exit_code(self) -> int:
        """1 when a row trains nothing, data is lost (a field not rendered, a rejected conversation, trained tokens
        cut by max_length); 0 otherwise."""
        failed = (
            self.rows_without_trained or self.fields_not_rendered or self.rejected or self.rows_truncated_losing_trained
        )
        return 1 if failed else 0

    def to_dict(self) -> dict[str, Any]:
        """The report as one JSON-ready document (the keys `templatekit audit --format json` prints)."""
        return {
            "rows": self.rows,
            "unit": self.unit,
            "mode": self.mode,
            "trained_tokens": {"min": self.trained_min, "median": self.trained_median, "max": self.trained_max},
            "rows_without_trained_tokens": self.rows_without_trained,
            "max_length": self.max_length,
            "truncation": self.truncation,
            "rows_truncated": self.rows_truncated,
            "rows_truncated_losing_trained_tokens": self.rows_truncated_losing_trained,
            "fields_not_rendered": dict(sorted(self.fields_not_rendered.items())),
            "metadata_not_rendered": dict(sorted(self.metadata_not_rendered.items())),
            "fields_checked": dict(sorted(self.fields_checked.items())),
            "fields_seen": dict(sorted(self.fields_seen.items())),
            "field_check_rows": self.field_check_rows,
            "unknown_roles": dict(sorted(self.unknown_roles.items())),
            "rejected_conversations": self.rejected,
            "first_rejection": self.first_rejection,
            "notes": list(self.notes),
            "problems": self.problems,
            "bad_rows": [{"row": name, "problem": problem} for name, problem in self.bad_rows],
            "bad_row_count": self.bad_row_count,
            "exit_code": self.exit_code,
        }


# ------------------------------------------------------------------------------------------------ field paths


def _has_value(value: Any) -> bool:
    return value not in (None, "", [], {}) and not isinstance(value, bool)


def _message_fields(message: Mapping) -> list[tuple[str, Callable[[Mapping, str], Mapping] | None]]:
    """The field paths one message carries with a value, each with a function that returns a copy of the message
    whose field holds the sentinel (None when the value has nothing to replace)."""
    paths = []
    for key, value in message.items():
        if key in _NOT_CHECKED or not _has_value(value):
            continue
        if key == "tool_calls" and isinstance(value, list) and all(isinstance(c, Mapping) for c in value):
            for sub in sorted({k for call in value for k in call}):
                if sub in _STRUCTURE_KEYS:
                    continue
                if sub == "function" and all(isinstance(c.get("function"), Mapping) for c in value):
                    for name in sorted({k for c in value for k in c["function"]}):
                        if any(_has_value(c["function"].get(name)) for c in value):
                            paths.append((f"messages[].tool_calls[].function.{name}", ("tool_calls", sub, name)))
                elif any(_has_value(c.get(sub)) for c in value):
                    paths.append((f"messages[].tool_calls[].{sub}", ("tool_calls", sub)))
        elif key == "content" and isinstance(value, list):
            for sub in sorted({k for block in value if isinstance(block, Mapping) for k in block} - _STRUCTURE_KEYS):
                if any(isinstance(b, Mapping) and _has_value(b.get(sub)) for b in value):
                    paths.append((f"messages[].content[].{sub}", ("content", sub)))
        else:
            paths.append((f"messages[].{key}", (key,)))
    return paths


def _fill(value: Any, sentinel: str) -> tuple[Any, bool]:
    """`value` with every string in it (keys under `type` excepted) replaced by `sentinel`; numbers too when it
    holds no string. Returns the new value and whether anything was replaced."""

    def walk(item: Any, numbers: bool) -> tuple[Any, bool]:
        if isinstance(item, str):
            return sentinel, True
        if numbers and isinstance(item, (int, float)) and not isinstance(item, bool):
            return sentinel, True
        if isinstance(item, Mapping):
            out, hit = {}, False
            for key, sub in item.items():
                if key in _STRUCTURE_KEYS:
                    out[key] = sub
                    continue
                out[key], got = walk(sub, numbers)
                hit = hit or got
            return out, hit
        if isinstance(item, list):
            pairs = [walk(sub, numbers) for sub in item]
            return [p[0] for p in pairs], any(p[1] for p in pairs)
        return item, False

    filled, hit = walk(value, False)
    return (filled, hit) if hit else walk(value, True)


def _with_sentinel(message: Mapping, where: tuple[str, ...], sentinel: str) -> tuple[dict, bool]:
    copy = dict(message)
    if where[0] == "tool_calls" and len(where) > 1:  # a list of calls (anything else is filled as one value)
        calls, hit = [], False
        for call in message["tool_calls"]:
            call = dict(call)
            if len(where) == 3:  # function.<name>
                function = dict(call["function"])
                if where[2] in function:
                    function[where[2]], got = _fill(function[where[2]], sentinel)
                    hit = hit or got
                call["function"] = function
            elif where[1] in call:
                call[where[1]], got = _fill(call[where[1]], sentinel)
                hit = hit or got
            calls.append(call)
        copy["tool_calls"] = calls
        return copy, hit
    if where[0] == "content" and len(where) == 2:
        blocks, hit = [], False
        for block in message["content"]:
            if isinstance(block, Mapping) and where[1] in block:
                block = dict(block)
                block[where[1]], got = _fill(block[where[1]], sentinel)
                hit = hit or got
            blocks.append(block)
        copy["content"] = blocks
        return copy, hit
    copy[where[0]], hit = _fill(message[where[0]], sentinel)
    return copy, hit


# ------------------------------------------------------------------------------------------------ the audit


def _trained_count(tokenizer: Any, text: str, spans: Sequence[Sequence[int]]) -> tuple[list[int] | None, list[int]]:
    """Token ids and the trained mask (with a tokenizer), or None and one 1 per trained character."""
    if tokenizer is None:
        covered: set[int] = set()
        for start, end in spans:
            covered.update(range(start, end))
        return None, [1] * len(covered)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), spans_to_token_mask(encoded["offset_mapping"], spans)


def audit_conversations(
    template: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    tokenizer: Any = None,
    policy: Policy | None = None,
    limits: Limits | None = None,
    render_kwargs: Mapping[str, Any] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    row_names: Sequence[str] | None = None,
    field_check_rows: int | None = 1000,
    messages_field: str = "messages",
    tools_field: str = "tools",
    on_row: Callable[[int], None] | None = None,
    **keywords: Any,
) -> AuditReport:
    """Render every conversation with `template` and report what trains and what the template drops.

    Args:
        template: the chat template (patched here as `patch` does; the delimiter fallback where it cannot be).
        rows: mappings with a list of messages under `messages_field` and optionally tool schemas under
            `tools_field` (one JSONL line each, or a `datasets` row).
        tokenizer: a fast tokenizer: counts trained tokens (the masks' rule) and gives the special tokens the
            template sees. Without one, trained characters are counted (`report.unit == "characters"`).
        policy: the loss policy (`Policy`: `train_roles`, `last_response_only`, …), as `prepare_dataset` takes it:
            what is counted as trained is what the policy trains. Its fields are keywords here too.
        limits: `Limits`, keywords here too: with `max_length`, count rows longer than that many tokens and those
            whose trained tokens the cut would remove, as `prepare_dataset` cuts by `truncation` (`"right"`,
            `"left"`, `"drop"`; needs a tokenizer); `max_steps`, `max_memory` and `timeout` bound patching and each render
            (`templatekit.core.sandbox`).
        render_kwargs: what the template is rendered with (`bos_token`, …); default the tokenizer's special
            tokens, or the probes' stand-ins without a tokenizer.
        template_kwargs: the template's switches (``{"enable_thinking": False}``), as `prepare_dataset` takes them;
            a row's own ``chat_template_kwargs`` (TRL's per-row keywords) are added over them.
        row_names: how problems name each row (default `row N`, counting from 0).
        field_check_rows: each field path is checked on at most this many rows (None: every row).
        on_row: called with the row index after each row (a progress bar).
        keywords: the fields of `policy` and `limits` by name (``train_roles=("assistant",)``, ``max_length=2048``).

    Raises `InvalidArgumentError` for `max_length` without a tokenizer, or a bad `truncation`; what
    `SpanRenderer` raises for a template neither tags nor delimiters can train (`NotTrainableError`).

    Example:
        >>> template = (
        ...     "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        ...     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        ... )
        >>> report = audit_conversations(template, [
        ...     {"messages": [{"role": "user", "content": "Hi"},
        ...                   {"role": "assistant", "content": "Hey", "thinking": "greet back"}]}])
        >>> report.trained, report.fields_not_rendered, report.exit_code  # "Hey<|im_end|>": 13 characters
        ([13], {'messages[].thinking': 1}, 1)
    """
    policy, limits = resolve(policy, limits, keywords, caller="audit_conversations")
    if limits.max_length is not None and tokenizer is None:
        raise InvalidArgumentError("max_length counts tokens: it needs a tokenizer")
    fixed = dict(template_kwargs or {})
    renderer = SpanRenderer(template, policy=policy, limits=limits, template_kwargs=fixed)
    if render_kwargs is None:
        if tokenizer is not None:
            render_kwargs = dict(tokenizer.special_tokens_map)
        else:
            from ..core.probes import SPECIAL_TOKENS

            render_kwargs = dict(SPECIAL_TOKENS)
    known = COMMON_ROLES | set(policy.train_roles) | template_roles(template)
    report = AuditReport(
        unit="tokens" if tokenizer is not None else "characters",
        mode=renderer.mode,
        max_length=limits.max_length,
        truncation=limits.truncation,
        rows_truncated=0 if limits.max_length is not None else None,
        rows_truncated_losing_trained=0 if limits.max_length is not None else None,
        field_check_rows=field_check_rows,
    )
    if renderer.mode == "delimiters":
        report.notes.append("the template cannot be patched: trained spans come from the delimiter fallback")
    if tokenizer is None:
        report.notes.append("no tokenizer: trained_tokens counts trained characters")
    roles: Counter[str] = Counter()
    for index, row in enumerate(rows):
        name = row_names[index] if row_names is not None else f"row {index}"
        report.rows += 1
        # One patched template holds under every setting: the row's own switches go to its render.
        own = row_kwargs(row.get("chat_template_kwargs") if isinstance(row, Mapping) else None)
        taken = sorted(_RENDER_ARGUMENTS.intersection(own))
        if taken:
            problem = (
                f"chat_template_kwargs sets {taken[0]!r}, which is not a template switch but part of the render "
                f"itself (the row's own {messages_field!r} and {tools_field!r} are what the template gets)"
            )
            report.rejected += 1
            report.first_rejection = report.first_rejection or f"{name}: {problem}"
            report.bad(name, f"rejected: {problem}")
            continue
        kwargs = {**render_kwargs, **own}
        _audit_row(renderer, row, name, report, roles, known, tokenizer, kwargs, messages_field, tools_field)
        if on_row is not None:
            on_row(index)
    report.unknown_roles = dict(roles)
    for path, seen in report.fields_seen.items():
        if report.fields_checked.get(path, 0) < seen:
            report.notes.append(f"{path}: checked on the first {report.fields_checked[path]} of {seen} rows with it")
    return report


def _audit_row(
    renderer: SpanRenderer,
    row: Mapping[str, Any],
    name: str,
    report: AuditReport,
    roles: Counter,
    known: set[str],
    tokenizer: Any,
    render_kwargs: Mapping[str, Any],
    messages_field: str,
    tools_field: str,
) -> None:
    messages = row.get(messages_field)
    tools = row.get(tools_field) or None
    if isinstance(messages, list):
        for message in messages:
            role = message.get("role") if isinstance(message, Mapping) else None
            if isinstance(role, str) and role not in known:
                roles[role] += 1
                report.examples.setdefault("role:" + role, name)
    try:
        text, spans = renderer.render(messages, tools=tools, **render_kwargs)
    except TemplateKitError as error:  # ConversationError, or a render past the limits
        report.rejected += 1
        if report.first_rejection is None:
            report.first_rejection = f"{name}: {error}"
        report.bad(name, f"rejected: {error}")
        return
    ids, mask = _trained_count(tokenizer, text, spans)
    trained = sum(mask)
    report.trained.append(trained)
    if not trained:
        report.rows_without_trained += 1
        report.examples.setdefault("without_trained", name)
        report.bad(name, f"trains nothing: no trained {report.unit}")
    if report.max_length is not None and ids is not None and len(ids) > report.max_length:
        report.rows_truncated += 1
        cut = truncate_row(ids, mask, report.max_length, report.truncation)
        if sum(cut[1] if cut is not None else ()) < trained:
            report.rows_truncated_losing_trained += 1
            report.examples.setdefault("truncated_losing", name)
            report.bad(name, f"longer than max_length={report.max_length}: the cut loses trained tokens")
    _check_fields(renderer, messages, tools, name, report, render_kwargs)


def _check_fields(
    renderer: SpanRenderer,
    messages: list,
    tools: Any,
    name: str,
    report: AuditReport,
    render_kwargs: Mapping[str, Any],
) -> None:
    """One render per field path the row carries: every occurrence of the path holds its own sentinel, and a
    sentinel the render leaves out is that field lost."""
    occurrences: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    for index, message in enumerate(messages):
        for path, where in _message_fields(message):
            occurrences.setdefault(path, []).append((index, where))
    if _has_value(tools):
        occurrences["tools"] = []
    nonce = "tkaudit7f3"
    found_numbers = re.compile(nonce + r"x(\d+)q")
    for path, places in occurrences.items():
        report.fields_seen[path] = report.fields_seen.get(path, 0) + 1
        cap = report.field_check_rows
        if cap is not None and report.fields_checked.get(path, 0) >= cap:
            continue
        copies, sentinels, new_tools = list(messages), set(), tools
        if path == "tools":
            new_tools, hit = _fill(tools, f"{nonce}x0q")
            if hit:
                sentinels.add("0")
        else:
            for number, (index, where) in enumerate(places):
                copies[index], hit = _with_sentinel(copies[index], where, f"{nonce}x{number}q")
                if hit:
                    sentinels.add(str(number))
        if not sentinels:
            continue
        try:
            text, _ = renderer.render(copies, tools=new_tools, **render_kwargs)
        except Exception:  # the sentinel changed how the template reads the field: this path stays unchecked
            continue
        report.fields_checked[path] = report.fields_checked.get(path, 0) + 1
        # One scan for every sentinel (a row of 100,000 messages has as many): linear in the render's length.
        if not sentinels <= set(found_numbers.findall(text.lower())):
            lost = report.metadata_not_rendered if path in METADATA_FIELDS else report.fields_not_rendered
            lost[path] = lost.get(path, 0) + 1
            report.examples.setdefault(path, name)
            if path not in METADATA_FIELDS:
                report.bad(name, f"{path}: the template never renders it")
