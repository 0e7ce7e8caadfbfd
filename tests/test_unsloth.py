"""templatekit.integrations.unsloth.train_on_responses_only: a differential test against Unsloth's own masking
function (unsloth_zoo/dataset_utils.py, loaded from the pinned unsloth-zoo wheel), and the seed example.

Truth for the generic rows is independent of both: the conversation rendered through a verified tagged template
(`SpanRenderer`, tags mode) and the tagged characters mapped to tokens with `encode_with_mask`.

The seed example (the court argument of examples/custom_roles.py, `instruction_part="<|eot_id|>"`,
`response_part="<|start_header_id|>justice_william_h_rehnquist<|end_header_id|>"`) must give Unsloth's labels
exactly: they are checked against a token-id reference of Unsloth's algorithm written here (offline), and,
when the wheel can be downloaded, against Unsloth's function itself.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import types
import zipfile

import pytest
from _paths import REPO_ROOT, corpus_file

from templatekit import SpanRenderer
from templatekit.integrations.unsloth import response_delimiters, train_on_responses_only
from templatekit.training.masks import encode_with_mask, labels_from_mask

UNSLOTH_ZOO = "unsloth-zoo==2026.10.9"
CHATML = ("<|im_start|>user\n", "<|im_start|>assistant\n")
LLAMA3 = ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n")
JUSTICE = "justice_william_h_rehnquist"
EXAMPLES = REPO_ROOT / "examples"

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


@pytest.mark.subprocess
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


# ---------------------------------------------------------------------------------------------------------
# The seed example: the court argument, Unsloth's parts for one speaker, Unsloth's labels exactly

SEED_PARTS = {"instruction_part": "<|eot_id|>", "response_part": f"<|start_header_id|>{JUSTICE}<|end_header_id|>"}


def unsloth_reference_labels(
    ids: list[int],
    instruction: list[int],
    response: list[int],
    *,
    eos: int | None,
    bos: int | None,
    last_response_only: bool = False,
) -> list[int]:
    """Unsloth's `train_on_responses_only` labels for one row (unsloth_zoo 2026.10.9, default `force_match`),
    as a plain search over token ids; `instruction` and `response` are the parts' own token ids.

    Every occurrence of the response ids opens a response; those ids themselves are never trained. The
    response runs from the token right after them to the first of, in this order at each token:

    1. the EOS id: trained, the response ends right after it (the scan goes on after it);
    2. the BOS id or the next response ids: not trained, the response ends right before them;
    3. the row's last token: trained, whatever it is;
    4. the instruction ids: not trained, the response ends right before them (the scan goes on after them).

    Only these responses are labelled (with their own ids); `last_response_only` keeps the row's last one.
    (Unsloth also stops at a special token that opens both parts; the court parts share none.)
    """
    n, spans, at = len(ids), [], 0
    while at < n:
        if ids[at : at + len(response)] != response:
            at += 1
            continue
        start = at = at + len(response)
        while at < n:
            if ids[at] == eos:
                spans.append((start, at + 1))
                at += 1
                break
            if ids[at] == bos or ids[at : at + len(response)] == response:
                spans.append((start, at))
                break
            if at == n - 1:
                spans.append((start, n))
                at = n
                break
            if ids[at : at + len(instruction)] == instruction:
                spans.append((start, at))
                at += len(instruction)
                break
            at += 1
    labels = [-100] * n
    for begin, end in spans[-1:] if last_response_only else spans:
        labels[begin:end] = ids[begin:end]
    return labels


def court_rows(tokenizer, count: int, form: str) -> list[list[int]]:
    """The token ids of examples/custom_roles.py's `court_arguments(count)`: `rendered` as the template writes
    them (BOS in the text), or `text_column` as that example feeds SFTTrainer (`chat_text`, then the
    tokenizer adds BOS)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from _common import chat_text
    from custom_roles import court_arguments

    rows = []
    for messages in court_arguments(count):
        if form == "rendered":
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            rows.append(tokenizer(chat_text(tokenizer, messages))["input_ids"])
    return rows


def _occurrences(ids: list[int], needle: list[int]) -> list[int]:
    return [i for i in range(len(ids) - len(needle) + 1) if ids[i : i + len(needle)] == needle]


def _seed_reference(tokenizer, rows, last_response_only: bool) -> list[list[int]]:
    instruction = tokenizer(SEED_PARTS["instruction_part"], add_special_tokens=False)["input_ids"]
    response = tokenizer(SEED_PARTS["response_part"], add_special_tokens=False)["input_ids"]
    assert instruction[0] != response[0]  # no shared opener: the reference's rules are all Unsloth's here
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    options = {"eos": eos, "bos": bos, "last_response_only": last_response_only}
    return [unsloth_reference_labels(ids, instruction, response, **options) for ids in rows]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["rendered", "text_column"])
@pytest.mark.parametrize("template_name", ["trl/llama3_1.jinja", "trl/llama3.jinja"])
@pytest.mark.parametrize("last_response_only", [False, True])
def test_court_seed_gives_unsloths_labels(llama3_tokenizer, template_name, form, last_response_only):
    """The seed example: 200 court arguments, the justice's parts; labels identical to Unsloth's, row by row."""
    llama3_tokenizer.chat_template = corpus_file(template_name).read_text()
    rows = court_rows(llama3_tokenizer, 200, form)
    masking = train_on_responses_only(
        None, **SEED_PARTS, tokenizer=llama3_tokenizer, return_function=True, last_response_only=last_response_only
    )
    ours = masking({"input_ids": rows})["labels"]
    reference = _seed_reference(llama3_tokenizer, rows, last_response_only)
    differing = [row for row, (a, b) in enumerate(zip(ours, reference)) if a != b]
    assert not differing, f"{len(differing)}/200 rows differ from Unsloth's labels, first: row {differing[:1]}"

    eot = llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    header = llama3_tokenizer(SEED_PARTS["response_part"], add_special_tokens=False)["input_ids"]
    space = llama3_tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    for ids, labels in zip(rows, ours):
        turns = _occurrences(ids, header)
        assert turns  # every argument has the justice speak
        for number, at in enumerate(turns):
            kept = not last_response_only or number == len(turns) - 1
            after = at + len(header)
            closing = ids.index(eot, after)  # the <|eot_id|> that ends his turn
            assert labels[at:after] == [-100] * len(header)  # the response part itself: never trained
            # Unsloth's response starts right after the part as written: the header's "\n\n" is trained
            assert ids[after : after + len(space)] == space
            assert labels[after:closing] == (ids[after:closing] if kept else [-100] * (closing - after))
            assert labels[closing] == (eot if kept else -100)  # his <|eot_id|> is trained
        trained_eots = sum(1 for label in labels if label == eot)
        assert trained_eots == (1 if last_response_only else len(turns))  # no one else's <|eot_id|>


@pytest.mark.subprocess
@pytest.mark.parametrize("last_response_only", [False, True])
def test_court_seed_against_unsloth_itself(llama3_tokenizer, last_response_only, unsloth_masking):
    """The same 200 arguments through Unsloth's own function: it agrees with the reference and with ours."""
    llama3_tokenizer.chat_template = corpus_file("trl/llama3_1.jinja").read_text()
    options = {"tokenizer": llama3_tokenizer, "return_function": True, "last_response_only": last_response_only}
    for form in ("rendered", "text_column"):
        rows = court_rows(llama3_tokenizer, 200, form)
        theirs = unsloth_masking(None, **SEED_PARTS, **options)({"input_ids": rows})["labels"]
        assert theirs == _seed_reference(llama3_tokenizer, rows, last_response_only)
        assert train_on_responses_only(None, **SEED_PARTS, **options)({"input_ids": rows})["labels"] == theirs


def test_auto_detected_parts(qwen_tokenizer, llama3_tokenizer):
    qwen_tokenizer.chat_template = corpus_file("unsloth/chatml.jinja").read_text()
    chatml = response_delimiters(qwen_tokenizer)
    assert chatml.response_parts == ("<|im_start|>assistant\n",) and chatml.eot == "<|im_end|>"
    llama3_tokenizer.chat_template = corpus_file("trl/llama3.jinja").read_text()
    llama = response_delimiters(llama3_tokenizer)
    assert llama.response_parts == (LLAMA3[1],) and llama.eot == "<|eot_id|>"


def test_mask_out_tokens_and_trainer_datasets(qwen_tokenizer):
    import datasets

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
