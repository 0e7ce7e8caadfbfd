"""Probe conversations whose every text is a unique sentinel, so a rendering can be read back.

A sentinel tells whose text a character is (system, user, tool, a trained or untrained speaker) and what it
is (content, reasoning, a tool call's arguments). Probes cover a single turn, several turns, a system
message, a conversation ending on a user turn with and without the generation prompt, a tool call with
its result and `tools=` schemas, content plus a tool call, and reasoning. Each comes in two content
shapes: plain strings, and lists of `{"type": "text"}` blocks for templates that only read blocks.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

ASSISTANT = "assistant"
# What apply_chat_template passes along; many templates concatenate these and fail when undefined.
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


# Each kind's three letters in a sentinel, distinct so that no two sentinels of a message are equal.
_KIND_SLUGS = {"content": "con", "reasoning": "rea", "tool_name": "fun", "tool_call": "too"}


@dataclass(frozen=True)
class Sentinel:
    """One sentinel string: whose it is (`role`, message `index`) and what it is (`kind`)."""

    text: str
    role: str
    index: int
    kind: str  # "content", "reasoning", "tool_name", "tool_call" (arguments), "tool_id", "tool_schema"


@dataclass
class Probe:
    """A conversation plus render options, and the sentinels its messages carry."""

    name: str
    messages: list[dict]
    tools: list[dict] | None = None
    add_generation_prompt: bool = False
    sentinels: list[Sentinel] = field(default_factory=list)
    # The template's own switches for this render (`enable_thinking=False`, ...), as apply_chat_template's kwargs.
    template_kwargs: dict = field(default_factory=dict)

    def render_kwargs(self) -> dict:
        """Keyword arguments for a chat-template render of this probe."""
        return {
            **self.template_kwargs,
            "add_generation_prompt": self.add_generation_prompt,
            "tools": self.tools,
            **SPECIAL_TOKENS,
        }


def render_key(messages: list, options: dict) -> str | None:
    """One string for a conversation and its render options, equal for equal renders (the key the analysis and the
    verifier keep their renders under); None when they are not plain JSON data, to be rendered afresh.

    Example:
        >>> render_key([{"role": "user", "content": "hi"}], {"b": 1, "a": None})
        '[[{"content": "hi", "role": "user"}], {"a": null, "b": 1}]'
    """
    try:
        return json.dumps([messages, options], sort_keys=True)
    except (TypeError, ValueError):
        return None


class _Builder:
    def __init__(self, name: str, blocks: bool):
        self.probe = Probe(name, [])
        self.blocks = blocks
        self.call_ids: list[str] = []  # the ids of the last message's tool calls, for the results to refer to

    def _call_id(self, role: str, call: int) -> str:
        # A call's id is generated with the call where the template writes it there (a sentinel of its own); nine
        # alphanumerics, since Mistral's templates refuse any other tool-call id.
        index = len(self.probe.messages)
        text = f"tkid{index:02d}{call}qq"
        self.probe.sentinels.append(Sentinel(text, role, index, "tool_id"))
        return text

    def _sentinel(self, role: str, kind: str, part: str = "") -> str:
        index = len(self.probe.messages)
        slug = "".join(ch for ch in role if ch.isalnum())[:6]
        text = f"tk{slug}{_KIND_SLUGS[kind]}{index}{part}q"
        self.probe.sentinels.append(Sentinel(text, role, index, kind))
        return text

    def say(
        self, role: str, *, reasoning: bool = False, tool_call: bool = False, content: bool = True, calls: int = 1
    ) -> _Builder:
        message: dict = {"role": role}
        text = self._sentinel(role, "content") if content else ""
        message["content"] = [{"type": "text", "text": text}] if self.blocks and content else text
        if reasoning:
            thought = self._sentinel(role, "reasoning")
            # transformers passes reasoning under both names; templates read either.
            message["reasoning_content"] = thought
            message["thinking"] = thought
        if tool_call:
            self.call_ids = [self._call_id(role, call) for call in range(calls)]
            message["tool_calls"] = [
                {
                    "id": self.call_ids[call],
                    "type": "function",
                    "function": {
                        # The name is generated too: a sentinel of its own, so its framing is not read as header.
                        "name": self._sentinel(role, "tool_name", "abcdefgh"[call] if call else ""),
                        "arguments": {"city": self._sentinel(role, "tool_call", "abcdefgh"[call] if call else "")},
                    },
                }
                for call in range(calls)
            ]
        self.probe.messages.append(message)
        return self

    def tool_result(self, call: int = 1) -> _Builder:
        text = self._sentinel("tool", "content")
        content = [{"type": "text", "text": text}] if self.blocks else text
        self.probe.messages.append(
            {"role": "tool", "tool_call_id": self.call_ids[call - 1], "name": "get_weather", "content": content}
        )
        return self

    def with_tools(self) -> _Builder:
        description = f"tkschema{len(self.probe.sentinels)}q"
        self.probe.sentinels.append(Sentinel(description, "tool_schema", -1, "tool_schema"))
        self.probe.tools = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": description,
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "description": "The city"}},
                        "required": ["city"],
                    },
                },
            }
        ]
        return self

    def generation_prompt(self) -> _Builder:
        self.probe.add_generation_prompt = True
        return self


def call_variants(probe: Probe) -> list[Probe]:
    """Copies of a probe with tool calls in the other shapes real data has, for a template that rejects the first:
    arguments as a JSON string (OpenAI's wire format) instead of a mapping, then also `content: None` on a message
    that only calls tools.

    Example:
        >>> probe = next(p for p in build_probes() if p.name == "tool_call")
        >>> [type(v.messages[2]["tool_calls"][0]["function"]["arguments"]).__name__ for v in call_variants(probe)]
        ['str', 'str']
        >>> [v.messages[2]["content"] for v in call_variants(probe)]
        ['', None]
    """
    if not any(message.get("tool_calls") for message in probe.messages):
        return []
    as_json = copy.deepcopy(probe)
    for message in as_json.messages:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    without_content = copy.deepcopy(as_json)
    for message in without_content.messages:
        if message.get("tool_calls") and not message.get("content"):
            message["content"] = None
    return [as_json, without_content]


def without_content(probe: Probe) -> Probe | None:
    """A copy of `probe` whose messages that only call tools have `content: None` instead of an empty string (both
    occur in real data, and templates branch on them), or None when it has no such message.

    Example:
        >>> probe = next(p for p in build_probes() if p.name == "tool_call")
        >>> without_content(probe).messages[2]["content"], without_content(build_probes()[0])
        (None, None)
    """
    if not any(message.get("tool_calls") and not message.get("content") for message in probe.messages):
        return None
    variant = copy.deepcopy(probe)
    variant.name += "[none]"
    for message in variant.messages:
        if message.get("tool_calls") and not message.get("content"):
            message["content"] = None
    return variant


def build_probes(
    speakers: tuple[str, ...] = (ASSISTANT,), *, blocks: bool = False, template_kwargs: dict | None = None
) -> list[Probe]:
    """The probe battery, with each trained speaker in the assistant's seat, rendered with `template_kwargs`.

    Example:
        >>> probes = build_probes()
        >>> [m["role"] for m in probes[0].messages]
        ['user', 'assistant']
        >>> probes[0].sentinels[1].text
        'tkassistcon1q'
    """
    probes: list[Probe] = []
    for speaker in speakers:
        tag = "" if speaker == ASSISTANT else f"[{speaker}]"

        def new(name: str) -> _Builder:
            return _Builder(name + tag, blocks)

        probes += [
            new("single_turn").say("user").say(speaker).probe,
            new("system_single_turn").say("system").say("user").say(speaker).probe,
            new("multi_turn").say("system").say("user").say(speaker).say("user").say(speaker).probe,
            new("multi_turn_no_system").say("user").say(speaker).say("user").say(speaker).probe,
            new("ends_on_user").say("system").say("user").say(speaker).say("user").probe,
            new("generation_prompt").say("system").say("user").say(speaker).say("user").generation_prompt().probe,
            new("generation_prompt_first").say("user").generation_prompt().probe,
        ]
        if speaker == ASSISTANT:
            probes += [
                new("tool_call")
                .with_tools()
                .say("system")
                .say("user")
                .say(speaker, tool_call=True, content=False)
                .tool_result()
                .say(speaker)
                .probe,
                new("tool_call_with_content")
                .with_tools()
                .say("user")
                .say(speaker, tool_call=True)
                .tool_result()
                .say(speaker)
                .say("user")
                .probe,
                new("parallel_tool_calls")
                .with_tools()
                .say("user")
                .say(speaker, tool_call=True, content=False, calls=2)
                .tool_result(1)
                .tool_result(2)
                .say(speaker)
                .say("user")
                .probe,
                # An agent's step: it thinks, then calls (the two written by different parts of a template).
                new("reasoning_tool_call")
                .with_tools()
                .say("user")
                .say(speaker, reasoning=True, tool_call=True, content=False)
                .tool_result()
                .say(speaker, reasoning=True)
                .probe,
                # Rows that end on a call (an agent's step, as agentic data sets cut them): a template may write the
                # last calls apart from those in history (Kimi K2 keeps the reasoning only after the last answer).
                new("ends_on_tool_call").with_tools().say("user").say(speaker, tool_call=True, content=False).probe,
                new("agent_step")
                .with_tools()
                .say("user")
                .say(speaker, tool_call=True, content=False)
                .tool_result()
                .say(speaker, tool_call=True, content=False)
                .probe,
                new("reasoning").say("user").say(speaker, reasoning=True).probe,
                new("reasoning_multi_turn")
                .say("system")
                .say("user")
                .say(speaker, reasoning=True)
                .say("user")
                .say(speaker, reasoning=True)
                .probe,
            ]
    if ASSISTANT not in speakers:
        # The usual assistant speaks too, and must stay untrained.
        probes.append(
            _Builder("untrained_assistant", blocks).say("user").say(speakers[0]).say("user").say(ASSISTANT).probe
        )
    for probe in probes:
        probe.template_kwargs = dict(template_kwargs or {})
    return probes
