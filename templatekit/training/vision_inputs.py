"""What a vision-language processor reads from a conversation, and what it says about its media tokens.

* `example_conversation`: one dataset example in TRL's shapes (`messages` whose image blocks hold the images, or
  `messages` with string content plus an `images` / `image` column) → messages, tools and template keywords;
* `template_view`: the messages as the chat template reads them (an image block without its pixels: a template
  writes the placeholder, never the image);
* `images_of`: the images in the order the template writes their placeholders (as transformers collects them);
* `MediaVocabulary`: the processor's placeholders and the ids of its media tokens;
* `refuse_processor`: `prepare_dataset`'s check that it was not handed a processor.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentTypeError, ConversationError
from .spans import row_kwargs

__all__ = [
    "MEDIA_BLOCK_TYPES",
    "MediaVocabulary",
    "example_conversation",
    "images_of",
    "is_processor",
    "refuse_processor",
    "template_view",
]

#: Content blocks that carry media, and the keys transformers reads their payload from.
MEDIA_BLOCK_TYPES = ("image", "video", "audio")
_PAYLOAD_KEYS = ("image", "url", "path", "base64")
_JSON_SCALARS = (str, int, float, bool, type(None))

#: Processor attributes that name a media token: `image_token`, `fake_image_token`, `vision_start_token`,
#: `boi_token`, ... (never `end_of_utterance_token`, which ends a turn).
_MEDIA_ATTRIBUTE = re.compile(r"(image|video|audio|vision|boi|eoi|boa|eoa).*_token$")
#: Markers some templates write right around a placeholder whose processor does not name them (Qwen2-VL, Qwen2.5-VL).
KNOWN_MARKERS = ("<|vision_start|>", "<|vision_end|>")


def is_processor(value: Any) -> bool:
    """True for a transformers processor (`ProcessorMixin`: a tokenizer plus image, video or audio processors)."""
    # Read from the loaded modules, never imported for the check: importing it loads torch (seconds, in every
    # worker process), and a processor cannot exist before its module is loaded.
    module = sys.modules.get("transformers.processing_utils")
    return module is not None and isinstance(value, module.ProcessorMixin)


def refuse_processor(tokenizer: Any) -> None:
    """Raise `ArgumentTypeError` when `prepare_dataset` is handed a processor: its pre-tokenized rows would train
    without their images in TRL's SFTTrainer. The message points to the collator.

    Example:
        >>> refuse_processor(object())  # a tokenizer (or anything but a processor) passes
    """
    if not is_processor(tokenizer):
        return
    raise ArgumentTypeError(
        f"prepare_dataset got a processor ({type(tokenizer).__name__}), not a tokenizer. A pre-tokenized vision "
        "dataset (input_ids, assistant_masks, pixel_values, image_grid_thw, ...) trains WITHOUT its images in TRL's "
        "SFTTrainer: it keeps the token columns and drops the image ones. Give SFTTrainer the conversations as they "
        "are (messages, images) with data_collator=templatekit.VisionCollator(processor) and "
        "SFTConfig(assistant_only_loss=False, remove_unused_columns=False); for conversations without images, pass "
        "processor.tokenizer to prepare_dataset."
    )


def _with_images(messages: Sequence[Mapping], images: Sequence[Any]) -> list[dict]:
    """TRL's own placement of an `images` column into the messages (`trl.data_utils.prepare_multimodal_messages`)."""
    try:
        from trl.data_utils import prepare_multimodal_messages
    except ImportError:
        raise ArgumentTypeError(
            "the example keeps its images in a column beside the messages, and placing them (as TRL does) needs "
            "trl: install it, or put each image in its message as {'type': 'image', 'image': ...}"
        ) from None
    try:
        return prepare_multimodal_messages([dict(m) for m in messages], images=list(images))
    except (ValueError, KeyError, TypeError) as error:
        raise ConversationError(f"cannot place the example's {len(images)} image(s) in its messages: {error}") from None


def example_conversation(
    example: Mapping[str, Any],
    *,
    messages_field: str = "messages",
    images_field: str = "images",
    tools_field: str = "tools",
) -> tuple[list[dict], list | None, dict[str, Any]]:
    """One example's messages (image blocks holding their images), tools and template keywords.

    Accepts TRL's vision shapes: images inside the messages' content blocks, or an `images` list (or one `image`)
    beside messages whose string content TRL turns into blocks, the images before the first user text.

    Example:
        >>> messages, tools, kwargs = example_conversation(
        ...     {"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png"},
        ...                                                  {"type": "text", "text": "What is it?"}]}]})
        >>> images_of(messages), tools, kwargs
        (['cat.png'], None, {})
    """
    if messages_field not in example:
        fields = ", ".join(map(str, example)) or "none"
        raise ConversationError(
            f"the example has no {messages_field!r} field (fields: {fields}); in TRL's SFTTrainer, "
            "SFTConfig(remove_unused_columns=False) keeps the dataset's columns for the collator"
        )
    messages = example[messages_field]
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise ConversationError(f"{messages_field!r} must be a non-empty list of messages")
    images = example.get(images_field)
    if images is None and "image" in example:
        images = [example["image"]]
    if images:
        messages = _with_images(messages, images)
    else:
        messages = [dict(m) if isinstance(m, Mapping) else m for m in messages]
    return messages, example.get(tools_field) or None, row_kwargs(example.get("chat_template_kwargs"))


def _media_block(block: Any) -> bool:
    return isinstance(block, Mapping) and block.get("type") in MEDIA_BLOCK_TYPES


def template_view(messages: Sequence[Mapping]) -> list[dict]:
    """The messages as the chat template sees them: each media block keeps its `type` and its plain values (a URL,
    a path), without the pixels. Other blocks and messages are passed as they are.

    Example:
        >>> template_view([{"role": "user", "content": [{"type": "image", "image": object(), "url": "a.png"}]}])
        [{'role': 'user', 'content': [{'type': 'image', 'url': 'a.png'}]}]
    """
    viewed = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list) and any(_media_block(block) for block in content):
            blocks = [
                {key: value for key, value in block.items() if isinstance(value, _JSON_SCALARS)}
                if _media_block(block)
                else block
                for block in content
            ]
            message = {**message, "content": blocks}
        viewed.append(message)
    return viewed


def images_of(messages: Sequence[Mapping]) -> list[Any]:
    """The images of a conversation, message by message and block by block, as transformers' processors collect
    them (`image`, `url`, `path` or `base64`); video and audio blocks are refused (not supported here yet)."""
    images: list[Any] = []
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            continue
        for block in content:
            if not _media_block(block):
                continue
            if block["type"] != "image":
                raise ConversationError(
                    f"a {block['type']} block: VisionCollator handles images only (give videos and audio to TRL's "
                    "own collator)",
                    message=index,
                )
            images.extend(block[key] for key in _PAYLOAD_KEYS if key in block)
    return images


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` when the tokenizer holds it as one token, else None."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or found < 0 or found == tokenizer.unk_token_id:
        return None
    return found


@dataclass(frozen=True)
class MediaVocabulary:
    """A processor's media tokens: the placeholders a chat template writes (`<|image_pad|>`, `<image>`), which the
    processor expands per image, and the ids of every media token (placeholders, the processor's own boundary
    tokens such as `<fake_token_around_image>`, the markers a template writes around a placeholder such as
    `<|vision_start|>`, and `extra` ones). `special_ids` are the tokenizer's special (added) tokens."""

    placeholders: tuple[str, ...]
    ids: frozenset[int]
    special_ids: frozenset[int]

    @classmethod
    def of(cls, processor: Any, extra: Iterable[str] = ()) -> MediaVocabulary:
        tokenizer = processor.tokenizer
        placeholders = tuple(
            token
            for token in (getattr(processor, f"{modality}_token", None) for modality in MEDIA_BLOCK_TYPES)
            if isinstance(token, str)
        )
        named = [value for name, value in vars(processor).items() if _MEDIA_ATTRIBUTE.search(name)]
        strings = {token for token in [*placeholders, *named, *KNOWN_MARKERS, *extra] if isinstance(token, str)}
        ids = {found for token in strings if (found := _token_id(tokenizer, token)) is not None}
        for modality in MEDIA_BLOCK_TYPES:
            listed = getattr(processor, f"{modality}_token_ids", None) or []
            ids |= {token_id for token_id in listed if isinstance(token_id, int)}
        # A turn's own tokens are never media, whatever a processor calls them.
        ids -= {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
        special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
        return cls(placeholders, frozenset(ids), frozenset(special | set(tokenizer.all_special_ids)))
