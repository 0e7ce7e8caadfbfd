"""Run in a fresh process by the tests: the verdict on each template named on the command line.

Prints one JSON object: template path → what `patch_template(retag=True)` gives (the patched text and its
notes, or the refusal and its reasons) and what the delimiter fallback learns from the same template
(`--fallback refused`: only where the patcher refuses, as `SpanRenderer` does by default).

`--report ROOT` first runs `templatekit report ROOT --summary` as the command line runs it, and prints
`{"report": {"code", "out", "err"}, "verdicts": {...}}`: the report patches each template with the very call a
verdict makes, so the verdicts read the report's results (recorded as they pass, never replaced) instead of
patching every template twice. conftest.py's `fresh_corpus_run` runs it over the corpus once per session.

`--clock ISO --step SECONDS` moves the clock before anything is imported: its first reading is that instant
and every later reading is `SECONDS` further on, so renders of one conversation straddle a second, a minute
or a midnight as often as a clock can make them.
"""

from __future__ import annotations

import argparse
import datetime as datetime_module
import itertools
import json
import sys


def _move_clock(start: str, step: float) -> None:
    real = datetime_module.datetime
    readings = itertools.count()
    first = real.fromisoformat(start)

    class MovedDatetime(real):
        @classmethod
        def now(cls, tz=None):
            moved = first + datetime_module.timedelta(seconds=step * next(readings))
            return moved if tz is None else moved.replace(tzinfo=tz)

    datetime_module.datetime = MovedDatetime  # modules that import `datetime` after this see the moved clock


def verdict(path: str, fallbacks: str, *, patch=None, delimiters=None) -> dict:
    """The verdict on one template. `patch(text)` and `delimiters(text)` are `patch_template(text, retag=True)` and
    `derive_delimiters(text)` unless given (test_determinism passes the session's own results of those calls)."""
    import templatekit
    from templatekit.errors import TemplateSourceError
    from templatekit.training.fallback import derive_delimiters

    patch = patch or (lambda text: templatekit.patch_template(text, retag=True))
    delimiters = delimiters or derive_delimiters
    text = open(path, encoding="utf-8").read()
    try:
        result = patch(text)
        patched = {"status": result.status, "template": result.template, "notes": result.report.notes}
    except templatekit.PatchError as error:
        patched = {"status": "refused", "reasons": error.reasons, "notes": error.report.notes if error.report else []}
    except TemplateSourceError as error:
        return {"status": "invalid", "reason": str(error)}
    except Exception as error:  # a crash is a result too, and must be the same crash every time
        patched = {"status": "internal error", "reason": f"{type(error).__name__}: {error}"}
    if fallbacks == "refused" and patched["status"] != "refused":
        return patched
    try:
        fallback = repr(delimiters(text))
    except Exception as error:
        fallback = f"{type(error).__name__}: {error}"
    return {**patched, "fallback": fallback}


PLAIN = {"train_roles": ("assistant",), "retag": True}  # the options of the report's patches that a verdict reads


def report_recording_patches(root: str) -> tuple[dict, dict]:
    """`templatekit report ROOT --summary` through the command line's `main`, and what each of its
    `patch_template(text, **PLAIN)` calls gave (no switch set): text → result or exception.

    The report does each template's work in a forked child (`run_isolated`), so a call recorded there is lost with
    the child: each one is pickled to a folder this process reads back once the report is done."""
    import contextlib
    import hashlib
    import io
    import pickle
    import tempfile
    from pathlib import Path

    import templatekit
    from templatekit import cli

    real = templatekit.patch_template

    def wanted(options: dict) -> bool:  # the call a verdict makes: PLAIN, and no switch set (`{}` sets none)
        options = dict(options)
        return not options.pop("template_kwargs", None) and options == PLAIN

    def shelve(text, outcome) -> None:
        name = hashlib.sha256(text.encode()).hexdigest()
        (shelf / f"{name}.pickle").write_bytes(pickle.dumps((text, outcome)))

    def recording(text, **options):  # the report calls the package's public function: the call passes through
        try:
            result = real(text, **options)
        except Exception as error:
            if wanted(options):
                shelve(text, error)
            raise
        if wanted(options):
            shelve(text, result)
        return result

    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as folder:
        shelf = Path(folder)
        templatekit.patch_template = recording
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(["report", root, "--summary"])
        finally:
            templatekit.patch_template = real
        recorded = dict(pickle.loads(path.read_bytes()) for path in shelf.iterdir())
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}, recorded


def _recorded_or_patched(recorded: dict):
    """`patch_template(text, retag=True)`: the report's result for `text` where it made that call, else a new one."""
    import templatekit

    def patch(text: str):
        if text not in recorded:
            return templatekit.patch_template(text, retag=True)
        if isinstance(recorded[text], BaseException):
            raise recorded[text]
        return recorded[text]

    return patch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("templates", nargs="+")
    parser.add_argument("--report", metavar="ROOT", help="run `templatekit report ROOT --summary` first (see above)")
    parser.add_argument("--clock", help="ISO date-time of the clock's first reading")
    parser.add_argument("--step", type=float, default=1.0, help="seconds the clock moves on at each reading")
    parser.add_argument(
        "--fallback", choices=("all", "refused"), default="all", help="which templates to learn delimiters for"
    )
    args = parser.parse_args()
    if args.clock:
        _move_clock(args.clock, args.step)
    if not args.report:
        json.dump({path: verdict(path, args.fallback) for path in args.templates}, sys.stdout)
        return
    report, recorded = report_recording_patches(args.report)
    if not recorded:  # the verdicts would patch every template again: twice the work, and this file's promise broken
        sys.exit("determinism_worker: none of the report's patches was recorded")
    patch = _recorded_or_patched(recorded)
    verdicts = {path: verdict(path, args.fallback, patch=patch) for path in args.templates}
    json.dump({"report": report, "verdicts": verdicts}, sys.stdout)


if __name__ == "__main__":
    main()
