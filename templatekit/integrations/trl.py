"""TRL: give a tokenizer verified generation tags, so that `SFTConfig(assistant_only_loss=True)` trains exactly the
assistant's output (TRL asks `apply_chat_template(..., return_assistant_tokens_mask=True)` for the mask)."""

from __future__ import annotations

from typing import Any

from ..core.pipeline import patch_template
from ..errors import PatchError

__all__ = ["patch_tokenizer"]


def patch_tokenizer(tokenizer: Any, **options: Any) -> Any:
    """Patch `tokenizer.chat_template` in place (each named template when it is a dict) and return it.

    `options` are `patch_template`'s (`train_roles`, `only_last_turn`, `retag`, `timeout`, `max_memory`).
    Raises `PatchError` when the tokenizer has no template or a template cannot be patched.

    Example:
        >>> # tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
        >>> # tokenizer = patch_tokenizer(tokenizer); SFTConfig(assistant_only_loss=True)
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise PatchError(["the tokenizer has no chat_template"])
    if isinstance(template, dict):
        tokenizer.chat_template = {name: patch_template(text, **options).template for name, text in template.items()}
    else:
        tokenizer.chat_template = patch_template(template, **options).template
    return tokenizer
