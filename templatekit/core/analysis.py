"""Where does a template emit text at the top level, and what did each emission produce for a probe?

`build_flow` reads the AST into bodies of items: every child of an output statement is a `Unit` (a piece
of literal text or one `{{ ... }}`), every other statement an opaque or compound `Stmt`. Only the top-level
output flow is walked: text produced inside macros, `{% set %}` blocks, filters and call blocks reaches the
output through a unit at its call site, which is where generation tags must go.

`trace` renders a probe with an instrumented copy of the AST. Each unit is wrapped in an identity call that
records what it emitted, the message it emitted for (the value of the innermost enclosing loop target that
is one of the probe's messages) and, for `a + b + c` chains, each operand's value. Concatenated, the
records are the rendered text, so every output character is traced back to the unit that wrote it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes

from .sandbox import attach_source, check_printable
from .syntax import ParsedTemplate, RawToken, make_environment, node_start, probe_clock

COMPOUND = (nodes.If, nodes.For, nodes.With, nodes.Scope, nodes.ScopedEvalContextModifier)
OPENERS = {"if", "for", "macro", "call", "filter", "with", "block", "autoescape", "generation", "set", "raw"}


@dataclass(eq=False)
class Body:
    """A list of statements rendered in sequence; `parent` is the statement owning it (None at the root)."""

    items: list = field(default_factory=list)
    parent: Stmt | None = None

    def ancestors(self) -> list[Body]:
        """This body and every enclosing body, innermost first."""
        chain, body = [], self
        while body is not None:
            chain.append(body)
            body = body.parent.body if body.parent is not None else None
        return chain


@dataclass(eq=False)
class Item:
    """Something at `body.items[index]`, spanning `source[start:end]`."""

    body: Body
    index: int
    start: int
    end: int


@dataclass(frozen=True)
class Operand:
    """One operand of an `a + b ~ c` chain, and the operator token before it (-1 for the first operand)."""

    node: nodes.Node
    operator_start: int
    operator_end: int


@dataclass(eq=False)
class Unit(Item):
    """One emitted piece: literal text (`kind == "data"`) or an expression (`kind == "expr"`).

    For an expression, `start:end` covers the whole `{{ ... }}` tag. `parts` lists a string chain's operands.
    """

    uid: int = 0
    kind: str = "expr"
    node: nodes.Node | None = None
    loop_targets: tuple[str, ...] = ()  # names that may hold the message written for: loop targets first
    parts: list[Operand] = field(default_factory=list)
    open_tag: RawToken | None = None
    close_tag: RawToken | None = None


@dataclass(eq=False)
class Stmt(Item):
    """A statement; compound ones (if/for/with) own `bodies`, whose output is part of the top-level flow."""

    node: nodes.Node | None = None
    bodies: list[Body] = field(default_factory=list)


@dataclass
class Flow:
    """The top-level output flow of a template."""

    parsed: ParsedTemplate
    root: Body
    units: list[Unit]


def _closing_tags(tokens: list[RawToken]) -> dict[int, int]:
    """Map the offset of each opening block keyword to the `tag_end` of its closing tag."""
    closes: dict[int, int] = {}
    stack: list[tuple[str, int]] = []
    index = 0
    while index < len(tokens):
        if tokens[index].type != "block_begin":
            index += 1
            continue
        end = index
        while tokens[end].type != "block_end":
            end += 1
        inner = [token for token in tokens[index + 1 : end] if token.type != "whitespace"]
        keyword = inner[0].value if inner and inner[0].type == "name" else ""
        is_block_set = keyword == "set" and not any(t.type == "operator" and t.value == "=" for t in inner)
        if keyword in OPENERS and (keyword != "set" or is_block_set):
            stack.append((keyword, inner[0].start))
        elif keyword.startswith("end") and stack and stack[-1][0] == keyword[3:]:
            closes[stack.pop()[1]] = tokens[end].tag_end
        index = end + 1
    return closes


def _chain(node: nodes.Node) -> list[nodes.Node]:
    """Operands of a left-associative `+` chain or of a `~` concatenation."""
    if isinstance(node, nodes.Add):
        return _chain(node.left) + [node.right]
    if isinstance(node, nodes.Concat):
        return list(node.nodes)
    return [node]


class _FlowBuilder:
    def __init__(self, parsed: ParsedTemplate):
        self.parsed = parsed
        self.tokens = parsed.tokens
        self.closes = _closing_tags(parsed.tokens)
        self.units: list[Unit] = []
        # Variables a message may be held in besides loop targets (`{% set msg = messages[i] %}` in a
        # `for i in range(...)` loop); tried after the loop targets.
        self.aliases = tuple(
            dict.fromkeys(
                assign.target.name
                for assign in parsed.ast.find_all(nodes.Assign)
                if isinstance(assign.target, nodes.Name)
            )
        )

    def build(self) -> Flow:
        root = Body()
        self._fill(root, self.parsed.ast.body, ())
        return Flow(self.parsed, root, self.units)

    def _fill(self, body: Body, statements: list[nodes.Node], targets: tuple[str, ...]) -> None:
        for statement in statements:
            if isinstance(statement, nodes.Output):
                for child in statement.nodes:
                    self._add_unit(body, child, targets)
            else:
                self._add_stmt(body, statement, targets)

    def _add_unit(self, body: Body, child: nodes.Node, targets: tuple[str, ...]) -> None:
        uid = len(self.units)
        if isinstance(child, nodes.TemplateData):
            start = child.lineno.offset
            unit = Unit(body, len(body.items), start, start + len(child.data), uid=uid, kind="data", node=child)
        else:
            first = self.parsed.token_index_at(node_start(child))
            open_index = first
            while self.tokens[open_index].type != "variable_begin":
                open_index -= 1
            close_index, depth = open_index + 1, 0
            while self.tokens[close_index].type != "variable_end" or depth:
                token = self.tokens[close_index]
                depth += token.value in "([{" if token.type == "operator" else 0
                depth -= token.value in ")]}" if token.type == "operator" else 0
                close_index += 1
            open_tag, close_tag = self.tokens[open_index], self.tokens[close_index]
            unit = Unit(
                body,
                len(body.items),
                open_tag.start,
                close_tag.tag_end,
                uid=uid,
                kind="expr",
                node=child,
                loop_targets=targets,
                open_tag=open_tag,
                close_tag=close_tag,
            )
            unit.parts = self._parts(child, open_index)
        unit.loop_targets = targets + tuple(name for name in self.aliases if name not in targets)
        body.items.append(unit)
        self.units.append(unit)

    def _parts(self, expression: nodes.Node, open_index: int) -> list[Operand]:
        operands = _chain(expression)
        if len(operands) < 2:
            return []
        parts = [Operand(operands[0], -1, -1)]
        for operand in operands[1:]:
            index = self.parsed.token_index_at(node_start(operand)) - 1
            while self.tokens[index].type == "whitespace" or self.tokens[index].value == "(":
                index -= 1
            operator = self.tokens[index]
            depth = sum(
                (t.value in "([{") - (t.value in ")]}")
                for t in self.tokens[open_index + 1 : index]
                if t.type == "operator"
            )
            if operator.value not in ("+", "~") or depth:
                return []
            parts.append(Operand(operand, operator.start, operator.end))
        return parts

    def _add_stmt(self, body: Body, statement: nodes.Node, targets: tuple[str, ...]) -> None:
        keyword_offset = statement.lineno.offset
        index = self.parsed.token_index_at(keyword_offset)
        while self.tokens[index].type != "block_begin":
            index -= 1
        start = self.tokens[index].start
        end = self.closes.get(keyword_offset)
        if end is None:
            end_index = index
            while self.tokens[end_index].type != "block_end":
                end_index += 1
            end = self.tokens[end_index].tag_end
        stmt = Stmt(body, len(body.items), start, end, node=statement)
        body.items.append(stmt)
        if not isinstance(statement, COMPOUND):
            return
        inner_targets = targets
        if isinstance(statement, nodes.For) and isinstance(statement.target, nodes.Name):
            inner_targets = (statement.target.name, *targets)
        for statements, scope in _sub_bodies(statement, inner_targets, targets):
            sub = Body(parent=stmt)
            stmt.bodies.append(sub)
            self._fill(sub, statements, scope)


def _sub_bodies(statement: nodes.Node, inner: tuple[str, ...], outer: tuple[str, ...]):
    if isinstance(statement, nodes.If):
        yield statement.body, inner
        for branch in statement.elif_:
            yield branch.body, inner
        yield statement.else_, inner
    elif isinstance(statement, nodes.For):
        yield statement.body, inner
        yield statement.else_, outer
    else:
        yield statement.body, inner


def build_flow(parsed: ParsedTemplate) -> Flow:
    """Read the top-level output flow of a parsed template.

    Example:
        >>> from templatekit.core.syntax import parse_template
        >>> flow = build_flow(parse_template("{% for m in messages %}[{{ m.role + ':' + m.content }}]{% endfor %}"))
        >>> [unit.kind for unit in flow.units], len(flow.units[1].parts)
        (['data', 'expr', 'data'], 3)
    """
    return _FlowBuilder(parsed).build()


# --- tracing -----------------------------------------------------------------------------------------


@dataclass
class Emission:
    """What one unit wrote during a render: `text` at `start` in the output, for message `message`."""

    uid: int
    text: str
    start: int
    message: int | None
    parts: list[str] | None = None
    target: str | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.text)


class _Recorder:
    def __init__(self, messages: list[dict]):
        self.ids = {id(message): index for index, message in enumerate(messages)}
        self.emissions: list[Emission] = []
        self.pending_parts: dict[int, list] = {}
        self.length = 0

    def emit(self, uid, value, targets, offset=-1):
        check_printable(value, offset)  # str() of a huge value would run outside every hook, unbounded
        text = str(value)
        position = next((k for k, t in enumerate(targets) if id(t) in self.ids), None)
        message = None if position is None else self.ids[id(targets[position])]
        parts = self.pending_parts.pop(uid, None)
        emission = Emission(uid, text, self.length, message, parts, None if position is None else position)
        self.emissions.append(emission)
        self.length += len(text)
        return value

    def part(self, uid, index, value):
        parts = self.pending_parts.setdefault(uid, [])
        if index == 0:
            parts.clear()
        parts.append(value)
        return value


class Tracer:
    """Renders probes through an instrumented copy of a template.

    Example:
        >>> from templatekit.core.syntax import parse_template
        >>> flow = build_flow(parse_template("{% for m in messages %}<{{ m.content }}>{% endfor %}"))
        >>> messages = [{"role": "user", "content": "hi"}]
        >>> text, emissions = Tracer(flow).trace(messages)
        >>> text, [(e.text, e.message) for e in emissions]
        ('<hi>', [('<', 0), ('hi', 0), ('>', 0)])
    """

    def __init__(self, flow: Flow) -> None:
        ast = copy.deepcopy(flow.parsed.ast)
        self._instrument(ast, flow)
        self.template = attach_source(make_environment().from_string(ast), flow.parsed.source)

    @staticmethod
    def _instrument(ast: nodes.Template, flow: Flow) -> None:
        outputs = [node for node in ast.find_all(nodes.Output)]
        units_by_node = {}
        originals = [node for node in flow.parsed.ast.find_all(nodes.Output)]
        for unit in flow.units:
            units_by_node[id(unit.node)] = unit
        for original, copied in zip(originals, outputs):
            for index, (child, copied_child) in enumerate(zip(original.nodes, copied.nodes)):
                unit = units_by_node.get(id(child))
                if unit is None:
                    continue
                if unit.parts:
                    operands = _chain(copied_child)
                    for position, operand in enumerate(operands):
                        part = _call("_tk_part", nodes.Const(unit.uid), nodes.Const(position), operand)
                        part.lineno = operand.lineno  # where a limit reached in the call is reported
                        _replace(copied_child, operand, part)
                targets = nodes.Tuple([nodes.Name(name, "load") for name in unit.loop_targets], "load")
                where = nodes.Const(getattr(copied_child.lineno, "offset", -1))  # where a limit reached there is
                emit = _call("_tk_emit", nodes.Const(unit.uid), copied_child, targets, where)
                emit.lineno = copied_child.lineno
                copied.nodes[index] = emit

    def trace(self, messages: list[dict], **variables: Any) -> tuple[str, list[Emission]]:
        """Render with `messages` and return the text and the emissions that make it up."""
        recorder = _Recorder(messages)
        with probe_clock():  # probes are rendered at one fixed instant, as verify renders them
            text = self.template.render(messages=messages, _tk_emit=recorder.emit, _tk_part=recorder.part, **variables)
        return text, recorder.emissions


def _call(name: str, *args: nodes.Node) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load"), list(args), [], None, None)


def _replace(root: nodes.Node, old: nodes.Node, new: nodes.Node) -> None:
    """Put `new` where `old` hangs in the chain rooted at `root`."""
    for node in [root, *root.find_all(nodes.Node)]:
        for field_name in node.fields:
            value = getattr(node, field_name, None)
            if value is old:
                setattr(node, field_name, new)
                return
            if isinstance(value, list):
                for position, item in enumerate(value):
                    if item is old:
                        value[position] = new
                        return
