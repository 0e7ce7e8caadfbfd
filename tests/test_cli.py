"""The `templatekit` command line, run in-process through `templatekit.cli.main` (and once as `python -m`)."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run
from _corpus import patched
from _paths import REPO_ROOT, corpus_dir, corpus_file

import templatekit
from templatekit.core.sandbox import DEFAULT
from templatekit.errors import PatchError

# How TRL decides a template has generation tags.
TRL_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
SUMMARY_LINE = re.compile(r"^(\d+) patched, (\d+) retagged, (\d+) already tagged, (\d+) not patchable \(of (\d+)\)$")
# Corpus templates the core patches; the tests of CLI plumbing use these.
PATCHABLE = "trl/qwen2_5.jinja"
PATCHABLE_2 = "trl/llama3_2.jinja"


def summary_counts(out: str) -> tuple[int, ...]:
    last = out.strip().splitlines()[-1]
    match = SUMMARY_LINE.match(last)
    assert match, f"no summary line in {out!r}"
    return tuple(int(n) for n in match.groups())


# ------------------------------------------------------------------------------------------------------- patch


def test_patch_corpus_template_prints_the_verified_template(capsys: pytest.CaptureFixture[str]) -> None:
    source = corpus_file(PATCHABLE)
    code, out, err = run(capsys, "patch", source)
    assert code == 0, err
    assert TRL_TAG.search(out) and "endgeneration" in out
    assert out == patched(source).template
    assert f"{source}: patched" in err
    assert "verification ok" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["trl/qwen2_5.jinja", "trl/llama3_1.jinja", "trl/gemma.jinja", "axolotl/chatml.jinja", "trl/qwen3.jinja"]
)
def test_patch_exit_code_matches_the_api(capsys: pytest.CaptureFixture[str], name: str) -> None:
    """Whatever the core makes of a real template, the CLI reports it faithfully: 0 and the template, or 1 and
    every reason."""
    source = corpus_file(name)
    code, out, err = run(capsys, "patch", source)
    try:
        expected = patched(source)
    except PatchError as exc:
        assert code == 1, err
        assert out == ""
        assert f"{source}: cannot patch" in err
        for reason in exc.reasons:
            assert f"  - {reason}" in err
    else:
        assert code == 0, err
        assert out == expected.template


def test_make_demo_prints_the_diff_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The command `make demo` runs (read from the Makefile) succeeds and prints the diff, and the patched template
    only inside it: once, not a second time as the template itself."""
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    command = makefile.split("\ndemo:", 1)[1].split("\n")[1].strip().replace("$(VENV)", str(tmp_path))
    program, *argv = shlex.split(command)
    assert program.endswith("bin/templatekit"), command
    code, out, err = run(capsys, *(str(REPO_ROOT / a) if a.startswith("examples/") else a for a in argv))
    assert code == 0, err
    patched_line = templatekit.patch_template(
        (REPO_ROOT / "examples" / "chatml_example.jinja").read_text(encoding="utf-8")
    ).template.splitlines()[0]
    assert (out + err).count("+++ patched") == 1
    assert (out + err).count(patched_line) == 1, out + err  # the diff's `+` line, and nowhere else
    assert TRL_TAG.search(out)


def test_patch_diff_shows_inserted_tags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "patch", corpus_file(PATCHABLE), "--diff")
    assert code == 0, err
    assert "--- original" in err and "+++ patched" in err
    added = [line for line in err.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert any("generation" in line for line in added)
    assert TRL_TAG.search(out)  # the template itself still goes to stdout


def test_patch_output_file_is_written_atomically(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = corpus_file(PATCHABLE)
    target = tmp_path / "patched.jinja"
    code, out, err = run(capsys, "patch", source, "-o", target, "--diff")
    assert code == 0, err
    written = target.read_text(encoding="utf-8")
    assert written == patched(source).template
    assert sorted(os.listdir(tmp_path)) == ["patched.jinja"]  # no temporary file left behind
    assert "+++ patched" in out  # with -o, stdout carries the diff, not the template
    assert written not in out
    assert f"wrote {target}" in err


def test_patch_refuses_to_overwrite_its_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    original = corpus_file(PATCHABLE).read_text(encoding="utf-8")
    source = tmp_path / "chat.jinja"
    source.write_text(original, encoding="utf-8")
    code, _, err = run(capsys, "patch", source, "-o", source)
    assert code == 2
    assert "refusing to overwrite" in err and "--force" in err
    assert source.read_text(encoding="utf-8") == original
    code, _, err = run(capsys, "patch", source, "-o", source, "--force")
    assert code == 0, err
    assert TRL_TAG.search(source.read_text(encoding="utf-8"))


def test_patch_error_exits_1_with_reasons(capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path: Path) -> None:
    def cannot_patch(template: str, **options: object) -> None:
        raise PatchError(["assistant content is emitted inside a macro the patcher cannot split"])

    monkeypatch.setattr(templatekit, "patch_template", cannot_patch)
    target = tmp_path / "out.jinja"
    code, out, err = run(capsys, "patch", REPO_ROOT / "examples" / "chatml_example.jinja", "-o", target)
    assert code == 1
    assert "cannot patch" in err and "inside a macro the patcher cannot split" in err
    assert not target.exists() and out == ""


def test_patch_passes_options_through(capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path: Path) -> None:
    record = tmp_path / "seen.json"  # the call runs in the child process the CLI works on each template in
    real = templatekit.patch_template

    def spy(template: str, **options: object):
        record.write_text(json.dumps({key: repr(value) for key, value in options.items()}), encoding="utf-8")
        return real(template, **options)

    def seen() -> dict[str, str]:
        return json.loads(record.read_text(encoding="utf-8"))

    monkeypatch.setattr(templatekit, "patch_template", spy)
    example = corpus_file(PATCHABLE)
    code, _, err = run(capsys, "patch", example, "--train-role", "assistant", "--train-role", "tool")
    assert code in (0, 1), err
    # the limits in force (templatekit.core.sandbox)
    defaults = {"max_steps": repr(DEFAULT), "max_memory": repr(DEFAULT), "timeout": repr(DEFAULT)}
    assert seen() == {
        "train_roles": repr(("assistant", "tool")),
        "only_last_turn": "False",
        "strict": "False",
        "retag": "True",
        "template_kwargs": "{}",
        **defaults,
    }
    code, _, err = run(capsys, "patch", example, "--timeout", "2.5", "--max-memory", "512M", "--max-steps", "7000000")
    assert code in (0, 1), err
    assert (seen()["timeout"], seen()["max_memory"], seen()["max_steps"]) == ("2.5", str(512 << 20), "7000000")
    code, _, err = run(capsys, "patch", example, "--timeout", "none")
    assert code in (0, 1) and seen()["timeout"] == "None", err
    run(capsys, "patch", example, "--only-last-turn", "--keep-tags", "--template-kwarg", "enable_thinking=false")
    switch = {"template_kwargs": repr({"enable_thinking": False})}
    assert seen() == {
        "train_roles": repr(("assistant",)),
        "only_last_turn": "True",
        "strict": "False",
        "retag": "False",
        **switch,
        **defaults,
    }


def test_patch_malformed_template_exits_2_with_line_and_column(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    source = tmp_path / "broken.jinja"
    source.write_text("{% for message in messages %}\n{{ message['content'] + }}\n{% endfor %}", encoding="utf-8")
    code, out, err = run(capsys, "patch", source)
    assert code == 2
    assert re.search(rf"{re.escape(str(source))}:2:\d+: ", err), err
    assert out == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty chat template"), (b"{{ 'caf\xe9' }}", "not valid UTF-8")],
)
def test_patch_unreadable_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, content, message) -> None:
    source = tmp_path / "bad.jinja"
    source.write_bytes(content)
    code, _, err = run(capsys, "patch", source)
    assert code == 2
    assert f"{source}" in err and message in err


@pytest.mark.slow
def test_patch_tokenizer_config_with_named_templates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    default = corpus_file(PATCHABLE).read_text(encoding="utf-8")
    tool_use = corpus_file(PATCHABLE_2).read_text(encoding="utf-8")
    config = tmp_path / "model" / "tokenizer_config.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {"chat_template": [{"name": "default", "template": default}, {"name": "tool_use", "template": tool_use}]}
        ),
        encoding="utf-8",
    )
    code, _, err = run(capsys, "patch", config)
    assert code == 2 and "holds 2 templates (default, tool_use)" in err

    code, out, err = run(capsys, "patch", config, "--name", "tool_use")
    assert code == 0, err
    assert out == templatekit.patch_template(tool_use).template
    assert f"{config}#tool_use: patched" in err

    code, _, err = run(capsys, "patch", config, "--name", "rag")
    assert code == 2 and "no template named 'rag'" in err

    out_dir = tmp_path / "patched"
    code, _, err = run(capsys, "patch", config, "-o", out_dir)
    assert code == 2 and f"the folder {out_dir} does not exist (pass --mkdir to create it)" in err
    assert not out_dir.exists()
    code, _, err = run(capsys, "patch", config, "-o", out_dir, "--mkdir")
    assert code == 0, err
    assert (out_dir / "chat_template.jinja").read_text(encoding="utf-8") == templatekit.patch_template(default).template
    assert TRL_TAG.search((out_dir / "additional_chat_templates" / "tool_use.jinja").read_text(encoding="utf-8"))
    # the folder just written loads back as the same two templates, and both pass the check
    code, out, err = run(capsys, "check", out_dir)
    assert code == 0, out + err
    assert out.count(": ok") == 2


# ------------------------------------------------------------------------------------------------------- check


def test_check_untagged_template_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    source = corpus_file("trl/qwen2_5.jinja")
    code, out, _ = run(capsys, "check", source)
    assert code == 1
    assert f"{source}: FAILED" in out
    assert "\n  - " in out  # at least one reason


@pytest.mark.slow
def test_check_patched_template_exits_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "patched.jinja"
    assert run(capsys, "patch", corpus_file(PATCHABLE_2), "-o", target)[0] == 0
    code, out, err = run(capsys, "check", target)
    assert code == 0, out + err
    assert f"{target}: ok" in out


def test_check_mixed_sources_reports_each(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "patched.jinja"
    assert run(capsys, "patch", corpus_file(PATCHABLE), "-o", target)[0] == 0
    untagged = corpus_file(PATCHABLE)
    code, out, _ = run(capsys, "check", target, untagged)
    assert code == 1
    assert f"{target}: ok" in out and f"{untagged}: FAILED" in out
    code, _, err = run(capsys, "check", target, tmp_path / "missing.jinja")
    assert code == 2 and "missing.jinja: no such file" in err


def test_check_malformed_template_exits_2_with_line_and_column(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    source = tmp_path / "broken.jinja"
    source.write_text("{% if messages %}\n{{ messages[0]['content'] }}\n{% endfor %}\n", encoding="utf-8")
    code, _, err = run(capsys, "check", source)
    assert code == 2
    assert re.search(rf"{re.escape(str(source))}:3:\d+: ", err), err


# ------------------------------------------------------------------------------------------------------ report


@pytest.mark.slow
def test_report_classifies_templates_and_prints_the_summary_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shutil.copy(corpus_file(PATCHABLE), tmp_path / "qwen2_5.jinja")  # patched
    tagged = tmp_path / "tagged" / "chat_template.jinja"
    assert run(capsys, "patch", corpus_file(PATCHABLE), "-o", tagged, "--mkdir")[0] == 0  # already tagged
    (tmp_path / "tagged" / "tokenizer_config.json").write_text('{"bos_token": null}', encoding="utf-8")  # skipped
    (tmp_path / "broken.jinja").write_text("{% if x %}", encoding="utf-8")  # not patchable
    wrong = "{% generation %}" + corpus_file(PATCHABLE).read_text(encoding="utf-8") + "{% endgeneration %}"
    (tmp_path / "wrong.jinja").write_text(wrong, encoding="utf-8")  # trains every role: retagged
    expected = [1, 1, 1, 1]  # patched, retagged, already tagged, not patchable
    for name in ("trl/llama3_1.jinja", "axolotl/chatml.jinja"):  # whatever the core makes of them
        source = corpus_file(name)
        shutil.copy(source, tmp_path / f"{source.parent.name}_{source.name}")
        try:
            patched(source)
            expected[0] += 1
        except PatchError:
            expected[3] += 1

    code, out, err = run(capsys, "report", tmp_path)
    assert code == 0, err
    assert summary_counts(out) == (*expected, 6)
    assert re.search(r"qwen2_5\.jinja\s+patched", out), out
    assert re.search(r"chat_template\.jinja\s+already tagged", out), out
    assert re.search(r"broken\.jinja\s+not patchable\s+1:\d+: ", out), out
    assert re.search(r"wrong\.jinja\s+retagged\s+its generation tags fail verification", out), out
    assert "trl_llama3_1.jinja" in out and "axolotl_chatml.jinja" in out
    assert "tokenizer_config.json" not in out

    code, out, _ = run(capsys, "report", tmp_path, "--summary")
    assert code == 0
    assert "broken.jinja" in out and "wrong.jinja" in out
    assert "qwen2_5.jinja" not in out and "chat_template.jinja" not in out
    assert summary_counts(out) == (*expected, 6)


def test_report_flags_wrong_tags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Tags around the whole conversation train user and system text too: caught, and replaced by patch.
    wrong = "{% generation %}" + corpus_file(PATCHABLE).read_text(encoding="utf-8") + "{% endgeneration %}"
    (tmp_path / "wrong.jinja").write_text(wrong, encoding="utf-8")
    code, out, _ = run(capsys, "report", tmp_path)
    assert code == 0
    assert re.search(r"wrong\.jinja\s+retagged\s+\S", out), out
    assert summary_counts(out) == (0, 1, 0, 0, 1)


def test_report_on_named_templates_and_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = corpus_file(PATCHABLE).read_text(encoding="utf-8")
    config = tmp_path / "tokenizer_config.json"
    config.write_text(
        json.dumps({"chat_template": [{"name": "default", "template": text}, {"name": "rag", "template": text}]})
    )
    code, out, _ = run(capsys, "report", config)
    assert code == 0
    assert f"{config}#rag" in out
    assert summary_counts(out) == (2, 0, 0, 0, 2)
    code, _, err = run(capsys, "report", tmp_path / "missing")
    assert code == 2 and "no such file or folder" in err


def _report_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    shutil.copy(corpus_file(PATCHABLE), folder / "qwen2_5.jinja")  # patched
    shutil.copy(corpus_file(PATCHABLE_2), folder / "llama3_2.jinja")  # patched
    (folder / "chatml.jinja").write_text(templatekit.get_template("chatml"), encoding="utf-8")  # already tagged
    (folder / "broken.jinja").write_text("{% if x %}", encoding="utf-8")  # not patchable
    return folder


class _Terminal(io.StringIO):
    """A captured stream that says it is a terminal, as stderr is when a person runs the command."""

    def isatty(self) -> bool:
        return True


@pytest.mark.slow
def test_report_json_quiet_and_progress(capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path: Path) -> None:
    folder = _report_folder(tmp_path)
    code, out, err = run(capsys, "report", folder, "--json")
    assert code == 0, err
    doc = json.loads(out)
    by_name = {Path(entry["source"]).name: entry for entry in doc["templates"]}
    assert {name: entry["status"] for name, entry in by_name.items()} == {
        "qwen2_5.jinja": "patched",
        "llama3_2.jinja": "patched",
        "chatml.jinja": "already tagged",
        "broken.jinja": "not patchable",
    }
    assert re.match(r"1:\d+: ", by_name["broken.jinja"]["reason"])
    assert by_name["chatml.jinja"]["name"] == "default"
    assert doc["counts"] == {"patched": 2, "retagged": 0, "already tagged": 1, "not patchable": 1} and doc["total"] == 4

    code, out, err = run(capsys, "report", folder, "--quiet")
    assert code == 0 and err == ""
    assert out.strip().splitlines() == ["2 patched, 0 retagged, 1 already tagged, 1 not patchable (of 4)"]

    # Not a terminal (captured): no progress bar. A terminal on stderr: a progress bar there, stdout unchanged.
    code, plain_out, plain_err = run(capsys, "report", folder)
    assert "checking templates" not in plain_err
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code, out, _ = run(capsys, "report", folder)
    assert code == 0
    assert out == plain_out
    assert "checking templates" in terminal.getvalue() and "4/4" in terminal.getvalue()
    terminal.truncate(0)
    run(capsys, "report", folder, "--quiet")
    assert "checking templates" not in terminal.getvalue()


# ------------------------------------------------------------------------------------------------------- usage


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["patch"], ["check"], ["patch", "x.jinja", "--bogus"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert run(capsys, *argv)[0] == 2


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "patch" in out and "check" in out and "report" in out


@pytest.mark.subprocess
def test_python_dash_m_templatekit(tmp_path: Path) -> None:
    source = corpus_file("trl/qwen2_5.jinja")
    target = tmp_path / "out.jinja"
    result = subprocess.run(
        [sys.executable, "-m", "templatekit", "patch", str(source), "-o", str(target)],
        capture_output=True,
        check=False,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert TRL_TAG.search(target.read_text(encoding="utf-8"))
    assert "\x1b[" not in result.stderr  # not a terminal: plain text, no colour codes


@pytest.mark.corpus
@pytest.mark.subprocess
def test_report_on_whole_corpus_is_complete(fresh_corpus_run) -> None:
    # `templatekit report <corpus> --summary` in a fresh interpreter (conftest.py's fresh_corpus_run, whose
    # verdicts test_determinism reads too). Its speed is measured in benchmarks/patch_speed.py, not here.
    report = fresh_corpus_run["report"]
    assert report["code"] == 0, report["err"][-3000:]
    counts = summary_counts(report["out"])
    assert counts[-1] == len(list(corpus_dir().rglob("*.jinja")))
