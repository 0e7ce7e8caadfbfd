"""transformers' chat-template renderer, in a bounded environment.

`render_chat` does what `transformers.utils.chat_template_utils.render_jinja_template` does (the code TRL's
masks come from): the same preparation of the conversation (plain data only, reasoning under each of its
names, tools given as functions turned into schemas), the same rendering, and, for assistant masks,
transformers' own `AssistantTracker` and `_render_with_assistant_indices`. Only the template is compiled
differently: by a `templatekit.core.sandbox.LimitedEnvironment` configured exactly like the environment
transformers compiles chat templates with (read off one transformers compiled: its options, its extension
classes, filters, tests, globals and policies), so every render is bounded by the limits in force. The text
and spans are transformers' own: the limit hooks check, then do exactly what jinja2 does.

An untrusted template is never handed to transformers' own compiler: jinja2 runs some filters at compile
time on constant arguments, and `{{ 'x' | center(10**10) }}` would be built there, outside any limit.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from inspect import isfunction
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers.utils import chat_template_utils as _hf

from . import sandbox
from .syntax import strftime_now

__all__ = ["compile_chat_template", "render_chat", "transformers_environment"]

_plain = getattr(_hf, "_plain_template_data", lambda value: value)
_alias = getattr(_hf, "_alias_reasoning_fields", lambda chat: chat)


@functools.lru_cache(maxsize=1)
def _reference() -> jinja2.Environment:
    """The environment transformers compiles chat templates with (read off a constant template of ours)."""
    return _hf._compile_jinja_template("{{ '' }}").environment


@functools.lru_cache(maxsize=1)
def transformers_environment() -> jinja2.Environment:
    """A bounded twin of transformers' chat-template environment.

    The one difference is `strftime_now`: templatekit's, which reads the real clock as transformers' does,
    except inside `syntax.probe_clock()` (probe renders read one fixed instant).
    """
    reference = _reference()
    if sandbox.enabled():
        # Compiled once per template text, many per patch: jinja2's own (faster) parser; a limit reached here
        # names its line (the traced renders before, from the parsed template, name the column too).
        environment = sandbox.mirror_environment(reference, offsets=False)
    else:  # the limits switched off (benchmarks): the same twin without hooks
        environment = _plain_twin(reference)
    environment.globals["strftime_now"] = strftime_now
    return environment


def _plain_twin(reference: jinja2.Environment) -> jinja2.Environment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=reference.trim_blocks,
        lstrip_blocks=reference.lstrip_blocks,
        extensions=[type(ext) for ext in reference.extensions.values()],
    )
    environment.filters.update(reference.filters)
    environment.tests = dict(reference.tests)
    environment.globals.update(reference.globals)
    environment.policies = dict(reference.policies)
    return environment


def compile_chat_template(template: str) -> jinja2.Template:
    """`template` compiled by `transformers_environment()` (cached, like transformers' own compiler; the compile
    is charged to the limits in force either way, `sandbox.charge_compiled`)."""
    return sandbox.charge_compiled(_compiled(template))


@functools.lru_cache(maxsize=256)
def _compiled(template: str) -> jinja2.Template:
    return transformers_environment().from_string(template)


sandbox.on_switch(transformers_environment.cache_clear)
sandbox.on_switch(_compiled.cache_clear)


def _tool_schemas(tools: list | None) -> list | None:
    if tools is None:
        return None
    schemas = []
    for tool in tools:
        if isinstance(tool, dict):
            schemas.append(tool)
        elif isfunction(tool) or inspect.ismethod(tool):
            schemas.append(_hf.get_json_schema(tool))
        else:
            raise ValueError(
                "Tools should either be a JSON schema, or a callable function with type hints "
                "and a docstring suitable for auto-conversion to a schema."
            )
    return schemas


def render_chat(
    conversations: list,
    tools: list[dict | Callable] | None = None,
    documents: list | None = None,
    chat_template: str | None = None,
    return_assistant_tokens_mask: bool = False,
    continue_final_message: bool | str = False,
    add_generation_prompt: bool = False,
    **kwargs: Any,
) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """`render_jinja_template`'s texts and generation spans, rendered within the limits in force.

    Raises what the template raises, and `TemplateLimitError` when it goes past a limit.

    Example:
        >>> template = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}!{% endfor %}"
        >>> render_chat([[{"role": "assistant", "content": "Hi"}]], chat_template=template,
        ...             return_assistant_tokens_mask=True)
        (['Hi!'], [[(0, 2)]])
    """
    if continue_final_message:
        raise NotImplementedError("continue_final_message: render with transformers' apply_chat_template instead")
    compiled = compile_chat_template(chat_template)
    tool_schemas = _plain(_tool_schemas(tools))
    if documents is not None:
        for document in documents:
            if not isinstance(document, dict):
                raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")
    documents = _plain(documents)
    kwargs = _plain(kwargs)
    rendered, all_indices = [], []
    for chat in conversations:
        if hasattr(chat, "messages"):
            chat = chat.messages
        chat = _plain(chat)
        for message in chat:
            if not isinstance(message, dict):
                raise TypeError(f"Chat messages should be dicts, dataclasses or pydantic models, but got {message!r}.")
        chat = _alias(chat)
        if return_assistant_tokens_mask:
            text, indices = _hf._render_with_assistant_indices(
                compiled_template=compiled,
                messages=chat,
                tools=tool_schemas,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
            all_indices.append(indices)
        else:
            text = compiled.render(
                messages=chat,
                tools=tool_schemas,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
        rendered.append(text)
    return rendered, all_indices
