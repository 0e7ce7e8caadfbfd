"""Where the commands that write files (`patch`, `strip`, `apply`, `show --html`) put them, and how a write that
cannot happen is said: one line naming the user's path, exit 2, never a traceback.

Output goes only to a regular file or a new path (`sources.output.output_target`): a device, a named pipe, a
socket or a symbolic link out of its folder is refused before any work is done, and `--force` does not change
that. A missing folder is created only with `--mkdir`. Writes are atomic (`sources.atomic`), and an OS error while
writing (a read-only file system, a full disk, the file-size limit) names the file.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import GenerationTagsWarning, TemplateSourceError
from ..sources import LoadedTemplate, write_text_atomic
from ..sources.gguf import write_gguf_templates
from ..sources.in_place import update_in_place
from ..sources.output import output_target
from .console import EXIT_OK, EXIT_USAGE, Console, Replay

__all__ = [
    "add_mkdir",
    "check_targets",
    "deliver",
    "may_make_folders",
    "write_gguf",
    "write_in_place",
    "write_texts",
]


def add_mkdir(parser: argparse.ArgumentParser) -> None:
    """`--mkdir`: create the output's missing folders (without it, a missing folder is refused in one line)."""
    parser.add_argument("--mkdir", action="store_true", help="create the output's folder when it does not exist")


def may_make_folders(args: argparse.Namespace, target: Path) -> bool:
    """Whether writing `target` may create folders: with `--mkdir`; and `additional_chat_templates/` inside an
    output folder that exists, which is part of the model-folder layout `-o FOLDER` writes."""
    if getattr(args, "mkdir", False):
        return True
    output = getattr(args, "output", None)
    return (
        output is not None
        and target.parent.name == "additional_chat_templates"
        and target.parent.parent == Path(output)
        and Path(output).is_dir()
    )


def check_targets(args: argparse.Namespace, targets: Sequence[Path], err: Console) -> bool:
    """Whether every target is a place output may go (see the module notes); prints the first refusal."""
    for target in targets:
        try:
            output_target(target, make_folders=may_make_folders(args, target))
        except TemplateSourceError as exc:
            err.line(f"error: {exc}", "red")
            return False
    return True


def write_texts(args: argparse.Namespace, targets: Sequence[Path], texts: Sequence[str], err: Console) -> int:
    """Write each text to its target atomically and say so; the exit code (2, with one line, when one fails)."""
    for target, text in zip(targets, texts, strict=True):
        try:
            write_text_atomic(target, text, make_folders=may_make_folders(args, target))
        except TemplateSourceError as exc:
            err.line(f"error: {exc}", "red")
            return EXIT_USAGE
        err.line(f"wrote {target}")
    return EXIT_OK


def write_in_place(templates: list[LoadedTemplate], texts: list[str], err: Console) -> int:
    """Put `texts` back where the local model keeps `templates` (with backups), and say what changed. On failure
    the folder is as it was (no backup, no temporary file) and the one line names the user's file."""
    try:
        updates = update_in_place(templates, texts)
    except TemplateSourceError as exc:
        err.line(f"error: {exc}; nothing was changed", "red")
        return EXIT_USAGE
    for update in updates:
        if update.changed:
            err.line(f"updated {update.path} (backup: {update.backup})")
        else:
            err.line(f"{update.path}: unchanged, already verified")
    return EXIT_OK


def write_gguf(
    source: str, output: str, templates: Mapping[str, str], err: Console, *, make_folders: bool = False
) -> int:
    """Write a new GGUF file `output`: `source` with `templates` (name → text) in place of its own; the exit code.
    The warning that a template carries generation tags is printed as one line."""
    target = Path(output)
    try:
        with warnings.catch_warnings(record=True) as caught:  # the tags warning, printed as one line below
            warnings.simplefilter("always", GenerationTagsWarning)
            write_gguf_templates(source, target, templates, make_folders=make_folders)
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    err.line(f"wrote {target} (a new GGUF file; {source} is unchanged)")
    for warning in caught:
        if issubclass(warning.category, GenerationTagsWarning):
            err.line(f"warning: {warning.message}", "yellow")
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return EXIT_OK


def deliver(
    args: argparse.Namespace,
    templates: list[LoadedTemplate],
    targets: Sequence[Path],
    gguf_out: bool,
    texts: Sequence[str],
    consoles: tuple[Console, Console],
    describe: Callable[[Console, Console], None],
) -> int:
    """Put the rewritten `texts` where `patch`/`strip` were asked to (a new GGUF file, in place, `-o` files, or
    stdout), after `describe(out, err)` prints what was found. When files are written, that description is shown
    only once they are: a write that fails is the one line of its error. The exit code."""
    out, err = consoles
    if not (args.output or args.in_place):
        describe(out, err)
        text = texts[0]
        # A terminal gets a final newline so the prompt does not glue onto the last line; a pipe gets the exact text.
        out.raw(text + "\n" if out.tty and not text.endswith("\n") else text)
        return EXIT_OK
    replay = Replay()
    later_out, later_err = replay.console(out), replay.console(err)
    describe(later_out, later_err)
    if gguf_out:
        named = {template.name: text for template, text in zip(templates, texts)}
        code = write_gguf(args.source, args.output, named, later_err, make_folders=args.mkdir)
    elif args.in_place:
        code = write_in_place(templates, list(texts), later_err)
    else:
        code = write_texts(args, targets, texts, later_err)
    replay.play(errors_only=code != EXIT_OK)
    return code
