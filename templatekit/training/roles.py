"""The roles a chat template tests for, read off its syntax tree (`audit` reports the roles it does not know)."""

from __future__ import annotations

from typing import Any

__all__ = ["template_roles"]


def _is_role(node: Any) -> bool:
    from jinja2 import nodes

    if isinstance(node, nodes.Getattr):
        return node.attr == "role"
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == "role"
    return isinstance(node, nodes.Name) and node.name == "role"


def _constants(node: Any) -> list[str]:
    from jinja2 import nodes

    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (nodes.Tuple, nodes.List)):
        return [item.value for item in node.items if isinstance(item, nodes.Const) and isinstance(item.value, str)]
    return []


def template_roles(template: str) -> set[str]:
    """The roles a template tests for: the constants compared with `message.role`, `message['role']` or a
    variable `role` (`==`, `!=`, `in`, `not in`).

    Example:
        >>> sorted(template_roles("{% if m.role == 'bot' or m['role'] in ('ipython', 'tool') %}{% endif %}"))
        ['bot', 'ipython', 'tool']
    """
    from jinja2 import Environment, TemplateSyntaxError, nodes

    try:
        tree = Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do"]).parse(template)
    except TemplateSyntaxError:
        return set()
    found: set[str] = set()
    for compare in tree.find_all(nodes.Compare):
        left = compare.expr
        for operand in compare.ops:
            right = operand.expr
            if operand.op in ("eq", "ne", "in", "notin"):
                if _is_role(left):
                    found.update(_constants(right))
                elif _is_role(right):
                    found.update(_constants(left))
            left = right
    return found
