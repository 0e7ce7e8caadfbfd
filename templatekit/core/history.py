"""Does the template render a past turn the way the model generated it?

Some templates rewrite history: the Qwen3 / 3.5 family drops the reasoning of every assistant turn before the
last user message, so a turn reads `<think>…</think>answer` while it is the last message (what the model
generates after its prompt) and `answer` once the conversation goes on. Training every turn of the full
conversation then trains the earlier turns in a form the model never produces; `prepare_dataset(per_turn=True)`
trains each turn in its own row, rendered as generated.

`history_mismatch` finds such a template with the probe conversations: for each trained turn k that is not the
last message, it compares the turn in `render(messages)` (history) with the turn in `render(messages[:k + 1])`
(the turn as generated), from the end of the message before it through the turn's last sentinel, and names the
first character that differs. A difference only in the stop marker or after the turn is not reported.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import TemplateLimitError
from .chat_render import render_chat
from .probes import ASSISTANT, Probe, build_probes
from .syntax import probe_clock

__all__ = ["history_mismatch"]

# The probes that show the difference most plainly come first (reasoning in two turns).
_FIRST = ("reasoning_multi_turn", "multi_turn", "reasoning_tool_call")


def _render(template: str, probe: Probe, messages: list, add_generation_prompt: bool) -> str | None:
    kwargs = {**probe.render_kwargs(), "add_generation_prompt": add_generation_prompt}
    try:
        texts, _ = render_chat(conversations=[messages], chat_template=template, **kwargs)
    except TemplateLimitError:
        raise
    except Exception:  # the template rejects this conversation (or its prefix): nothing to compare
        return None
    return texts[0]


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 30 else text[:29] + "…")


def _turn_mismatch(template: str, probe: Probe, full: str, k: int) -> str | None:
    """The note for turn `k` of `probe` when its history differs from the turn as generated, else None."""
    messages = probe.messages
    generated = _render(template, probe, messages[: k + 1], False)
    prompt = _render(template, probe, messages[:k], True) if k else ""
    if generated is None:
        return None
    own = [s.text for s in probe.sentinels if s.index == k and s.text in generated]
    before = [s.text for s in probe.sentinels if 0 <= s.index < k]
    if not own:
        return None
    turn_end = max(generated.find(text) + len(text) for text in own)
    # Both renders are read from the end of the message before the turn (the prefixes may differ elsewhere).
    anchor = before[-1] if before else None
    if anchor is not None and (anchor not in generated or anchor not in full):
        return None
    g0 = generated.find(anchor) + len(anchor) if anchor else 0
    h0 = full.find(anchor) + len(anchor) if anchor else 0
    limit = turn_end - g0
    at = next((i for i, (a, b) in enumerate(zip(generated[g0:turn_end], full[h0 : h0 + limit])) if a != b), None)
    if at is None:
        if len(full) - h0 >= limit:
            return None
        at = len(full) - h0
    # Where the model starts generating: the end of what the prompt shares with the render ending on the turn.
    start = g0
    if prompt is not None:
        shared = next(
            (i for i, (a, b) in enumerate(zip(prompt, generated)) if a != b), min(len(prompt), len(generated))
        )
        start = max(g0, shared)
    position = g0 + at - start
    if position >= 0:
        where = f"character {position} of the turn"
    else:
        where = f"{-position} character(s) before the generated text (in the generation prompt)"
    return (
        f"history renders message {k} unlike the turn as generated (probe {probe.name!r}): first difference at "
        f"{where}: history {_excerpt(full[h0 + at : h0 + at + 30])}, generated "
        f"{_excerpt(generated[g0 + at : g0 + at + 30])}; every turn but the last is trained in a form the model "
        "does not generate: use prepare_dataset(per_turn=True)"
    )


def history_mismatch(
    template: str, train_roles: Sequence[str] = (ASSISTANT,), probes: Sequence[Probe] | None = None
) -> str | None:
    """A note naming the first character where the template renders a past trained turn unlike the turn as
    generated (the render that ends on it), or None when every probed turn renders alike.

    `template` is rendered as is (with or without generation tags: the text is the same).

    Example:
        >>> plain = (
        ...     "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        ... )
        >>> history_mismatch(plain) is None
        True
        >>> dropping = (
        ...     "{% for m in messages %}{{ m.role + ': ' }}{% if m.role == 'assistant' and loop.last %}"
        ...     "{{ '<think>' + m.reasoning_content + '</think>' }}{% endif %}{{ m.content + '\\n' }}{% endfor %}"
        ... )
        >>> print(history_mismatch(dropping).split(": history")[0])
        history renders message 2 unlike the turn as generated (probe 'reasoning_multi_turn'): first difference at character 11 of the turn
    """
    speakers = tuple(train_roles) or (ASSISTANT,)
    battery = list(probes) if probes is not None else build_probes(speakers)
    order = {name: rank for rank, name in enumerate(_FIRST)}
    battery.sort(key=lambda probe: order.get(probe.name, len(order)))
    with probe_clock():
        for probe in battery:
            turns = [i for i, m in enumerate(probe.messages[:-1]) if m.get("role") in speakers]
            if not turns:
                continue
            full = _render(template, probe, probe.messages, probe.add_generation_prompt)
            if full is None:
                continue
            for k in turns:
                note = _turn_mismatch(template, probe, full, k)
                if note is not None:
                    return note
    return None
