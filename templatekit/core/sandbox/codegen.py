"""jinja2's code generator with the limit hooks written into each compiled template's Python code."""

from __future__ import annotations

from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst

# ---------------------------------------------------------------------------------------------- the environment


def _place(node: nodes.Node) -> tuple[int, int]:
    lineno = getattr(node, "lineno", None) or 0
    return int(lineno), getattr(lineno, "offset", -1)


def _literal_bytes(body: list[nodes.Node]) -> int:
    """The literal text one iteration of a loop with this body may write. A nested loop's text is its own (its
    iterable charges it per iteration), and expressions hold no literal text: neither is walked, so that
    compiling stays linear in the template's size."""
    size = 0
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.TemplateData):
            size += len(node.data)
        elif not isinstance(node, (nodes.For, nodes.Expr)):
            stack.extend(node.iter_child_nodes())
    return size


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
        self._loop_iterables: dict[int, tuple[int, int, int]] = {}

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # jinja2 allows no custom node types: the iterable is recognised by identity when it is visited.
        self._loop_iterables[id(node.iter)] = (_literal_bytes(node.body), *_place(node))
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
        self.write(f", {loop[0]}, {loop[1]}, {loop[2]})")

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
