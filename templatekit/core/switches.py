"""The template's own switches: names it tests that the caller passes, as apply_chat_template's keyword arguments,
and the settings of them a patch must hold for (docs/design.md, invariant 6).

`enable_thinking`, `thinking`, `reasoning_effort`, ...: callers set them (TRL per row, under `chat_template_kwargs`),
and a switch can move a turn's edge. Qwen3 with `enable_thinking=False` writes an empty `<think></think>` into the
generation prompt, so that text is no longer generated there. One patched template serves every row, so the
pipeline analyses the template under every setting (`settings`) and verifies the patch under each.

A switch is a name the template reads in a test (`{% if enable_thinking %}`, `x if thinking else y`) and never
assigns itself other than to default it (`{% set thinking = thinking | default(true) %}`), other than what every
render gets (`messages`, `tools`, special tokens, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import nodes

from .guards import Guard
from .probes import SPECIAL_TOKENS
from .syntax import ParsedTemplate

__all__ = ["MAX_SWITCHES", "Setting", "settings", "switch_tests", "switch_values", "template_switches"]

# Each value of a switch costs one more analysis of the template; a template testing more names is set on the first.
MAX_SWITCHES = 4
# A string switch compared with more strings than this is set to the first ones.
MAX_VALUES = 4

# What transformers passes to every render, or takes as its own argument (`continue_final_message` is handled by
# `apply_chat_template`, never a value the template is given), and Jinja's globals: not switches.
_RENDER_NAMES = {
    "messages",
    "tools",
    "documents",
    "add_generation_prompt",
    "continue_final_message",
    "return_assistant_tokens_mask",
    "chat_template",
    "loop",
    "raise_exception",
    "strftime_now",
    "namespace",
    "range",
    "dict",
    "lipsum",
    "cycler",
    "joiner",
    "true",
    "false",
    "none",
    *SPECIAL_TOKENS,
}


@dataclass(frozen=True)
class Setting:
    """One setting of the template's switches: the keyword arguments a render gets (none: every switch unset), over
    the caller's `fixed` ones.

    Example:
        >>> Setting((("enable_thinking", False),)).name, Setting((), (("thinking", True),)).name
        ('enable_thinking=False', 'default')
    """

    items: tuple[tuple[str, object], ...] = ()
    fixed: tuple[tuple[str, object], ...] = ()

    @property
    def kwargs(self) -> dict:
        return {**dict(self.fixed), **dict(self.items)}

    @property
    def name(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.items) or "default"


def template_switches(ast: nodes.Template) -> list[str]:
    """The template's switches, in order of first use: names it reads only in tests (`{% if x %}`, `x is defined`,
    `a if x else b`, `x == 'high'`) and assigns at most to default them (`{% if x is undefined %}{% set x = true
    %}`, `{% set x = x | default(false) %}`). A name also written out, iterated or passed on (`custom_tools`, an
    index) is an input of another kind.

    Example:
        >>> from jinja2 import Environment
        >>> ast = Environment().parse(
        ...     "{% if thinking is undefined %}{% set thinking = true %}{% endif %}{% set x = 1 %}"
        ...     "{% set effort = effort | default('low') %}"
        ...     "{% if enable_thinking is false and x and thinking %}a{% endif %}{{ b if messages else c }}{{ c }}"
        ...     "{% if effort == 'high' %}h{% endif %}"
        ... )
        >>> template_switches(ast)
        ['thinking', 'enable_thinking', 'effort']
    """
    usage = _Usage()
    usage.visit(ast)
    return [name for name in usage.tested if name not in usage.disqualified and name not in _RENDER_NAMES]


def switch_values(ast: nodes.Template, name: str) -> list[object]:
    """The values a caller may give switch `name`: each string the template compares it with, and True and False
    unless it is only ever compared with strings.

    Example:
        >>> from jinja2 import Environment
        >>> switch_values(Environment().parse("{% if e == 'high' or e in ['low', 'high'] %}{% endif %}"), "e")
        ['high', 'low']
        >>> switch_values(Environment().parse("{% if e %}{% endif %}{% if e == 'x' %}{% endif %}"), "e")
        [True, False, 'x']
    """
    strings: dict[str, None] = {}
    bare = False
    for test in _tests(ast):
        for found in _with_children(test, nodes.Name):
            if found.name != name:
                continue
            compared = _compared_strings(test, found)
            if compared is None:
                bare = True
            else:
                strings.update(dict.fromkeys(compared))
    values: list[object] = [True, False] if bare or not strings else []
    return values + list(strings)[:MAX_VALUES]


def settings(ast: nodes.Template, fixed: dict | None = None) -> list[Setting]:
    """The settings a patch must hold for: `fixed` (the caller's own, default none) first, then each switch it
    leaves open set to each of its values, one switch at a time.

    Example:
        >>> from jinja2 import Environment
        >>> [s.name for s in settings(Environment().parse("{% if enable_thinking %}<think>{% endif %}"))]
        ['default', 'enable_thinking=True', 'enable_thinking=False']
    """
    fixed = tuple((fixed or {}).items())
    found = [Setting((), fixed)]
    for name in [name for name in template_switches(ast) if name not in dict(fixed)][:MAX_SWITCHES]:
        found += [Setting(((name, value),), fixed) for value in switch_values(ast, name)]
    return found


def _tests(ast: nodes.Template):
    for node in ast.find_all((nodes.If, nodes.CondExpr)):
        if node.test is not None:
            yield node.test


def _with_children(node: nodes.Node, kind: type) -> list:
    """`node` itself when it is a `kind`, then every `kind` below it (jinja2's `find_all` leaves the node out)."""
    return [node] * isinstance(node, kind) + list(node.find_all(kind))


def _compared_strings(test: nodes.Node, name: nodes.Name) -> list[str] | None:
    """The strings `name` is compared with where it stands in `test` (`name == 'x'`, `name in ['x', 'y']`), or None
    when it is read otherwise there (its truth, `is defined`)."""
    for compare in _with_children(test, nodes.Compare):
        operands = [compare.expr, *(operand.expr for operand in compare.ops)]
        if not any(operand is name for operand in operands):
            continue
        strings = []
        for operand in operands:
            if isinstance(operand, nodes.Const) and isinstance(operand.value, str):
                strings.append(operand.value)
            elif isinstance(operand, (nodes.List, nodes.Tuple)):
                strings += [item.value for item in operand.items if isinstance(item, nodes.Const)]
        return [value for value in strings if isinstance(value, str)] or None
    return None


class _Usage:
    """Walks the tree noting, per name, whether it is read in a test, read elsewhere, or assigned outside an
    `if` that tests it (other than to default itself)."""

    def __init__(self) -> None:
        self.tested: dict[str, None] = {}  # insertion-ordered set
        self.disqualified: set[str] = set()
        self._in_test = 0
        self._guarding: list[set[str]] = []  # the names each enclosing `if` tests
        self._defaulting: str | None = None  # the name a `{% set x = x | default(...) %}` is defaulting

    def visit(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.Name):
            self._name(node)
        elif isinstance(node, (nodes.If, nodes.CondExpr)):
            self._conditional(node)
        elif isinstance(node, nodes.Macro):
            self.disqualified.add(node.name)
            self._children(node)
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
            self.disqualified.add(node.node.name)  # a macro or function, not a switch
            self._children(node)
        elif isinstance(node, nodes.Assign) and _defaults_itself(node):
            self._defaulting = node.target.name
            self.visit(node.node)
            self._defaulting = None
        else:
            self._children(node)

    def _children(self, node: nodes.Node) -> None:
        for child in node.iter_child_nodes():
            self.visit(child)

    def _name(self, node: nodes.Name) -> None:
        name = node.name
        if node.ctx == "load":
            if self._in_test:
                self.tested.setdefault(name, None)
            elif name != self._defaulting:
                self.disqualified.add(name)
        elif not any(name in tested for tested in self._guarding):
            self.disqualified.add(name)  # assigned, not just defaulted: a variable of the template's own

    def _conditional(self, node: nodes.If | nodes.CondExpr) -> None:
        tested = {name.name for name in _with_children(node.test, nodes.Name)} if node.test is not None else set()
        if node.test is not None:
            self._in_test += 1
            self.visit(node.test)
            self._in_test -= 1
        self._guarding.append(tested)
        for field in ("body", "elif_", "else_", "expr1", "expr2"):
            value = getattr(node, field, None)
            for child in value if isinstance(value, list) else [value] if value is not None else []:
                self.visit(child)
        self._guarding.pop()


def _defaults_itself(node: nodes.Assign) -> bool:
    """`{% set x = x | default(v) %}` (or `x if x is defined else v`): a switch given a default, not a variable."""
    if not isinstance(node.target, nodes.Name):
        return False
    name = node.target.name
    value = node.node
    if isinstance(value, nodes.Filter) and value.name == "default":
        return isinstance(value.node, nodes.Name) and value.node.name == name
    if isinstance(value, nodes.CondExpr):
        names = {found.name for found in value.find_all(nodes.Name)}
        return names == {name}
    return False


def switch_tests(parsed: ParsedTemplate, name: str) -> list[Guard]:
    """The tests the template itself writes on switch `name` alone (`enable_thinking is defined and
    enable_thinking is false`), as source text, in the order they appear.

    Example:
        >>> from templatekit.core.syntax import parse_template
        >>> switch_tests(parse_template("{% if x and y %}{% elif not x %}{% endif %}{{ 'a' if x is false }}"), "x")
        [Guard(source='not x')]
    """
    found: dict[str, None] = {}
    tokens = parsed.tokens
    for index, token in enumerate(tokens):
        if token.type != "name" or token.value not in ("if", "elif"):
            continue
        before = index - 1
        while before > 0 and tokens[before].type == "whitespace":
            before -= 1
        if tokens[before].type != "block_begin":
            continue
        end = index
        while tokens[end].type != "block_end":
            end += 1
        test = parsed.source[token.end : tokens[end].start].strip()
        names = {found.name for found in Guard.of_template(test).names()} if test else set()
        if names == {name}:
            found.setdefault(test, None)
    return [Guard.of_template(test) for test in found]
