"""Rendered text plus trained character spans, for any chat template.

`SpanRenderer` decides once per template how to find the trained text:

* **tags**: `patch_template` makes a verified copy of the template with `{% generation %}` tags, and each
  render reports the tagged spans (transformers' own tracker, the same one TRL reads);
* **delimiters**: when the template cannot be patched (or `fallback=True`, or explicit
  `instruction_part` / `response_part` are given), spans are found between the response parts and the
  end-of-turn marker that `fallback.derive_delimiters` learned from probe renders.

Either way the text is exactly what `tokenizer.apply_chat_template(..., tokenize=False)` renders: the
template is compiled once (in a bounded twin of transformers' sandboxed environment) and rendered per
conversation, each render within the renderer's limits (`timeout`, `max_memory`: `templatekit.core.sandbox`).
Then `policies` ties each span to its message and applies the `Policy`: weights, `last_response_only`,
`train_on_eot`, `train_reasoning`, `mask_out`.

Pass what `apply_chat_template` would pass to the template (`bos_token`, `eos_token`, `enable_thinking`, …)
as keyword arguments: the renderer adds nothing the caller did not give.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.chat_render import render_chat
from ..core.pipeline import check_template, patch_template
from ..core.probes import build_probes
from ..core.report import PatchResult
from ..core.sandbox import limit_scope
from ..core.tags import has_generation_tags
from ..core.verify import merge_adjacent, render_probe
from ..errors import (
    ConversationError,
    FallbackError,
    MarkerCollision,
    PatchError,
    TemplateLimitError,
    TemplateSourceError,
)
from .delimiters import Delimiters, find_spans
from .fallback import derive_delimiters
from .options import Limits, resolve
from .policies import MessageSpan, Policy, attribute, check_messages, unknown_roles
from .tagged_render import render_tagged

__all__ = ["SpanRenderer", "render_with_spans", "row_kwargs"]


def _tag_shape(tagged: str, speakers: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """End-of-turn markers and the reasoning closer, as the tagged template's probe spans show them."""
    eots: list[str] = []
    closer = ""
    for probe in build_probes(speakers):
        rendered = render_probe(tagged, probe, spans=True)
        if rendered.text is None:
            continue
        text = rendered.text
        found = sorted((text.find(s.text), s) for s in probe.sentinels if s.role in speakers and s.text in text)
        for start, end in merge_adjacent(rendered.spans):
            inside = [(at, s) for at, s in found if start <= at < end]
            if inside and inside[-1][1].kind == "content":
                tail = text[inside[-1][0] + len(inside[-1][1].text) : end]
                if tail.strip() and tail not in eots:
                    eots.append(tail)
            kinds = [s.kind for _, s in inside]
            if not closer and "reasoning" in kinds and "content" in kinds:
                at_r, r = next((at, s) for at, s in inside if s.kind == "reasoning")
                at_c = next(at for at, s in inside if s.kind == "content")
                if at_r < at_c:
                    closer = text[at_r + len(r.text) : at_c].strip()
    return tuple(eots), closer


class SpanRenderer:
    """Render conversations with one template and return the text and its trained character spans.

    Args:
        template: the chat template (with or without generation tags).
        policy: the loss policy (`Policy`: trained roles, `last_response_only`, `train_on_eot`,
            `train_reasoning`, `mask_out`); its fields are keywords here too (``train_on_eot="last"``).
        limits: `Limits`; here `max_steps`, `max_memory` and `timeout` (steps of work; bytes or `"512M"`; seconds
            of wall clock, a backstop; keywords too) bound building the renderer (patching and verifying the
            template, or learning its delimiters) and then each conversation rendered; default 50,000,000 steps,
            1 GiB and 60 s. A template that goes past them raises `TemplateLimitError`.
        instruction_part, response_part: explicit delimiters (Unsloth's meaning); implies the fallback.
        fallback: `None` tags when the template can be patched, else delimiters; `True` always delimiters;
            `False` tags or `PatchError`.
        template_kwargs: switches fixed for every render (``{"enable_thinking": False}``); the tags are verified
            with them so. Leave a switch out to have the tags verified under each of its settings.

    Attributes: `mode` (`"tags"` or `"delimiters"`), `template` (the tagged template in tags mode, the
    original otherwise), `patched` (in tags mode: `patch_template`'s `PatchResult`, its report and notes),
    `delimiters` (in delimiters mode), `reasons` (why tags were not used).

    Example:
        >>> template = (
        ...     "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        ...     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        ... )
        >>> renderer = SpanRenderer(template)
        >>> text, spans = renderer.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}])
        >>> renderer.mode, [text[s:e] for s, e in spans]
        ('tags', ['Hey<|im_end|>'])
        >>> text, spans = SpanRenderer(template, fallback=True).render(
        ...     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}])
        >>> [text[s:e] for s, e in spans]
        ['Hey<|im_end|>']
    """

    def __init__(
        self,
        template: str,
        *,
        policy: Policy | None = None,
        limits: Limits | None = None,
        instruction_part: str | Sequence[str] | None = None,
        response_part: str | Sequence[str] | None = None,
        fallback: bool | None = None,
        template_kwargs: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        **keywords: Any,
    ) -> None:
        self.policy, self.limits = resolve(policy, limits, keywords, caller="SpanRenderer")
        if not isinstance(template, str):  # as patch_template refuses it (and the fallback alike)
            raise TemplateSourceError(f"a template must be text, not {type(template).__name__}")
        if not template.strip():
            raise TemplateSourceError("the template is empty", line=1, column=1)
        self._sandbox = self.limits.sandbox()
        with limit_scope(self._sandbox):  # patching and verifying (or learning delimiters) within the limits
            self.original = template
            # Switches fixed for every render (`enable_thinking=False`): the tags are verified with them so, and
            # under every setting of the template's other switches.
            self.template_kwargs = dict(template_kwargs or {})
            self.reasons: list[str] = []
            self.patched: PatchResult | None = None
            self.delimiters: Delimiters | None = None
            explicit = instruction_part is not None or response_part is not None
            speakers = self.policy.train_roles
            if fallback is not True and not explicit:
                try:
                    self.template, self.mode = self._verified_tags(template) or self._patched(template), "tags"
                except PatchError as error:
                    if fallback is False:
                        raise
                    self.reasons = [f"cannot patch: {reason}" for reason in error.reasons]
            if not hasattr(self, "mode"):
                try:
                    self.delimiters = derive_delimiters(
                        template, speakers, response_part=response_part, instruction_part=instruction_part
                    )
                except FallbackError as error:
                    raise FallbackError(self.reasons + error.reasons) from None
                self.template = template
                self.mode = "delimiters"
            self._shape: tuple[tuple[str, ...], str] | None = None

    def _patched(self, template: str) -> str:
        speakers = self.policy.train_roles
        self.patched = patch_template(template, train_roles=speakers, retag=True, template_kwargs=self.template_kwargs)
        return self.patched.template

    def _verified_tags(self, template: str) -> str | None:
        """The template itself when its own tags verify for the trained roles: for every turn, or for the last one
        only (a template patched with `only_last_turn`, which TRL too trains as its tags say)."""
        if not has_generation_tags(template):
            return None
        for only_last_turn in (False, True):
            report = check_template(
                template,
                train_roles=self.policy.train_roles,
                only_last_turn=only_last_turn,
                template_kwargs=self.template_kwargs,
            )
            if report.ok:
                return template
        return None

    def _eots_and_closer(self) -> tuple[tuple[str, ...], str]:
        if self._shape is None:
            if self.delimiters is not None:
                d = self.delimiters
                self._shape = (d.eots, d.reasoning_close)
            else:
                with limit_scope(self._sandbox):
                    self._shape = _tag_shape(self.template, self.policy.train_roles)
        return self._shape

    def render(
        self,
        messages: Sequence[Mapping],
        *,
        tools: list | None = None,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> tuple[str, list[tuple[int, int]]]:
        """Render one conversation; return `(text, spans)` with `spans` the trained `[start, end)` ranges.

        Raises `ConversationError` for a malformed conversation, one the template rejects (naming roles it
        was not probed with), or one whose trained messages the template does not render one turn each;
        `TemplateLimitError` when the render goes past the renderer's limits.
        """
        trained, weighted = check_messages(messages, self.policy.train_roles)
        tags = self.mode == "tags"
        # The tags hold under every setting of the template's switches but those fixed by `template_kwargs`.
        planned = self.template_kwargs
        wrong = [(key, value) for key, value in kwargs.items() if tags and key in planned and planned[key] != value]
        if wrong:
            key, value = wrong[0]
            raise ConversationError(
                f"the tags were verified for template_kwargs={planned!r} only, and this render sets {key}={value!r}: "
                f"leave {key!r} out of template_kwargs so that the tags are verified under each of its settings"
            )
        kwargs = {**self.template_kwargs, **kwargs}
        try:
            with limit_scope(self._sandbox):
                text, spans = _render(self.template, messages, tags, tools, add_generation_prompt, kwargs)
        except TemplateLimitError:
            raise
        except Exception as error:  # the template's own raise_exception, or a type error inside it
            odd = unknown_roles(messages, self.policy.train_roles)
            hint = f" ({odd})" if odd else ""
            raise ConversationError(f"the template rejects the conversation{hint}: {type(error).__name__}: {error}")
        if tags:
            spans = merge_adjacent(spans)
        else:
            spans = find_spans(text, self.delimiters, add_generation_prompt=add_generation_prompt)
        split = not tags and self.delimiters.split_turns
        if not tags and not split and len(spans) > len(trained):
            # More turns than trained messages, from a template that writes each message as one turn: a
            # delimiter occurs inside some content.
            attribute(spans, messages, trained)
        per_message = len(weighted) != len(trained) or self.policy.last_response_only
        if not per_message and not self.policy.narrows:
            return text, spans
        if not per_message:
            # End-of-turn, reasoning and mask_out rules act on each span alone: no span need be tied to a message.
            turns, weighted = [MessageSpan(-1, start, end) for start, end in spans], None
        elif split and len(spans) != len(trained):
            raise ConversationError(
                f"the template writes some {'/'.join(self.policy.train_roles)} messages in several pieces (around "
                f"tool results): {len(spans)} trained span(s) for {len(trained)} message(s), and delimiters cannot "
                "tell which piece is whose, so per-message weights and last_response_only cannot be applied"
            )
        else:
            turns = attribute(spans, messages, trained)
        eots, closer = self._eots_and_closer()
        return text, self.policy.apply(text, turns, weighted, eots=eots, reasoning_close=closer)


@functools.lru_cache(maxsize=32)
def _renderer(template: str, policy: Policy, limits: Limits, options: tuple) -> SpanRenderer:
    return SpanRenderer(template, policy=policy, limits=limits, **dict(options))


def _hashable(value):
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, Mapping):
        return tuple(sorted(value.items()))
    return value


def _render(template: str, messages, tags: bool, tools, add_generation_prompt: bool, kwargs: dict):
    """Text and generation spans: the template compiled once (`tagged_render`), or transformers' own renderer for
    what only it prepares (tools given as Python functions) and where the marks cannot place a block (`MarkerCollision`).
    Both are bounded by the limits in force."""
    if not tools or not any(callable(tool) for tool in tools):
        try:
            return render_tagged(
                template, list(messages), tools=tools, add_generation_prompt=add_generation_prompt, **kwargs
            )
        except MarkerCollision:
            pass
    texts, indices = render_chat(
        conversations=[messages],
        chat_template=template,
        return_assistant_tokens_mask=tags,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    return texts[0], [tuple(span) for span in indices[0]] if tags else []


def row_kwargs(settings: Any) -> dict[str, Any]:
    """A row's own template keywords (TRL's `chat_template_kwargs`): a key the row lacks is left unset, though
    Arrow writes it as None when other rows have it; anything but a mapping is no keywords.

    Example:
        >>> row_kwargs({"enable_thinking": False, "reasoning_effort": None}), row_kwargs(None)
        ({'enable_thinking': False}, {})
    """
    if not isinstance(settings, Mapping):
        return {}
    return {key: value for key, value in settings.items() if value is not None}


def render_with_spans(
    template: str,
    messages: Sequence[Mapping],
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    tools: list | None = None,
    add_generation_prompt: bool = False,
    instruction_part: str | Sequence[str] | None = None,
    response_part: str | Sequence[str] | None = None,
    fallback: bool | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` with `template`; return the text and the trained character spans.

    `policy`, `limits` and the keywords naming their fields (`train_roles`, `last_response_only`, `train_on_eot`,
    `train_reasoning`, `mask_out`; `max_steps`, `timeout`, `max_memory`), with `instruction_part`, `response_part`,
    `fallback` and `template_kwargs`, configure a cached `SpanRenderer`; every other keyword goes to the template,
    as `apply_chat_template` passes them (`bos_token`, `enable_thinking`, …). The tags hold under every setting of
    the template's switches, so a
    switch such as ``enable_thinking=False`` moves the trained text with it.

    Example:
        >>> template = (
        ...     "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        ...     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        ... )
        >>> text, spans = render_with_spans(template, [{"role": "user", "content": "2+2?"},
        ...                                            {"role": "assistant", "content": "4"}])
        >>> [text[s:e] for s, e in spans]
        ['4<|im_end|>']
        >>> text, spans = render_with_spans(template, [{"role": "user", "content": "2+2?"},
        ...                                            {"role": "assistant", "content": "4"}], train_on_eot="none")
        >>> [text[s:e] for s, e in spans]
        ['4']
    """
    policy, limits = resolve(policy, limits, kwargs)
    options = {
        "instruction_part": _hashable(instruction_part),
        "response_part": _hashable(response_part),
        "fallback": fallback,
        "template_kwargs": _hashable(dict(template_kwargs or {})),
    }
    renderer = _renderer(template, policy, limits, tuple(sorted(options.items())))
    return renderer.render(messages, tools=tools, add_generation_prompt=add_generation_prompt, **kwargs)
