"""Write a macro's body out at its only call, so that a generation tag can go inside it.

transformers measures a `{% generation %}` block against the text rendered so far *at the top level*: inside
a macro the block's start is taken where the macro call began, so a tag after the macro's own header trains
the wrong characters. A template whose assistant turn comes out of one macro call that also writes the
header (`{{ render_assistant(message) }}`) can therefore be tagged only once that body stands in the flow.

`inlined_sources` offers one rewrite per macro that is defined at the top level and used exactly once, as a
whole `{{ name(...) }}` output, with the call's arguments bound by `{% with %}`:

    {{- render(message) }}   ->   {%- with m = message %}...the macro's body...{% endwith +%}

The tags around the body mirror the macro's and the call's whitespace control, so the text is the same;
the patcher still proves that on every probe, against the original. The definition is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import nodes

from .analysis import build_flow
from .positions import line_column
from .syntax import ParsedTemplate, RawToken, node_start

# Statements whose body is a scope of its own: a name set there is not the top-level one the macro sees.
_SCOPES = (nodes.For, nodes.Macro, nodes.With, nodes.CallBlock, nodes.FilterBlock, nodes.Scope)
# Names a macro body may read that mean something else outside one.
_MACRO_ONLY = {"caller", "varargs", "kwargs"}


@dataclass(frozen=True)
class Inlined:
    """`source` with macro `name` (defined at `defined`, 1-based line) written out at its call `at`."""

    name: str
    defined: int
    at: tuple[int, int]
    source: str

    @property
    def note(self) -> str:
        return (
            f"macro {self.name!r} (line {self.defined}) is written out at its only call (line {self.at[0]}, "
            f"column {self.at[1]}) so that the tags can go inside it; its definition is left as it was"
        )


def inlined_sources(parsed: ParsedTemplate) -> list[Inlined]:
    """One rewrite of `parsed.source` per macro that can be written out at its only call, in call order.

    Example:
        >>> from templatekit.core.syntax import parse_template
        >>> source = (
        ...     "{% macro turn(m) %}<{{ m.role }}>{{ m.content }}{% endmacro %}"
        ...     "{% for message in messages %}{{ turn(message) }}{% endfor %}"
        ... )
        >>> [rewrite.source[62:] for rewrite in inlined_sources(parse_template(source))]
        ['{% for message in messages %}{%+ with m = message %}<{{ m.role }}>{{ m.content }}{% endwith +%}{% endfor %}']
    """
    # The template's own outputs (macros, call and `set` blocks excluded), as analysis walks them.
    outputs = [unit.node for unit in build_flow(parsed).units]
    found = []
    for macro in parsed.ast.body:
        if isinstance(macro, nodes.Macro) and (rewrite := _inline(parsed, macro, outputs)) is not None:
            found.append((rewrite.at, rewrite))
    return [rewrite for _, rewrite in sorted(found, key=lambda pair: pair[0])]


def _inline(parsed: ParsedTemplate, macro: nodes.Macro, outputs: list[nodes.Node]) -> Inlined | None:
    call = _only_call(parsed.ast, macro, outputs)
    if call is None or _reads_shadowed_names(parsed.ast, macro):
        return None
    source, tokens = parsed.source, parsed.tokens
    definition = _Tag.around(source, tokens, macro.lineno.offset)
    site = _Tag.around(source, tokens, node_start(call))
    end = _endmacro(source, tokens, definition.close_index) if definition is not None else None
    if end is None or site is None:
        return None
    params = _pieces(source, tokens, definition.open_index, definition.close_index)
    arguments = _pieces(source, tokens, site.open_index, site.close_index)
    if params is None or arguments is None:
        return None
    bindings = _bind(params, arguments)
    if bindings is None:
        return None
    with_open = "{%" + ("-" if site.text.startswith("{{-") else "+") + " with " + ", ".join(bindings)
    with_open += " " if bindings else ""
    with_open += definition.closing
    with_close = end.opening + " endwith " + ("-%}" if site.text.endswith("-}}") else "+%}")
    body = source[definition.end : end.start]
    rewritten = source[: site.start] + with_open + body + with_close + source[site.end :]
    return Inlined(macro.name, int(macro.lineno), line_column(source, site.start), rewritten)


def _only_call(ast: nodes.Template, macro: nodes.Macro, outputs: list[nodes.Node]) -> nodes.Call | None:
    """The macro's one use, when it is a whole output of the template's own flow (not inside a macro)."""
    if sum(isinstance(node, nodes.Macro) and node.name == macro.name for node in ast.body) != 1:
        return None
    if any(True for _ in macro.find_all((nodes.Macro, nodes.CallBlock))):
        return None
    if any(name.name in _MACRO_ONLY for name in macro.find_all(nodes.Name)):
        return None
    uses = [name for name in ast.find_all(nodes.Name) if name.name == macro.name and name.ctx == "load"]
    calls = [child for child in outputs if isinstance(child, nodes.Call) and child.node in uses]
    if len(uses) != 1 or len(calls) != 1 or calls[0].dyn_args or calls[0].dyn_kwargs:
        return None
    return calls[0]


def _reads_shadowed_names(ast: nodes.Template, macro: nodes.Macro) -> bool:
    """True when the body reads a name that the call site may see otherwise than the macro does: a loop
    variable or a name set inside a scope (a loop's `set`), which a macro never sees."""
    params = {arg.name for arg in macro.args}
    own = {name.name for name in macro.find_all(nodes.Name) if name.ctx in ("store", "param")}
    free = {name.name for name in macro.find_all(nodes.Name) if name.ctx == "load"} - params - own
    in_own_loops = {
        id(name) for loop in macro.find_all(nodes.For) for node in loop.body for name in node.find_all(nodes.Name)
    }
    if all(id(name) in in_own_loops for name in macro.find_all(nodes.Name) if name.name == "loop"):
        free.discard("loop")  # the `loop` of a loop inside the body, the same wherever the body stands
    scoped = {"loop", "self", "super"}
    for scope in ast.find_all(_SCOPES):
        if scope is macro:
            continue
        scoped |= {name.name for name in scope.find_all(nodes.Name) if name.ctx in ("store", "param")}
    return bool(free & scoped)


@dataclass(frozen=True)
class _Tag:
    """A `{{ ... }}` or `{% ... %}` tag: `source[start:end]`, with the token indices of the parentheses of
    the first call in it (`open_index`, `close_index`)."""

    start: int
    end: int
    text: str
    open_index: int
    close_index: int

    @property
    def closing(self) -> str:
        """The tag's closing delimiter with its whitespace control (`%}`, `-%}`, `+%}`)."""
        return self.text[-3:] if self.text[-3] in "-+" else self.text[-2:]

    @classmethod
    def around(cls, source: str, tokens: list[RawToken], offset: int) -> _Tag | None:
        """The tag holding the token at `offset`, when it reads `[macro] NAME(...)` and nothing after that."""
        index = next((i for i, token in enumerate(tokens) if token.start == offset), None)
        if index is None:
            return None
        begin = index
        while tokens[begin].type not in ("variable_begin", "block_begin"):
            begin -= 1
        open_index = index
        while open_index < len(tokens) and not (tokens[open_index].type == "lparen" or tokens[open_index].value == "("):
            open_index += 1
        close_index = _matching(tokens, open_index)
        if close_index is None:
            return None
        after = close_index + 1
        while tokens[after].type == "whitespace":
            after += 1
        if tokens[after].type not in ("variable_end", "block_end"):
            return None
        start = source.find("{", tokens[begin].start)
        end = tokens[after].tag_end
        return cls(start, end, source[start:end], open_index, close_index)


def _matching(tokens: list[RawToken], open_index: int) -> int | None:
    depth = 0
    for index in range(open_index, len(tokens)):
        value = tokens[index].value if tokens[index].type in ("operator", "lparen", "rparen") else ""
        depth += value in "([{" and bool(value)
        depth -= value in ")]}" and bool(value)
        if value and depth == 0:
            return index
    return None


@dataclass(frozen=True)
class _End:
    start: int  # where `{% endmacro %}` begins
    opening: str  # its opening delimiter with whitespace control


def _endmacro(source: str, tokens: list[RawToken], after: int) -> _End | None:
    depth = 0
    for index in range(after, len(tokens)):
        token = tokens[index]
        if token.type == "name" and token.value in ("macro", "endmacro"):
            begin = index - 1
            while begin >= 0 and tokens[begin].type == "whitespace":
                begin -= 1
            if tokens[begin].type != "block_begin":
                continue
            if token.value == "macro":
                depth += 1
            elif depth:
                depth -= 1
            else:
                start = source.rfind("{%", 0, token.start)
                opening = source[start : start + 3] if source[start + 2] in "-+" else "{%"
                return _End(start, opening)
    return None


def _pieces(source: str, tokens: list[RawToken], open_index: int, close_index: int) -> list[str] | None:
    """The source text of each comma-separated piece between two parentheses (None for an empty piece)."""
    pieces: list[str] = []
    depth, span = 0, None  # span: the first and last token index of the piece being read
    for index in range(open_index + 1, close_index + 1):
        token = tokens[index]
        value = token.value if token.type != "whitespace" else ""
        if index == close_index or (value == "," and depth == 0):
            if span is not None:
                pieces.append(source[tokens[span[0]].start : tokens[span[1]].end])
            elif index != close_index or pieces:
                return None
            span = None
        elif value:
            depth += value in ("(", "[", "{")
            depth -= value in (")", "]", "}")
            span = (index if span is None else span[0], index)
    return pieces


def _bind(params: list[str], arguments: list[str]) -> list[str] | None:
    """`name = value` for every parameter: positional arguments, then keywords, then defaults."""
    names, defaults = [], {}
    for param in params:
        name, _, default = param.partition("=")
        names.append(name.strip())
        if default:
            defaults[name.strip()] = default.strip()
    values, positional = dict(defaults), True
    for position, argument in enumerate(arguments):
        name, equals, value = argument.partition("=")
        if equals and name.strip().isidentifier() and not value.startswith("="):
            positional = False
            if name.strip() not in names:
                return None
            values[name.strip()] = value.strip()
        elif not positional or position >= len(names):
            return None
        else:
            values[names[position]] = argument
    if any(name not in values for name in names):
        return None  # a parameter left unbound would be undefined in the macro, an error in `with`
    return [f"{name} = {values[name]}" for name in names]
