"""`templatekit apply`: give a model without a chat template one from the template library."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import NoChatTemplateError, TemplateSourceError, UnknownTemplateError
from ..sources import LoadedTemplate, load_templates, read_json_file, source_kind
from .console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Console, Replay
from .options import public_api
from .writing import add_mkdir, check_targets, write_in_place, write_texts

__all__ = ["add_parser", "run", "unknown_special_tokens"]

# What a special token looks like: `<|im_start|>`, `<｜User｜>`, `</s>`, `<bos>`, `<start_of_turn>`, `</tool_call>`
# (not `<tools>`: a plain tag some templates write as text).
_SPECIAL = re.compile(r"<\|[^<>|\s]{1,40}\|>|<｜[^<>\s]{1,40}｜>|</?s>|<(?:bos|eos|pad|unk)>|</?[a-z]+(?:_[a-z]+)+>")


def _vocabulary(folder: Path) -> tuple[set[str], Path] | None:
    """The tokens a model folder's tokenizer knows (`tokenizer.json`, else the added tokens its
    `tokenizer_config.json` lists) and the file they come from; None when the folder says nothing about them."""
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer  # on use: only when there is a vocabulary to check

        try:
            return set(Tokenizer.from_file(str(tokenizer_file)).get_vocab(with_added_tokens=True)), tokenizer_file
        except Exception:  # a tokenizer.json the tokenizers library cannot read: no vocabulary to check against
            return None
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    try:
        config = read_json_file(config_file)
    except TemplateSourceError:
        return None
    added = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    if not isinstance(added, dict) or not added:
        return None
    tokens = {entry.get("content") for entry in added.values() if isinstance(entry, dict)}
    return {token for token in tokens if isinstance(token, str)}, config_file


def unknown_special_tokens(template: str, folder: Path) -> tuple[list[str], Path] | None:
    """The special tokens `template` writes literally that the tokenizer in `folder` does not have as tokens (in
    the order the template writes them), and the file the vocabulary came from; None when there is no vocabulary.

    Example:
        unknown_special_tokens(get_template("llama3"), Path("qwen_model"))
        # (['<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'], ...)
    """
    found = _vocabulary(folder)
    if found is None:
        return None
    vocabulary, where = found
    from ..core.syntax import parse_template  # on use: jinja2 is not loaded for --help

    # What the template writes: its text and string literals (not its comments, nor names in its code).
    written_pieces = [t.value for t in parse_template(template).tokens if t.type in ("data", "string")]
    written = list(dict.fromkeys(token for piece in written_pieces for token in _SPECIAL.findall(piece)))
    return [token for token in written if token not in vocabulary], where


def _warn_unknown_tokens(name: str, text: str, source: str | None, err: Console) -> None:
    if source is None:
        return
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    unknown = unknown_special_tokens(text, folder)
    if unknown is None or not unknown[0]:
        return
    tokens, where = unknown
    err.line(
        f"warning: {name}'s special tokens {', '.join(tokens)} are not in the vocabulary of {where}: the model would "
        "read them as plain text, not as the turn markers it was trained on; pick the library template of the "
        "model's family, or add these tokens to the tokenizer and train them",
        "yellow",
    )


def _template_name(args: argparse.Namespace, err: Console) -> str:
    if args.template_format is not None:
        err.line(
            f"note: `apply --format {args.template_format}` is deprecated: use `--template {args.template_format}`"
        )
        return args.template_format
    return args.template


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Give a model without a chat template (or, with --force, any model) a template from the library."""
    from ..library import get_template  # on use: importlib.resources is not loaded for --help

    name = _template_name(args, err)
    try:
        text = get_template(name)
    except UnknownTemplateError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    existing: list[LoadedTemplate] = []
    if args.source is not None:
        kind = source_kind(args.source)
        if kind not in ("folder", "tokenizer_config", "chat_template_json"):
            err.line(f"error: {args.source}: apply takes a local model folder or its tokenizer_config.json", "red")
            return EXIT_USAGE
        try:
            existing = load_templates(args.source)
        except NoChatTemplateError:
            existing = []  # a base model: what apply is for
        except TemplateSourceError as exc:
            err.line(f"error: {exc}", "red")
            return EXIT_USAGE
        if existing and not args.force:
            err.line(
                f"error: {existing[0].label} already has a chat template; `templatekit patch` makes it trainable, "
                "--force replaces it",
                "red",
            )
            return EXIT_USAGE
    elif args.in_place:
        err.line("error: --in-place needs a SOURCE (a model folder or its tokenizer_config.json)", "red")
        return EXIT_USAGE

    default = [t for t in existing if t.name == "default"]
    target = None
    if args.in_place and not default:
        folder = Path(args.source) if Path(args.source).is_dir() else Path(args.source).parent
        target = folder / "chat_template.jinja"  # read by transformers before tokenizer_config.json
    elif args.output:
        target = Path(args.output) / "chat_template.jinja" if Path(args.output).is_dir() else Path(args.output)
    if target is not None and not check_targets(args, [target], err):
        return EXIT_USAGE

    report = public_api().check_template(text)  # the library is tested; this guards a damaged installation
    if not report.ok:
        err.line(f"library template {name!r} fails verification:", "bold red")
        for reason in report.reasons:
            err.line(f"  - {reason}")
        return EXIT_FAIL
    replay = Replay()
    said = replay.console(err) if args.in_place or target is not None else err  # said once the file is written
    said.line(f"{name}: verification {report.summary()}")
    _warn_unknown_tokens(name, text, args.source, said)
    if said is err:
        out.raw(text)
        return EXIT_OK
    if args.in_place and default:  # --force: replace the template where the model keeps it, with a backup
        code = write_in_place(default, [text], said)
    else:
        code = write_texts(args, [target], [text], said)
    replay.play(errors_only=code != EXIT_OK)
    return code


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `apply` command."""
    apply = commands.add_parser(
        "apply",
        help="give a model without a chat template one from the template library",
        description="Take a training-ready template (with verified generation tags) from the library and print it, "
        "write it with -o, or add it to a local base model with --in-place (as chat_template.jinja). A model that "
        "already has a chat template is left alone unless --force is given (then its template is replaced where "
        "it is kept, with a .bak backup). A warning names the template's special tokens that SOURCE's tokenizer "
        "does not know.",
    )
    which = apply.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--template",
        metavar="NAME",
        help="the library template: alpaca, chatml, gemma, llama3, mistral, phi3, vicuna or zephyr",
    )
    which.add_argument("--format", dest="template_format", metavar="NAME", help="deprecated spelling of --template")
    apply.add_argument("source", metavar="SOURCE", nargs="?", help="a local model folder or its tokenizer_config.json")
    apply_written = apply.add_mutually_exclusive_group()
    apply_written.add_argument(
        "-o", "--output", metavar="OUT", help="write the template here (a folder: OUT/chat_template.jinja)"
    )
    apply_written.add_argument("--in-place", action="store_true", help="add the template to the model folder SOURCE")
    apply.add_argument("--force", action="store_true", help="replace a chat template SOURCE already has")
    add_mkdir(apply)
    apply.set_defaults(func=run)
