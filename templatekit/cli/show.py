"""`templatekit show`: a conversation rendered with the trained text (and tokens) marked."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConversationError, NotTrainableError, TemplateKitError, TemplateSourceError
from ..sources import load_templates
from .console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Console, Replay
from .options import (
    add_explain,
    add_limit_options,
    add_template_kwargs,
    isolated,
    limits,
    located,
    print_refusal,
    template_kwargs,
)
from .writing import add_mkdir, check_targets, write_texts

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Render a conversation with the trained text (and tokens) marked: terminal, pipe or HTML page."""
    from . import highlight as show  # imported on use: it loads the renderer, and transformers with it

    if args.html and not check_targets(args, [Path(args.html)], err):
        return EXIT_USAGE
    try:
        templates = load_templates(args.source)
        messages, tools = show.load_messages(args.messages) if args.messages else (None, None)
        encode = show.load_tokenizer(args.tokenizer) if args.tokenizer else None
    except TemplateSourceError as exc:
        err.line(f"error: {exc}", "red")
        return EXIT_USAGE
    # One template is shown: the one --name picks, else the default one.
    wanted = args.name or "default"
    template = next((t for t in templates if t.name == wanted), None if args.name else templates[0])
    if template is None:
        names = ", ".join(t.name for t in templates)
        err.line(f"error: {args.source}: no template named {args.name!r} (found: {names})", "red")
        return EXIT_USAGE
    # The special tokens the model's own config names, as apply_chat_template would pass them.
    origin = template.origin if template.kind != "hub" else None
    folder = origin.parent if origin is not None else None
    if folder is None and args.tokenizer and Path(args.tokenizer).is_dir():
        folder = Path(args.tokenizer)
    try:
        if args.processor:  # the processor's view: images expanded, media tokens apart
            from .show_processor import load_processor, render_processor_conversation

            rendering = render_processor_conversation(
                load_processor(args.source if args.processor is True else args.processor),
                messages,
                tools=tools,
                template=template.text,
                fallback=True if args.fallback else None,
                template_kwargs=template_kwargs(args),
                **limits(args),
            )
        else:
            rendering = isolated(  # in a child process under hard limits (templatekit.core.sandbox.isolation)
                args,
                show.render_conversation,
                template.text,
                messages,
                tools=tools,
                add_generation_prompt=args.add_generation_prompt,
                tokenizer=encode,
                fallback=True if args.fallback else None,
                **limits(args),
                **show.special_tokens(folder),
                **template_kwargs(args),
                operations=2,  # patching the template, then rendering the conversation: each under the limits
            )
    except ConversationError as exc:
        err.line(f"error: {args.messages or 'the demo conversations'}: {exc}", "red")
        return EXIT_USAGE
    except TemplateSourceError as exc:
        err.line(f"error: {located(exc, template)}", "red")
        return EXIT_USAGE
    except TemplateKitError as exc:
        reasons = exc.reasons if isinstance(exc, NotTrainableError) else [str(exc)]
        print_refusal(err, template.label, "cannot tell what is trained", reasons, template.text, args)
        return EXIT_FAIL
    replay = Replay()
    said = replay.console(err) if args.html else err  # with --html: said once the page is written
    for note in rendering.notes:
        said.line(f"note: {note}", "dim")
    said.line(f"{template.label}: {show.summary(rendering)}")
    if args.html:
        code = write_texts(args, [Path(args.html)], [show.to_html(rendering, template.label)], said)
        replay.play(errors_only=code != EXIT_OK)
        return code
    if out.tty and out.rich is not None:
        out.rich.print(show.to_rich(rendering, out.rich.color_system))
    else:
        out.raw(show.to_plain(rendering) + "\n")
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `show` command."""
    show_cmd = commands.add_parser(
        "show",
        help="render a conversation with the trained text highlighted",
        description="Render a conversation (a built-in demo with system, user, tool call and answer when --messages "
        "is not given) with SOURCE's template and highlight what training would learn: the spans of the verified "
        "patched template, or of the delimiter fallback when it cannot be patched. With --tokenizer, token "
        "boundaries are shown too. In a terminal: colours; in a pipe: trained runs between ⟦ ⟧, token starts "
        "marked ¦; --html OUT: a self-contained page.",
    )
    show_cmd.add_argument("source", metavar="SOURCE")
    show_cmd.add_argument("--name", help="the named template to show (e.g. tool_use)")
    show_cmd.add_argument(
        "--messages", metavar="CONV.json", help='a JSON list of messages, or {"messages": [...], "tools": [...]}'
    )
    show_cmd.add_argument("--tokenizer", metavar="SOURCE", help="a local tokenizer folder or tokenizer.json")
    show_cmd.add_argument(
        "--processor",
        nargs="?",
        const=True,
        metavar="FOLDER",
        help="a vision-language model's processor folder (SOURCE itself when FOLDER is left out): show the "
        "conversation (a built-in one with images, or --messages with image blocks holding a path or URL) as the "
        "processor gives it to the model, images expanded, media tokens marked apart (⟪ ⟫ in a pipe)",
    )
    show_cmd.add_argument("--html", metavar="OUT", help="write a self-contained HTML page here instead")
    add_mkdir(show_cmd)
    show_cmd.add_argument("--add-generation-prompt", action="store_true", help="render with the generation prompt")
    show_cmd.add_argument(
        "--fallback", action="store_true", help="show what the delimiter fallback trains, even for a patchable template"
    )
    add_template_kwargs(show_cmd)
    add_limit_options(show_cmd)
    add_explain(show_cmd)
    show_cmd.set_defaults(func=run)
