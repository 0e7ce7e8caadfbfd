"""TRL: give a tokenizer verified generation tags, so that `SFTConfig(assistant_only_loss=True)` trains exactly the
assistant's output (TRL asks `apply_chat_template(..., return_assistant_tokens_mask=True)` for the mask), and take
them out again of what training saves (`strip_tags_on_save`, `strip_saved_templates`): inference engines that do
not know the tag fail to load a model whose template carries it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..core.pipeline import patch_template
from ..core.strip import strip_template
from ..errors import ArgumentTypeError, NoChatTemplateError, PatchError, StripError
from ..sources import load_templates
from ..sources.in_place import update_in_place

__all__ = ["patch_tokenizer", "strip_saved_templates", "strip_tags_on_save"]

logger = logging.getLogger(__name__)

# Where a saved tokenizer or processor keeps its chat templates (transformers writes the first when it can).
_TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json", "chat_template.json")


def patch_tokenizer(tokenizer: Any, **options: Any) -> Any:
    """Patch `tokenizer.chat_template` in place (each named template when it is a dict) and return it.

    `options` are `patch_template`'s (`train_roles`, `only_last_turn`, `retag`, `template_kwargs`, `timeout`,
    `max_memory`). Raises `ArgumentTypeError` (a `TypeError`) for anything but a tokenizer or processor (a model
    id or a path: load it first), `PatchError` when the tokenizer has no template or a template cannot be patched.
    The tags hold under every setting of the template's switches, so TRL may render each row with its own
    `chat_template_kwargs` (``enable_thinking=False`` for some rows, True for others).

    Example:
        >>> # tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen3-8B")
        >>> # tokenizer = patch_tokenizer(tokenizer)
        >>> # SFTConfig(assistant_only_loss=True)
    """
    if isinstance(tokenizer, (str, bytes, Path)) or not hasattr(tokenizer, "chat_template"):
        hint = (
            f": load it first, e.g. AutoTokenizer.from_pretrained({tokenizer!r})" if isinstance(tokenizer, str) else ""
        )
        raise ArgumentTypeError(
            "patch_tokenizer takes a tokenizer or processor object (one with a chat_template attribute), "
            f"not {type(tokenizer).__name__} {str(tokenizer)[:80]!r}{hint}"
        )
    template = tokenizer.chat_template
    if not template:
        raise PatchError(["the tokenizer has no chat_template"])
    named = template if isinstance(template, dict) else {None: template}
    results = {name: patch_template(text, **options) for name, text in named.items()}
    patched = {name: result.template for name, result in results.items()}
    tokenizer.chat_template = patched if isinstance(template, dict) else patched[None]
    return tokenizer


def strip_saved_templates(directory: str | Path) -> list[Path]:
    """Remove the generation tags from every chat template a saved tokenizer or processor keeps in `directory`
    (`chat_template.jinja`, `additional_chat_templates/*.jinja`, the `chat_template` of `tokenizer_config.json`
    and of `chat_template.json`); returns the files rewritten.

    Each template is stripped with `templatekit.strip_template` (verified to render identically) and written
    back atomically; in a JSON file only the template string changes. No backup is kept: the tags are for
    training only. Raises `StripError` when removing a template's tags would change what it renders (no file
    is rewritten then). Call it after `trainer.save_model(...)`, which no callback sees.

    Example:
        >>> # trainer.save_model("final"); tokenizer.save_pretrained("final")
        >>> # strip_saved_templates("final")  # [PosixPath('final/chat_template.jinja')]
    """
    folder = Path(directory)
    files = [folder / name for name in _TEMPLATE_FILES]
    files += sorted((folder / "additional_chat_templates").glob("*.jinja"))
    templates = []
    for path in files:
        if path.is_file():
            try:
                templates += load_templates(str(path))
            except NoChatTemplateError:
                continue  # a tokenizer_config.json without a template: its template is in chat_template.jinja
    stripped = [strip_template(template.text) for template in templates]  # all verified before any write
    changed = [(t, text) for t, text in zip(templates, stripped) if text != t.text]
    if not changed:
        return []
    updates = update_in_place([t for t, _ in changed], [text for _, text in changed], backup=False)
    return [update.path for update in updates if update.changed]


def strip_tags_on_save() -> Any:
    """A `transformers.TrainerCallback` that strips the generation tags from each checkpoint's saved templates.

    Trainer saves the tokenizer (the patched one, tags included) into `OUTPUT_DIR/checkpoint-STEP` and then
    calls `on_save`; this callback rewrites the templates there with `strip_saved_templates`, so a checkpoint
    loads in engines without generation-tag support. Training is never stopped by it: a template whose tags
    cannot be removed without changing its rendering is left as saved, with a warning. The final
    `trainer.save_model(...)` runs no callback: call `strip_saved_templates` on that folder yourself.

    Example:
        >>> # trainer = SFTTrainer(..., processing_class=patch_tokenizer(tokenizer), callbacks=[strip_tags_on_save()])
    """
    return _callback_class()()


_CALLBACK: list[type] = []


def _callback_class() -> type:
    """The callback class, made on first use: transformers is imported only then."""
    if _CALLBACK:
        return _CALLBACK[0]
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class StripTagsOnSave(TrainerCallback):
        """Strips the generation tags from the templates saved with each checkpoint (see `strip_tags_on_save`)."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if not state.is_world_process_zero:
                return control
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if not checkpoint.is_dir():
                return control
            try:
                rewritten = strip_saved_templates(checkpoint)
            except StripError as error:
                logger.warning("%s: the chat template keeps its generation tags: %s", checkpoint, error)
                return control
            for path in rewritten:
                logger.info("removed the generation tags from %s", path)
            return control

    _CALLBACK.append(StripTagsOnSave)
    return StripTagsOnSave
