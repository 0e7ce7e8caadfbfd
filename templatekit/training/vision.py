"""Exact assistant masks for vision-language models, for any processor: `VisionMasker` and `VisionCollator`.

One batch of conversations at a time:

    each conversation ──SpanRenderer.render──▶ text with one placeholder per image + trained character spans
    all texts + their images ──the processor──▶ ids with every image expanded, pixels, grids (one batched call)
    each row ──vision_align──▶ the spans on the processor's tokens (its replacement records, else token matching),
                               media tokens 0, refused when the trained tokens do not come through unchanged
    rows longer than max_length ──cut before the image the limit falls in, rendered text cut there──▶ processed again
    ──▶ labels: the ids where trained, -100 elsewhere

The collator plugs into TRL's SFTTrainer as it is (`data_collator=VisionCollator(processor)`, with
`SFTConfig(assistant_only_loss=False, remove_unused_columns=False)`): it gets the dataset's rows (`messages` and
`images`, TRL's shapes), and returns what the processor returns plus `labels`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import (
    ArgumentTypeError,
    DatasetRowError,
    InvalidArgumentError,
    MediaAlignmentError,
    TemplateKitError,
)
from .options import resolve
from .spans import SpanRenderer
from .vision_align import AlignedRow, align_row
from .vision_inputs import MediaVocabulary, example_conversation, images_of, is_processor, template_view

__all__ = ["VisionCollator", "VisionMasker"]

logger = logging.getLogger(__name__)
_RECORDS = "text_replacement_offsets"


def _template_text(processor: Any, template: str | None) -> str:
    if template is None:
        template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if isinstance(template, Mapping):
        template = template.get("default")
    if not isinstance(template, str) or not template.strip():
        raise InvalidArgumentError("no chat template: the processor has none and template= was not given")
    return template


#: SpanRenderer's keywords beside the policy and the limits: how the trained spans are found.
_FINDING = ("instruction_part", "response_part", "fallback", "template_kwargs")


class VisionMasker:
    """Renders conversations with a processor's chat template and gives each row's trained and media tokens.

    Args:
        processor: a transformers processor with a fast tokenizer (Qwen2.5-VL's, Idefics3's, Idefics2's, ...).
        template: the chat template; default the processor's own.
        add_special_tokens: `None` (default) tokenizes as `processor.apply_chat_template(tokenize=True)` and
            inference do: the tokenizer's special tokens (its BOS) are added unless the rendered text already
            starts with the BOS, so a BOS is never doubled; `False` never adds them (TRL's own collator).
        media_tokens: more media token strings, never trained (the processor's own, and `<|vision_start|>`,
            `<|vision_end|>` where the tokenizer has them, always are).
        **options: `SpanRenderer`'s keywords: `policy` and `limits` or their fields (`train_roles`,
            `last_response_only`, `train_on_eot`, `timeout`, ...), `fallback`, `template_kwargs`, ...

    Example:
        >>> # masker = VisionMasker(processor)
        >>> # batch, rows, _ = masker.process([(messages, None, {})])
        >>> # rows[0].trained, rows[0].media  # 0/1 per token of batch["input_ids"][0]
    """

    def __init__(
        self,
        processor: Any,
        *,
        template: str | None = None,
        add_special_tokens: bool | None = None,
        media_tokens: Sequence[str] = (),
        **options: Any,
    ) -> None:
        if not is_processor(processor):
            raise ArgumentTypeError(
                f"VisionMasker takes a transformers processor (AutoProcessor.from_pretrained(...)), not "
                f"{type(processor).__name__}; for a tokenizer use prepare_dataset"
            )
        policy, limits = resolve(options.pop("policy", None), options.pop("limits", None), options)
        unknown = sorted(set(options) - set(_FINDING))
        if unknown:
            raise InvalidArgumentError(
                f"unknown option(s) {', '.join(unknown)}: VisionMasker takes policy= and limits= (or their fields, "
                f"such as train_on_eot= and timeout=) and {', '.join(_FINDING)}"
            )
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise ArgumentTypeError("the processor's tokenizer must be a fast one: its offsets place the masks")
        self.renderer = SpanRenderer(_template_text(processor, template), policy=policy, limits=limits, **options)
        self.media = MediaVocabulary.of(processor, media_tokens)
        self.add_special_tokens = add_special_tokens
        # What apply_chat_template hands every template: bos_token, eos_token, ...
        self.template_kwargs = dict(self.tokenizer.special_tokens_map)
        image_token = getattr(processor, "image_token", None)
        self._image_placeholder = re.compile(re.escape(image_token)) if isinstance(image_token, str) else None

    # ----------------------------------------------------------------------------------------------- rendering

    def render(
        self, messages: Sequence[Mapping], tools: list | None = None, **kwargs: Any
    ) -> tuple[str, list[tuple[int, int]], list[Any]]:
        """`(text, spans, images)`: the conversation rendered with its trained character spans, and its images."""
        text, spans = self.renderer.render(template_view(messages), tools=tools, **{**self.template_kwargs, **kwargs})
        return text, spans, images_of(messages)

    def _special_tokens(self, texts: Sequence[str]) -> bool:
        """Whether the tokenizer adds its special tokens: as apply_chat_template decides, once for the batch."""
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        bos = self.tokenizer.bos_token
        starts = {bool(bos) and text.startswith(bos) for text in texts}
        if len(starts) > 1:
            raise InvalidArgumentError(
                f"some rendered rows start with the BOS {bos!r} and some do not: pass add_special_tokens=True or "
                "False to say whether the tokenizer adds it"
            )
        return not starts.pop()

    def _encoder(self, add_special_tokens: bool):
        tokenizer = self.tokenizer

        def encode(text: str):
            encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
            return list(encoded["input_ids"]), [tuple(pair) for pair in encoded["offset_mapping"]]

        return encode

    def describe(self, ids: Sequence[int], quoted: bool = True) -> str:
        """Token ids as text, for messages (quoted) and for `show` (as is). Decoded after the BOS where the
        tokenizer has one, so a SentencePiece token keeps its leading space (`▁What` is " What", not "What")."""
        tokenizer, ids = self.tokenizer, list(ids)
        bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
        prefix = [bos_id] if bos and bos_id is not None else []
        text = tokenizer.decode(prefix + ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text = text[len(bos) :] if prefix and text.startswith(bos) else text
        return repr(text) if quoted else text

    # --------------------------------------------------------------------------------------------- processing

    def _call(self, texts: list[str], images: list[list], add_special_tokens: bool, **kwargs: Any):
        """One batched processor call, asking for its replacement records."""
        options = dict(
            text=list(texts),
            images=images if any(images) else None,
            padding=True,
            padding_side="right",
            add_special_tokens=add_special_tokens,
            **kwargs,
        )
        try:
            return self.processor(**options, return_text_replacement_offsets=True)
        except TypeError:  # a processor whose __call__ takes no such keyword: no records then
            return self.processor(**options)

    def align(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]],
        batch: Mapping[str, Any],
        add_special_tokens: bool,
        rows: Sequence[int] | None = None,
    ) -> list[AlignedRow]:
        """Each row of a processed batch aligned with its text's spans; a row that cannot be raises
        `MediaAlignmentError` naming it (`rows`: the examples' own indices, for the message)."""
        encode = self._encoder(add_special_tokens)
        records = batch.get(_RECORDS) or [None] * len(texts)
        aligned = []
        for index, (text, row_spans) in enumerate(zip(texts, spans)):
            ids, attention = _as_list(batch["input_ids"][index]), _as_list(batch["attention_mask"][index])
            kept = [token for token, keep in zip(ids, attention) if keep]
            try:
                aligned.append(align_row(text, row_spans, kept, records[index], encode, self.media, self.describe))
            except MediaAlignmentError as error:
                raise MediaAlignmentError(error.problem, row=rows[index] if rows else index) from None
        return aligned

    def process(
        self, conversations: Sequence[tuple], *, return_tensors: str | None = None, **kwargs: Any
    ) -> tuple[Any, list[AlignedRow], tuple]:
        """`(batch, rows, rendered)` for `(messages, tools, template_kwargs)` conversations: the processor's batch,
        each row's `AlignedRow`, and what was rendered (`texts, spans, images, add_special_tokens`). Raises
        `DatasetRowError` (or `MediaAlignmentError`) naming the row."""
        texts, spans, images = [], [], []
        for index, (messages, tools, row_kwargs) in enumerate(conversations):
            try:
                text, row_spans, row_images = self.render(messages, tools, **row_kwargs)
            except TemplateKitError as error:
                at = getattr(error, "message", None)
                raise DatasetRowError(getattr(error, "problem", str(error)), row=index, message=at) from error
            placeholders = len(self._image_placeholder.findall(text)) if self._image_placeholder else 0
            if placeholders != len(row_images):
                raise DatasetRowError(
                    f"the chat template writes {placeholders} image placeholder(s) for the conversation's "
                    f"{len(row_images)} image(s) (it drops images in some messages, or writes its own)",
                    row=index,
                )
            texts.append(text)
            spans.append(row_spans)
            images.append(row_images)
        flag = self._special_tokens(texts)
        batch = self._call(texts, images, flag, return_tensors=return_tensors, **kwargs)
        return batch, self.align(texts, spans, batch, flag), (texts, spans, images, flag)

    def cut(self, row: AlignedRow, text: str, max_length: int) -> tuple[int, str]:
        """Where a row longer than `max_length` is cut: at `max_length` tokens, moved back before an image the
        limit falls in (never inside one); returns the images kept and the rendered text up to the cut."""
        keep = max_length
        while 0 < keep < len(row.media) and row.media[keep] and row.media[keep - 1]:
            keep -= 1
        end = row.sources[keep - 1] if keep > 0 else 0
        kept = len(self._image_placeholder.findall(text, 0, end)) if self._image_placeholder else 0
        return kept, text[:end]


def _as_list(values: Any) -> list[int]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


class VisionCollator:
    """A data collator for TRL's SFTTrainer that trains exactly the assistant's tokens of vision conversations.

    Text and trained spans come from templatekit's `SpanRenderer` (the processor's chat template, patched and
    verified, or the delimiter fallback), images are expanded by the processor, and the spans are moved onto the
    expanded tokens (`templatekit.training.vision_align`). Media tokens are never trained. A row whose trained
    tokens do not come through the expansion unchanged raises `MediaAlignmentError`.

    Args:
        processor: a transformers processor with a fast tokenizer. A tokenizer without a pad token pads with
            its EOS (as TRL does).
        max_length: the most tokens a row keeps, counted after expansion. A longer row is cut at the limit, or
            before the image the limit falls in (with that image and the ones after it), never inside an image;
            the cut text is processed again. None: no limit.
        pad_to_multiple_of: padding, as the processor takes it.
        messages_field, images_field, tools_field: the example's fields (TRL's names by default; a
            `chat_template_kwargs` field sets the row's template switches).
        template, add_special_tokens, media_tokens, **options: as `VisionMasker` (the policy keywords of
            `SpanRenderer`: `train_roles`, `last_response_only`, `train_on_eot`, ...).

    Returns (per call): the processor's tensors (`input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw`,
    ...) and `labels` (the ids of trained tokens, -100 elsewhere).

    Example:
        >>> # collator = templatekit.VisionCollator(processor, max_length=2048)
        >>> # args = SFTConfig(assistant_only_loss=False, remove_unused_columns=False, ...)
        >>> # SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
        >>> #            data_collator=collator).train()
    """

    def __init__(
        self,
        processor: Any,
        *,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        messages_field: str = "messages",
        images_field: str = "images",
        tools_field: str = "tools",
        template: str | None = None,
        add_special_tokens: bool | None = None,
        media_tokens: Sequence[str] = (),
        **options: Any,
    ) -> None:
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise InvalidArgumentError(f"max_length must be a positive integer or None, got {max_length!r}")
        self.masker = VisionMasker(
            processor, template=template, add_special_tokens=add_special_tokens, media_tokens=media_tokens, **options
        )
        tokenizer = self.masker.tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.max_length = max_length
        self.padding = {"pad_to_multiple_of": pad_to_multiple_of} if pad_to_multiple_of else {}
        self.fields = {"messages_field": messages_field, "images_field": images_field, "tools_field": tools_field}

    def conversations(self, examples: Sequence[Mapping[str, Any]]) -> list[tuple]:
        """Each example's `(messages, tools, template_kwargs)`; a malformed one raises `DatasetRowError`."""
        found = []
        for index, example in enumerate(examples):
            try:
                found.append(example_conversation(example, **self.fields))
            except TemplateKitError as error:
                raise DatasetRowError(getattr(error, "problem", str(error)), row=index) from error
        return found

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        masker = self.masker
        batch, rows, (texts, spans, images, flag) = masker.process(
            self.conversations(examples), return_tensors="pt", **self.padding
        )
        if self.max_length is not None and any(len(row.input_ids) > self.max_length for row in rows):
            batch, rows = self._truncated(rows, texts, spans, images, flag)
        batch = dict(batch)
        batch.pop("text_replacement_offsets", None)
        batch["labels"] = _labels(batch["input_ids"], batch["attention_mask"], rows)
        return batch

    def _truncated(self, rows, texts, spans, images, flag):
        """The batch processed again with each long row's rendered text cut (and its images after the cut left
        out); every row is aligned again, so its masks are exact for what is kept."""
        cut_texts, cut_images, cut_spans = list(texts), list(images), list(spans)
        for index, row in enumerate(rows):
            if len(row.input_ids) > self.max_length:
                kept, cut_texts[index] = self.masker.cut(row, texts[index], self.max_length)
                cut_images[index] = images[index][:kept]
                end = len(cut_texts[index])
                cut_spans[index] = [(s, min(e, end)) for s, e in spans[index] if s < end]
        batch = self.masker._call(cut_texts, cut_images, flag, return_tensors="pt", **self.padding)
        rows = self.masker.align(cut_texts, cut_spans, batch, flag)
        too_long = [i for i, row in enumerate(rows) if len(row.input_ids) > self.max_length]
        if too_long:
            raise MediaAlignmentError(
                f"cut to max_length={self.max_length}, the row still has {len(rows[too_long[0]].input_ids)} tokens "
                "(the processor tokenizes the cut text differently)",
                row=too_long[0],
            )
        empty = sum(1 for row in rows if not any(row.trained))
        if empty:
            logger.warning(
                "VisionCollator: %d row(s) of this batch train nothing once cut to max_length=%d",
                empty,
                self.max_length,
            )
        return batch, rows


def _labels(input_ids: Any, attention_mask: Any, rows: Sequence[AlignedRow]) -> Any:
    """The ids where a row's token is trained, -100 elsewhere (padding included), in the batch's own layout."""
    import torch

    labels = torch.full_like(input_ids, -100)
    for index, row in enumerate(rows):
        positions = torch.nonzero(attention_mask[index], as_tuple=True)[0]
        trained = torch.tensor(row.trained, dtype=torch.bool)
        labels[index, positions[trained]] = input_ids[index, positions[trained]]
    return labels
