"""A refusal in the user's words: what kind of problem, where in the template, at most three grouped reasons, and
what to do next.

The verifier's reasons are precise but written for the one render each comes from: "probe 'tool_call': message 2:
the header '<|im_start|>assistant\\n' is trained", repeated for every probe that shows it, with the probes' stand-in
texts (``tkassistcon1q``) in them. `explain` groups the reasons that say the same thing of different renders, writes
the stand-ins as what they stand for ("{assistant content 1}"), names the kind of problem and what a user can do
about it. Every reason is kept (`Refusal.every_reason`) for ``--explain``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .positions import line_column

__all__ = ["Refusal", "explain"]

#: The probes' stand-in texts (`probes._Builder`): content, reasoning, a tool's name or arguments of a message;
#: a tool call's id; a tool schema's description.
_SENTINEL = re.compile(r"tk([a-z0-9]{1,6}?)(con|rea|fun|too)(\d+)([a-h]?)q")
_CALL_ID = re.compile(r"tkid\d{2}\d+qq")
_SCHEMA = re.compile(r"tkschema\d+q")
_KINDS = {"con": "content", "rea": "reasoning", "fun": "tool name", "too": "tool arguments"}
_ROLES = {"assist": "assistant"}
#: Where a reason names its render: a leading "probe 'x': " or a trailing " (probe 'x')", and "; N in all".
_PROBE = re.compile(r"probe '[^']*'(?:: | and \d+ more: )|\s*\(probe '[^']*'\)|; \d+ in all")
_MESSAGE_FIRST = re.compile(r"^(with [^:]+: )?message \d+: ")
_MESSAGE = re.compile(r"\bmessage \d+(?=[:' ])")
_SETTING = re.compile(r"^with ([A-Za-z_][A-Za-z0-9_]*)=([^:]+): ")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.){4,})'")


@dataclass(frozen=True)
class Refusal:
    """Why a template was refused, for a person: `kind` (one clause), `where` (1-based line and column in the
    template, when a reason points at a place), `reasons` (grouped, each with the number of renders that show it),
    `advice` (what to do), and `every_reason` as the verifier wrote them."""

    kind: str
    where: tuple[int, int] | None
    reasons: tuple[tuple[str, int], ...]
    advice: str
    every_reason: tuple[str, ...]

    def lines(self, *, explain: bool = False, shown: int = 3) -> list[str]:
        """The reasons and the advice as lines: `shown` groups by default, every reason with `explain`.

        Example:
            >>> refusal = explain(["probe 'a': the header 'user' is trained", "probe 'b': the header 'user' is trained"])
            >>> refusal.lines()[0]
            "- the header 'user' is trained (in 2 renders)"
        """
        if explain:
            body = [f"- {reason}" for reason in self.every_reason]
        else:
            body = [
                f"- {text}" + (f" (in {count} renders)" if count > 1 else "") for text, count in self.reasons[:shown]
            ]
            hidden = len(self.every_reason) - sum(count for _, count in self.reasons[:shown])
            if hidden > 0:
                body[-1] += f"; {hidden} more: --explain lists them"
        return [*body, f"what to do: {self.advice}"]

    def headline(self) -> str:
        """The kind of problem, and where, in one clause."""
        return self.kind + (f" (template line {self.where[0]}, column {self.where[1]})" if self.where else "")


def explain(reasons: Sequence[str], template: str | None = None) -> Refusal:
    """Group `reasons` (a `PatchError`'s or a failed check's) and say what kind of problem they show and what to do.

    `template`, when given, is searched for the place a reason points at: the text it quotes, or the switch a
    setting names.

    Example:
        >>> refusal = explain(["probe 'single_turn': message 1: the header '<|user|>' is trained",
        ...                    "probe 'tool_call': message 3: the header '<|user|>' is trained"])
        >>> refusal.kind, refusal.reasons
        ('the tags would train text the model does not generate', (("the header '<|user|>' is trained", 2),))
    """
    grouped: dict[str, int] = {}
    for reason in reasons:
        text = _in_users_words(reason)
        grouped[text] = grouped.get(text, 0) + 1
    first = reasons[0] if reasons else ""
    kind, advice = _kind_and_advice(first)
    return Refusal(kind, _where(first, template), tuple(grouped.items()), advice, tuple(reasons))


def _in_users_words(reason: str) -> str:
    """The reason without the render it came from (the message's number and the probe's name), its stand-in
    texts written as what they stand for."""
    text = _MESSAGE_FIRST.sub(r"\1", _PROBE.sub("", reason))
    text = _MESSAGE.sub("a message", text)
    text = _SENTINEL.sub(_stand_in, text)
    text = _CALL_ID.sub("{tool call id}", text)
    return _SCHEMA.sub("{tool description}", text).strip()


def _stand_in(match: re.Match) -> str:
    role = _ROLES.get(match.group(1), match.group(1))
    return "{" + f"{role} {_KINDS[match.group(2)]}" + "}"


_FALLBACK = (
    "the delimiter fallback can still train it: `templatekit show SOURCE --fallback` shows what it would train, "
    "`prepare_dataset(..., fallback=True)` trains so"
)

#: The kinds of refusal, each by the words its reasons use, with what the user can do; the first that matches wins.
_KINDS_OF_REFUSAL: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("only quoted inside a prompt", "classifier or judge"),
        "not a chat template with an assistant turn: it quotes the messages inside a prompt (a judge or classifier)",
        "nothing here is generated as a chat turn; train such a model on its verdicts (the text after the prompt)",
    ),
    (
        ("no trained message is rendered", "no trained turn is rendered"),
        "no message of the trained roles is written by the template",
        "if the model's turns use another role name, pass --train-role ROLE (train_roles=...); otherwise the "
        "template has nothing to train",
    ),
    (
        ("removing the existing tags changes the rendering",),
        "the template's own generation tags carry whitespace control that its rendering depends on",
        "check the template as it is (`templatekit check SOURCE`), or move its tags by hand and patch again",
    ),
    (
        ("after the stop marker is trained",),
        "only whitespace after the stop marker would be trained, and --strict refuses that",
        "drop --strict (strict=False): the model never predicts past its stop token, so this trains nothing wrong",
    ),
    (
        ("cannot tell where",),
        "the prompt for a turn does not render what the conversation renders before that turn",
        _FALLBACK,
    ),
    (
        ("renders differently", "rendering differs", "changes the rendering", "differs from the original"),
        "no placement of the tags keeps the rendering byte-identical",
        _FALLBACK,
    ),
    (
        ("is trained",),
        "the tags would train text the model does not generate",
        _FALLBACK,
    ),
    (
        ("not trained", "untrained"),
        "the tags would leave text the model generates untrained",
        _FALLBACK,
    ),
)


def _kind_and_advice(reason: str) -> tuple[str, str]:
    setting = _SETTING.match(reason)
    for words, kind, advice in _KINDS_OF_REFUSAL:
        if any(word in reason for word in words):
            break
    else:
        kind, advice = "the tags cannot be placed and verified", _FALLBACK
    if setting:
        name, value = setting.groups()
        kind = f"under {name}={value}: {kind}"
        advice = (
            f"patch for that setting alone with --template-kwarg {name}={value.strip().lower()} "
            f"(template_kwargs={{'{name}': {value.strip()}}}) and train those rows with it; or " + advice
        )
    return kind, advice


def _where(reason: str, template: str | None) -> tuple[int, int] | None:
    """The first place in `template` that `reason` points at: the switch of a setting, else the longest text it
    quotes that the template writes literally."""
    if not template:
        return None
    setting = _SETTING.match(reason)
    if setting:
        found = re.search(rf"\b{re.escape(setting.group(1))}\b", template)
        return line_column(template, found.start()) if found else None
    quoted = [match.group(1) for match in _QUOTED.finditer(reason)]
    for text in sorted(quoted, key=len, reverse=True):
        piece = _SENTINEL.split(_unquoted(text))[0].strip()
        if len(piece) >= 4 and piece in template:
            return line_column(template, template.index(piece))
    return None


def _unquoted(text: str) -> str:
    """A quoted piece of a reason (written as Python writes a string) as the text it stands for."""
    try:
        return ast.literal_eval(f"'{text}'")
    except (ValueError, SyntaxError):
        return text
