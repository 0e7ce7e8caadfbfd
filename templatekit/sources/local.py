"""Templates from local files and folders: a `.jinja` file, a `tokenizer_config.json`, a processor's
`chat_template.json`, or a saved model folder read the way transformers reads it; and the template files under
some paths (`find_template_files`, what `templatekit report` walks)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import NoChatTemplateError, TemplateSourceError
from .reading import LoadedTemplate, _checked, _os_error, _read_text, read_json_file

__all__ = [
    "CONFIG_NAMES",
    "file_identity",
    "find_template_files",
    "load_chat_template_json",
    "load_jinja_file",
    "load_model_folder",
    "load_tokenizer_config",
]

#: File names `find_template_files` picks up besides `*.jinja`.
CONFIG_NAMES = ("tokenizer_config.json", "chat_template.json")


def _templates_from_field(value: object, *, path: Path, kind: str) -> list[LoadedTemplate]:
    """Templates from a `chat_template` field: a string, or a list of `{"name": ..., "template": ...}`."""
    if isinstance(value, str):
        return [LoadedTemplate("default", _checked(value, path=path, name="default"), path, kind)]
    if isinstance(value, list):
        if not value:
            raise NoChatTemplateError("'chat_template' is an empty list", source=str(path))
        found: list[LoadedTemplate] = []
        seen: set[str] = set()
        for index, entry in enumerate(value):
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
                raise TemplateSourceError(
                    f"'chat_template'[{index}] must be an object with a string 'name' and 'template'", source=str(path)
                )
            name, template = entry["name"], entry.get("template")
            if not isinstance(template, str):
                raise TemplateSourceError(f"chat template {name!r} is not a string", source=str(path))
            if name in seen:
                raise TemplateSourceError(f"chat template {name!r} appears twice", source=str(path))
            seen.add(name)
            found.append(LoadedTemplate(name, _checked(template, path=path, name=name), path, kind))
        return found
    if value is None:
        raise NoChatTemplateError("no chat template ('chat_template' is null)", source=str(path))
    raise TemplateSourceError(
        f"'chat_template' must be a string or a list of {{name, template}} objects, not {type(value).__name__}",
        source=str(path),
    )


def _load_json_config(path: Path, kind: str) -> list[LoadedTemplate]:
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise TemplateSourceError(f"expected a JSON object, found {type(data).__name__}", source=str(path))
    if "chat_template" not in data:
        raise NoChatTemplateError("no chat template (no 'chat_template' field)", source=str(path))
    return _templates_from_field(data["chat_template"], path=path, kind=kind)


def load_jinja_file(source: str | Path) -> list[LoadedTemplate]:
    path = Path(source)
    return [LoadedTemplate("default", _checked(_read_text(path), path=path, name="default"), path, "jinja")]


def load_tokenizer_config(source: str | Path) -> list[LoadedTemplate]:
    return _load_json_config(Path(source), "tokenizer_config")


def load_chat_template_json(source: str | Path) -> list[LoadedTemplate]:
    return _load_json_config(Path(source), "chat_template_json")


def _present(path: Path, *, folder: bool = False) -> bool:
    """Whether `path` is there: a file (a folder with `folder=True`). A symbolic link that cannot be followed (a
    loop, or a link to nothing) is a `TemplateSourceError`, never taken for an absent file: the folder would
    silently give another template than the one it means to."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise _os_error(FileNotFoundError(), path) from None
        return False
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:  # a path through a file
            return False
        raise _os_error(exc, path) from None
    return stat.S_ISDIR(mode) == folder


def load_model_folder(source: str | Path) -> list[LoadedTemplate]:
    """A saved model or tokenizer folder, read the way transformers reads it.

    `chat_template.jinja` (plus every `additional_chat_templates/*.jinja`) wins over the `chat_template` field
    of `tokenizer_config.json`, which wins over a processor's `chat_template.json`.
    """
    folder = Path(source)
    main = folder / "chat_template.jinja"
    extra_dir = folder / "additional_chat_templates"
    extras = sorted(extra_dir.glob("*.jinja")) if _present(extra_dir, folder=True) else []
    if _present(main) or extras:
        found = load_jinja_file(main) if _present(main) else []
        for path in extras:
            text = _checked(_read_text(path), path=path, name=path.stem)
            found.append(LoadedTemplate(path.stem, text, path, "jinja"))
        return found
    for name, loader in (
        ("tokenizer_config.json", load_tokenizer_config),
        ("chat_template.json", load_chat_template_json),
    ):
        path = folder / name
        if _present(path):
            try:
                return loader(path)
            except NoChatTemplateError:
                continue
    raise NoChatTemplateError(
        "no chat template found (looked for chat_template.jinja, additional_chat_templates/*.jinja, "
        "'chat_template' in tokenizer_config.json and chat_template.json)",
        source=str(folder),
    )


def file_identity(path: str | Path) -> tuple[int, int] | str:
    """What makes two paths one file: its device and inode (links and `a/../a` alike), or the absolute path for
    one that cannot be looked at.

    Example:
        >>> file_identity("templates/chatml.jinja") == file_identity("templates/../templates/chatml.jinja")
        True
    """
    try:
        info = os.stat(path)
    except OSError:
        return os.path.abspath(path)
    return info.st_dev, info.st_ino


def find_template_files(paths: Iterable[str | Path]) -> list[Path]:
    """The template files under `paths`: each file given, and, in each folder (recursively, skipping hidden
    folders), every `*.jinja`, `tokenizer_config.json` and `chat_template.json`, sorted. A file reached twice (named
    and inside a folder given, or through a link) is listed once, where it is first met.

    Raises `TemplateSourceError` for a path that does not exist.

    Example:
        find_template_files(["corpus/"])
        # [PosixPath('corpus/trl/llama3_1.jinja'), PosixPath('corpus/trl/qwen2_5.jinja')]
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_file():
            found.append(entry)
        elif entry.is_dir():
            matches = []
            for root, dirs, files in os.walk(entry):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                matches += [Path(root, f) for f in files if f.endswith(".jinja") or f in CONFIG_NAMES]
            found.extend(sorted(matches))
        elif os.path.lexists(entry):  # a link that cannot be followed (a loop), a pipe, a device
            try:
                entry.stat()
            except OSError as exc:
                raise _os_error(exc, entry) from None
            found.append(entry)
        else:
            raise TemplateSourceError("no such file or folder", source=str(entry))
    seen: set[tuple[int, int] | str] = set()
    unique = []
    for path in found:
        identity = file_identity(path)
        if identity not in seen:
            seen.add(identity)
            unique.append(path)
    return unique
