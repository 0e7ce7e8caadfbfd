"""The tests a patch writes around a region, as values: built from their parts, written as Jinja in one place, and
parsed back before use.

A region written for untrained messages too is tagged under a test of the message's role; a stop marker the next
message writes, under a test of the previous one's; a part that differs per setting, under a test of the switch. A
role or a switch value is text from a template or a caller: it is written as a Jinja string literal (escaped), never
pasted in, and every guard is parsed as a Jinja expression when it is made, so a guard that would not parse, or
that reads more than one expression, is a `PlanError` here rather than a broken template later.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import jinja2
from jinja2 import nodes

from ..errors import PlanError

__all__ = ["Guard"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Parsing only (never rendering): a guard is checked to be one expression.
_PARSER = jinja2.Environment()


def _literal(value: object) -> str:
    """`value` as a Jinja literal: strings escaped (JSON's escapes are Jinja's), booleans and None in Jinja's words.

    Example:
        >>> _literal('say "hi"'), _literal(False), _literal(["a", "b"])
        ('"say \\\\"hi\\\\""', 'false', '["a", "b"]')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise PlanError(f"{name!r} is not a variable name a test can read")
    return name


@functools.lru_cache(maxsize=4096)  # a patch builds the same few tests thousands of times
def _one_expression(source: str) -> bool:
    try:
        parsed = _PARSER.parse("{% if " + source + " %}{% endif %}")
    except jinja2.TemplateSyntaxError:
        return False
    return len(parsed.body) == 1 and isinstance(parsed.body[0], nodes.If)


@dataclass(frozen=True)
class Guard:
    """One Jinja test. Make it with the constructors below; combine with `&` and `|`; `str()` is its source.

    Example:
        >>> guard = Guard.role_in("message", ["assistant"]) & Guard.previous_role_in(["tool"])
        >>> str(guard)
        '(message.role in ["assistant"]) and (loop.previtem is defined and loop.previtem.role in ["tool"])'
        >>> Guard.of_template("x and")
        Traceback (most recent call last):
        ...
        templatekit.errors.PlanError: 'x and' is not one Jinja expression
    """

    source: str

    def __post_init__(self) -> None:
        if not _one_expression(self.source):
            raise PlanError(f"{self.source!r} is not one Jinja expression")

    def __str__(self) -> str:
        return self.source

    def names(self) -> list[nodes.Name]:
        """The variables the test reads."""
        return list(_PARSER.parse("{% if " + self.source + " %}{% endif %}").find_all(nodes.Name))

    def __and__(self, other: Guard) -> Guard:
        return Guard(f"({self.source}) and ({other.source})")

    def __or__(self, other: Guard) -> Guard:
        return Guard(f"({self.source}) or ({other.source})")

    @classmethod
    def of_template(cls, source: str) -> Guard:
        """A test the template itself writes (`enable_thinking is defined and enable_thinking is false`)."""
        return cls(source.strip())

    @classmethod
    def role_in(cls, subject: str, roles: Iterable[str]) -> Guard:
        """The message in variable `subject` has one of `roles`."""
        return cls(f"{_name(subject)}.role in {_literal(list(roles))}")

    @classmethod
    def role_not_in(cls, subject: str, roles: Iterable[str]) -> Guard:
        """The message in variable `subject` has none of `roles`."""
        return cls(f"{_name(subject)}.role not in {_literal(list(roles))}")

    @classmethod
    def last_of_roles(cls, subject: str, roles: Iterable[str]) -> Guard:
        """The message in `subject` is the conversation's last message of one of `roles`."""
        listed = _literal(list(roles))
        return cls(f'{_name(subject)} is sameas (messages | selectattr("role", "in", {listed}) | list | last)')

    @classmethod
    def previous_role_in(cls, roles: Iterable[str], wrote_content: bool = False) -> Guard:
        """The loop's previous message has one of `roles` (and, `wrote_content`, content of its own)."""
        content = " and loop.previtem.content" if wrote_content else ""
        return cls(f"loop.previtem is defined and loop.previtem.role in {_literal(list(roles))}{content}")

    @classmethod
    def next_role_in(cls, roles: Iterable[str]) -> Guard:
        """The loop's next message has one of `roles`."""
        return cls(f"loop.nextitem is defined and loop.nextitem.role in {_literal(list(roles))}")

    @classmethod
    def last_message_role_in(cls, roles: Iterable[str]) -> Guard:
        """The conversation's last message has one of `roles`."""
        return cls(f"messages and messages[-1].role in {_literal(list(roles))}")

    @classmethod
    def not_first(cls) -> Guard:
        """Not the loop's first iteration."""
        return cls("not loop.first")

    @classmethod
    def switch_is(cls, name: str, value: object) -> Guard:
        """The switch `name` is given, with `value`."""
        return cls(f"{_name(name)} is defined and {_name(name)} == {_literal(value)}")

    @classmethod
    def any_of(cls, guards: Iterable[Guard]) -> Guard:
        """True when any of `guards` is."""
        guards = list(guards)
        return guards[0] if len(guards) == 1 else cls(" or ".join(f"({guard.source})" for guard in guards))

    @classmethod
    def joined(cls, operands: Iterable[str]) -> Guard:
        """The text of the template's own operands (`reasoning_content`, ...) joined: true when any is non-empty."""
        return cls(" ~ ".join(f"({operand.strip()})" for operand in operands))
