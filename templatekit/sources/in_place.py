"""Put patched templates back where a local model keeps them (`--in-place`), safely.

Each template goes back into the file it was read from (`LoadedTemplate.origin`): a `.jinja` file is replaced
whole; in a `tokenizer_config.json` or a processor's `chat_template.json` only the JSON string holding the
template is replaced, spliced into the original text, so every other byte (key order, indentation, escapes,
the final newline) stays as it was. The spliced file is parsed again and compared with the original as data
before anything is written: it must differ in the template strings only.

Safety: a backup of each file is written first (`tokenizer_config.json.bak`; an older backup with other
content is kept and the new one becomes `.bak.1`, `.bak.2`, …), then each file is replaced atomically
(temporary file, fsync, `os.replace`). If anything fails part way, the files already replaced are put back and
the new backups removed, so a model folder is never left half-updated, nor with a backup of a change not made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TemplateSourceError
from .atomic import crash_point, write_bytes_atomic
from .json_positions import replace_json_string
from .reading import MAX_CONFIG_BYTES, MAX_TEMPLATE_BYTES, LoadedTemplate, read_file_bytes

__all__ = ["FileUpdate", "apply_updates", "backup_path", "plan_in_place", "update_in_place"]

_JSON_KINDS = ("tokenizer_config", "chat_template_json")


@dataclass(frozen=True)
class FileUpdate:
    """One file to rewrite: its current bytes and the new ones. `backup` is set once a backup is made.

    Example:
        >>> FileUpdate(Path("chat_template.jinja"), b"old", b"new").changed
        True
    """

    path: Path
    old: bytes
    new: bytes
    backup: Path | None = None

    @property
    def changed(self) -> bool:
        """Whether writing would change the file at all (an already tagged template does not)."""
        return self.old != self.new


def _json_update(path: Path, old: bytes, templates: Sequence[LoadedTemplate], texts: Sequence[str]) -> bytes:
    text = old.decode("utf-8")
    data = json.loads(text)
    field = data["chat_template"]
    for template, new in zip(templates, texts):
        if isinstance(field, str):
            where: list[str | int] = ["chat_template"]
            current, data["chat_template"] = field, new
        else:
            position = max((i for i, e in enumerate(field) if e.get("name") == template.name), default=None)
            if position is None:
                changed = f"the file changed since it was read (no {template.name!r})"
                raise TemplateSourceError(changed, source=str(path))
            where = ["chat_template", position, "template"]
            current, field[position]["template"] = field[position]["template"], new
        if current != template.text:
            raise TemplateSourceError("the file changed since it was read; run again", source=str(path))
        text = replace_json_string(text, where, new)
    # The splice must change the template strings and nothing else; compared as data (dumped, so NaN == NaN).
    if json.dumps(json.loads(text)) != json.dumps(data):
        raise TemplateSourceError("updating the JSON would change more than the chat template", source=str(path))
    return text.encode("utf-8")


# --------------------------------------------------------------------------------------------------- planning


def plan_in_place(templates: Sequence[LoadedTemplate], texts: Sequence[str]) -> list[FileUpdate]:
    """The file updates that put each patched text back where its template came from, one per file.

    Raises `TemplateSourceError` for a template that does not live in a local file it can be written back to
    (a GGUF file: write a new one instead; a Hub download: pass -o), or a file that changed since it was read.

    Example:
        updates = plan_in_place(load_templates("model/"), [patched.template])
        [u.path.name for u in updates]
        # ['tokenizer_config.json']
    """
    by_file: dict[Path, list[tuple[LoadedTemplate, str]]] = {}
    for template, text in zip(templates, texts, strict=True):
        if template.origin is None or template.kind not in ("jinja", *_JSON_KINDS):
            raise TemplateSourceError(f"a {template.kind} template cannot be updated in place", source=template.label)
        by_file.setdefault(template.origin, []).append((template, text))
    updates = []
    for path, pairs in by_file.items():
        kind = pairs[0][0].kind
        # Read again, within the same bounds as when it was loaded (it may have changed since).
        old = read_file_bytes(path, MAX_TEMPLATE_BYTES if kind == "jinja" else MAX_CONFIG_BYTES, f"{path.name} file")
        if kind == "jinja":
            if old.decode("utf-8", errors="replace") != pairs[0][0].text:
                raise TemplateSourceError("the file changed since it was read; run again", source=str(path))
            new = pairs[0][1].encode("utf-8")
        else:
            new = _json_update(path, old, [t for t, _ in pairs], [text for _, text in pairs])
        updates.append(FileUpdate(path, old, new))
    return updates


# --------------------------------------------------------------------------------------------------- applying


def backup_path(path: Path, content: bytes) -> tuple[Path, bool]:
    """Where to back up `path` whose bytes are `content`, and whether a backup must still be written there:
    `NAME.bak`, or, when that holds something else, the first of `NAME.bak.1`, `NAME.bak.2`, … that is free or
    already holds `content` (an older backup is never overwritten).

    Example:
        backup_path(Path("tokenizer_config.json"), b"{}")
        # (PosixPath('tokenizer_config.json.bak'), True)
    """
    number = 0
    while True:
        candidate = path.with_name(path.name + (".bak" if number == 0 else f".bak.{number}"))
        if not candidate.exists():
            return candidate, True
        if (
            candidate.is_file()
            and candidate.stat().st_size == len(content)  # a backup of another size is not read at all
            and candidate.read_bytes() == content
        ):
            return candidate, False
        number += 1


def _backed_up(update: FileUpdate, created: list[Path]) -> FileUpdate:
    """`update` with its backup written (or an identical older one found); the new backup joins `created`."""
    saved, needed = backup_path(update.path, update.old)
    if needed:
        created.append(saved)  # before the write: however far it gets, a failure takes it away again
        try:
            write_bytes_atomic(saved, update.old)
            os.chmod(saved, update.path.stat().st_mode & 0o7777)
        except (TemplateSourceError, OSError) as exc:
            why = exc.message if isinstance(exc, TemplateSourceError) else (exc.strerror or str(exc))
            raise TemplateSourceError(f"cannot write its backup {saved.name}: {why}", source=str(update.path)) from None
        crash_point()
    return FileUpdate(update.path, update.old, update.new, saved)


def apply_updates(updates: Sequence[FileUpdate], *, backup: bool = True) -> list[FileUpdate]:
    """Back up and replace each changed file atomically; return the updates with `backup` filled in.

    Files are replaced only after every backup is written. If anything fails (a backup, a replacement, Ctrl-C),
    the files replaced so far get their old bytes back and the backups this call wrote are removed: the folder is
    byte-identical to before (the error, a `TemplateSourceError`, names the user's file). A backup is kept only
    if putting a file back failed too, since it then holds the only copy of the old bytes.

    Example:
        apply_updates(plan_in_place(templates, texts))
        # [FileUpdate(path=PosixPath('model/tokenizer_config.json'), ..., backup=PosixPath('model/...json.bak'))]
    """
    done: list[FileUpdate] = []
    created: list[Path] = []
    try:
        for update in updates:
            done.append(_backed_up(update, created) if backup and update.changed else update)
        for update in done:
            if update.changed:
                write_bytes_atomic(update.path, update.new)
                crash_point()
    except BaseException:
        # Put back every file that holds its new bytes (however far its replacement got when this was raised).
        restored = all([_put_back(update) for update in done if update.changed])
        for saved in created if restored else []:
            saved.unlink(missing_ok=True)
        raise
    return done


def _put_back(update: FileUpdate) -> bool:
    """Give a file its old bytes again if it holds the new ones; whether it now holds its old bytes."""
    try:
        current = update.path.read_bytes()
        if current == update.new and current != update.old:
            write_bytes_atomic(update.path, update.old)
            return True
        return current == update.old
    except (OSError, TemplateSourceError):
        return False


def update_in_place(
    templates: Sequence[LoadedTemplate], texts: Sequence[str], *, backup: bool = True
) -> list[FileUpdate]:
    """Write each patched text back into the file its template was read from; see the module notes.

    Example:
        templates = load_templates("model/")
        update_in_place(templates, [patch_template(t.text).template for t in templates])
    """
    return apply_updates(plan_in_place(templates, texts), backup=backup)
