"""`templatekit check`: exit 0 only when every template carries generation tags that pass verification."""

from __future__ import annotations

import argparse

from . import check_formats
from .console import STATUS_STYLE, Console
from .options import (
    add_explain,
    add_format,
    add_limit_options,
    add_policy_options,
    add_template_kwargs,
    add_train_role,
    isolated,
    limits,
    output_format,
    public_api,
    template_kwargs,
    train_roles,
)

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Check every template of every source against the trained roles; the exit code (0, 1 or 2)."""
    fmt = output_format(args)
    options = {
        "train_roles": train_roles(args),
        "only_last_turn": args.only_last_turn,
        "strict": args.strict,
        "template_kwargs": template_kwargs(args),
        **limits(args),
    }
    # Each template in a child process under hard limits: one that is killed there is one error, and check goes on.
    outcomes = check_formats.check_sources(
        args.sources, check=lambda text: isolated(args, public_api().check_template, text, **options)
    )
    if fmt == "json":
        out.raw(check_formats.to_json(outcomes))
    elif fmt == "github":
        out.raw(check_formats.to_github(outcomes))
    else:
        for outcome in outcomes:
            if outcome.status == "error":
                err.line(f"error: {outcome.summary}", "red")
            elif not (outcome.ok and args.quiet):
                out.line(f"{outcome.label}: {outcome.summary}", STATUS_STYLE["ok" if outcome.ok else "FAILED"])
                for line in _findings(outcome, args.explain):
                    out.line(f"  {line}")
                for note in outcome.notes:
                    out.line(f"  note: {note}", "dim")
    return check_formats.exit_code(outcomes)


def _findings(outcome: check_formats.CheckOutcome, every: bool) -> list[str]:
    """A failed template's findings: at most three, grouped, in the user's words, and what to do (every one as the
    verifier wrote it with --explain); an untagged template's one finding says what to do itself."""
    messages = [finding.message for finding in outcome.findings]
    if outcome.status != "failed":
        return [f"- {message}" for message in messages]
    from ..core.refusal import explain  # on use: --help loads nothing of the core

    lines = explain(messages).lines(explain=every)[:-1]
    return [
        *lines,
        "what to do: `templatekit patch SOURCE` replaces the tags with verified ones, or says why it cannot",
    ]


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `check` command."""
    check = commands.add_parser(
        "check",
        help="exit 0 only if every template carries generation tags that pass verification",
        description="Check templates for CI and pre-commit: every template of every SOURCE must carry generation "
        "tags that pass verification.",
        epilog="exit codes: 0 every template is tagged and verified; 1 findings (a template has no tags, or its tags "
        "fail verification); 2 usage or input error (a source is missing, unreadable or malformed)",
    )
    check.add_argument("sources", nargs="+", metavar="SOURCE")
    add_format(check, "every template, its status and reasons, the counts")
    check.add_argument("-q", "--quiet", action="store_true", help="text format: print only the templates that fail")
    add_train_role(check)
    add_template_kwargs(check)
    add_policy_options(check)
    add_explain(check)
    add_limit_options(check)
    check.set_defaults(func=run)
