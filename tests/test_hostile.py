"""Hostile templates, built here: each through patch, check, show and report (the CLI) and through the API.

The corpus (`CASES`): CPU loops; string, list and dict growth; `'y' * 99999` in a 99,999-step loop; recursion
through macros, `caller()` and recursive loops; huge outputs (literal text, filters, string methods, formats,
`lipsum`, integers); the known sandbox-escape payloads (`__globals__`, `__subclasses__`, `|attr`, `format` /
`format_map`, `cycler`, `joiner`, `namespace`, `lipsum`, `self`, escaped attribute names); and templates that
mutate the messages they are given. Each payload sits in front of an ordinary ChatML message loop, so that the
template would patch without it.

Every run must end in a clear error or a normal result: a resource case in a `TemplateLimitError` naming its
limit (and line:column through the CLI: exit 2, one line), never a traceback, a hang or an OOM kill. A canary
proves that no code ran outside the sandbox: every escape payload, were it to escape, would create a file (and
one would set an environment variable), and `test_the_escape_payloads_are_real` shows that they do exactly that
in a plain, unsandboxed jinja2 environment.

Everything runs away from the test process under a memory cap (`_harness`): CLI runs in interpreters that cap
their own address space, API calls in forked children under RLIMIT_AS. The per-case runs use tight limits
(`--max-steps 5000000 --max-memory 256M`) to stay quick; the templates of issue 9's table also run at the defaults.
The verdicts come from the step budget, not the clock: `test_verdicts_under_load.py` shows they hold under load.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import datasets
import jinja2
import pytest
from _harness import MiB, Run, cli, cli_in_child, in_child
from _paths import corpus_file
from datasets import Dataset

import templatekit
from templatekit.cli.highlight import render_conversation
from templatekit.errors import TemplateKitError, TemplateLimitError
from templatekit.training.fallback import derive_delimiters

CHAT_LOOP = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The same loop with verified generation tags: what `check` renders (an untagged template it refuses unrendered).
TAGGED_LOOP = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
    "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LIMITS = ("--max-steps", "5000000", "--max-memory", "256M")  # tight limits for the per-case runs
API_LIMITS = {"max_steps": 5_000_000, "max_memory": "256M"}
GiB = 1 << 30
CANARY_ENV = "TK_HOSTILE_CANARY"
GOOD = ("trl/qwen2_5.jinja", "trl/llama3_2.jinja", "trl/gemma3.jinja")  # report patches these beside the rest


@dataclass(frozen=True)
class Case:
    name: str
    payload: str  # Jinja in front of CHAT_LOOP; "{canary}" stands for the canary file's path
    expect: str  # "step", "memory", "recursion", "memory|step": that limit; "escape", "mutate", "clear": any clear end

    def template(self, canary: Path, tagged: bool = False) -> str:
        return self.payload.replace("{canary}", str(canary)) + "\n" + (TAGGED_LOOP if tagged else CHAT_LOOP)


def _escape(name: str, payload: str) -> Case:
    return Case(name, payload, "escape")


SYSTEM = "os.system('touch {canary}')"
# Two lists (or tuples) of 2**60 items each, built in 60 steps from shared parts.
SHARED = (
    "{% set ns = namespace(e=[1], f=[1]) %}"
    "{% for i in range(60) %}{% set ns.e = [ns.e, ns.e] %}{% set ns.f = [ns.f, ns.f] %}{% endfor %}"
)
SHARED_TUPLES = (
    SHARED.replace("[1]", "(1,)").replace("[ns.e, ns.e]", "(ns.e, ns.e)").replace("[ns.f, ns.f]", "(ns.f, ns.f)")
)
CASES = [
    # -- work: loops, and comparisons, hashes and sorts of values built from shared parts (one C call each, past
    # any hook or watchdog, unless charged first by the logical size of what they compare)
    Case("cpu_loops", "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "step"),
    Case("compare_shared_lists", SHARED + "{% if ns.e == ns.f %}x{% endif %}", "step"),
    Case("in_shared_lists", SHARED + "{% if ns.e in [ns.f] %}x{% endif %}", "step"),
    Case("sort_shared_lists", SHARED + "{{ ([ns.e, ns.f] * 50) | sort | length }}", "step"),
    Case("unique_shared_tuples", SHARED_TUPLES + "{{ ([ns.e, ns.f] * 50) | unique | list | length }}", "step"),
    Case("hash_shared_tuple_key", SHARED_TUPLES + "{{ {}.get(ns.e) }}", "step"),
    Case("shared_tuple_as_dict_key", SHARED_TUPLES + "{{ {ns.e: 1} | length }}", "step"),
    Case("compare_test_shared_lists", SHARED + "{% if ns.e is eq(ns.f) %}x{% endif %}", "step"),
    Case(
        "repeated_lists_compared",
        "{% set z = [[1] * 1000] * 1000 %}{% set a = [z] * 1000 %}{% set b = [z] * 1000 %}{% if a == b %}x{% endif %}",
        "step",
    ),
    # -- memory: growth
    Case(
        "string_doubling",
        "{% set ns = namespace(s='xy') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "memory",
    ),
    Case(
        "list_doubling",
        "{% set ns = namespace(s=[1]) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "memory",
    ),
    Case(
        "dict_growth",
        "{% set ns = namespace(d={}) %}{% for i in range(99999) %}"
        "{% set ns.d = dict(ns.d, **{'k' ~ i: 'v' * 9999}) %}{% endfor %}",
        "memory|step",
    ),
    Case(
        "dict_nesting_written",
        "{% set ns = namespace(d={}) %}{% for i in range(60) %}{% set ns.d = {'a': ns.d, 'b': ns.d} %}{% endfor %}"
        "{{ ns.d }}",
        "memory",
    ),
    Case("y_times_99999", "{% for i in range(99999) %}{{ 'y' * 99999 }}{% endfor %}", "memory"),
    # -- recursion
    Case("macro_recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
    Case(
        "caller_recursion",
        "{% macro f() %}{{ caller() }}{% endmacro %}{% macro g() %}{% call f() %}{{ g() }}{% endcall %}{% endmacro %}"
        "{{ g() }}",
        "recursion",
    ),
    Case("loop_recursion", "{% for x in [[1]] recursive %}{{ loop([x]) }}{% endfor %}", "recursion"),
    # -- huge outputs
    Case(
        "literal_output",
        "{% for i in range(99999) %}{% for j in range(99999) %}" + "x" * 200 + "{% endfor %}{% endfor %}",
        "memory|step",
    ),
    Case("center_filter", "{{ 'x' | center(10000000000) }}", "memory"),
    Case("indent_filter", "{{ ('a\\n' * 99999) | indent(99999) }}", "memory"),
    Case("percent_width", "{{ '%*d' % (1000000000, 1) }}", "memory"),
    Case("ljust_method", "{{ 'a'.ljust(10000000000) }}", "memory"),
    Case("format_width", "{{ '{:>9999999999}'.format(1) }}", "memory"),
    Case("lipsum_huge", "{{ lipsum(1000000, max=10000) }}", "memory"),
    Case("integer_power", "{{ 7 ** 999999999 }}", "memory"),
    Case("list_repeat", "{{ ([1] * 1000000000) | length }}", "memory"),
    # -- memory: operations sized before they run, bytes included
    Case("bytes_repeat", "{{ ('x'.encode() * 2000000000) | length }}", "memory"),
    Case("bytes_center", "{{ 'x'.encode().center(2000000000) | length }}", "memory"),
    Case("translate_long_replacement", "{{ ('a' * 100000).translate({97: 'b' * 100000}) | length }}", "memory"),
    Case("urlize_long_target", "{{ ('a.com ' * 100000) | urlize(target='x' * 100000) | length }}", "memory"),
    Case("join_long_separator", "{{ ('a' * 100000) | join('x' * 100000) | length }}", "memory"),
    Case(
        "sum_lists_by_attribute",
        "{{ ([{'a': [1] * 1000}] * 100000) | sum(attribute='a', start=[]) | length }}",
        "memory|step",
    ),
    Case("list_literal_14mb", "{% set x = [" + "1," * 7_000_000 + "1] %}", "memory"),
    # -- an error raised with a value: its text is bounded, never built from a value of 2**60 items
    Case("raise_exception_shared_list", SHARED + "{{ raise_exception(ns.e) }}", "clear"),
    # -- sandbox escapes: each would create the canary file (or set the canary variable) if it ran
    _escape("cycler_globals", "{{ cycler.__init__.__globals__." + SYSTEM + " }}"),
    _escape("joiner_globals", "{{ joiner.__init__.__globals__." + SYSTEM + " }}"),
    _escape("namespace_globals", "{{ namespace.__init__.__globals__." + SYSTEM + " }}"),
    _escape("lipsum_globals", "{{ lipsum.__globals__." + SYSTEM + " }}"),
    _escape("self_context", "{{ self._TemplateReference__context.cycler.__init__.__globals__." + SYSTEM + " }}"),
    _escape(
        "subclasses_popen",
        "{% for c in ().__class__.__base__.__subclasses__() %}{% if c.__name__ == 'Popen' %}"
        "{{ c(['touch', '{canary}']) }}{% endif %}{% endfor %}",
    ),
    _escape(
        "attr_filter",
        "{{ ((cycler | attr('__init__') | attr('__globals__'))['os'] | attr('system'))('touch {canary}') }}",
    ),
    _escape(
        "attr_filter_subclasses",
        "{% for c in (() | attr('__class__') | attr('__base__') | attr('__subclasses__'))() %}"
        "{% if c.__name__ == 'Popen' %}{{ c(['touch', '{canary}']) }}{% endif %}{% endfor %}",
    ),
    _escape(
        "escaped_attr_names", "{{ cycler['\\x5f\\x5finit\\x5f\\x5f']['\\x5f\\x5fglobals\\x5f\\x5f']." + SYSTEM + " }}"
    ),
    _escape(
        "escaped_attr_filter",
        "{{ ((cycler | attr('\\x5f\\x5finit\\x5f\\x5f') | attr('\\x5f\\x5fglobals\\x5f\\x5f'))['os']"
        " | attr('system'))('touch {canary}') }}",
    ),
    _escape("format_globals", "{{ '{0.__init__.__globals__[os].system}'.format(cycler) }}"),
    _escape("format_map_globals", "{{ '{c.__init__.__globals__[os]}'.format_map({'c': joiner}) }}"),
    _escape("strftime_globals", "{{ (strftime_now | attr('__globals__'))['os'].system('touch {canary}') }}"),
    _escape("raise_exception_globals", "{{ (raise_exception | attr('__globals__'))['os'].system('touch {canary}') }}"),
    _escape(
        "environ_canary",
        "{{ (cycler | attr('__init__') | attr('__globals__'))['os'].environ.__setitem__('" + CANARY_ENV + "', '1') }}",
    ),
    _escape("namespace_dunder_set", "{% set ns = namespace() %}{% set ns.__class__ = 1 %}{{ ns.__class__ }}"),
    # -- templates that mutate the messages they are given
    Case("append_message", "{% set _ = messages.append({'role': 'user', 'content': 'injected'}) %}", "mutate"),
    Case("update_message", "{% set _ = messages[0].update({'content': 'changed'}) %}", "mutate"),
    Case("pop_message", "{% set _ = messages.pop() %}", "mutate"),
    Case("clear_messages", "{% set _ = messages.clear() %}", "mutate"),
    Case("setdefault_message", "{% set _ = messages[0].setdefault('weight', 0) %}", "mutate"),
    Case("setitem_message", "{% set _ = messages[0].__setitem__('content', 'x') %}", "mutate"),
    Case("unbound_dict_clear", "{% set _ = dict.clear(messages[-1]) %}", "mutate"),
    Case("unbound_dict_update", "{% set _ = dict.update(messages[0], content='changed') %}", "mutate"),
]
ISSUE_TABLE = ("cpu_loops", "string_doubling", "list_doubling", "y_times_99999", "macro_recursion")
BY_NAME = {case.name: case for case in CASES}

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]

LIMIT_LINE = re.compile(r":(\d+)(?::(\d+))?: (step|time|memory|recursion) limit exceeded: ")  # a column where known


def limit_of(case: Case) -> set[str]:
    return set(case.expect.split("|"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The corpus written out: one folder of hostile templates, one with them and three good corpus templates,
    and the canary file's path (which must never exist)."""
    root = tmp_path_factory.mktemp("hostile")
    canary = root / "ESCAPED"
    folder = root / "templates"
    folder.mkdir()
    tagged = root / "tagged"
    tagged.mkdir()
    for case in CASES:
        (folder / f"{case.name}.jinja").write_text(case.template(canary), encoding="utf-8")
        (tagged / f"{case.name}.jinja").write_text(case.template(canary, tagged=True), encoding="utf-8")
    mixed = root / "mixed"
    shutil.copytree(folder, mixed)
    for relative in GOOD:
        shutil.copy(corpus_file(relative), mixed / ("good_" + Path(relative).name))
    yield {"root": root, "folder": folder, "tagged": tagged, "mixed": mixed, "canary": canary}
    assert not canary.exists(), "a payload escaped the sandbox: the canary file exists"


def assert_clear(run: Run, source: Path, case: Case) -> None:
    """A clear end: no traceback; exit 2 with one line naming the file (a limit: its name and line:column), or a
    normal result (0 or 1) for a payload the sandbox turned into an error the template reports."""
    assert "Traceback" not in run.err, (case.name, run.err[-2000:])
    assert run.code in (0, 1, 2), (case.name, run.code, run.err[-2000:])
    if case.expect in ("escape", "mutate", "clear"):
        if run.code == 2:
            lines = run.lines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {source}"), (case.name, run.err)
        return
    assert run.code == 2, (case.name, run.code, run.err[-2000:])
    lines = run.lines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}:"), (case.name, run.err)
    found = LIMIT_LINE.search(lines[0])
    assert found and found.group(3) in limit_of(case), (case.name, lines[0])
    assert int(found.group(1)) == 1, (case.name, lines[0])  # every payload sits on the template's first line


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.mark.subprocess
def test_issue_table_through_patch_at_the_default_limits(hostile: dict, tmp_path: Path) -> None:
    """Issue 9's table, as a new user runs it: `templatekit patch` with no flags refuses each within 30 s and
    under 2 GiB of peak memory, exit 2 and one line. `report` over the nested loops and three good templates
    (default limits too) patches the three."""
    folder = tmp_path / "one_bad"
    folder.mkdir()
    shutil.copy(hostile["folder"] / "cpu_loops.jinja", folder)
    for relative in GOOD:
        shutil.copy(corpus_file(relative), folder / Path(relative).name)
    jobs = [("patch", hostile["folder"] / f"{name}.jinja") for name in ISSUE_TABLE] + [("report", folder)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda job: cli(job[0], job[1], *(["--json"] if job[0] == "report" else []),
                                             timeout=30, cap=3 * GiB), jobs))  # fmt: skip
    for (command, source), run in zip(jobs, runs):
        assert run.peak < 2 * GiB, (source.name, run.peak / MiB)
        if command == "patch":
            assert_clear(run, source, BY_NAME[source.stem])
    report = json.loads(runs[-1].out)
    statuses = {Path(row["source"]).name: row["status"] for row in report["templates"]}
    assert statuses.pop("cpu_loops.jinja") == "not patchable", statuses
    assert set(statuses.values()) == {"patched"}, statuses
    assert runs[-1].code == 0


@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["patch", "show"])
def test_each_case_through_the_cli(hostile: dict, command: str) -> None:
    """`patch FILE` and `show FILE` on every case (the CLI's `main` in a capped, forked child: a fresh interpreter
    per case would take minutes): a clear end, bounded in time and memory."""
    for case in CASES:
        source = hostile["folder"] / f"{case.name}.jinja"
        run = cli_in_child(command, source, *LIMITS, timeout=30, cap=GiB)
        assert_clear(run, source, case)
        assert run.peak < GiB, (case.name, run.peak / MiB)


@pytest.mark.subprocess
def test_check_and_report_go_on_past_every_case(hostile: dict) -> None:
    """`check` over all the cases' files, as the pre-commit hook runs it (with generation tags, so that it
    renders them), names each one that reaches a limit, and goes on; `report` over them and three good templates lists each
    case as not patchable (a limit named where one was reached) and patches the three."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        check, report = pool.map(
            lambda argv: cli(*argv, timeout=90, cap=2 * GiB),
            [
                ("check", "--json", *LIMITS, *sorted(hostile["tagged"].iterdir())),
                ("report", "--json", *LIMITS, hostile["mixed"]),
            ],
        )
    assert "Traceback" not in check.err + report.err, check.err + report.err
    outcomes = {Path(item["label"]).stem: item for item in json.loads(check.out)["templates"]}
    assert set(outcomes) == {case.name for case in CASES}
    for case in CASES:
        outcome = outcomes[case.name]
        assert outcome["status"] in ("ok", "failed", "error"), outcome
        if case.expect not in ("escape", "mutate", "clear"):
            text = json.dumps(outcome)
            assert outcome["status"] == "error" and any(f"{limit} limit exceeded" in text for limit in limit_of(case))
    assert check.code == 2

    rows = {Path(row["source"]).stem: row for row in json.loads(report.out)["templates"]}
    for case in CASES:
        row = rows.pop(case.name)
        assert row["status"] == "not patchable", row
        if case.expect not in ("escape", "mutate", "clear"):
            assert any(f"{limit} limit exceeded" in row["reason"] for limit in limit_of(case)), row
    assert {row["status"] for row in rows.values()} == {"patched"} and len(rows) == len(GOOD), rows
    assert report.code == 0


# ------------------------------------------------------------------------------------------------------- API


def _api_calls(template: str, tagged: str, tokenizer) -> dict[str, str]:
    """Every API that renders a template, on `template`, in this (capped, forked) process: what each did
    ("ok", or the error's type and message), plus the canary variable and whether the messages changed."""
    messages = copy.deepcopy(MESSAGES)
    calls = {
        "patch_template": lambda: templatekit.patch_template(template, **API_LIMITS),
        "check_template": lambda: templatekit.check_template(tagged, **API_LIMITS),
        "derive_delimiters": lambda: derive_delimiters(template, **API_LIMITS),
        "render_with_spans": lambda: templatekit.render_with_spans(template, messages, **API_LIMITS),
        "render_conversation": lambda: render_conversation(template, messages, **API_LIMITS),
        "prepare_dataset": lambda: templatekit.prepare_dataset(
            Dataset.from_list([{"messages": messages}] * 2), tokenizer, template=template, progress=False, **API_LIMITS
        ),
    }
    results = {}
    for name, call in calls.items():
        try:
            call()
            results[name] = "ok"
        except TemplateKitError as error:
            results[name] = f"{type(error).__name__}: {getattr(error, 'limit', '')}: {error}"
    results["canary variable"] = os.environ.get(CANARY_ENV, "")
    results["messages changed"] = str(messages != MESSAGES)
    return results


@pytest.fixture(scope="module")
def api_tokenizer(qwen_tokenizer):
    """A copy of the Qwen tokenizer for the API runs, every API called once here on a plain template first: lazy
    imports and caches, so the forked children start warm."""
    tokenizer = copy.deepcopy(qwen_tokenizer)
    datasets.disable_progress_bars()
    _api_calls(CHAT_LOOP, TAGGED_LOOP, tokenizer)
    return tokenizer


@pytest.mark.slow
def test_each_case_through_the_api(hostile: dict, api_tokenizer) -> None:
    """patch_template, check_template, the delimiter fallback, render_with_spans, show's render_conversation and
    prepare_dataset on every case, each case in a forked child under RLIMIT_AS: a result or a TemplateKitError
    (a resource case: TemplateLimitError naming its limit, from every call), the caller's messages unchanged, and
    no canary."""
    for case in CASES:
        template, tagged = case.template(hostile["canary"]), case.template(hostile["canary"], tagged=True)
        outcome = in_child(lambda: _api_calls(template, tagged, api_tokenizer), cap=GiB, timeout=60)
        assert outcome.kind == "returned", (case.name, outcome)
        print(f"  {case.name}: {outcome.seconds:.1f} s, {outcome.peak / MiB:.0f} MiB")
        results: dict[str, str] = outcome.value  # type: ignore[assignment]
        assert results.pop("canary variable") == "", case.name
        assert results.pop("messages changed") == "False", case.name
        if case.expect in ("escape", "mutate", "clear"):
            continue
        for call, result in results.items():
            kind, limit, _ = (result.split(": ", 2) + ["", ""])[:3]
            assert kind == TemplateLimitError.__name__ and limit in limit_of(case), (case.name, call, result)


def test_a_template_too_large_to_parse_is_refused_before_any_api_reads_it(hostile: dict, api_tokenizer) -> None:
    """A 14 MB template (its tokens alone take gigabytes) is refused by its size, before it is lexed or parsed, by
    every API, the tagged form (which `check_template` scans for its tags first) too, in far less memory than
    its tokens would take."""
    case = BY_NAME["list_literal_14mb"]
    template, tagged = case.template(hostile["canary"]), case.template(hostile["canary"], tagged=True)
    outcome = in_child(lambda: _api_calls(template, tagged, api_tokenizer), cap=GiB, timeout=60)
    assert outcome.kind == "returned", outcome
    assert outcome.peak < 64 * MiB, outcome.peak / MiB  # lexing it alone took 1 GiB (and 28 s) before
    for call in ("patch_template", "check_template", "derive_delimiters", "render_with_spans", "prepare_dataset"):
        assert "memory limit exceeded: compiling a template of 14,000," in outcome.value[call], (call, outcome.value)


def test_the_escape_payloads_are_real(tmp_path: Path) -> None:
    """The canary works: rendered by a plain (unsandboxed) jinja2 environment, in a capped child, the payloads
    that call os.system or Popen create the canary file. The sandboxed runs above never do."""
    for name in ("cycler_globals", "joiner_globals", "subclasses_popen", "attr_filter", "escaped_attr_filter"):
        canary = tmp_path / f"{name}.escaped"
        template = BY_NAME[name].template(canary)
        outcome = in_child(lambda: jinja2.Environment().from_string(template).render(messages=MESSAGES))
        assert outcome.kind == "returned", (name, outcome)
        assert canary.exists(), name
