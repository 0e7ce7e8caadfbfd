"""`--train-role` everywhere: a template patched for a custom role passes `check` and `report` for that role.

`check` and `report` judge a tagged template against the roles given (default: the assistant), so a template
tagged for `bot` passes `check --train-role bot` (and the pre-commit hook given those args, see
test_check_formats.py) and fails a plain `check`, whose assistant turns it leaves untrained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli import run
from _paths import REPO_ROOT

from templatekit.cli import main

# Writes every message as `<|im_start|>ROLE\n…<|im_end|>`, so any role name renders as a speaker of its own.
CHATML = REPO_ROOT / "examples" / "chatml_example.jinja"
ROLE = "bot"


@pytest.fixture(scope="module")
def bot_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example ChatML template patched with `templatekit patch --train-role bot`."""
    out = tmp_path_factory.mktemp("bot") / "chat_template.jinja"
    code = main(["patch", str(CHATML), "--train-role", ROLE, "-o", str(out)])
    assert code == 0
    return out


def test_patched_for_a_custom_role_passes_check_for_that_role(
    capsys: pytest.CaptureFixture[str], bot_template: Path
) -> None:
    code, out, err = run(capsys, "check", bot_template, "--train-role", ROLE)
    assert code == 0, out + err
    assert f"{bot_template}: ok" in out


def test_check_judges_against_the_default_role_without_the_option(
    capsys: pytest.CaptureFixture[str], bot_template: Path
) -> None:
    """The same template leaves the assistant's turns untrained: a plain `check` finds that."""
    code, out, _ = run(capsys, "check", bot_template)
    assert code == 1
    assert f"{bot_template}: FAILED" in out


def test_check_json_carries_the_verdict_for_the_role(capsys: pytest.CaptureFixture[str], bot_template: Path) -> None:
    code, out, _ = run(capsys, "check", "--format", "json", "--train-role", ROLE, bot_template)
    document = json.loads(out)
    assert (code, document["ok"], document["counts"]["ok"]) == (0, True, 1)


def test_report_counts_a_custom_role_template_as_already_tagged(
    capsys: pytest.CaptureFixture[str], bot_template: Path
) -> None:
    """`report --train-role bot` judges the template's own tags for bot (before, it judged them for the assistant
    and called them wrong)."""
    code, out, _ = run(capsys, "report", "--json", "--train-role", ROLE, bot_template.parent)
    assert code == 0
    (row,) = json.loads(out)["templates"]
    assert (row["status"], row["reason"]) == ("already tagged", "")
    code, out, _ = run(capsys, "report", "--json", bot_template.parent)
    (row,) = json.loads(out)["templates"]
    assert row["status"] != "already tagged"
    assert "its generation tags fail verification" in row["reason"]
