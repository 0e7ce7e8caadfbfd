"""Which loader a source goes to, and loading through it: `load_templates` is every caller's one door.

Each source kind ("jinja", "tokenizer_config", "chat_template_json", "folder", "hub", "gguf") has a loader in
`LOADERS`; `source_kind` decides the kind, and new kinds plug in with `register_loader` without touching the
callers. Every failure is a `TemplateSourceError` that names the file, and the line and column where that means
something.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import TemplateSourceError
from .gguf import read_gguf_templates
from .hub import load_hub_templates
from .local import load_chat_template_json, load_jinja_file, load_model_folder, load_tokenizer_config
from .reading import LoadedTemplate

__all__ = ["LOADERS", "load_templates", "looks_local", "register_loader", "source_kind"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+\Z")  # `\Z`: `$` would let a final newline through
_TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2", ".txt", ".tmpl")


def _load_hub_id(source: str | Path, revision: str | None = None) -> list[LoadedTemplate]:
    # huggingface_hub itself is imported inside: only paid for when a Hub id is given.
    return load_hub_templates(str(source), revision=revision)


#: Loader for each source kind; `load_templates` dispatches on `source_kind(source)`.
LOADERS: dict[str, Callable[[str | Path], list[LoadedTemplate]]] = {
    "jinja": load_jinja_file,
    "tokenizer_config": load_tokenizer_config,
    "chat_template_json": load_chat_template_json,
    "folder": load_model_folder,
    "hub": _load_hub_id,
    "gguf": read_gguf_templates,
}


def register_loader(kind: str, loader: Callable[[str | Path], list[LoadedTemplate]]) -> None:
    """Install (or replace) the loader for one source kind.

    Example:
        >>> register_loader("gguf", lambda source: [LoadedTemplate("default", "{{ x }}", Path(source), "gguf")])
        >>> register_loader("gguf", read_gguf_templates)  # put the original back
    """
    LOADERS[kind] = loader


def source_kind(source: str | Path) -> str:
    """Which loader a source goes to: "folder", "gguf", "chat_template_json", "tokenizer_config", "jinja" or "hub".

    An existing file whose kind is not recognised by name is read as raw Jinja text; a path that does not
    exist and looks like `owner/name` is taken for a Hugging Face Hub id, unless it looks local (`looks_local`).

    Example:
        >>> source_kind("chat_template.json"), source_kind("any/tokenizer_config.json"), source_kind("x.jinja")
        ('chat_template_json', 'tokenizer_config', 'jinja')
    """
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".gguf":
        return "gguf"
    if path.name == "chat_template.json":
        return "chat_template_json"
    if path.suffix.lower() == ".json":
        return "tokenizer_config"
    if (
        not os.path.lexists(path)  # a symbolic link that goes nowhere is a local file all the same
        and isinstance(source, str)
        and _HUB_ID.match(source)
        and path.suffix.lower() not in _TEMPLATE_SUFFIXES
        and not looks_local(source)
    ):
        return "hub"
    return "jinja"


def looks_local(source: str | Path) -> bool:
    """Whether `source` is meant as a local path even where nothing is there: it starts with `.`, `~` or `/`, or
    its first part is a file or folder here (`api/qwen_modl` beside an `api/` folder is a mistyped path, not a
    Hub id, and is never sent to the Hub).

    Example:
        >>> looks_local("./model"), looks_local("~/model"), looks_local("Qwen/Qwen2.5-7B-Instruct")
        (True, True, False)
    """
    text = str(source)
    if text.startswith((".", "~", "/")) or not isinstance(source, str):
        return True
    first = text.split("/", 1)[0]
    return "/" in text and os.path.lexists(first)


def load_templates(source: str | Path, *, revision: str | None = None) -> list[LoadedTemplate]:
    """Every chat template a source holds: a `.jinja` file, a `tokenizer_config.json`, a processor's
    `chat_template.json`, a saved model folder, a GGUF file or a Hugging Face Hub model id (at `revision`:
    a branch, tag or commit; only Hub ids have revisions).

    Raises `TemplateSourceError` (naming the file, and line/column where known) for a missing or unreadable
    file, bytes that are not UTF-8, invalid JSON, a config without a chat template, or an empty template;
    `NoChatTemplateError` (a subclass) when the source is readable but holds no template.

    Example:
        [(t.name, t.kind) for t in load_templates("tokenizer_config.json")]
        # [('default', 'tokenizer_config'), ('tool_use', 'tokenizer_config')]
    """
    kind = source_kind(source)
    # A Hub id in shape that is kept local: say why it is not looked up (a plain missing file says "no such file").
    hub_shaped = isinstance(source, str) and _HUB_ID.match(source.lstrip("./~")) is not None
    if kind == "jinja" and hub_shaped and looks_local(source) and not os.path.lexists(source):
        first = str(source).split("/", 1)[0]
        named = "/" in str(source) and first not in ("", ".", "..", "~") and os.path.lexists(first)
        why = f"{first} is here, so a local path" if named else "a local path"
        raise TemplateSourceError(
            f"no such file or folder ({why}, never looked up on the Hugging Face Hub)", source=str(source)
        )
    if revision is None:
        return LOADERS[kind](source)
    if kind != "hub":
        raise TemplateSourceError(
            f"a revision applies only to a Hugging Face Hub id (this is a {kind})", source=str(source)
        )
    return LOADERS[kind](source, revision=revision)
