"""Vision-language processors and TRL's native route: `patch_processor` and `check_processor`.

TRL's native route for a processor is `SFTConfig(assistant_only_loss=True)` with a chat template that carries
generation tags: its vision collator asks `processor.apply_chat_template(..., return_assistant_tokens_mask=True)`
for the mask. Whether that mask is right depends on the processor and the library versions: transformers moves the
generation spans by the characters the images add only where the processor records its replacements (from 5.18),
TRL accepts the route for processors only from 1.15, and a processor with its own `__call__` and no records
(Idefics2, mllama, BLIP-2, Florence-2, ...) gets spans that point at image tokens.

`check_processor` renders probe conversations with small Pillow images through TRL's own collator and compares
its labels with `VisionMasker`'s (templatekit's text spans moved onto the expanded tokens, media never trained).
`patch_processor` patches the processor's template (and the tokenizer's, where it differs) and refuses a processor
for which the check finds TRL's route wrong, naming why: use `templatekit.VisionCollator` then.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..core.pipeline import patch_template
from ..core.tags import has_generation_tags
from ..errors import (
    ArgumentTypeError,
    DatasetRowError,
    InvalidArgumentError,
    MediaAlignmentError,
    ProcessorRouteError,
    TemplateKitError,
)
from ..training.vision import VisionMasker
from ..training.vision_inputs import is_processor

__all__ = [
    "PROBES",
    "ProcessorReport",
    "check_processor",
    "patch_processor",
    "probe_conversations",
    "route_versions",
]

#: TRL accepts `assistant_only_loss` for processors from 1.15, and then needs transformers 5.18 (which moves the
#: generation spans by what the replaced image placeholders added).
MIN_TRL, MIN_TRANSFORMERS = (1, 15), (5, 18)


def _image(width: int, height: int, seed: int) -> Any:
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata(
        [((x * 7 + seed) % 256, (y * 5 + seed) % 256, (x * y) % 256) for y in range(height) for x in range(width)]
    )
    return image


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


_CALL = {"type": "function", "function": {"name": "zoom", "arguments": {"region": "top left"}}}
#: A tool schema: whether the template writes tools into the prompt (TRL's vision collator passes none).
_TOOL = {
    "type": "function",
    "function": {
        "name": "zoom",
        "description": "Enlarge part of the image",
        "parameters": {"type": "object", "properties": {"region": {"type": "string"}}, "required": ["region"]},
    },
}


def _probes() -> list[tuple[str, list[dict]]]:
    """Conversations that exercise a processor: images of two sizes, in one turn and across turns, after a system
    prompt, a tool call (content blocks, as TRL's collator leaves them) and a tool result holding an image; the last
    one has an image inside the assistant's turn."""
    small, large = _image(40, 30, 1), _image(72, 56, 2)
    ask = {"role": "user", "content": [{"type": "image", "image": small}, _text("What is in the picture?")]}
    answer = {"role": "assistant", "content": [_text("A gradient of red and green.")]}
    again = {
        "role": "user",
        "content": [_text("And these two?"), {"type": "image", "image": large}, {"type": "image", "image": small}],
    }
    compare = {"role": "assistant", "content": [_text("The first is larger; both are gradients.")]}
    system = {"role": "system", "content": [_text("You describe images in one sentence.")]}
    call = {"role": "assistant", "content": [], "tool_calls": [_CALL]}
    result = {"role": "tool", "content": [_text("zoomed:"), {"type": "image", "image": large}]}
    shown = {
        "role": "assistant",
        "content": [_text("Here it is: "), {"type": "image", "image": large}, _text(" Done.")],
    }
    return [
        ("one image", [ask, answer]),
        ("images across two turns", [ask, answer, again, compare]),
        ("system prompt and a tool result", [system, ask, call, result, answer]),
        ("an image inside the assistant's turn", [ask, shown]),
    ]


def probe_conversations() -> list[tuple[str, list[dict]]]:
    """`check_processor`'s probes, `(name, messages)`, each image a small Pillow image (a fresh copy each call).

    Example:
        >>> [name for name, _ in probe_conversations()] == list(PROBES)
        True
    """
    return _probes()


#: The probe names, in order (the last puts an image inside the assistant's turn).
PROBES = (
    "one image",
    "images across two turns",
    "system prompt and a tool result",
    "an image inside the assistant's turn",
)
_ASSISTANT_IMAGE = PROBES[-1]


def _at_least(installed: str | None, minimum: tuple[int, int]) -> bool:
    if installed is None:
        return False
    from packaging.version import Version

    return Version(installed) >= Version(".".join(map(str, minimum)) + ".0.dev0")


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def route_versions(trl: str | None, transformers: str | None) -> list[str]:
    """Why these TRL and transformers versions cannot take the native route for a processor (empty: they can).

    Example:
        >>> route_versions("1.14.0", "5.25.0")
        ['TRL 1.14.0 does not accept assistant_only_loss for a processor (it does from 1.15)']
        >>> route_versions("1.16.0", "5.17.1")
        ['transformers 5.17.1 does not move the generation spans by the image tokens (TRL needs 5.18 or later)']
    """
    reasons = []
    if not _at_least(trl, MIN_TRL):
        reasons.append(
            f"TRL {trl or '(not installed)'} does not accept assistant_only_loss for a processor (it does from 1.15)"
        )
    if not _at_least(transformers, MIN_TRANSFORMERS):
        reasons.append(
            f"transformers {transformers} does not move the generation spans by the image tokens (TRL needs 5.18 or later)"
        )
    return reasons


@dataclass(frozen=True)
class ProbeResult:
    """One probe: the tokens TRL's native route trains and the exact ones (ids, in order), and the media tokens TRL
    trains."""

    name: str
    native: list[int]
    exact: list[int]
    media_trained: int

    @property
    def ok(self) -> bool:
        return self.native == self.exact and not self.media_trained


@dataclass
class ProcessorReport:
    """`check_processor`'s verdict: `ok` when TRL's native route trains exactly the assistant's tokens on every probe
    whose images are outside the assistant's turns; `reasons` (why not), `notes` (what to know even so), `probes`."""

    processor: str
    ok: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "exact" if self.ok else "NOT exact"
        lines = [f"{self.processor}: TRL's native route (assistant_only_loss=True) is {verdict}"]
        lines += [f"  - {reason}" for reason in self.reasons] + [f"  note: {note}" for note in self.notes]
        if not self.ok:
            lines.append("  use data_collator=templatekit.VisionCollator(processor) instead")
        return "\n".join(lines)


def _native_trained(processor: Any, template: str, messages: list[dict]) -> tuple[list[int], list[int]]:
    """The ids and the 0/1 labels mask TRL's own vision collator gives one conversation."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(
        processor=processor, assistant_only_loss=True, chat_template=template
    )
    output = collator([{"messages": copy.deepcopy(messages), "images": []}])
    ids = output["input_ids"][0].tolist()
    return ids, [int(label != -100) for label in output["labels"][0].tolist()]


def _first_difference(one: str, other: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(one, other)) if a != b), min(len(one), len(other)))
    return f"at character {at}: {one[max(0, at - 20) : at + 20]!r} against {other[max(0, at - 20) : at + 20]!r}"


def _rendering_notes(masker: VisionMasker) -> list[str]:
    """What TRL's vision collator renders unlike the conversation as given: it passes no tools, and it turns string
    content into text blocks (a template may write them differently: Qwen3-VL writes a newline before the tool call
    of a message whose content was "")."""
    from trl.data_utils import prepare_multimodal_messages

    notes = []
    ask = [{"role": "user", "content": "Zoom in."}]
    conversation = [*ask, {"role": "assistant", "content": "", "tool_calls": [_CALL]}]
    as_given = masker.render(conversation)[0]
    with_tools = masker.render(conversation, [_TOOL])[0]
    if with_tools != as_given:
        notes.append(
            "TRL's vision collator passes no tools to the template, so the tool definitions this template writes "
            "into the prompt are missing from TRL's rows (VisionCollator passes a row's tools)"
        )
    converted = masker.render(prepare_multimodal_messages(copy.deepcopy(conversation), images=[]))[0]
    if converted != as_given:
        notes.append(
            "TRL's vision collator turns string content into text blocks, which this template renders differently "
            f"({_first_difference(converted, as_given)}); VisionCollator renders the messages as given "
            "(a separate images column is placed as TRL does)"
        )
    return notes


def _compare(report: ProcessorReport, probe: str, masker: VisionMasker, row: Any, ids: list[int], mask: list[int]):
    """One probe's tokens: TRL's against the exact ones; a reason (or, for an image inside the assistant's turn,
    a note) when they differ."""
    exact = [token for token, t in zip(row.input_ids, row.trained) if t]
    native = [token for token, m in zip(ids, mask) if m]
    media = sum(1 for token in native if token in masker.media.ids)
    result = ProbeResult(probe, native, exact, media)
    report.probes.append(result)
    first = masker.describe(row.input_ids[:1])
    if ids and row.input_ids and ids[0] != row.input_ids[0] and not any(first in note for note in report.notes):
        report.notes.append(
            f"TRL's collator tokenizes without the {first} that the processor adds at inference (the template "
            "writes none); VisionCollator adds it, as the processor does"
        )
    if result.ok:
        return
    where = f"probe {probe!r}"
    if probe == _ASSISTANT_IMAGE:
        report.notes.append(
            f"{where}: TRL trains the {media} media tokens of an image inside an assistant turn; exact only for "
            "data whose images are in user (and tool) turns"
        )
        return
    trained = f"TRL trains {masker.describe(native)[:120]}"
    should = f"the assistant's tokens are {masker.describe(exact)[:120]}"
    report.reasons.append(f"{where}: {trained} where {should}" + (f" ({media} of them media tokens)" if media else ""))


def check_processor(processor: Any, *, template: str | None = None, **options: Any) -> ProcessorReport:
    """Whether TRL's native route trains exactly the assistant's tokens with this processor, these versions.

    The processor's chat template (patched as `patch_processor` would, unless it already carries tags; or
    `template`) renders the probe conversations (`PROBES`, with small Pillow images). Each goes through TRL's own
    vision collator (`assistant_only_loss=True`) and through `VisionMasker`; the route is exact when the tokens
    TRL trains are the exact ones, in order, on every probe whose images are outside the assistant's turns. An
    image inside an assistant turn, whose media tokens TRL trains, is a note, and so is what TRL's collator
    renders unlike the conversation as given (no tools; string content made blocks). `options`: the policy
    keywords (`train_roles`, ...).

    Example:
        >>> # report = templatekit.check_processor(AutoProcessor.from_pretrained("HuggingFaceM4/idefics2-8b"))
        >>> # report.ok, report.reasons[0]
        >>> # (False, "probe 'one image': TRL trains '<fake_token_around_image> What is in the picture?...' where ...")
    """
    if not is_processor(processor):
        raise ArgumentTypeError(f"check_processor takes a transformers processor, not {type(processor).__name__}")
    name = type(processor).__name__
    original = template or processor.chat_template
    if isinstance(original, dict):
        original = original.get("default")
    if not isinstance(original, str) or not original.strip():
        raise InvalidArgumentError(f"{name} has no chat template and template= was not given")
    report = ProcessorReport(name, ok=False, reasons=route_versions(_installed("trl"), _installed("transformers")))
    if _installed("trl") is None:
        return report
    masker = VisionMasker(processor, template=original, **options)
    renderer = masker.renderer
    if has_generation_tags(original):
        tagged = original
    elif renderer.mode == "tags":
        tagged = renderer.template  # the masker's own patch, made once
    else:  # refused: raises its PatchError, with the masker's roles (from policy= or train_roles=)
        tagged = patch_template(original, train_roles=renderer.policy.train_roles).template
    for probe, messages in _probes():
        try:
            _, rows, _ = masker.process([(messages, None, {})])
        except MediaAlignmentError as error:
            report.notes.append(f"probe {probe!r}: VisionCollator refuses such a row: {error.problem}")
            continue
        except DatasetRowError:
            continue  # a conversation this template rejects or drops images of: not a question of the route
        _compare(report, probe, masker, rows[0], *_native_trained(processor, tagged, messages))
    try:
        report.notes += _rendering_notes(masker)
    except TemplateKitError:
        pass  # a template that takes no tool call: nothing to compare
    if not report.probes:
        report.reasons.append("the template rejects every probe conversation")
    report.ok = not report.reasons
    return report


def patch_processor(processor: Any, *, check: bool = True, **options: Any) -> Any:
    """Patch a processor's chat template (and its tokenizer's, where that one differs) in place, for TRL's
    `SFTConfig(assistant_only_loss=True)`; return the processor.

    With `check=True` (the default) `check_processor` runs first, and a processor for which TRL's native route
    would train the wrong tokens is refused (`ProcessorRouteError`, with the reasons and `.report`; the processor
    is left as it was): use `templatekit.VisionCollator(processor)` for it. `options`: `patch_template`'s
    (`train_roles`, `only_last_turn`, `retag`, `template_kwargs`, `timeout`, `max_memory`).

    Example:
        >>> # processor = templatekit.patch_processor(AutoProcessor.from_pretrained("Qwen/Qwen2.5-VL-3B-Instruct"))
        >>> # SFTConfig(assistant_only_loss=True, remove_unused_columns=False)
    """
    from .trl import patch_tokenizer

    if not is_processor(processor):
        raise ArgumentTypeError(f"patch_processor takes a transformers processor, not {type(processor).__name__}")
    if check:
        policy = {key: options[key] for key in ("train_roles",) if key in options}
        report = check_processor(processor, **policy)
        if not report.ok:
            raise ProcessorRouteError(report.reasons, report=report)
    tokenizer = getattr(processor, "tokenizer", None)
    own = getattr(tokenizer, "chat_template", None)
    before = processor.chat_template
    patch_tokenizer(processor, **options)
    if own and own != before:
        patch_tokenizer(tokenizer, **options)  # its own template, patched on its own
    elif own:
        tokenizer.chat_template = processor.chat_template
    return processor
