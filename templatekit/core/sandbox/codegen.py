"""jinja2's code generator with the limit hooks written into each compiled template's Python code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst

# ---------------------------------------------------------------------------------------------- the environment


def _place(node: nodes.Node) -> tuple[int, int]:
    lineno = getattr(node, "lineno", None) or 0
    return int(lineno), getattr(lineno, "offset", -1)


#: Steps a node takes each time it runs, beyond one: what a call, a filter or an attribute lookup through the
#: sandbox costs next to a loop iteration (measured: `benchmarks/limits_overhead.py --steps`).
_NODE_STEPS = {nodes.Call: 16, nodes.NSRef: 16, nodes.Filter: 8, nodes.Getattr: 4, nodes.Getitem: 2, nodes.Test: 2}


def walk(roots: list[nodes.Node], skip: tuple[type, ...] = ()) -> Iterator[nodes.Node]:
    """Every node of `roots` and below, not below a node of a type in `skip`: jinja2's `iter_child_nodes`,
    without a generator per node (this runs for every compile)."""
    stack: list = list(roots)
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        node = pop()
        if not isinstance(node, nodes.Node):
            continue
        yield node
        if type(node) in skip:
            continue
        for name in node.fields:
            value = getattr(node, name)
            if type(value) is list:
                extend(value)
            elif isinstance(value, nodes.Node):
                push(value)


def _body_cost(body: list[nodes.Node]) -> tuple[int, int]:
    """The literal text one run of a body (a loop's iteration, a macro's call) may write, and its steps: one per
    node, more for the costly ones (`_NODE_STEPS`). A nested loop, macro or call block counts its own (per
    iteration, per call), so none is walked here, and compiling stays linear in the template's size."""
    size, steps = 0, 1
    for node in walk(body, _OWN_COST):
        kind = type(node)
        steps += _NODE_STEPS.get(kind, 1)
        if kind is nodes.TemplateData:
            size += len(node.data)
    return size, steps


_OWN_COST = (nodes.For, nodes.Macro, nodes.CallBlock)  # counted per iteration or per call, where they run


#: Comparisons that take constant time whatever the other side holds: with a constant of plain type (as long as
#: the constant), or `x in [constants]`. Every other comparison is charged by the size of its operands.
_PLAIN_CONSTANTS = (str, int, float, bool, type(None))
_ORDERING = frozenset({"eq", "ne", "lt", "lteq", "gt", "gteq"})


def _constant(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Const) and type(node.value) in _PLAIN_CONSTANTS


def _cheap_compare(node: nodes.Compare) -> bool:
    if len(node.ops) != 1:
        return False
    op, right = node.ops[0].op, node.ops[0].expr
    if op in _ORDERING:
        return _constant(node.expr) or _constant(right)
    return isinstance(right, (nodes.List, nodes.Tuple)) and all(_constant(item) for item in right.items)


def _limited_binop(op: str):
    @optimizeconst
    def visitor(self: LimitedCodeGenerator, node: nodes.BinExpr, frame: Frame) -> None:
        line, offset = _place(node)
        self.write(f"environment.tk_binop(context, {op!r}, {line}, {offset}, ")
        self.visit(node.left, frame)
        self.write(", ")
        self.visit(node.right, frame)
        self.write(")")

    return visitor


class LimitedCodeGenerator(CodeGenerator):
    """jinja2's code generator, with the limit hooks written into the template's Python code."""

    visit_Add = _limited_binop("+")
    visit_Mul = _limited_binop("*")
    visit_Pow = _limited_binop("**")
    visit_Mod = _limited_binop("%")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_iterables: dict[int, tuple[int, int, int, int]] = {}

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # jinja2 allows no custom node types: the iterable is recognised by identity when it is visited.
        self._loop_iterables[id(node.iter)] = (*_body_cost(node.body), *_place(node))
        try:
            super().visit_For(node, frame)
        finally:
            del self._loop_iterables[id(node.iter)]

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        loop = self._loop_iterables.get(id(node)) if self._loop_iterables else None
        if loop is None:
            return super().visit(node, *args, **kwargs)
        self.write("environment.tk_iter(")
        super().visit(node, *args, **kwargs)
        self.write(f", {loop[0]}, {loop[1]}, {loop[2]}, {loop[3]})")

    def macro_def(self, macro_ref: Any, frame: Frame) -> None:
        self.write("environment.tk_macro(")
        super().macro_def(macro_ref, frame)
        self.write(f", {_body_cost(macro_ref.node.body)[1]})")

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        if _cheap_compare(node):
            super().visit_Compare(node, frame)
            return
        line, offset = _place(node)
        if len(node.ops) == 1:
            self.write(f"environment.tk_compare({node.ops[0].op!r}, {line}, {offset}, ")
            self.visit(node.expr, frame)
            self.write(", ")
            self.visit(node.ops[0].expr, frame)
            self.write(")")
            return
        self.write(f"environment.tk_chain({tuple(op.op for op in node.ops)!r}, {line}, {offset}, ")
        self.visit(node.expr, frame)
        for op in node.ops:  # later operands are evaluated only when the chain gets to them, as in Python
            self.write(", lambda: ")
            self.visit(op.expr, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("{")
        for index, item in enumerate(node.items):
            if index:
                self.write(", ")
            if isinstance(item.key, nodes.Const):
                self.visit(item.key, frame)
            else:  # a computed key: a tuple's hash walks all of it
                self.write("environment.tk_key(")
                self.visit(item.key, frame)
                self.write(")")
            self.write(": ")
            self.visit(item.value, frame)
        self.write("}")

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:  # as jinja2 writes it
            markup = "context.eval_ctx.volatile"
        else:
            markup = "True" if frame.eval_ctx.autoescape else "False"
        line, offset = _place(node)
        self.write("environment.tk_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write(f"), {markup}, {line}, {offset})")

    @optimizeconst
    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        line, offset = _place(node)
        self.write("environment.tk_slice(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
            self.write(", ")
        self.write(f"), {line}, {offset})")

    @optimizeconst
    def visit_Call(self, node: nodes.Call, frame: Frame, forward_caller: bool = False) -> None:
        line, offset = _place(node)
        self.write(f"environment.tk_call(context, {line}, {offset}, ")
        self.visit(node.node, frame)
        extra_kwargs = {"caller": "caller"} if forward_caller else None
        loop_kwargs = {"_loop_vars": "_loop_vars"} if frame.loop_frame else {}
        block_kwargs = {"_block_vars": "_block_vars"} if frame.block_frame else {}
        if extra_kwargs:
            extra_kwargs.update(loop_kwargs, **block_kwargs)
        elif loop_kwargs or block_kwargs:
            extra_kwargs = dict(loop_kwargs, **block_kwargs)
        self.signature(node, frame, extra_kwargs)
        self.write(")")
