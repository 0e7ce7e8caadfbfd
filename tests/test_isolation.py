"""The backstop for what Python cannot interrupt: work in a child process under hard limits (RLIMIT_AS, CPU time).

A C call that never returns to the interpreter (consuming an endless iterator in C), an allocation past the
address-space limit and a crash each end in one `TemplateLimitError`, in the caller, within the wall-clock
backstop. The results and errors of ordinary work come back whole. The CLI works on each template this way, so
`report` lists a template whose child is killed as one row and goes on.

Every call here runs in a forked child of its own first (`_harness.in_child`, itself under a memory cap), so that a
regression fails a test instead of taking the machine down.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from _harness import MiB, cli_in_child, in_child
from _paths import corpus_file

import templatekit
from templatekit.core.sandbox import Limits, limit_scope
from templatekit.core.sandbox.isolation import run_isolated
from templatekit.errors import PatchError, TemplateLimitError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="isolation forks a child process")


def _limit_error(call) -> tuple[str, str]:
    try:
        call()
    except TemplateLimitError as error:
        return error.limit, error.detail
    return "none", ""


@pytest.mark.slow
def test_a_c_call_that_never_returns_is_stopped_at_the_cpu_limit():
    """`deque(count(), maxlen=0)` runs in C forever: no hook, no watchdog reaches it; the CPU-time limit does."""
    endless = lambda: collections.deque(itertools.count(), maxlen=0)  # noqa: E731
    outcome = in_child(lambda: _limit_error(lambda: run_isolated(endless, limits=Limits(timeout=1))), timeout=60)
    assert outcome.kind == "returned", outcome
    limit, detail = outcome.value
    assert limit == "time" and ("--timeout" in detail), detail
    assert outcome.seconds < 30


def test_memory_past_the_address_space_limit_is_one_memory_error():
    """8 GiB asked for at once, with max_memory 64 MiB: the child's address space is capped, the MemoryError comes
    back as the memory limit, naming the hard limit and how to raise it."""
    outcome = in_child(
        lambda: _limit_error(lambda: run_isolated(lambda: bytearray(8 << 30), limits=Limits(max_memory=64 * MiB))),
        cap=1 << 30,
    )
    assert outcome.kind == "returned", outcome
    limit, detail = outcome.value
    assert limit == "memory" and "hard limit" in detail and "--max-memory" in detail, detail
    assert outcome.peak < 256 * MiB  # nothing of it reached this process


def test_a_child_that_dies_is_one_error():
    outcome = in_child(lambda: _limit_error(lambda: run_isolated(lambda: os.kill(os.getpid(), signal.SIGSEGV))))
    assert outcome.kind == "returned", outcome
    limit, detail = outcome.value
    assert limit == "memory" and "SIGSEGV" in detail, detail


def test_results_and_errors_come_back_whole():
    """`isolate=True` gives what the call in this process gives: the patched template, or the same refusal."""
    text = corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")

    def both() -> tuple:
        here, there = templatekit.patch_template(text), templatekit.patch_template(text, isolate=True)
        refusal = "{{ messages[0].content }}"  # renders no turn: refused
        with pytest.raises(PatchError) as here_error:
            templatekit.patch_template(refusal)
        with pytest.raises(PatchError) as there_error:
            templatekit.patch_template(refusal, isolate=True)
        return (
            (here.template, here.status, here.report.summary()),
            (there.template, there.status, there.report.summary()),
            (here_error.value.reasons, there_error.value.reasons),
        )

    outcome = in_child(both, timeout=120)
    assert outcome.kind == "returned", outcome
    here, there, (reasons_here, reasons_there) = outcome.value
    assert here == there and reasons_here == reasons_there and reasons_here


@pytest.mark.slow
def test_the_steps_a_call_took_are_told_and_limited():
    """`LimitScope.work` tells how many steps the work took; the same work under a smaller budget is refused."""
    template = "{% for i in range(5000) %}{{ i }}{% endfor %}"

    def steps() -> tuple:
        scope = limit_scope(max_steps=None)
        with scope:
            templatekit.render_with_spans(template + CHAT, MESSAGES, max_steps=None)
        return scope.work, _limit_error(
            lambda: templatekit.render_with_spans(template + CHAT, MESSAGES, max_steps=1000)
        )

    outcome = in_child(steps, timeout=120)
    assert outcome.kind == "returned", outcome
    work, (limit, detail) = outcome.value
    assert work > 5000 and limit == "step" and "--max-steps" in detail, outcome.value


CHAT = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_report_goes_on_past_a_template_whose_child_is_killed(tmp_path: Path, monkeypatch):
    """A child killed at its hard limits (here: one template's work replaced by a SIGKILL of its own process, the
    stand-in for an escape no hook sees) is one row of `report`, which patches the templates after it."""
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "a_killed.jinja").write_text(CHAT, encoding="utf-8")
    for name in ("qwen2_5.jinja", "llama3_2.jinja"):
        shutil.copy(corpus_file(f"trl/{name}"), folder / f"b_{name}")
    import templatekit.cli.report as report

    work = report._classify_within

    def killed_for_one(api, template, roles, row):
        if template.label.endswith("a_killed.jinja"):
            os.kill(os.getpid(), signal.SIGKILL)
        return work(api, template, roles, row)

    monkeypatch.setattr(report, "_classify_within", killed_for_one)
    run = cli_in_child("report", "--json", folder, timeout=120)
    assert run.code == 0 and "Traceback" not in run.err, run.err
    rows = {Path(row["source"]).name: row for row in json.loads(run.out)["templates"]}
    killed = rows.pop("a_killed.jinja")
    assert killed["status"] == "not patchable" and "was killed (SIGKILL)" in killed["reason"], killed
    assert {row["status"] for row in rows.values()} == {"patched"} and len(rows) == 2
