"""One set of options, no traceback, and quiet honest output (issue 21, items 5 and 6), on real templates and a
real tokenizer.

`--format text|json|github` (and `--json`) on every command that reports, `apply --template`, `--template-kwarg`
on `report`, `--version`, `report --fail-on`, sources counted once, local-looking paths kept off the Hub,
`patch_tokenizer`'s type check, every bad audit row listed, the vocabulary warning of `apply`, reasons for bad
option values; no third-party notice on a plain install, examples that say what to install, and `show`'s token
shades in a 16-colour terminal. (`make demo` and the README's pre-commit snippet: test_cli, test_check_formats.)
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _harness import cli_in_child
from _paths import REPO_ROOT, corpus_file

import templatekit
from templatekit import cli
from templatekit.sources import source_kind

QWEN = corpus_file("trl/qwen2_5.jinja")
CHATML = REPO_ROOT / "examples" / "chatml_example.jinja"


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def row(content: str, answer: str = "yes") -> str:
    return json.dumps({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]})


# ---------------------------------------------------------------------------------------------------- formats


@pytest.mark.slow
def test_every_reporting_command_takes_format_text_json_github_and_the_json_alias(capsys, tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(QWEN.read_text(encoding="utf-8"), encoding="utf-8")
    data = tmp_path / "data.jsonl"
    data.write_text(row("hi") + "\n", encoding="utf-8")
    commands = {"check": [template], "report": [template], "audit": [template, "--data", data]}
    for command, argv in commands.items():
        code_json, out_json, _ = run(capsys, command, *argv, "--format", "json")
        code_alias, out_alias, _ = run(capsys, command, *argv, "--json")
        assert (code_json, json.loads(out_json)) == (code_alias, json.loads(out_alias)), command
        code_github, out_github, _ = run(capsys, command, *argv, "--format", "github")
        assert code_github == code_json, command
        *annotations, summary = out_github.strip().splitlines()
        assert all(line.startswith("::") for line in annotations) and summary.startswith("templatekit"), out_github
        code_text, out_text, _ = run(capsys, command, *argv, "--format", "text")
        assert code_text == code_json and not out_text.startswith("{"), command
    assert json.loads(run(capsys, "report", template, "--json")[1])["templates"][0]["status"] == "patched"
    github = run(capsys, "check", template, "--format", "github")[1]
    assert github.startswith(f"::error file={template}") or "file=" in github


def test_patch_and_strip_report_every_template_as_json_or_github_annotations(capsys, tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(QWEN.read_text(encoding="utf-8"), encoding="utf-8")
    code, out, _ = run(capsys, "patch", template, "--format", "json")
    (entry,) = json.loads(out)["templates"]
    assert code == 0 and entry["status"] == "patched" and entry["summary"].startswith("verification ok")
    assert entry["template"] == templatekit.patch_template(template.read_text(encoding="utf-8")).template
    assert (code, json.loads(out)) == (
        run(capsys, "patch", template, "--json")[0],
        json.loads(run(capsys, "patch", template, "--json")[1]),
    )
    patched = tmp_path / "patched.jinja"
    code, out, _ = run(capsys, "patch", template, "--format", "github", "-o", patched)
    assert code == 0 and out.startswith(f"::notice file={template}") and patched.is_file()
    code, out, _ = run(capsys, "strip", patched, "--format", "json", "--diff")
    (entry,) = json.loads(out)["templates"]
    assert code == 0 and entry["status"] == "stripped" and "{% generation %}" not in entry["template"]
    assert entry["diff"].startswith("--- tagged")
    # A refusal: its kind, place and advice, and the exit code, with nothing written.
    wizard = tmp_path / "wizard.jinja"
    wizard.write_text(corpus_file("hard/gpt4all__models3-Wizard_v1.2.jinja").read_text(encoding="utf-8"))
    code, out, _ = run(capsys, "patch", wizard, "--format", "json", "-o", tmp_path / "never.jinja")
    document = json.loads(out)
    assert code == document["exit_code"] == 1 and not (tmp_path / "never.jinja").exists()
    assert document["templates"][0]["refusal"]["advice"].startswith("if the model's turns use another role name")
    code, out, _ = run(capsys, "patch", wizard, "--format", "github", "-o", tmp_path / "never.jinja")
    assert code == 1 and out.startswith(f"::error file={wizard},title=templatekit patch%3A cannot patch::")
    code, _, err = run(capsys, "patch", template, "--format", "github")
    assert code == 2 and "--format github prints annotations, not templates" in err


def test_apply_takes_its_template_with_template_and_the_old_format_still_works(capsys) -> None:
    code, out, err = run(capsys, "apply", "--template", "chatml")
    assert code == 0 and out == templatekit.get_template("chatml") and "deprecated" not in err
    code, old_out, err = run(capsys, "apply", "--format", "chatml")
    assert code == 0 and old_out == out
    assert "`apply --format chatml` is deprecated: use `--template chatml`" in err
    code, _, err = run(capsys, "apply")
    assert code == 2 and "one of the arguments --template --format is required" in err


def test_report_takes_template_kwarg(capsys, tmp_path: Path) -> None:
    """A template that needs a switch set is not patchable without it, and patched with --template-kwarg."""
    needs = '{% if not flag %}{{ raise_exception("set flag") }}{% endif %}' + CHATML.read_text(encoding="utf-8")
    template = tmp_path / "needs_flag.jinja"
    template.write_text(needs, encoding="utf-8")
    doc = json.loads(run(capsys, "report", template, "--json")[1])
    assert doc["templates"][0]["status"] == "not patchable", doc
    doc = json.loads(run(capsys, "report", template, "--json", "--template-kwarg", "flag=true")[1])
    assert doc["templates"][0]["status"] == "patched", doc


def test_version_prints_the_installed_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"templatekit {templatekit.__version__}"


@pytest.mark.slow
def test_report_fail_on_refused_or_wrong_exits_1_for_ci(capsys, tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(QWEN, good / "qwen2_5.jinja")
    (good / "chatml.jinja").write_text(templatekit.get_template("chatml"), encoding="utf-8")
    refused = tmp_path / "refused"
    refused.mkdir()
    (refused / "broken.jinja").write_text("{% if x %}", encoding="utf-8")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    tagged_all = "{% generation %}" + QWEN.read_text(encoding="utf-8") + "{% endgeneration %}"
    (wrong / "wrong.jinja").write_text(tagged_all, encoding="utf-8")
    expected = {
        (good, ()): 0,
        (good, ("refused", "wrong")): 0,
        (refused, ()): 0,
        (refused, ("refused",)): 1,
        (refused, ("wrong",)): 0,
        (wrong, ("wrong",)): 1,
        (wrong, ("refused",)): 0,
    }
    for (folder, fail_on), code in expected.items():
        options = [arg for name in fail_on for arg in ("--fail-on", name)]
        assert run(capsys, "report", folder, *options)[0] == code, (folder.name, fail_on)
        document = json.loads(run(capsys, "report", folder, "--json", *options)[1])
        assert document["exit_code"] == code
    code, _, err = run(capsys, "report", good, "--fail-on", "maybe")
    assert code == 2 and "invalid choice: 'maybe'" in err


def test_a_file_named_and_inside_a_folder_given_is_counted_once(capsys, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    shutil.copy(QWEN, folder / "a.jinja")
    shutil.copy(CHATML, folder / "b.jinja")
    (tmp_path / "link.jinja").symlink_to(folder / "a.jinja")
    code, out, _ = run(capsys, "report", folder / "a.jinja", folder, tmp_path / "link.jinja", "--json")
    document = json.loads(out)
    assert document["total"] == 2, document
    assert [Path(t["source"]).name for t in document["templates"]] == ["a.jinja", "b.jinja"]
    code, out, _ = run(capsys, "check", folder / "a.jinja", folder / "a.jinja", tmp_path / "link.jinja", "--json")
    assert len(json.loads(out)["templates"]) == 1


def test_a_path_that_looks_local_is_never_sent_to_the_hub(tmp_path: Path, monkeypatch) -> None:
    """`api/qwen_modl` beside an `api/` folder, `./x/y`, `~/x/y`: "no such file or folder", never a Hub request
    (the endpoint here answers nothing, so a request would say "cannot reach")."""
    (tmp_path / "api").mkdir()
    monkeypatch.chdir(tmp_path)
    for source in ("api/qwen_modl", "./org/model", "~/org/model"):
        assert source_kind(source) == "jinja", source
        run_ = cli_in_child(
            "patch", source, cwd=tmp_path, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
        )
        assert run_.code == 2 and "Traceback" not in run_.err, run_
        assert "no such file or folder" in run_.err and "never looked up on the Hugging Face Hub" in run_.err, run_.err
        assert "cannot reach" not in run_.err
    assert source_kind("Qwen/Qwen2.5-7B-Instruct") == "hub"  # an id, where no `Qwen/` folder is here
    assert source_kind("Qwen/Qwen2.5-7B-Instruct\n") != "hub"  # `\Z`: a final newline is not part of an id


def test_patch_tokenizer_type_checks_its_argument(qwen_tokenizer) -> None:
    for wrong in ("qwen_model", Path("qwen_model"), {"chat_template": "x"}):
        with pytest.raises(TypeError, match="patch_tokenizer takes a tokenizer or processor object"):
            templatekit.patch_tokenizer(wrong)
    with pytest.raises(TypeError, match=r"AutoTokenizer.from_pretrained\('qwen_model'\)"):
        templatekit.patch_tokenizer("qwen_model")
    tokenizer = copy.deepcopy(qwen_tokenizer)
    tokenizer.chat_template = CHATML.read_text(encoding="utf-8")
    assert "{% generation %}" in templatekit.patch_tokenizer(tokenizer).chat_template


def test_audit_lists_every_bad_row_all_in_json_20_in_text_and_the_count(capsys, tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(QWEN.read_text(encoding="utf-8"), encoding="utf-8")
    data = tmp_path / "data.jsonl"
    asks = [json.dumps({"messages": [{"role": "user", "content": f"question {i}"}]}) for i in range(25)]
    lines = [row("fine"), *asks]  # 25 rows without an answer: they train nothing
    lines += [json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "audit", template, "--data", data, "--format", "json")
    document = json.loads(out)
    assert code == 1 and document["bad_row_count"] == 26, document["bad_row_count"]
    rows = [entry["row"] for entry in document["bad_rows"]]
    assert rows == [f"{data}:{number}" for number in range(2, 28)], rows
    assert document["bad_rows"][-1]["problem"].startswith("rejected"), document["bad_rows"][-1]
    code, out, _ = run(capsys, "audit", template, "--data", data)
    listed = re.findall(rf"^  {re.escape(str(data))}:(\d+): ", out, flags=re.M)
    assert listed == [str(n) for n in range(2, 22)], out
    assert "bad rows: 26 (26 problems)" in out and "… and 6 more (--format json lists every one)" in out


@pytest.mark.slow
def test_apply_warns_when_the_template_special_tokens_are_not_in_the_vocabulary(
    capsys, qwen_tokenizer, tmp_path
) -> None:
    folder = tmp_path / "qwen_base"
    tokenizer = copy.deepcopy(qwen_tokenizer)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    code, _, err = run(capsys, "apply", "--template", "llama3", folder, "-o", tmp_path / "llama3.jinja")
    assert code == 0 and (tmp_path / "llama3.jinja").exists()
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    for token in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert token in warning, warning
    assert str(folder / "tokenizer.json") in warning and "plain text" in warning
    code, _, err = run(capsys, "apply", "--template", "chatml", folder, "--in-place")
    assert code == 0 and "warning" not in err  # <|im_start|>, <|im_end|> are Qwen's own tokens


@pytest.mark.slow
def test_bad_option_values_give_a_reason_never_a_traceback(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text(QWEN.read_text(encoding="utf-8"), encoding="utf-8")
    data = tmp_path / "d.jsonl"
    data.write_text(row("hi") + "\n", encoding="utf-8")
    cases = [
        (("show", template, "--template-kwarg", "messages=1"), "'messages' is not a template switch"),
        (("patch", template, "--template-kwarg", "tools=[]"), "'tools' is not a template switch"),
        (("check", template, "--template-kwarg", "add_generation_prompt=true"), "is not a template switch"),
        (("audit", template, "--data", data, "--template-kwarg", "messages=[]"), "is not a template switch"),
        (("report", template, "--template-kwarg", "documents=1"), "is not a template switch"),
        (("patch", template, "--template-kwarg", "=1"), "expected NAME=VALUE"),
        (("patch", template, "--max-memory", "lots"), "--max-memory"),
        (("audit", template, "--data", data, "--max-length", "-3"), "not a positive number of tokens"),
        (("check", template, "--format", "yaml"), "invalid choice: 'yaml'"),
        (("apply", "--template", "falcon"), "falcon"),
        (("patch", template, "-o", ""), "argument -o/--output: an empty value"),
        (("show", template, "--html", ""), "argument --html: an empty value"),
        (("report", ""), "argument PATH: an empty value"),
        (("patch", template, "--train-role", " "), "argument --train-role: an empty value"),
    ]
    for argv, reason in cases:
        result = cli_in_child(*argv)
        assert result.code == 2 and "Traceback" not in result.err, (argv, result)
        assert reason in result.err, (argv, result.err)


# ------------------------------------------------------------------------------------------------ quiet output

# A plain install: transformers without torch (the same as torch missing for transformers' own check).
_WITHOUT_TORCH = "import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "


@pytest.mark.subprocess
def test_no_third_party_notice_on_a_plain_install(tmp_path: Path) -> None:
    """Without torch, transformers' import says "PyTorch was not found"; no command passes that on."""
    template = tmp_path / "t.jinja"
    template.write_text(CHATML.read_text(encoding="utf-8"), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
    script = _WITHOUT_TORCH + "runpy.run_module('templatekit', run_name='__main__', alter_sys=True)"
    for argv in (["check", template], ["patch", template], ["show", template], ["strip", template]):
        result = subprocess.run(
            [sys.executable, "-W", "default", "-c", script, "templatekit", *map(str, argv)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert result.returncode in (0, 1), (argv, result.stderr)
        assert "PyTorch" not in result.stderr and "Warning" not in result.stderr, (argv, result.stderr)
    # the notice is there to silence: transformers itself still says it
    bare = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH + "import transformers"], capture_output=True, text=True, check=False
    )
    assert "PyTorch was not found" in bare.stderr


@pytest.mark.parametrize(
    "example, missing, package",
    [
        ("train_sft_assistant_only.py", "qwen_tokenizer", "qwen-tokenizer"),
        ("train_on_responses_only.py", "qwen_tokenizer", "qwen-tokenizer"),
        ("custom_roles.py", "llama_models", "llama-models"),
        ("train_sft_assistant_only.py", "trl", "'templatekit[train]'"),
    ],
)
def test_examples_without_their_optional_dependency_say_what_to_install(example, missing, package) -> None:
    script = (
        f"import sys, runpy; sys.modules[{missing!r}] = None; sys.argv = sys.argv[1:]; "
        f"sys.path.insert(0, {str(REPO_ROOT / 'examples')!r}); runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(REPO_ROOT / "examples" / example), "--tiny"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == f"{example} needs {missing}: pip install {package}", result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("color_system", ["standard", "256", "truecolor"])
def test_show_terminal_shades_alternate_between_untrained_tokens(qwen_tokenizer, tmp_path, color_system) -> None:
    """With --tokenizer, neighbouring tokens get backgrounds the terminal tells apart (the README's promise),
    trained or not, on a 16-colour terminal too (where every grey becomes the same "bright black")."""
    from rich.color import ColorSystem
    from rich.console import Console

    from templatekit.cli import highlight

    folder = tmp_path / "tok"
    qwen_tokenizer.save_pretrained(folder)
    encode = highlight.load_tokenizer(folder)
    shown = highlight.render_conversation(templatekit.get_template("chatml"), tokenizer=encode)
    console = Console(file=open(os.devnull, "w"), force_terminal=True, color_system=color_system)  # noqa: SIM115
    system = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT, "truecolor": ColorSystem.TRUECOLOR}
    text = highlight.to_rich(shown, console.color_system)
    seen, offset = [], 0  # (token, trained, the background as the terminal draws it) for each token's first piece
    for owner, start, end, _ in highlight._segments(shown):
        piece = shown.text[start:end]
        if owner is not None and (not seen or seen[-1][0] != owner):
            background = text.get_style_at_offset(console, offset).bgcolor
            drawn = background.downgrade(system[color_system]).get_ansi_codes(False) if background else None
            seen.append((owner, shown.tokens[owner].trained, drawn))
        offset += len(piece.replace("\n", "↵\n") if owner is not None else piece)
    assert offset == len(text.plain)
    pairs = [(a, b) for a, b in zip(seen, seen[1:]) if a[1] == b[1]]
    assert any(not a[1] for a, _ in pairs) and any(a[1] for a, _ in pairs)  # untrained and trained neighbours
    assert all(a[2] != b[2] for a, b in pairs), [(a, b) for a, b in pairs if a[2] == b[2]][:3]
