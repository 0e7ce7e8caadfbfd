"""`templatekit check --format text|json|github`, its exit codes and the pre-commit hook, on real templates."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run
from _corpus import patched
from _paths import REPO_ROOT, corpus_file

import templatekit
from templatekit.cli.check_formats import github_escape_data, github_escape_property
from templatekit.errors import TemplateSourceError

UNTAGGED = "trl/qwen2_5.jinja"
# The library's ChatML with the assistant header moved inside the tags: tagged, but the header is trained.
HEADER = "{{- '<|im_start|>assistant\\n' -}}\n        {%- generation -%}"
HEADER_TRAINED = "{%- generation -%}\n        {{- '<|im_start|>assistant\\n' -}}"


def wrong_template() -> str:
    text = templatekit.get_template("chatml")
    assert HEADER in text
    return text.replace(HEADER, HEADER_TRAINED)


def github_decode(value: str) -> str:
    """What the GitHub runner does with an escaped value (the inverse of its documented escaping)."""
    for escaped, char in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        value = value.replace(escaped, char)
    return value


def parse_annotations(out: str) -> list[dict[str, str]]:
    """Every `::error k=v,...::message` line, decoded; properties may not contain a raw `:` or `,`."""
    found = []
    for line in out.splitlines():
        match = re.fullmatch(r"::error (?P<props>[^:]*)::(?P<message>.*)", line)
        if not match:
            continue
        entry = {"message": github_decode(match["message"])}
        for prop in match["props"].split(","):
            key, _, value = prop.partition("=")
            entry[key] = github_decode(value)
        found.append(entry)
    return found


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """A verified template, an untagged one, one whose tags train the header, and a malformed one."""
    ok = tmp_path / "ok.jinja"
    ok.write_text(patched(UNTAGGED).template, "utf-8")
    untagged = tmp_path / "untagged.jinja"
    shutil.copy(corpus_file(UNTAGGED), untagged)
    wrong = tmp_path / "wrong.jinja"
    wrong.write_text(wrong_template(), encoding="utf-8")
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m['content'] + }}\n{% endfor %}\n", encoding="utf-8")
    return {"ok": ok, "untagged": untagged, "wrong": wrong, "broken": broken}


# ------------------------------------------------------------------------------------------------------- JSON


def test_json_document_describes_every_template(capsys: pytest.CaptureFixture[str], sources) -> None:
    code, out, err = run(capsys, "check", "--format", "json", *sources.values(), sources["ok"].parent / "gone.jinja")
    assert code == 2, err  # an input error outranks findings
    doc = json.loads(out)  # stdout is one JSON document and nothing else
    assert doc["exit_code"] == 2 and doc["ok"] is False
    assert doc["counts"] == {"ok": 1, "untagged": 1, "failed": 1, "error": 2}
    by_source = {Path(entry["source"]).name: entry for entry in doc["templates"]}
    assert set(by_source) == {"ok.jinja", "untagged.jinja", "wrong.jinja", "broken.jinja", "gone.jinja"}

    assert by_source["ok.jinja"]["ok"] is True and by_source["ok.jinja"]["reasons"] == []
    assert by_source["ok.jinja"]["status"] == "ok" and by_source["ok.jinja"]["name"] == "default"

    assert by_source["untagged.jinja"]["status"] == "untagged"
    assert "no {% generation %} tags" in by_source["untagged.jinja"]["reasons"][0]["message"]

    wrong = by_source["wrong.jinja"]
    expected = templatekit.check_template(wrong_template()).reasons
    assert wrong["status"] == "failed" and expected
    assert [reason["message"] for reason in wrong["reasons"]] == expected
    assert any("header" in reason for reason in expected)
    # The template as a whole is placed at its first generation tag.
    first_tag = wrong_template().index("{%- generation")
    assert wrong["line"] == wrong_template().count("\n", 0, first_tag) + 1

    broken = by_source["broken.jinja"]
    with pytest.raises(TemplateSourceError) as raised:
        templatekit.check_template(sources["broken"].read_text(encoding="utf-8"))
    assert broken["status"] == "error"
    assert broken["reasons"] == [{"message": raised.value.message, "line": 2, "column": raised.value.column}]
    assert by_source["gone.jinja"]["reasons"][0]["message"] == "no such file"


@pytest.mark.parametrize(("names", "expected"), [(["ok"], 0), (["ok", "untagged"], 1), (["wrong"], 1)])
def test_exit_codes_are_the_documented_ones(capsys, sources, names: list[str], expected: int) -> None:
    for fmt in ("text", "json", "github"):
        code, out, err = run(capsys, "check", "--format", fmt, *(sources[n] for n in names))
        assert code == expected, (fmt, out, err)
    assert json.loads(run(capsys, "check", "--json", *(sources[n] for n in names))[1])["exit_code"] == expected


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "0 every template is tagged and verified" in text
    assert "1 findings" in text and "2 usage or input error" in text
    assert run(capsys, "check", "--format", "xml", "a.jinja")[0] == 2


# ----------------------------------------------------------------------------------------------------- GitHub


def test_github_annotations_point_at_the_template_file_and_line(capsys, sources, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # the checkout: paths in annotations are relative to it
    code, out, _ = run(capsys, "check", "--format", "github", *sources.values())
    assert code == 2
    annotations = parse_annotations(out)
    by_file = {a["file"]: a for a in annotations}
    assert set(by_file) == {"untagged.jinja", "wrong.jinja", "broken.jinja"}  # nothing for the passing one

    assert by_file["untagged.jinja"]["line"] == "1"
    assert "no {% generation %} tags" in by_file["untagged.jinja"]["message"]
    wrong = by_file["wrong.jinja"]
    text = wrong_template()
    tag = text.index("{%- generation")
    assert wrong["line"] == str(text.count("\n", 0, tag) + 1)
    assert wrong["col"] == str(tag - text.rfind("\n", 0, tag))
    assert wrong["message"] == "\n".join(templatekit.check_template(text).reasons)  # one annotation, every reason
    assert wrong["title"] == "templatekit: generation tags fail verification"
    broken = by_file["broken.jinja"]
    assert (broken["line"], broken["title"]) == ("2", "templatekit: cannot read template")
    line = sources["broken"].read_text(encoding="utf-8").splitlines()[1]
    assert line[int(broken["col"]) - 1 :].startswith("}}")  # the column of the token jinja rejects
    assert out.rstrip().splitlines()[-1] == "templatekit: 1 ok, 1 untagged, 1 failed, 1 error"


def test_github_annotations_inside_tokenizer_config_json(capsys, monkeypatch, tmp_path: Path) -> None:
    """A template inside JSON is annotated at its value's line; a syntax error at the exact JSON character."""
    monkeypatch.chdir(tmp_path)
    default = templatekit.get_template("llama3")
    untagged = corpus_file(UNTAGGED).read_text(encoding="utf-8")
    config = tmp_path / "model" / "tokenizer_config.json"
    config.parent.mkdir()
    data = {
        "bos_token": "<s>",
        "chat_template": [{"name": "default", "template": default}, {"name": "tool_use", "template": untagged}],
    }
    config.write_text(json.dumps(data, indent=2), encoding="utf-8")
    broken = tmp_path / "chat_template.json"
    broken.write_text(json.dumps({"chat_template": "{% if x %}\n{{ 'caf\u00e9' + }}\n{% endif %}"}), encoding="utf-8")

    code, out, _ = run(capsys, "check", "--format", "github", config, broken)
    assert code == 2
    annotations = parse_annotations(out)
    assert len(annotations) == 2
    tool_use, syntax = annotations
    assert tool_use["file"] == "model/tokenizer_config.json"
    assert tool_use["title"] == "templatekit: template 'tool_use': no generation tags"
    lines = config.read_text(encoding="utf-8").splitlines()
    value_lines = [i for i, line in enumerate(lines, 1) if line.strip().startswith('"template": "')]
    value_line = value_lines[1]  # entries keep their order: default, then tool_use
    assert tool_use["line"] == str(value_line)
    # The column of the template's first character, just inside the string's opening quote.
    assert lines[value_line - 1][int(tool_use["col"]) - 2 :].startswith(json.dumps(untagged)[:30])

    raw = broken.read_text(encoding="utf-8")
    assert syntax["file"] == "chat_template.json" and syntax["line"] == "1"
    assert raw[int(syntax["col"]) - 1 :].startswith("}}")  # past `\n` and `\u00e9`, which are 2 and 6 characters


def test_github_escaping_follows_the_runner_rules() -> None:
    message = "50% of 'a:b, c'\r\nnext line"
    assert github_escape_data(message) == "50%25 of 'a:b, c'%0D%0Anext line"
    assert github_escape_property("dir,x/a:b.jinja") == "dir%2Cx/a%3Ab.jinja"
    for text in (message, "%0A literally", "::error::"):
        assert github_decode(github_escape_property(text)) == text
        assert github_decode(github_escape_data(text)) == text


def test_github_file_names_with_separators_are_escaped(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "a,b:c.jinja"
    shutil.copy(corpus_file(UNTAGGED), odd)
    code, out, _ = run(capsys, "check", "--format", "github", odd)
    assert code == 1
    assert "file=a%2Cb%3Ac.jinja," in out
    assert parse_annotations(out)[0]["file"] == "a,b:c.jinja"


# ------------------------------------------------------------------------------------------------------- text


def test_quiet_text_prints_only_failures(capsys: pytest.CaptureFixture[str], sources) -> None:
    code, out, _ = run(capsys, "check", "--quiet", sources["ok"])
    assert (code, out) == (0, "")
    code, out, _ = run(capsys, "check", "-q", sources["ok"], sources["untagged"])
    assert code == 1
    assert str(sources["untagged"]) in out and str(sources["ok"]) not in out


# ------------------------------------------------------------------------------------------------- pre-commit


def _shadow_repository(path: Path) -> str:
    """A git repository at `path` holding this checkout's files as they are now (committed or not, ignored files
    left out), committed: what `pre-commit try-repo` builds, here so that the hook's `args` can be set too."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, path / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "shadow"], cwd=path, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()


def _pre_commit_run(pre_commit: str, repo: Path, cache: Path, **environment: str) -> tuple[int, str]:
    """`pre-commit run --all-files` in `repo`, made a git repository with everything added; exit code and output."""
    env = {**os.environ, "PRE_COMMIT_HOME": str(cache), "GIT_CONFIG_GLOBAL": os.devnull, **environment}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([*git, "add", "."], cwd=repo, check=True, env=env)
    result = subprocess.run(
        [pre_commit, "run", "--all-files", "--verbose"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.subprocess
def test_pre_commit_hook_runs_check_on_template_files(tmp_path: Path) -> None:
    """pre-commit installs this repository's hook (.pre-commit-hooks.yaml) into its own virtualenv and runs it on
    a repository holding a tagged and an untagged template, an unrelated file, and a template tagged for a custom
    role, which the same hook checks with `args: [--train-role, bot]`."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])  # the venv's scripts first
    pre_commit = shutil.which("pre-commit", path=search)
    assert pre_commit, "pre-commit is in the test extra; install it with pip install -e '.[test]'"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    rev = _shadow_repository(hooks)
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    (repo / "custom").mkdir()
    (repo / "good.jinja").write_text(templatekit.get_template("zephyr"), encoding="utf-8")
    shutil.copy(corpus_file(UNTAGGED), repo / "model" / "bad.jinja")
    (repo / "notes.txt").write_text("{% not a template %}", encoding="utf-8")
    chatml = (REPO_ROOT / "examples" / "chatml_example.jinja").read_text(encoding="utf-8")
    bot = templatekit.patch_template(chatml, train_roles=("bot",)).template
    (repo / "custom" / "bot.jinja").write_text(bot, encoding="utf-8")
    (repo / ".pre-commit-config.yaml").write_text(
        "repos:\n"
        f"  - repo: {hooks.as_posix()}\n"
        f"    rev: {rev}\n"
        "    hooks:\n"
        "      - id: templatekit-check\n"
        "        exclude: ^custom/\n"
        "      - id: templatekit-check\n"
        "        alias: templatekit-check-bot\n"
        "        name: templatekit check --train-role bot\n"
        "        files: ^custom/.*\\.jinja$\n"
        "        args: [--train-role, bot]\n",
        encoding="utf-8",
    )
    code, output = _pre_commit_run(pre_commit, repo, tmp_path / "cache")
    assert code == 1, output
    default_run, bot_run = output.split("templatekit check --train-role bot", 1)
    assert "good.jinja: ok" in default_run
    assert "model/bad.jinja: FAILED" in default_run
    assert "custom/bot.jinja" not in default_run  # excluded from the default hook
    assert "notes.txt" not in default_run.split("templatekit-check", 1)[-1]  # not a template file: not passed
    assert "custom/bot.jinja: ok" in bot_run  # tagged for bot, and checked for bot
    assert "good.jinja" not in bot_run


@pytest.mark.subprocess
def test_readme_pre_commit_snippet_works_as_written(tmp_path: Path) -> None:
    """The README's pre-commit snippet, copied as it is under `repos:`, runs `templatekit check` on the template
    files of a repository (the templatekit installed beside this Python), with no placeholder to fill in."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert "OWNER" not in snippet and "repo: local" in snippet, snippet
    indent = len(snippet) - len(snippet.lstrip(" "))
    lines = [line[indent:] for line in snippet.splitlines()]
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])  # the venv's scripts first
    pre_commit = shutil.which("pre-commit", path=search)
    assert pre_commit and shutil.which("templatekit", path=search)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "good.jinja").write_text(templatekit.get_template("zephyr"), encoding="utf-8")
    shutil.copy(corpus_file(UNTAGGED), repo / "bad.jinja")
    (repo / "notes.txt").write_text("{% not a template %}", encoding="utf-8")
    config = "repos:\n" + "".join(f"  {line}\n" for line in lines)
    (repo / ".pre-commit-config.yaml").write_text(config, encoding="utf-8")
    code, output = _pre_commit_run(pre_commit, repo, tmp_path / "cache", PATH=search)
    assert code == 1, output
    assert "good.jinja: ok" in output and "bad.jinja: FAILED" in output, output
    assert "notes.txt" not in output.split("templatekit check", 1)[-1]
    assert "PyTorch" not in output and "Traceback" not in output
