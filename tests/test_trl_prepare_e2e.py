"""End to end on CPU: a prepare_dataset result trains as is in TRL's SFTTrainer (2 steps, a tiny model built
from a config), and the batches the model sees carry labels that are exactly right: the token id on every
token of an assistant reply and of the end-of-turn marker closing it, -100 everywhere else (system, user,
headers, the newline after the marker, padding). The expectation is computed here from the rendered text by
sentinel search, independently of templatekit."""

from __future__ import annotations

import copy
import math

import datasets as datasets  # noqa: E402
import pytest
import torch as torch  # noqa: E402
from _paths import corpus_file
from _training import conversations, sft_config, tiny_qwen2, truth_spans

from templatekit import prepare_dataset
from templatekit.training.masks import spans_to_token_mask

pytestmark = pytest.mark.e2e

CASES = {
    "qwen2_5": ("qwen_tokenizer", "trl/qwen2_5.jinja", "<|im_end|>"),
    "llama3_1": ("llama3_tokenizer", "trl/llama3_1.jinja", "<|eot_id|>"),
}


def prepared_sft_config(tmp_path, **overrides):
    # prepared data carries its masks: TRL folds `assistant_masks` into labels with the flag off (see below)
    return sft_config(tmp_path, **{"assistant_only_loss": False, "per_device_train_batch_size": 3, **overrides})


@pytest.mark.parametrize("case", sorted(CASES))
def test_sft_trainer_trains_on_prepared_dataset(request, case, tmp_path):
    from trl import SFTTrainer

    fixture, path, eot = CASES[case]
    tokenizer = copy.deepcopy(request.getfixturevalue(fixture))
    tokenizer.chat_template = corpus_file(path).read_text(encoding="utf-8")
    rows = conversations(9, seed=11)
    prepared = prepare_dataset(datasets.Dataset.from_dict({"messages": rows}), tokenizer, progress=False)

    trainer = SFTTrainer(
        model=tiny_qwen2(tokenizer),
        args=prepared_sft_config(tmp_path),
        train_dataset=prepared,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss) and result.training_loss > 0
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)

    by_text = {tokenizer.apply_chat_template(messages, tokenize=False): messages for messages in rows}
    seen = []
    for batch in trainer.get_train_dataloader():  # the sampler shuffles: find each row by its text
        for input_ids, attention, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            length = int(attention.sum())
            ids, labels = input_ids.tolist(), labels.tolist()
            assert labels[length:] == [-100] * (len(ids) - length)  # padding
            ids, labels = ids[:length], labels[:length]

            text = tokenizer.decode(ids)
            messages = by_text[text]
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            assert ids == encoded["input_ids"]  # the model sees exactly the template's text, one BOS at most
            mask = spans_to_token_mask(encoded["offset_mapping"], truth_spans(text, messages, eot))
            assert labels == [token if keep else -100 for token, keep in zip(ids, mask)]
            replies = "".join(m["content"] + eot for m in messages if m["role"] == "assistant")
            assert tokenizer.decode([t for t in labels if t != -100]) == replies
            seen.append(text)
    assert sorted(seen) == sorted(by_text)


def test_assistant_only_loss_flag_is_not_for_tokenized_data(qwen_tokenizer, tmp_path):
    """Why the docs say to leave assistant_only_loss=False: TRL 1.16 wants `messages` for it and refuses a
    tokenized dataset, while it folds `assistant_masks` into the labels either way (tested above)."""
    from trl import SFTTrainer

    tokenizer = copy.deepcopy(qwen_tokenizer)
    tokenizer.chat_template = corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")
    prepared = prepare_dataset(datasets.Dataset.from_dict({"messages": conversations(3)}), tokenizer, progress=False)
    with pytest.raises(ValueError, match="not conversational"):
        SFTTrainer(
            model=tiny_qwen2(tokenizer),
            args=prepared_sft_config(tmp_path, assistant_only_loss=True),
            train_dataset=prepared,
            processing_class=tokenizer,
        )
