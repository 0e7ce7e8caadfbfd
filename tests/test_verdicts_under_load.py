"""One verdict under any load: the step budget, not the clock, decides whether a template is refused.

The same hostile templates, and templates just under and just over a step budget, go through `templatekit`
twice: on a quiet machine, and while two CPU hogs run beside them. Every exit code, every line and every report
row is the same both times. The wall clock is only a generous backstop (60 s by default), far past what the step
budget lets any of these run, loaded or not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _harness import cli, in_child
from _paths import corpus_file

import templatekit
from templatekit.core.sandbox import limit_scope

# Fresh interpreters, some of them busy loops beside the verdicts: the slowest module but one.
pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SHARED = (
    "{% set ns = namespace(e=[1], f=[1]) %}"
    "{% for i in range(60) %}{% set ns.e = [ns.e, ns.e] %}{% set ns.f = [ns.f, ns.f] %}{% endfor %}"
)
HOSTILE = {
    "cpu_loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "compare_shared_lists": SHARED + "{% if ns.e == ns.f %}x{% endif %}",
    "sort_shared_lists": SHARED + "{{ ([ns.e, ns.f] * 50) | sort | length }}",
    "string_doubling": "{% set ns = namespace(s='xy') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "macro_recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}
# A loop whose steps take most of a patch's work: the budgets below sit 3 % either side of what it needs.
NEAR = "{% for i in range(2000) %}{% if i is divisibleby 7 %}{% endif %}{% endfor %}" + CHAT
BUDGET = "5000000"


def _work_of_patching(template: str) -> float:
    """The steps `templatekit patch` takes on `template` (patched as the CLI patches: retagging)."""
    scope = limit_scope(max_steps=None)
    with scope:
        templatekit.patch_template(template, retag=True)
    return scope.work


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("load")
    folder = root / "report"
    folder.mkdir()
    for name, payload in HOSTILE.items():
        (folder / f"{name}.jinja").write_text(payload + "\n" + CHAT, encoding="utf-8")
    for name in ("qwen2_5.jinja", "llama3_2.jinja"):
        (folder / name).write_text(corpus_file(f"trl/{name}").read_text(encoding="utf-8"), encoding="utf-8")
    near = root / "near.jinja"
    near.write_text(NEAR, encoding="utf-8")
    outcome = in_child(lambda: _work_of_patching(NEAR), timeout=120)  # a fresh process, as the CLI's child is
    assert outcome.kind == "returned", outcome
    return {"folder": folder, "near": near, "work": outcome.value}


def _verdicts(cases: dict) -> list[tuple]:
    """What each command says: exit code, the lines on stderr, and report's rows."""
    work = cases["work"]
    runs = [
        cli("report", "--json", "--max-steps", BUDGET, cases["folder"], timeout=240),
        cli("patch", cases["near"], "--max-steps", int(work * 1.03), timeout=120),
        cli("patch", cases["near"], "--max-steps", int(work * 0.97), timeout=120),
        cli("show", cases["folder"] / "compare_shared_lists.jinja", "--max-steps", BUDGET, timeout=120),
    ]
    for run in runs:
        assert "Traceback" not in run.err, run.err
    report, *others = runs
    verdicts = [(report.code, report.lines(), json.loads(report.out)["templates"])]
    return verdicts + [(run.code, run.lines(), run.out) for run in others]


def test_the_same_verdicts_quiet_and_under_two_cpu_hogs(cases: dict):
    quiet = _verdicts(cases)
    (report_code, _, rows), passed, refused, shown = quiet
    statuses = {Path(row["source"]).stem: (row["status"], row["reason"]) for row in rows}
    assert report_code == 0 and statuses["qwen2_5"][0] == statuses["llama3_2"][0] == "patched", statuses
    for name in HOSTILE:
        assert statuses[name][0] == "not patchable", statuses[name]
    assert "step limit exceeded" in statuses["cpu_loops"][1] and "step limit" in statuses["compare_shared_lists"][1]
    assert passed[0] == 0, passed  # 3 % over what the patch needs
    assert refused[0] == 2 and "step limit exceeded" in refused[1][0], refused  # 3 % under
    assert shown[0] == 2 and "step limit exceeded" in shown[1][0], shown
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded = _verdicts(cases)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert loaded == quiet


def test_the_wall_clock_is_a_backstop_that_says_so_and_none_turns_it_off(cases: dict):
    """Past the clock (here set to half a second, with a budget of steps no template reaches) the error says that
    the clock is a backstop and how to raise it or turn it off; `--timeout none` turns it off, steps still count."""
    loops = cases["folder"] / "cpu_loops.jinja"
    run = cli("patch", loops, "--timeout", "0.5", "--max-steps", "1000000000000", timeout=120)
    assert run.code == 2 and len(run.lines()) == 1, run.err
    assert "time limit exceeded" in run.err and "wall-clock backstop" in run.err, run.err
    assert "--timeout SECONDS" in run.err and "--timeout none" in run.err, run.err
    run = cli("patch", loops, "--timeout", "none", "--max-steps", BUDGET, timeout=120)
    assert run.code == 2 and "step limit exceeded" in run.err and "--max-steps" in run.err, run.err
    run = cli("patch", cases["folder"] / "qwen2_5.jinja", "--timeout", "none", timeout=120)
    assert run.code == 0, run.err
    run = cli("patch", loops, "--timeout", "never", timeout=120)
    assert run.code == 2 and "none for no limit" in run.err, run.err
