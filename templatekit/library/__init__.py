"""A library of training-ready chat templates for common formats, written for templatekit.

Each template carries `{% generation %}` tags around what the assistant generates (its content, tool calls
where the format has them, and the end-of-turn marker), and passes `check_template`. They live in the
repository's `templates/` folder, which is installed as the package `templatekit.library.templates` (setup.py),
so they are read through `importlib.resources` both from a source checkout and from an installed wheel.

Use one to give a base model (a tokenizer without a chat template) a format it can be fine-tuned on:

    tokenizer.chat_template = templatekit.get_template("chatml")
"""

from __future__ import annotations

import re
from importlib import resources

from ..errors import UnknownTemplateError

__all__ = ["get_template", "list_templates"]

_PACKAGE = "templatekit.library.templates"
_SUFFIX = ".jinja"


def _key(name: str) -> str:
    # "Llama-3", "llama_3" and "LLAMA3" all mean the same template.
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files(_PACKAGE)
    return {entry.name[: -len(_SUFFIX)]: entry for entry in folder.iterdir() if entry.name.endswith(_SUFFIX)}


def list_templates() -> list[str]:
    """The names of the library's templates, sorted.

    Example:
        >>> list_templates()
        ['alpaca', 'chatml', 'gemma', 'llama3', 'mistral', 'phi3', 'vicuna', 'zephyr']
    """
    return sorted(_files())


def get_template(name: str) -> str:
    """The text of the library template `name` (case, `-` and `_` do not matter: "Llama-3" is "llama3").

    Raises `UnknownTemplateError` naming every template there is when `name` is not one of them.

    Example:
        >>> template = get_template("chatml")
        >>> "{%- generation -%}" in template
        True
        >>> try:
        ...     get_template("alpaca-v2")
        ... except UnknownTemplateError as error:
        ...     print(str(error).replace("; ", ";\\n"))  # doctest: +NORMALIZE_WHITESPACE
        no library template named 'alpaca-v2';
        choose one of: alpaca, chatml, gemma, llama3, mistral, phi3, vicuna, zephyr
    """
    files = _files()
    by_key = {_key(stem): entry for stem, entry in files.items()}
    entry = by_key.get(_key(name))
    if entry is None:
        raise UnknownTemplateError(f"no library template named {name!r}; choose one of: {', '.join(sorted(files))}")
    # Read as bytes and decode: text mode would translate newlines on some platforms.
    return entry.read_bytes().decode("utf-8")
