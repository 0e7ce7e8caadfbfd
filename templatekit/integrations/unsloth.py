"""`train_on_responses_only`, with Unsloth's signature and meaning, and exact masks.

Unsloth's helper takes a trainer whose datasets are already tokenized, and rewrites their `labels` so that
only the responses are trained: everything before the first `response_part` is masked, each
`response_part` opens a trained span that runs to the next `instruction_part`, `last_response_only` keeps
only the final span, and `mask_out_tokens` re-masks strings such as `</think>` inside kept spans.

At the edges of a span, Unsloth (unsloth_zoo 2026.10.9) does this, and so does this version:

* the `response_part` itself is never trained; the response starts right after it *as written*. A part
  that stops before the whitespace its template writes after the header (Llama 3's
  `"<|start_header_id|>assistant<|end_header_id|>"` without `"\\n\\n"`) leaves that whitespace to the
  response, which trains it;
* the end-of-turn token is trained even when it is the `instruction_part` (`"<|eot_id|>"`): Unsloth ends a
  span *after* the tokenizer's EOS and *before* any other boundary. Here the end-of-turn marker is the one
  the chat template writes (learned from its probe renders; the tokenizer's EOS when there is no
  template): the same token wherever the tokenizer's EOS is the template's end of turn, as in instruct
  tokenizers (Llama 3.1's `<|eot_id|>`, Qwen2.5's `<|im_end|>`);
* whitespace after the end-of-turn marker is not trained.

What differs from Unsloth, on purpose: the spans are found on *text*, not on token ids. Each row's
`input_ids` are decoded, the spans are found with the delimiters of `training/fallback.py` (the parts given, or,
when both are omitted, the ones learned from the tokenizer's chat template, which include the header's
whitespace), and they become token labels through the offset mapping (`training.masks.spans_to_token_mask`), so a
delimiter that the tokenizer merges with its neighbours is still found, where a token-id search misses it.
And the template's end-of-turn marker is trained even where the tokenizer's EOS is another token (a base
tokenizer whose EOS is `<|end_of_text|>`), so that the model learns to stop; Unsloth leaves it out there.

A row whose ids do not survive decode-then-encode is refused with its index (its offsets would be guesses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..errors import DatasetRowError, InvalidArgumentError
from ..training.delimiters import Delimiters, find_spans
from ..training.fallback import derive_delimiters
from ..training.masks import spans_to_token_mask
from ..training.policies import cut_out

__all__ = ["response_delimiters", "train_on_responses_only"]


def _template_of(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def response_delimiters(
    tokenizer: Any, instruction_part: str | None = None, response_part: str | None = None
) -> Delimiters:
    """The delimiters `train_on_responses_only` uses: the parts given, or both learned from the chat template.

    Given parts are taken as written: the response starts right after `response_part`. The end-of-turn
    marker is learned from the chat template (the tokenizer's EOS when it has none).

    Example:
        >>> # response_delimiters(tokenizer).response_parts  ->  ('<|im_start|>assistant\\n',) for a ChatML template
    """
    if (instruction_part is None) != (response_part is None):
        raise InvalidArgumentError(
            "give both instruction_part and response_part, or neither to detect them from the template"
        )
    template = _template_of(tokenizer)
    if template is None:
        if response_part is None:
            raise InvalidArgumentError("the tokenizer has no chat_template to detect the parts from: pass both parts")
        # As in Unsloth: the tokenizer's EOS ends a response, and is trained.
        return Delimiters((response_part,), getattr(tokenizer, "eos_token", None) or "", (instruction_part,))
    derived = derive_delimiters(template, response_part=response_part, instruction_part=instruction_part)
    if response_part is None:
        return derived
    # A given response part is taken as written (Unsloth's meaning): the response starts right after it, so
    # whitespace the template writes after the header and the part leaves out is the response's, and trained.
    return replace(derived, header_space="")


def _masker(tokenizer, delimiters: Delimiters, last_response_only: bool, mask_out: Sequence[str]) -> Callable:
    def mask_batch(examples: dict) -> dict:
        rows = examples["input_ids"]
        if hasattr(rows, "tolist"):
            rows = rows.tolist()
        old = examples.get("labels")
        if old is not None and hasattr(old, "tolist"):
            old = old.tolist()
        all_labels = []
        for row, ids in enumerate(rows):
            ids = list(ids)
            text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            if list(encoded["input_ids"]) != ids:
                raise DatasetRowError(
                    "decoding then re-encoding its input_ids gives other ids, so the trained "
                    "text cannot be placed on its tokens; build the dataset with templatekit.prepare_dataset",
                    row=row,
                )
            spans = find_spans(text, delimiters)
            if last_response_only:
                spans = spans[-1:]
            for needle in mask_out:
                spans = cut_out(spans, text, needle)
            mask = spans_to_token_mask(encoded["offset_mapping"], spans)
            source = ids if old is None else list(old[row])
            all_labels.append([label if bit else -100 for label, bit in zip(source, mask)])
        return {"labels": all_labels}

    return mask_batch


def train_on_responses_only(
    trainer: Any,
    instruction_part: str | None = None,
    response_part: str | None = None,
    *,
    last_response_only: bool = False,
    mask_out_tokens: str | Sequence[str] | None = None,
    num_proc: int | None = None,
    tokenizer: Any = None,
    return_function: bool = False,
) -> Any:
    """Mask every label outside the responses to -100 (Unsloth's `train_on_responses_only`, exact masks).

    Args:
        trainer: a trainer whose `train_dataset` (and `eval_dataset`) hold `input_ids`; may be `None`
            with `return_function=True` and a `tokenizer`.
        instruction_part, response_part: the strings opening a user turn and a response; both omitted:
            learned from the chat template.
        last_response_only: train only the last response of each row.
        mask_out_tokens: strings re-masked inside responses, e.g. `["</think>"]`.
        num_proc: processes for `datasets.map`.
        tokenizer: overrides `trainer.processing_class` (a processor's inner tokenizer is used).
        return_function: return the batched masking function (`examples -> {"labels": ...}`) instead.

    Returns the trainer, with new `labels` columns, or the function.

    Example:
        >>> # trainer = SFTTrainer(model=model, train_dataset=dataset, processing_class=tokenizer, args=args)
        >>> # trainer = train_on_responses_only(trainer,
        >>> #     instruction_part="<|start_header_id|>user<|end_header_id|>\\n\\n",
        >>> #     response_part="<|start_header_id|>assistant<|end_header_id|>\\n\\n")
    """
    if tokenizer is None:
        if trainer is None:
            raise InvalidArgumentError("pass a trainer or a tokenizer")
        tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor's text tokenizer
    if tokenizer is None:
        raise InvalidArgumentError("the trainer has no tokenizer (processing_class); pass tokenizer=")
    delimiters = response_delimiters(tokenizer, instruction_part, response_part)
    mask_out = [mask_out_tokens] if isinstance(mask_out_tokens, str) else list(mask_out_tokens or ())
    function = _masker(tokenizer, delimiters, last_response_only, mask_out)
    if return_function:
        return function

    def mapped(dataset):
        if dataset is None:
            return None
        columns = getattr(dataset, "column_names", None) or []
        if "input_ids" not in columns:
            raise InvalidArgumentError(f"the dataset has no input_ids column (columns: {columns}); tokenize it first")
        kwargs = {"num_proc": num_proc} if num_proc and num_proc > 1 else {}
        return dataset.map(function, batched=True, **kwargs)

    trainer.train_dataset = mapped(trainer.train_dataset)
    evaluation = getattr(trainer, "eval_dataset", None)
    if isinstance(evaluation, dict):
        trainer.eval_dataset = {name: mapped(split) for name, split in evaluation.items()}
    elif evaluation is not None:
        trainer.eval_dataset = mapped(evaluation)
    return trainer
