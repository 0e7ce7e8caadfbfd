"""templatekit.integrations.unsloth.train_on_responses_only: seed cases, and a differential test against
Unsloth's own masking function (unsloth_zoo/dataset_utils.py, loaded from the pinned unsloth-zoo wheel).

Truth for every row is independent of both: the conversation rendered through a verified tagged template
(`SpanRenderer`, tags mode) and the tagged characters mapped to tokens with `encode_with_mask`.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import types
import zipfile

import pytest
from _paths import corpus_file

from templatekit import SpanRenderer
from templatekit.integrations.unsloth import response_delimiters, train_on_responses_only
from templatekit.masks import encode_with_mask, labels_from_mask

UNSLOTH_ZOO = "unsloth-zoo==2026.10.9"
CHATML = ("<|im_start|>user\n", "<|im_start|>assistant\n")
LLAMA3 = ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n")
JUSTICE = "justice_william_h_rehnquist"

WORDS = "the court will hear argument case number plaintiff respondent why does this matter answer yes no".split()


@pytest.fixture(autouse=True)
def _restore_templates(qwen_tokenizer, llama3_tokenizer):
    """The tokenizers are session-wide: put their chat templates back after each test."""
    saved = [(t, t.chat_template) for t in (qwen_tokenizer, llama3_tokenizer)]
    yield
    for tokenizer, template in saved:
        tokenizer.chat_template = template


def _sentence(rng: random.Random) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    return text.capitalize() + rng.choice([".", "?", "!", ".\n\nMore: " + rng.choice(WORDS), " (see 2.1)"])


def conversations(count: int, seed: int) -> list[list[dict]]:
    """Generated conversations: optional system prompt, 1-4 user/assistant exchanges."""
    rng = random.Random(seed)
    result = []
    for _ in range(count):
        messages = [{"role": "system", "content": _sentence(rng)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": _sentence(rng)})
            messages.append({"role": "assistant", "content": _sentence(rng)})
        result.append(messages)
    return result


def _truth(renderer: SpanRenderer, tokenizer, messages, **kwargs) -> tuple[list[int], list[int]]:
    text, spans = renderer.render(messages, **kwargs)
    ids, mask = encode_with_mask(tokenizer, text, spans)
    return ids, labels_from_mask(ids, mask)


@pytest.fixture(scope="module")
def unsloth_masking(tmp_path_factory):
    """Unsloth's `train_on_responses_only`, from dataset_utils.py in the unsloth-zoo wheel (pip download)."""
    cache = tmp_path_factory.mktemp("unsloth_zoo")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", UNSLOTH_ZOO, "--no-deps", "-q", "-d", str(cache)],
        capture_output=True,
        text=True,
    )
    wheels = list(cache.glob("unsloth_zoo-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"cannot download {UNSLOTH_ZOO} from the package index: {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        source = wheel.read("unsloth_zoo/dataset_utils.py")
    path = cache / "unsloth_zoo_dataset_utils.py"
    path.write_bytes(source)
    # Only the package shell is stubbed: dataset_utils' own imports (torch, datasets, trl) are real.
    sys.modules.setdefault("unsloth_zoo", types.ModuleType("unsloth_zoo"))
    spec = importlib.util.spec_from_file_location("unsloth_zoo.dataset_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train_on_responses_only


def _classify(text: str, offsets, ids, theirs, truth, messages) -> str:
    """Why Unsloth's labels differ from the truth: the characters of each wrongly (un)trained token."""
    wrong_in, wrong_out = [], []
    for (start, end), label, expected in zip(offsets, theirs, truth):
        if label != expected:
            (wrong_in if label != -100 else wrong_out).append(text[start:end])
    return f"trains {wrong_in!r}, misses {wrong_out!r}"


@pytest.mark.parametrize("family", ["chatml", "llama3"])
@pytest.mark.parametrize("last_response_only", [False, True])
def test_differential_against_unsloth(family, last_response_only, unsloth_masking, request):
    tokenizer = request.getfixturevalue("qwen_tokenizer" if family == "chatml" else "llama3_tokenizer")
    template = corpus_file("trl/qwen2_5.jinja" if family == "chatml" else "trl/llama3.jinja").read_text()
    tokenizer.chat_template = template
    instruction, response = CHATML if family == "chatml" else LLAMA3
    truth_renderer = SpanRenderer(template, last_response_only=last_response_only, fallback=False)
    assert truth_renderer.mode == "tags"
    theirs_fn = unsloth_masking(
        None, instruction, response, tokenizer=tokenizer, return_function=True, last_response_only=last_response_only
    )
    ours_explicit = train_on_responses_only(
        None, instruction, response, tokenizer=tokenizer, return_function=True, last_response_only=last_response_only
    )
    ours_auto = train_on_responses_only(
        None, tokenizer=tokenizer, return_function=True, last_response_only=last_response_only
    )
    rows, truths = [], []
    for messages in conversations(500, seed=7 if family == "chatml" else 8):
        ids, labels = _truth(truth_renderer, tokenizer, messages, bos_token=tokenizer.bos_token or "")
        rows.append(ids)
        truths.append(labels)
    batch = {"input_ids": rows}
    assert ours_explicit(batch)["labels"] == truths
    assert ours_auto(batch)["labels"] == truths
    theirs = theirs_fn(batch)["labels"]
    disagreements = {}
    for ids, labels, expected in zip(rows, theirs, truths):
        if labels != expected:
            text = tokenizer.decode(ids)
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            why = _classify(text, offsets, ids, labels, expected, None)
            disagreements[why] = disagreements.get(why, 0) + 1
    request.node.user_properties.append(("unsloth_disagreements", disagreements))
    print(f"{family} last_response_only={last_response_only}: {sum(disagreements.values())}/500 differ", disagreements)
    # On these conversations Unsloth's masks are right: every label must be identical.
    assert disagreements == {}


def _court(count: int = 3) -> list[dict]:
    messages = [{"role": "system", "content": "Oral argument, No. 79-1. Transcript."}]
    for turn in range(count):
        messages.append({"role": "petitioner_counsel", "content": f"Mr. Chief Justice, point {turn}."})
        messages.append({"role": JUSTICE, "content": f"Counsel, answer question {turn} directly."})
    messages.append({"role": "justice_byron_r_white", "content": "I have a question too."})
    return messages


@pytest.mark.parametrize("last_response_only", [False, True])
def test_court_argument_custom_role(llama3_tokenizer, last_response_only):
    template = corpus_file("trl/llama3.jinja").read_text()
    llama3_tokenizer.chat_template = template
    messages = _court()
    text = llama3_tokenizer.apply_chat_template(messages, tokenize=False)
    ids = llama3_tokenizer(text, add_special_tokens=False)["input_ids"]
    masking = train_on_responses_only(
        None,
        instruction_part="<|eot_id|>",
        response_part=f"<|start_header_id|>{JUSTICE}<|end_header_id|>",
        tokenizer=llama3_tokenizer,
        return_function=True,
        last_response_only=last_response_only,
    )
    labels = masking({"input_ids": [ids]})["labels"][0]
    trained = [llama3_tokenizer.decode([t]) for t in labels if t != -100]
    answers = [m["content"] for m in messages if m["role"] == JUSTICE]
    expected = "".join(f"{a}<|eot_id|>" for a in (answers[-1:] if last_response_only else answers))
    assert "".join(trained) == expected  # no header, no "\n\n", the other justice and counsel untrained
    truth = SpanRenderer(template, train_roles=(JUSTICE,), last_response_only=last_response_only)
    assert _truth(truth, llama3_tokenizer, messages, bos_token=llama3_tokenizer.bos_token)[1] == labels


def test_auto_detected_parts(qwen_tokenizer, llama3_tokenizer):
    qwen_tokenizer.chat_template = corpus_file("unsloth/chatml.jinja").read_text()
    chatml = response_delimiters(qwen_tokenizer)
    assert chatml.response_parts == ("<|im_start|>assistant\n",) and chatml.eot == "<|im_end|>"
    llama3_tokenizer.chat_template = corpus_file("trl/llama3.jinja").read_text()
    llama = response_delimiters(llama3_tokenizer)
    assert llama.response_parts == (LLAMA3[1],) and llama.eot == "<|eot_id|>"


def test_mask_out_tokens_and_trainer_datasets(qwen_tokenizer):
    datasets = pytest.importorskip("datasets")
    qwen_tokenizer.chat_template = corpus_file("trl/qwen2_5.jinja").read_text()
    messages = [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<think>hmm</think>Done."},
    ]
    text = qwen_tokenizer.apply_chat_template(messages, tokenize=False)
    ids = qwen_tokenizer(text, add_special_tokens=False)["input_ids"]
    split = datasets.Dataset.from_dict({"input_ids": [ids], "labels": [list(ids)]})
    trainer = types.SimpleNamespace(processing_class=qwen_tokenizer, train_dataset=split, eval_dataset={"dev": split})
    train_on_responses_only(trainer, mask_out_tokens="</think>")
    labels = trainer.train_dataset["labels"][0]
    trained = qwen_tokenizer.decode([t for t in labels if t != -100])
    assert trained == "<think>hmmDone.<|im_end|>"
    assert trainer.eval_dataset["dev"]["labels"][0] == labels


def test_bad_arguments(qwen_tokenizer):
    with pytest.raises(ValueError, match="both instruction_part and response_part"):
        train_on_responses_only(None, "<|im_start|>user\n", tokenizer=qwen_tokenizer, return_function=True)
    with pytest.raises(ValueError, match="pass a trainer or a tokenizer"):
        train_on_responses_only(None, return_function=True)
