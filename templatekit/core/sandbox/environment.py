"""`LimitedEnvironment`: jinja2's immutable sandbox whose compiled templates call the limit hooks."""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.runtime import Context, LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
    _mutable_spec,
)
from markupsafe import Markup

from ...errors import ArgumentTypeError, InvalidArgumentError
from ..positions import parse_with_offsets
from .codegen import LimitedCodeGenerator
from .compiling import check_source_size, compile_cost
from .filters import GuardedFilters, GuardedTests, lipsum
from .scope import _SCOPE, LimitScope, _loop, _python_limit, _start_render, enabled
from .settings import DEFAULT_LIMITS, STEPS_PER_BYTE
from .sizes import (
    _BIG,
    _SHORT,
    _SIZED,
    _SMALL,
    _binop_bytes,
    _bound_message,
    _method_bytes,
    _printed,
    _remaining,
    _str_bytes,
    _what,
)
from .work import COMPARE, compare_work, logical_size, method_work


class LimitedTemplate(jinja2.Template):
    """A template whose renders run inside the limits in force (a default scope when none is)."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        scope = _SCOPE.get()
        if scope is None:
            if not enabled():
                return super().render(*args, **kwargs)
            with LimitScope(DEFAULT_LIMITS):
                return self.render(*args, **kwargs)
        depth = _start_render(scope)
        try:
            return super().render(*args, **kwargs)
        except (RecursionError, MemoryError) as error:
            raise _python_limit(scope, error) from None
        finally:
            scope.depth = depth

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        scope = _SCOPE.get()
        if scope is None:
            if not enabled():
                yield from super().generate(*args, **kwargs)
                return
            with LimitScope(DEFAULT_LIMITS):
                yield from self.generate(*args, **kwargs)
            return
        depth = _start_render(scope)
        try:
            yield from super().generate(*args, **kwargs)
        except (RecursionError, MemoryError) as error:
            raise _python_limit(scope, error) from None
        finally:
            scope.depth = depth


def _finalize(value: Any) -> Any:
    """What `{{ … }}` writes: counted (and, for a value that is not text, its size checked first)."""
    scope = _SCOPE.get()
    if scope is None:
        return value
    kind = type(value)
    if kind is str:
        scope.spent += len(value) if value.isascii() else 4 * len(value)
        if scope.spent > scope.cap:
            scope.too_big(0, "", 0, -1)
    elif kind not in _SMALL:
        size = _printed(value, _remaining(scope))
        scope.need(size, "the text of a value written")
        scope.charge(size)
    return value


_ATOMS = frozenset({str, int, float, bool, type(None)})
_WALKING_METHODS = frozenset({"index", "count", "copy"})


def _walks(function: Any, args: tuple) -> bool:
    """Whether a builtin's call walks a container: one of its arguments, or its list's items."""
    for argument in args:
        if type(argument) not in _ATOMS:
            return True
    return function.__name__ in _WALKING_METHODS


_CALL_STEPS = 4  # a call through the sandbox: about four loop iterations (its node in a loop's body counts more)
_MACRO_STEPS = 16  # a macro call binds its arguments and renders its body in a frame of its own


class _BoundedFormatterMixin:
    _env: LimitedEnvironment

    def format_field(self, value: Any, format_spec: str) -> Any:
        scope = _SCOPE.get()
        if scope is not None:
            widths = [int(number) if len(number) < 19 else float("inf") for number in re.findall(r"\d+", format_spec)]
            size = max(widths, default=0) * 4 + _printed(value, _remaining(scope))
            scope.need(size, "a formatted field")
        result = super().format_field(value, format_spec)  # type: ignore[misc]
        if scope is not None:
            scope.charge(_str_bytes(result) if isinstance(result, str) else 64)
        return result


class _BoundedFormatter(_BoundedFormatterMixin, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_BoundedFormatterMixin, SandboxedEscapeFormatter):
    pass


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, counting time, memory and call depth (see the module docstring).

    Templates render exactly as in `ImmutableSandboxedEnvironment` with the same options, extensions,
    filters and globals, until a limit is reached.

    Example:
        >>> from templatekit.core.sandbox import limit_scope
        >>> env = LimitedEnvironment(trim_blocks=True)
        >>> env.from_string("{% for i in range(3) %}{{ i ~ '-' }}{% endfor %}").render()
        '0-1-2-'
        >>> with limit_scope(max_steps=1_000_000):
        ...     env.from_string("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}").render()
        Traceback (most recent call last):
        ...
        templatekit.errors.TemplateLimitError: <template>:1:31: step limit exceeded: the template did more than 1,000,000 steps of work (loop iterations, calls, comparisons, characters built); raise the budget with --max-steps N (max_steps=N)
    """

    code_generator_class = LimitedCodeGenerator
    template_class = LimitedTemplate
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    #: Parse with source offsets, so that an error can name its column (a little slower to compile).
    offsets = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("finalize") is not None:
            raise ArgumentTypeError(
                "LimitedEnvironment counts output through finalize; it takes no finalize of its own"
            )
        kwargs["finalize"] = _finalize
        super().__init__(*args, **kwargs)
        self.filters = GuardedFilters(self.filters)
        self.tests = GuardedTests(self.tests)
        self.globals["lipsum"] = lipsum

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """jinja2's immutable sandbox, which refuses `messages.append`, also refusing the unbound `dict.clear`,
        `list.append`, …: called on the caller's data (`dict.clear(messages[-1])`), they would change it."""
        if isinstance(obj, type):
            for kind, unsafe in _mutable_spec:
                if attr in unsafe and issubclass(obj, kind):
                    return False
        return super().is_safe_attribute(obj, attr, value)

    # -- parsing: with source offsets, so that errors can name a column

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        plain = self.offsets and all(
            type(ext).preprocess is jinja2.ext.Extension.preprocess
            and type(ext).filter_stream is jinja2.ext.Extension.filter_stream
            for ext in self.extensions.values()
        )
        check_source_size(source)
        if plain:
            try:
                return parse_with_offsets(self, source, name)
            except Exception:  # noqa: BLE001 - jinja2's own parser gives its own error below
                pass
        return super()._parse(source, name, filename)

    def from_string(  # noqa: A002 - jinja2's signature
        self,
        source: str | nodes.Template,
        globals: dict[str, Any] | None = None,
        template_class: type[jinja2.Template] | None = None,
    ) -> jinja2.Template:
        ast = self.parse(source) if isinstance(source, str) else source
        cost = compile_cost(ast) if enabled() else None  # charged before its code is generated
        template = super().from_string(ast, globals, template_class)
        template.tk_cost, template.tk_fresh = cost, True  # charged now: not again where it is first handed out
        if isinstance(source, str):
            template.tk_source = source
        return template

    # -- hooks called by the compiled template

    def tk_iter(self, iterable: Any, weight: int, steps: int, line: int, offset: int) -> Any:
        """A loop's iterable: `weight` bytes of literal text and `steps` steps of work per iteration."""
        scope = _SCOPE.get()
        if scope is None:
            return iterable
        if monotonic() > scope.deadline:
            scope.late(line, offset)
        if type(iterable) in _SIZED:
            count = len(iterable)
            if weight:
                scope.charge(weight * count, line, offset)
            if count <= _SHORT:  # counted at once: no check per iteration
                scope.step(1 + steps * count, line, offset)
                return iterable
            scope.step(1, line, offset)
            return _loop(iterable, scope, 0, line, offset, steps)
        scope.step(1, line, offset)
        return _loop(iterable, scope, weight, line, offset, steps)

    def tk_compare(self, op: str, line: int, offset: int, left: Any, right: Any) -> Any:
        """`left op right`, charged by the logical size of its operands first."""
        scope = _SCOPE.get()
        if scope is not None:
            if op in ("in", "notin") and hasattr(type(right), "__next__"):
                right = list(right)  # a filter's lazy items (each counted as it comes): sized before compared
            left_kind, right_kind = type(left), type(right)
            if left_kind in _ATOMS and right_kind in _ATOMS:
                if left_kind is str and right_kind is str and len(left) + len(right) > 4096:
                    scope.step((len(left) + len(right)) >> 6, line, offset)
            else:
                scope.step(compare_work(op, left, right, scope.step_cap - scope.steps), line, offset)
        return COMPARE[op](left, right)

    def tk_chain(self, ops: tuple[str, ...], line: int, offset: int, left: Any, *rights: Callable[[], Any]) -> Any:
        """`a < b < c`: each comparison charged; later operands evaluated only as far as Python would."""
        result: Any = True
        for op, right in zip(ops, rights):
            value = right()
            result = self.tk_compare(op, line, offset, left, value)
            if not result:
                return result
            left = value
        return result

    def tk_key(self, key: Any) -> Any:
        """A dictionary literal's computed key, charged for the hash it will take."""
        scope = _SCOPE.get()
        if scope is not None and type(key) is tuple:
            scope.step(logical_size(key, scope.step_cap - scope.steps))
        return key

    def tk_macro(self, macro: Macro, steps: int) -> Macro:
        """A macro (or a `call` block's caller) just defined, with the steps its body takes per call."""
        macro.tk_steps = steps  # type: ignore[attr-defined]
        return macro

    def getitem(self, obj: Any, argument: Any) -> Any:
        """`obj[argument]`, a tuple key charged for its hash first; jinja2's sandboxed lookup where it fails."""
        if type(argument) is tuple:
            scope = _SCOPE.get()
            if scope is not None:
                scope.step(logical_size(argument, scope.step_cap - scope.steps))
        try:
            return obj[argument]  # what the sandbox's own getitem tries first, without a frame of its own
        except (TypeError, LookupError):
            return super().getitem(obj, argument)

    def tk_binop(self, context: Context, op: str, line: int, offset: int, left: Any, right: Any) -> Any:
        scope = _SCOPE.get()
        if scope is None:
            return self.binop_table[op](left, right)
        left_kind = type(left)
        if op == "+" and left_kind is str and type(right) is str:  # the common case, inline
            size = len(left) + len(right)
            if not (left.isascii() and right.isascii()):
                size *= 4
            if size > _BIG and scope.spent + size > scope.cap:
                scope.too_big(size, "a string built with +", line, offset)
            result = left + right
            scope.spent += size
            if scope.spent > scope.cap:
                scope.too_big(size, "a string built with +", line, offset)
            return result
        size = _binop_bytes(op, left, right, scope, line, offset)
        if size:
            if scope.spent + size > scope.cap:
                scope.too_big(size, _what(op, left), line, offset)
            result = self.binop_table[op](left, right)
            scope.spent += size
            return result
        return scope.account(self.binop_table[op](left, right), line, offset)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return self.tk_binop(context, operator, 0, -1, left, right)

    def tk_concat(self, parts: tuple, markup: bool, line: int, offset: int) -> str:
        scope = _SCOPE.get()
        if scope is not None:
            size = 0.0
            for part in parts:
                if type(part) is str:
                    size += len(part) if part.isascii() else 4 * len(part)
                else:
                    size += _printed(part, _remaining(scope))
            if scope.spent + size > scope.cap:
                scope.too_big(size, "a string joined with ~", line, offset)
            scope.spent += size
        return markup_join(parts) if markup else str_join(parts)

    def tk_slice(self, value: Any, part: slice, line: int, offset: int) -> Any:
        scope = _SCOPE.get()
        if scope is not None and isinstance(value, (str, list, tuple)):
            try:
                count = len(range(*part.indices(len(value))))
            except (TypeError, ValueError):
                count = 0  # a bad slice: indexing raises jinja2's own error below
            if isinstance(value, str):
                size = count * (1 if value.isascii() else 4)
            else:
                size = 8 * count + 64
            scope.need(size, "a slice", line, offset)
            scope.charge(size, line, offset)
        return value[part]

    def tk_call(self, context: Context, line: int, offset: int, function: Any, /, *args: Any, **kwargs: Any) -> Any:
        scope = _SCOPE.get()
        if scope is None:
            return self.call(context, function, *args, **kwargs)
        steps = scope.steps = scope.steps + _CALL_STEPS
        if steps + scope.spent * STEPS_PER_BYTE > scope.step_cap:
            scope.out_of_steps(line, offset)
        kind = type(function)
        if kind is types.BuiltinMethodType:
            owner = function.__self__
            if isinstance(owner, (str, bytes, bytearray)):
                scope.steps += len(owner) >> 6  # a scan in C: checked at the next step
                size = _method_bytes(function, args, kwargs, scope)
                if size and scope.spent + size > scope.cap:
                    scope.too_big(size, f"{type(owner).__name__}.{function.__name__}()'s result", line, offset)
            elif _walks(function, args):  # list.index, dict.get(key), dict.fromkeys(keys): what they compare or hash
                scope.step(method_work(function, owner, args, scope), line, offset)
        elif kind is not types.MethodType and isinstance(function, (Macro, LoopContext)):
            if isinstance(function, LoopContext) and args:  # loop(children): the children are a loop too
                args = (self.tk_iter(args[0], 0, 1, line, offset), *args[1:])
            scope.step(_MACRO_STEPS + getattr(function, "tk_steps", 1), line, offset)
            scope.enter(line, offset)
            try:
                result = self.call(context, function, *args, **kwargs)
            finally:
                scope.depth -= 1
            return scope.account(result, line, offset)
        elif (kind is type or kind is types.BuiltinFunctionType) and _walks(function, args):  # dict(pairs) hashes
            scope.step(method_work(function, None, args, scope), line, offset)
        elif kind is types.MethodType and isinstance(function.__self__, LoopContext) and args:
            scope.step(method_work(function, None, args, scope), line, offset)  # loop.changed(x) compares x
        # What SandboxedEnvironment.call does, without a frame of its own (this runs for every call).
        if getattr(function, "unsafe_callable", False) or getattr(function, "alters_data", False):
            raise SecurityError(f"{function!r} is not safely callable")
        try:
            result = context.call(function, *args, **kwargs)
        except TemplateError as error:  # raise_exception(a value): its text is built later, outside every hook
            _bound_message(error, scope)
            raise
        kind = type(result)
        if kind is str:
            scope.spent += len(result) if result.isascii() else 4 * len(result)
            if scope.spent > scope.cap:
                scope.too_big(0, "", line, offset)
            return result
        if kind in _SMALL:
            return result
        return scope.account(result, line, offset)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """jinja2's sandboxed `str.format` / `format_map`, with each field's size checked."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        text = value.__self__
        if not isinstance(text, str):
            return None
        text_type = type(text)
        is_format_map = value.__name__ == "format_map"
        if isinstance(text, Markup):
            formatter: SandboxedFormatter = _BoundedEscapeFormatter(self, escape=text.escape)
        else:
            formatter = _BoundedFormatter(self)
        vformat = formatter.vformat

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return text_type(vformat(text, args, kwargs))

        return functools.update_wrapper(wrapper, value)


# ------------------------------------------------------------------------------ environments that mirror others


def mirror_environment(reference: jinja2.Environment, *, offsets: bool = True) -> LimitedEnvironment:
    """A `LimitedEnvironment` configured exactly like `reference`: the same options, the same extension
    classes (in order), filters, tests, globals and policies. `offsets=False` parses with jinja2's own
    parser (faster to compile; errors then name the line only).

    Example:
        >>> from jinja2.sandbox import ImmutableSandboxedEnvironment
        >>> twin = mirror_environment(ImmutableSandboxedEnvironment(trim_blocks=True))
        >>> twin.trim_blocks, isinstance(twin, LimitedEnvironment)
        (True, True)
    """
    if reference.finalize is not None or reference.is_async:
        raise InvalidArgumentError("cannot mirror an environment with a finalize function or async rendering")
    options = {
        name: getattr(reference, name)
        for name in (
            "block_start_string",
            "block_end_string",
            "variable_start_string",
            "variable_end_string",
            "comment_start_string",
            "comment_end_string",
            "line_statement_prefix",
            "line_comment_prefix",
            "trim_blocks",
            "lstrip_blocks",
            "newline_sequence",
            "keep_trailing_newline",
            "optimized",
            "undefined",
            "autoescape",
        )
    }
    environment = LimitedEnvironment(extensions=[type(ext) for ext in reference.extensions.values()], **options)
    environment.offsets = offsets
    environment.filters.update(reference.filters)
    environment.tests = GuardedTests(reference.tests)
    environment.globals.update(reference.globals)
    environment.globals["lipsum"] = lipsum
    environment.policies = dict(reference.policies)
    return environment
