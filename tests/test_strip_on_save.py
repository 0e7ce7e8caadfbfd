"""`strip_tags_on_save`: checkpoints saved during training carry the template without generation tags.

A real tiny SFTTrainer run (real Qwen2.5 tokenizer built offline, patched corpus template, a tiny random Qwen2
model on CPU) saves two checkpoints; the callback must leave each with an untagged template that renders exactly
like the original, while training itself keeps the tags. Then the callback is called directly, with real
`TrainingArguments`/`TrainerState`/`TrainerControl`, on folders a real tokenizer saved in the other layouts
(the template inside tokenizer_config.json, named templates).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import datasets as datasets  # noqa: E402
import pytest
import transformers as transformers  # noqa: E402
from _corpus import patched as corpus_patch
from _paths import corpus_file
from _training import make_conversations, sft_config, tiny_qwen2
from tokenizers_offline import with_chat_template

import templatekit
from templatekit.core.tags import has_generation_tags
from templatekit.integrations.trl import strip_saved_templates, strip_tags_on_save

QWEN = "trl/qwen2_5.jinja"


@pytest.fixture(scope="module")
def patched(qwen_tokenizer):
    original = corpus_file(QWEN).read_text(encoding="utf-8")
    tokenizer = with_chat_template(qwen_tokenizer, original)
    templatekit.patch_tokenizer(tokenizer)
    assert has_generation_tags(tokenizer.chat_template)
    return tokenizer, original


def saved_template(folder: Path) -> str:
    return transformers.AutoTokenizer.from_pretrained(str(folder)).chat_template


def renders(template: str, tokenizer, conversations) -> list[str]:
    return [tokenizer.apply_chat_template(m, chat_template=template, tokenize=False) for m in conversations]


@pytest.mark.e2e
def test_tiny_training_run_saves_untagged_checkpoints(patched, tmp_path):
    from trl import SFTTrainer

    tokenizer, original = patched
    tokenizer = copy.deepcopy(tokenizer)  # the trainer may change it; the shared one must stay as it is
    tagged = tokenizer.chat_template
    conversations = make_conversations(4)
    trainer = SFTTrainer(
        model=tiny_qwen2(tokenizer),
        args=sft_config(tmp_path, save_strategy="steps", save_steps=1, max_steps=2),
        train_dataset=datasets.Dataset.from_dict({"messages": conversations}),
        processing_class=tokenizer,
        callbacks=[strip_tags_on_save()],
    )
    trainer.train()
    assert tokenizer.chat_template == tagged  # training kept its tags
    checkpoints = sorted(tmp_path.glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-1", "checkpoint-2"]
    for checkpoint in checkpoints:
        text = saved_template(checkpoint)
        assert not has_generation_tags(text)
        assert text == templatekit.strip_template(tagged)
        assert renders(text, tokenizer, conversations) == renders(original, tokenizer, conversations)
        assert not list(checkpoint.glob("*.bak*"))  # no backup with the tags left behind
        for path in checkpoint.rglob("*"):
            if path.suffix in (".jinja", ".json") and path.is_file():
                assert not has_generation_tags(path.read_text(encoding="utf-8")), path


def call_on_save(callback, output_dir: Path, step: int, *, main: bool = True):
    args = transformers.TrainingArguments(output_dir=str(output_dir), report_to=[], use_cpu=True)
    state = transformers.TrainerState(global_step=step, is_world_process_zero=main)
    control = transformers.TrainerControl()
    assert isinstance(callback, transformers.TrainerCallback)
    return callback.on_save(args, state, control)


@pytest.mark.slow
def test_template_inside_tokenizer_config(patched, tmp_path):
    tokenizer, original = patched
    checkpoint = tmp_path / "checkpoint-7"
    tokenizer.save_pretrained(str(checkpoint))
    # The older layout: no chat_template.jinja, the template is a string in tokenizer_config.json.
    jinja = checkpoint / "chat_template.jinja"
    if jinja.exists():
        config_path = checkpoint / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = jinja.read_text(encoding="utf-8")
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        jinja.unlink()
    before = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert has_generation_tags(before["chat_template"])

    control = call_on_save(strip_tags_on_save(), tmp_path, 7)
    assert isinstance(control, transformers.TrainerControl)
    after = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert after == {**before, "chat_template": templatekit.strip_template(before["chat_template"])}
    text = saved_template(checkpoint)
    conversations = make_conversations(3)
    assert renders(text, tokenizer, conversations) == renders(original, tokenizer, conversations)


@pytest.mark.slow
def test_named_templates_are_all_stripped(patched, tmp_path):
    tokenizer, _ = patched
    tool_use = corpus_patch("trl/llama3_2.jinja").template
    tokenizer = with_chat_template(tokenizer, {"default": tokenizer.chat_template, "tool_use": tool_use})
    checkpoint = tmp_path / "checkpoint-3"
    tokenizer.save_pretrained(str(checkpoint))
    call_on_save(strip_tags_on_save(), tmp_path, 3)
    loaded = transformers.AutoTokenizer.from_pretrained(str(checkpoint)).chat_template
    assert loaded == {name: templatekit.strip_template(text) for name, text in tokenizer.chat_template.items()}


def test_only_the_main_process_writes_and_a_missing_checkpoint_is_ignored(patched, tmp_path):
    tokenizer, _ = patched
    checkpoint = tmp_path / "checkpoint-5"
    tokenizer.save_pretrained(str(checkpoint))
    before = {p: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
    call_on_save(strip_tags_on_save(), tmp_path, 5, main=False)
    assert {p: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()} == before
    call_on_save(strip_tags_on_save(), tmp_path, 99)  # no checkpoint-99: nothing to do, no error


@pytest.mark.slow
def test_strip_saved_templates_after_save_model(patched, tmp_path):
    tokenizer, _ = patched
    tokenizer.save_pretrained(str(tmp_path))
    rewritten = strip_saved_templates(tmp_path)
    assert rewritten and all(p.parent == tmp_path for p in rewritten)
    assert not has_generation_tags(saved_template(tmp_path))
    assert strip_saved_templates(tmp_path) == []  # nothing left to strip
