"""The template's own switches: names it tests that the caller passes, as apply_chat_template's keyword arguments.

`enable_thinking`, `thinking`, `tools_in_user_message`, ...: callers set them (TRL per row, under
`chat_template_kwargs`), and a switch can move a turn's edge. Qwen3 with `enable_thinking=False` writes an empty
`<think></think>` into the generation prompt, so that text is no longer generated; a patch verified with the
switch unset then trains it. The pipeline verifies a patch again with each switch set both ways, against the
truth of that setting (`pipeline.switch_problems`), and reports the settings it does not hold for.

A switch is a name the template reads in a test (`{% if enable_thinking %}`, `x if thinking else y`) and never
assigns itself, other than what every render gets (`messages`, `tools`, special tokens, ...).
"""

from __future__ import annotations

from jinja2 import nodes

from .probes import SPECIAL_TOKENS

__all__ = ["MAX_SWITCHES", "template_switches"]

# Each switch costs two more analyses of the template; a template testing more names is checked on the first ones.
MAX_SWITCHES = 4

_RENDER_NAMES = {
    "messages",
    "tools",
    "documents",
    "add_generation_prompt",
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


def template_switches(ast: nodes.Template) -> list[str]:
    """The template's boolean switches, in order of first use: names it reads only in tests (`{% if x %}`,
    `x is defined`, `a if x else b`) and assigns at most to default them (`{% if x is undefined %}{% set x = true
    %}`). A name also written out, iterated or passed on (`custom_tools`, an index) is an input of another kind.

    Example:
        >>> from jinja2 import Environment
        >>> ast = Environment().parse(
        ...     "{% if thinking is undefined %}{% set thinking = true %}{% endif %}{% set x = 1 %}"
        ...     "{% if enable_thinking is false and x and thinking %}a{% endif %}{{ b if messages else c }}{{ c }}"
        ... )
        >>> template_switches(ast)
        ['thinking', 'enable_thinking']
    """
    usage = _Usage()
    usage.visit(ast)
    return [name for name in usage.tested if name not in usage.disqualified and name not in _RENDER_NAMES]


class _Usage:
    """Walks the tree noting, per name, whether it is read in a test, read elsewhere, or assigned outside an
    `if` that tests it."""

    def __init__(self) -> None:
        self.tested: dict[str, None] = {}  # insertion-ordered set
        self.disqualified: set[str] = set()
        self._in_test = 0
        self._guarding: list[set[str]] = []  # the names each enclosing `if` tests

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
            else:
                self.disqualified.add(name)
        elif not any(name in tested for tested in self._guarding):
            self.disqualified.add(name)  # assigned, not just defaulted: a variable of the template's own

    def _conditional(self, node: nodes.If | nodes.CondExpr) -> None:
        tested = {name.name for name in node.test.find_all(nodes.Name)} if node.test is not None else set()
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
