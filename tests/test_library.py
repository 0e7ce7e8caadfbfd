"""The template library: every template verified, rendered like the format's widely used template on real
conversations, masked right by real tokenizers, installed with the package, and applied by `templatekit apply`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from _cli import run
from _paths import REPO_ROOT, corpus_file
from tokenizers_offline import with_chat_template
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

import templatekit
from templatekit.errors import UnknownTemplateError

NAMES = ["alpaca", "chatml", "gemma", "llama3", "mistral", "phi3", "vicuna", "zephyr"]
TRL_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And how many people live there?"},
    {"role": "assistant", "content": "About 2.1 million people live in Paris proper."},
]
ANSWERS = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]

# For each format, a widely used template for it from the corpus, and the conversation shape on which the two
# formats agree (ours folds a system message into the first user turn where the reference has no system role, and
# uses the format's usual preamble where the reference has a placeholder).
REFERENCES = [
    ("chatml", "unsloth/chatml.jinja", True),
    ("chatml", "axolotl/chatml.jinja", True),
    ("llama3", "unsloth/llama-3.jinja", True),
    ("mistral", "unsloth/mistral.jinja", False),
    ("gemma", "trl/gemma.jinja", False),
    ("phi3", "unsloth/phi-3.jinja", True),
    ("zephyr", "unsloth/zephyr.jinja", True),
    ("alpaca", "unsloth/alpaca.jinja", True),
    ("vicuna", "unsloth/vicuna.jinja", True),
]


def render(template: str, messages: list[dict], **options) -> tuple[str, list[tuple[int, int]]]:
    texts, spans = render_jinja_template(
        conversations=[messages], chat_template=template, return_assistant_tokens_mask=True, **SPECIAL, **options
    )
    return texts[0], [tuple(span) for span in spans[0]]


# ------------------------------------------------------------------------------------------------------- API


def test_list_templates_names_every_format() -> None:
    assert templatekit.list_templates() == NAMES
    on_disk = sorted(path.stem for path in (REPO_ROOT / "templates").glob("*.jinja"))
    assert on_disk == NAMES


def test_get_template_is_forgiving_about_spelling_and_clear_about_unknown_names() -> None:
    assert templatekit.get_template("Llama-3") == templatekit.get_template("llama3")
    assert templatekit.get_template("PHI_3") == (REPO_ROOT / "templates" / "phi3.jinja").read_text(encoding="utf-8")
    with pytest.raises(UnknownTemplateError) as raised:
        templatekit.get_template("falcon")
    assert "'falcon'" in str(raised.value) and ", ".join(NAMES) in str(raised.value)
    assert isinstance(raised.value, LookupError)


@pytest.mark.parametrize("name", NAMES)
def test_library_template_passes_check_template(name: str) -> None:
    template = templatekit.get_template(name)
    assert TRL_TAG.search(template) and "endgeneration" in template  # forms TRL detects
    report = templatekit.check_template(template)
    assert report.ok, report.reasons
    assert report.probes_passed >= 9  # single and multi-turn, system, generation prompt, ...
    # patch_template recognises it as correctly tagged and leaves it as it is.
    assert templatekit.patch_template(template).status == "already_tagged"


# --------------------------------------------------------------------------------------------------- renders


@pytest.mark.parametrize(("name", "reference", "with_system"), REFERENCES)
def test_renders_like_the_reference_template_for_the_format(name: str, reference: str, with_system: bool) -> None:
    ours = templatekit.get_template(name)
    theirs = corpus_file(reference).read_text(encoding="utf-8")
    conversation = ([SYSTEM] if with_system else []) + CONVERSATION
    for messages in (conversation, conversation[:-1]):
        for prompt in (False, True):
            expected = render(theirs, messages, add_generation_prompt=prompt)[0]
            text, spans = render(ours, messages, add_generation_prompt=prompt)
            assert text == expected, (name, reference, prompt)
            trained = [text[start:end] for start, end in spans]
            answers = [m["content"] for m in messages if m["role"] == "assistant"]
            assert len(trained) == len(answers)
            for piece, answer in zip(trained, answers):
                # The answer, then the end-of-turn marker; nothing before the answer but a space the model writes.
                assert piece.lstrip(" ").startswith(answer), piece
                assert piece[len(piece) - len(piece.lstrip(" ")) + len(answer) :] in (
                    "</s>",
                    "<|im_end|>",
                    "<|eot_id|>",
                    "<end_of_turn>",
                    "<|end|>",
                )


@pytest.mark.parametrize("name", NAMES)
def test_system_and_user_text_is_never_trained(name: str) -> None:
    template = templatekit.get_template(name)
    text, spans = render(template, [SYSTEM, *CONVERSATION])
    trained = "".join(text[start:end] for start, end in spans)
    for message in (SYSTEM, *CONVERSATION):
        assert message["content"] in text
        assert (message["content"] in trained) == (message["role"] == "assistant")


def test_chatml_and_llama3_train_tool_calls_but_not_tool_results() -> None:
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "4 degrees, rain"},
        {"role": "assistant", "content": "It is 4 degrees and raining in Oslo."},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    for name in ("chatml", "llama3"):
        text, spans = render(templatekit.get_template(name), messages, tools=tools)
        trained = "".join(text[start:end] for start, end in spans)
        assert '"city": "Oslo"' in trained and "It is 4 degrees" in trained
        assert "4 degrees, rain" in text and "4 degrees, rain" not in trained
        assert "Current weather" in text and "Current weather" not in trained


@pytest.mark.parametrize(
    ("name", "fixture", "end"),
    [
        ("chatml", "qwen_tokenizer", "<|im_end|>"),
        ("llama3", "llama3_tokenizer", "<|eot_id|>"),
        ("mistral", "mistral_tokenizer", "</s>"),
    ],
)
def test_real_tokenizer_masks_exactly_the_answers(request, name: str, fixture: str, end: str) -> None:
    """What TRL's assistant_only_loss reads: transformers' assistant mask over real token ids."""
    tokenizer = with_chat_template(request.getfixturevalue(fixture), templatekit.get_template(name))
    encoded = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    trained = [i for i, m in zip(ids, mask) if m]
    assert tokenizer.decode(trained) == "".join(answer + end for answer in ANSWERS)
    runs = "".join(map(str, mask)).split("0")
    assert sum(1 for run_ in runs if run_) == len(ANSWERS)  # one unbroken run of trained tokens per answer
    assert trained.count(tokenizer.convert_tokens_to_ids(end)) == len(ANSWERS)


# ---------------------------------------------------------------------------------------------------- package


@pytest.mark.subprocess
def test_wheel_ships_the_library(tmp_path: Path) -> None:
    """Build a wheel from a copy of the project (nothing written into the checkout), install it into a folder
    of its own, and read every template back through the installed package."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, project / name)
    for folder in ("templatekit", "templates"):
        shutil.copytree(REPO_ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        cwd=project,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("templatekit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "templatekit/py.typed" in names  # the package says it is typed (PEP 561)
        for name in NAMES:
            member = f"templatekit/library/templates/{name}.jinja"
            assert member in names
            assert archive.read(member) == (REPO_ROOT / "templates" / f"{name}.jinja").read_bytes()
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import json, templatekit; "
        "print(json.dumps([templatekit.__file__, templatekit.list_templates(), templatekit.get_template('gemma')]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    where, listed, gemma = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(where).is_relative_to(target)  # the installed wheel, not the checkout
    assert listed == NAMES
    assert gemma == templatekit.get_template("gemma")


# ------------------------------------------------------------------------------------------------------ apply


def base_model(tokenizer, folder: Path) -> Path:
    """A saved tokenizer folder without any chat template: what a base model ships."""
    tokenizer = with_chat_template(tokenizer, None)
    tokenizer.save_pretrained(folder)
    assert not (folder / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    return folder


@pytest.mark.slow
def test_apply_in_place_gives_a_base_model_a_trainable_template(capsys, qwen_tokenizer, tmp_path: Path) -> None:
    folder = base_model(qwen_tokenizer, tmp_path / "base")
    config_before = (folder / "tokenizer_config.json").read_bytes()
    code, _, err = run(capsys, "apply", "--template", "chatml", folder, "--in-place")
    assert code == 0, err
    assert "verification ok" in err and f"wrote {folder / 'chat_template.jinja'}" in err
    assert (folder / "tokenizer_config.json").read_bytes() == config_before  # nothing else touched
    loaded = AutoTokenizer.from_pretrained(folder)  # transformers finds the new template by itself
    assert loaded.chat_template == templatekit.get_template("chatml")
    encoded = loaded.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    trained = loaded.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    assert trained == "".join(answer + "<|im_end|>" for answer in ANSWERS)
    # Now the model has a template: check passes, and apply refuses to replace it silently.
    assert run(capsys, "check", folder)[0] == 0
    code, _, err = run(capsys, "apply", "--template", "zephyr", folder, "--in-place")
    assert code == 2 and "already has a chat template" in err and "--force" in err
    assert (folder / "chat_template.jinja").read_text(encoding="utf-8") == templatekit.get_template("chatml")


def test_apply_force_replaces_a_template_where_it_is_kept_with_a_backup(capsys, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    original = corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")
    config = {"eos_token": "<|im_end|>", "chat_template": original, "model_max_length": 32768}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    before = (folder / "tokenizer_config.json").read_bytes()
    code, _, err = run(
        capsys, "apply", "--template", "chatml", folder / "tokenizer_config.json", "--in-place", "--force"
    )
    assert code == 0, err
    after = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert after == {**config, "chat_template": templatekit.get_template("chatml")}  # only the template changed
    assert (folder / "tokenizer_config.json.bak").read_bytes() == before
    assert not (folder / "chat_template.jinja").exists()


def test_apply_prints_or_writes_and_rejects_bad_input(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "apply", "--template", "vicuna")
    assert code == 0 and out == templatekit.get_template("vicuna")
    target = tmp_path / "alpaca.jinja"
    assert run(capsys, "apply", "--template", "alpaca", "-o", target)[0] == 0
    assert target.read_text(encoding="utf-8") == templatekit.get_template("alpaca")
    assert run(capsys, "check", target)[0] == 0
    code, _, err = run(capsys, "apply", "--template", "falcon", "-o", tmp_path / "x.jinja")
    assert code == 2 and "no library template named 'falcon'" in err and "chatml" in err
    assert not (tmp_path / "x.jinja").exists()
    code, _, err = run(capsys, "apply", "--template", "chatml", "--in-place")
    assert code == 2 and "needs a SOURCE" in err
    bad = tmp_path / "bad" / "tokenizer_config.json"
    bad.parent.mkdir()
    bad.write_text('{"eos_token": "</s>",\n  "chat_template": }', encoding="utf-8")
    code, _, err = run(capsys, "apply", "--template", "chatml", bad, "--in-place")
    assert code == 2 and f"{bad}:2:" in err and "invalid JSON" in err
    assert not (bad.parent / "chat_template.jinja").exists()
