"""`templatekit show --processor`: a conversation with images as a vision-language processor gives it to the model,
every image expanded into its tokens, with trained, untrained and media tokens told apart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.verify import merge_adjacent
from ..errors import DatasetRowError, TemplateSourceError
from ..integrations.processors import probe_conversations
from ..training.vision import VisionMasker
from .highlight import Rendering, Token

__all__ = ["load_processor", "render_processor_conversation"]

#: The built-in conversations, richest first: the first one the template renders (with its images) is shown.
_DEMOS = ("system prompt and a tool result", "images across two turns", "one image")


def load_processor(folder: str | Path) -> Any:
    """A processor from a local model folder (`processor_config.json` / `preprocessor_config.json` and a tokenizer),
    offline. Raises `TemplateSourceError` naming the folder when transformers cannot load one."""
    path = Path(folder)
    if not path.is_dir():
        raise TemplateSourceError("a processor is loaded from a local model folder", source=str(path))
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a folder it cannot read
        raise TemplateSourceError(f"cannot load a processor: {exc}", source=str(path)) from None


def render_processor_conversation(
    processor: Any,
    messages: Sequence[Mapping] | None = None,
    *,
    tools: list | None = None,
    template: str | None = None,
    fallback: bool | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    **limits: Any,
) -> Rendering:
    """Render `messages` (the first built-in demo with images the template renders when None) through `processor`:
    the text is the expanded one the model reads, each token marked trained, untrained or media.

    Raises `DatasetRowError` (`MediaAlignmentError`) when the conversation cannot be masked exactly.

    Example:
        >>> # shown = render_processor_conversation(AutoProcessor.from_pretrained("model/"))
        >>> # print(to_plain(shown))  # ... ⟪<|vision_start|>¦<|image_pad|>×24¦<|vision_end|>⟫ ... ⟦A cat.<|im_end|>⟧
    """
    masker = VisionMasker(processor, template=template, fallback=fallback, **limits)
    if messages is not None:
        candidates = [("your conversation", list(messages))]
    else:
        candidates = [(name, conversation) for name, conversation in probe_conversations() if name in _DEMOS]
        candidates.sort(key=lambda pair: _DEMOS.index(pair[0]))
    last_error: DatasetRowError | None = None
    for name, conversation in candidates:
        try:
            _, rows, _ = masker.process([(conversation, tools, dict(template_kwargs or {}))])
        except DatasetRowError as error:
            if messages is not None:
                raise
            last_error = error
            continue
        row = rows[0]
        pieces = masker.tokenizer.convert_ids_to_tokens(row.input_ids)
        tokens = [
            Token(token, piece, start, end, bool(trained), bool(media))
            for token, piece, (start, end), trained, media in zip(
                row.input_ids, pieces, row.offsets, row.trained, row.media
            )
        ]
        spans = merge_adjacent([(t.start, t.end) for t in tokens if t.trained and t.end > t.start])
        route = "its replacement records" if row.route == "records" else "matching its tokens to the text's"
        notes = [f"{type(processor).__name__}: images expanded by the processor, spans moved by {route}"]
        return Rendering(row.text, spans, masker.renderer.mode, name, tokens, notes)
    assert last_error is not None
    raise last_error
