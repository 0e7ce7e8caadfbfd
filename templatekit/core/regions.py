"""Where tags can go: cut points in the source, regions between them, and the edits they become.

A cut is a place in the source: before or after an output, inside literal text, at a `+`/`~` operator
(the output is split there), or inside a computed operand, which is then written twice, sliced where its
value turns from header to content. A region is a run of statements between two cuts in one body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from jinja2 import nodes

from ..errors import PlanError
from .analysis import Body, Emission, Flow, Item, Stmt, Unit
from .guards import Guard
from .positions import line_column

__all__ = ["Closes", "Cut", "Edit", "PlanError", "Region", "Side", "Split", "cut_at", "where"]


#: Where a cut puts a tag: before an item, after it, or inside it (the item is split there).
Side = Literal["before", "after", "split"]
#: Who writes a region: the turn itself (""), the next message's branch, the previous message's branch, or the code
#: after the message loop (`turn_regions.pieces_by_writer`).
Closes = Literal["", "next", "previous", "after"]


@dataclass(frozen=True)
class Edit:
    """Replace `source[start:end]` with `text`."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Split:
    """How one output is split for a tag: `source[start:end]` (an operator token, a string literal or a computed
    operand) becomes `left + " }}" + tag + "{{ " + right`."""

    start: int
    end: int
    left: str = ""
    right: str = ""
    # A computed operand sliced where its value turns from header to content: its source, and the header texts
    # the cut follows (one per render shape that opens the turn there; the longest the value holds applies).
    operand: str = ""
    headers: tuple[str, ...] = ()
    # For a cut at an operator after a computed operand: where that operand starts, and its value (all header in
    # this render); a slice of the same operand in another render learns that header too (`plan.merge_regions`).
    follows: tuple[int, str] | None = None

    def with_headers(self, headers: tuple[str, ...]) -> Split:
        """This slice, cut after whichever of `headers` (longest first) the operand's value holds.

        Example:
            >>> Split(0, 1, operand="c").with_headers(("<a>", "<a></a>")).right
            "c[((c.find('<a></a>') + 7) if '<a></a>' in c else (c.find('<a>') + 3)):]"
        """
        ordered = sorted(dict.fromkeys(headers), key=len, reverse=True)
        index = f"{self.operand}.find({_encode(ordered[-1], chr(39))}) + {len(ordered[-1])}"
        for header in ordered[-2::-1]:
            found = f"({self.operand}.find({_encode(header, chr(39))}) + {len(header)})"
            index = f"{found} if {_encode(header, chr(39))} in {self.operand} else ({index})"
        if len(ordered) > 1:
            index = f"({index})"
        return replace(
            self, left=f"{self.operand}[:{index}]", right=f"{self.operand}[{index}:]", headers=tuple(ordered)
        )


@dataclass
class Cut:
    """A place in the source where a tag can go: before/after `item`, or splitting it at `offset`.

    For a split expression, `operator` says how the output is split (see `Split`).
    """

    item: Item
    side: Side
    offset: int  # source offset of the cut
    operator: Split | None = None


@dataclass(frozen=True, eq=False)
class Region:
    """A run of items `body.items[first..last]` to wrap, with optional split cuts at either end."""

    body: Body
    first: int
    last: int
    start: Cut
    end: Cut
    targets: frozenset[str] = frozenset()
    guard: bool = False
    # Where the region writes a stop marker for the message before: "next" (the next message's branch
    # writes it, guarded by the previous message's role) or "after" (written after the loop, guarded by
    # the last message's role); "" for the turn's own outputs.
    closes: Closes = ""
    # A test under which the region is trained at all (blank text before an `if` that writes the stop marker:
    # generated only when the marker follows).
    when: Guard | None = None
    # The statement (and its branch body) where the turn began before this region, when it began deeper.
    opened_in: tuple[Stmt, Body] | None = None
    # Where the same items open the turn in other renders (split inside the first item): the region used
    # when `condition`, the test of `opened_in`'s branch, is false.
    alternative: Region | None = None
    condition: Guard | None = None
    # The statement (and branch) where the turn began, when it began in an earlier statement than the one
    # holding this region (reasoning written in an `if` before the content's own branch).
    began_in: tuple[Stmt, Body] | None = None
    # Regions nested inside this one that the alternative tags whole (a piece in an `if` the turn opens in).
    nested: tuple[Region, ...] = ()
    # The roles of the messages right before the turns this region was planned for (None: the turn comes first).
    after_roles: frozenset = frozenset()
    # A stop the next message writes that differs by that message's role: its role token (`<|user|>`).
    names_role: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.start.offset, self.end.offset)


def cut_at(flow: Flow, emission: Emission, offset_in_unit: int, side: Side) -> Cut:
    unit = flow.units[emission.uid]
    source = flow.parsed.source
    if offset_in_unit == 0 and side == "before":
        return Cut(unit, "before", unit.start)
    if offset_in_unit == len(emission.text) and side == "after":
        return Cut(unit, "after", unit.end)
    if unit.kind == "data":
        if source[unit.start : unit.end] != unit.node.data:
            raise PlanError(f"literal text at {where(flow, unit.start)} does not match its source")
        return Cut(unit, "split", unit.start + offset_in_unit)
    if unit.parts and emission.parts and all(isinstance(part, str) for part in emission.parts):
        operands = [
            (part.node, (part.operator_start, part.operator_end), value)
            for part, value in zip(unit.parts, emission.parts)
        ]
    else:
        operands = [(unit.node, None, emission.text)]
    boundary = 0
    for position, (node, operator, value) in enumerate(operands):
        if boundary == offset_in_unit and position > 0:
            op_start, op_end = operator
            while source[op_start - 1] in " \t":
                op_start -= 1
            while source[op_end] in " \t":
                op_end += 1
            previous, _, before = operands[position - 1]
            follows = (
                None if isinstance(previous, nodes.Const) else (_operand_span(flow, unit, position - 1)[0], before)
            )
            return Cut(unit, "split", op_start, Split(op_start, op_end, follows=follows))
        if boundary < offset_in_unit < boundary + len(value):
            cut = offset_in_unit - boundary
            literal = _literal_token(flow, node, value)
            if literal is not None:
                left, right = _encode(value[:cut], literal.value[0]), _encode(value[cut:], literal.value[0])
                return Cut(unit, "split", literal.start, Split(literal.start, literal.end, left, right))
            sliced = _slice_cut(flow, unit, position, node, value, cut, side)
            if sliced is not None:
                return sliced
            break
        boundary += len(value)
    raise PlanError(
        f"the output at {where(flow, unit.start)} mixes header and generated text "
        f"and cannot be split at character {offset_in_unit} of {emission.text!r}"
    )


def _slice_cut(flow: Flow, unit: Unit, position: int, node, value: str, cut: int, side: Side) -> Cut | None:
    """Split a computed operand (a variable, a macro call) where its value turns from header to content.

    The operand is written twice, sliced: `(x)[:i] }}{% generation %}{{ (x)[i:]`. At a turn's start, `i`
    is found in the value by the header text that precedes the cut, so that a prefix the template adds in
    some renders (a BOS token before the first message) does not move it; at a turn's end, `i` counts the
    trailing whitespace back from the end. Only operands that evaluate the same twice are sliced.
    """
    source = flow.parsed.source
    start, end = _operand_span(flow, unit, position)
    if not _evaluates_alike_twice(flow, node):
        return None
    operand = source[start:end]
    if not re.fullmatch(r"[\w.]+", operand) and not _parenthesized(operand):
        operand = "(" + operand + ")"
    if side == "before":
        return Cut(unit, "split", start, Split(start, end, operand=operand).with_headers((value[:cut],)))
    else:
        tail = value[cut:]
        if tail.strip():
            return None
        left, right = f"{operand}[:-{len(tail)}]", f"{operand}[-{len(tail)}:]"
    return Cut(unit, "split", start, Split(start, end, left, right))


def _operand_span(flow: Flow, unit: Unit, position: int) -> tuple[int, int]:
    """Where operand `position` of the output's chain (its whole expression, when it is no chain) is written."""
    source = flow.parsed.source
    if unit.parts:
        start = unit.open_tag.end if position == 0 else unit.parts[position].operator_end
        end = unit.parts[position + 1].operator_start if position + 1 < len(unit.parts) else unit.close_tag.start
    else:
        start, end = unit.open_tag.end, unit.close_tag.start
    while source[start] in " \t\n":
        start += 1
    while source[end - 1] in " \t\n":
        end -= 1
    return start, end


def _parenthesized(text: str) -> bool:
    """True when `text` is one parenthesized group, `(...)`."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for position, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if depth == 0 and position < len(text) - 1:
            return False
    return True


# Globals that give the same value on every call (strftime_now does not; cycler and joiner keep state).
_PURE_GLOBALS = {"raise_exception", "dict", "range", "namespace"}


def _evaluates_alike_twice(flow: Flow, node) -> bool:
    """True when evaluating `node` twice gives the same value and changes nothing.

    Filters and methods are pure under the immutable sandbox; a macro is when its body assigns no
    namespace attribute and calls nothing impure itself.
    """
    macros = {macro.name: macro for macro in flow.parsed.ast.find_all(nodes.Macro)}
    seen: set[str] = set()

    def pure(tree) -> bool:
        for call in [tree, *tree.find_all(nodes.Call)]:
            if not isinstance(call, nodes.Call) or not isinstance(call.node, nodes.Name):
                continue
            name = call.node.name
            if name in _PURE_GLOBALS or name in seen:
                continue
            macro = macros.get(name)
            if macro is None or any(True for _ in macro.find_all(nodes.NSRef)):
                return False
            seen.add(name)
            if not pure(macro):
                return False
        return True

    return pure(node)


def _literal_token(flow: Flow, node, value: str):
    """The single string token that spells `node`, when `node` is a plain string literal."""
    if not isinstance(node, nodes.Const) or not isinstance(node.value, str) or node.value != value:
        return None
    token = flow.parsed.tokens[flow.parsed.token_index_at(node.lineno.offset)]
    if token.type != "string" or len(token.value) < 2:
        return None
    return token


def _encode(text: str, quote: str) -> str:
    escaped = text.replace("\\", "\\\\").replace(quote, "\\" + quote)
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return quote + escaped + quote


def where(flow: Flow, offset: int) -> str:
    line, column = line_column(flow.parsed.source, offset)
    return f"line {line}, column {column}"
