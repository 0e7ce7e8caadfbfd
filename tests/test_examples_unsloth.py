"""The Unsloth-style examples run as a user runs them (`--tiny`: CPU, a tiny model from a config, real tokenizers
built offline), and what they print is checked against the conversations they train on:

* examples/train_on_responses_only.py: ChatML parts detected from the template; the trained text of the first row
  is exactly each assistant reply plus `<|im_end|>`; the trained token count over all rows is the replies' own.
* examples/custom_roles.py: the patched template + `assistant_only_loss` trains exactly
  `justice_william_h_rehnquist`'s replies plus `<|eot_id|>` (only the last with `--last-response-only`), never
  counsel or another justice; the Unsloth drop-in with the seed's explicit parts gives Unsloth's labels: the same
  plus the "\\n\\n" after his header (Unsloth's response starts right after `response_part` as written), so
  the two ways differ at those tokens only. (Unsloth's exact labels on 200 arguments: tests/test_unsloth.py.)
"""

from __future__ import annotations

import ast
import importlib
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.subprocess]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY_ROWS = 16  # the examples train on their first 16 conversations with --tiny


def example_module(name: str):
    """An example imported as a module (its data generator is the source of the expected text)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def run_example(script: str, tmp_path: Path, *flags: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--tiny", "--output", str(tmp_path / "out"), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # the example must not depend on the working directory
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def trained_text(section: str) -> list[str]:
    """The `repr` lines printed under "trained text of example 0:"."""
    lines = section.split("trained text of example 0:\n", 1)[1].splitlines()
    pieces = []
    for line in lines:
        if not line.startswith("  "):
            break
        pieces.append(ast.literal_eval(line.strip()))
    return pieces


def trained_count(section: str) -> tuple[int, int]:
    match = re.search(r"trained label tokens: (\d+) of (\d+) ", section)
    assert match, section[-2000:]
    return int(match.group(1)), int(match.group(2))


def assert_trained_and_logged_loss(section: str) -> None:
    finished = re.search(r"finished (\d+) steps in [\d.]+ s; training loss ([\d.]+)", section)
    assert finished and int(finished.group(1)) == 3, section[-2000:]
    logged = re.search(r"first logged loss ([\d.]+), last logged loss ([\d.]+)", section)
    assert logged and all(math.isfinite(float(value)) and float(value) > 0 for value in logged.groups())


def token_count(tokenizer, texts: list[str]) -> int:
    """Tokens of each text on its own, plus one end-of-turn token each."""
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in texts)


def test_train_on_responses_only_tiny(tmp_path, qwen_tokenizer):
    out = run_example("train_on_responses_only.py", tmp_path)
    assert (
        "parts detected from the chat template: response ('<|im_start|>assistant\\n',), end of turn '<|im_end|>'" in out
    )
    rows = example_module("train_sft_assistant_only").make_conversations(TINY_ROWS)
    replies = [[m["content"] for m in messages if m["role"] == "assistant"] for messages in rows]
    assert trained_text(out) == [f"{reply}<|im_end|>" for reply in replies[0]]
    trained, total = trained_count(out)
    # every reply token and its <|im_end|>, over all rows; nothing of the system or user turns, no header
    assert trained == token_count(qwen_tokenizer, [reply for row in replies for reply in row])
    assert trained < total / 2
    assert_trained_and_logged_loss(out)


@pytest.mark.parametrize("last_response_only", [False, True])
def test_custom_roles_tiny(tmp_path, llama3_tokenizer, last_response_only):
    out = run_example("custom_roles.py", tmp_path, *(["--last-response-only"] if last_response_only else []))
    module = example_module("custom_roles")
    rows = module.court_arguments(TINY_ROWS)
    justice = [[m["content"] for m in messages if m["role"] == module.JUSTICE] for messages in rows]
    if last_response_only:
        justice = [replies[-1:] for replies in justice]
    # the first argument is a real test of the roles: he speaks twice, and another justice speaks after him
    first = [m["role"] for m in rows[0]]
    assert first.count(module.JUSTICE) == 2 and first[-1].startswith("justice_") and first[-1] != module.JUSTICE
    assert "speakers of example 0: " + ", ".join(first) in out
    replies = [reply for row in justice for reply in row]
    expected = token_count(llama3_tokenizer, replies)

    patch, unsloth = out.split("== (b)", 1)
    # (b), Unsloth's labels: his reply, his <|eot_id|>, and the "\n\n" token after his header, which the
    # seed's response_part stops before
    assert trained_text(unsloth) == [f"\n\n{reply}<|eot_id|>" for reply in justice[0]]
    trained, total = trained_count(unsloth)
    assert trained == expected + len(replies) and trained < total / 4
    assert_trained_and_logged_loss(unsloth)
    # (a), the patched template: his reply and his <|eot_id|>, nothing else
    assert "template retagged: ok" in patch
    assert trained_text(patch) == [f"{reply}<|eot_id|>" for reply in justice[0]]
    assert trained_count(patch) == (expected, total)
    assert_trained_and_logged_loss(patch)
    assert f"the two ways' labels differ on all {TINY_ROWS} rows only at: ['\\n\\n']" in unsloth
