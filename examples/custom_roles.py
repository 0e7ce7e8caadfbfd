"""Train one speaker of many: the court-argument case, where only Justice Rehnquist's turns are trained.

    # CPU, seconds: a tiny random model and the real Llama 3 tokenizer built offline (pip install llama-models)
    python examples/custom_roles.py --tiny
    python examples/custom_roles.py --tiny --last-response-only      # only his last reply in each argument

    # GPU: a ~60M model from a config, bf16; --way picks one of the two ways below (default: both)
    python examples/custom_roles.py --way patch --steps 300

The conversations are oral arguments in a Llama 3 format: `counsel` argues, several justices ask, and the
model learns to speak as `justice_william_h_rehnquist`; every other speaker is context. Two ways:

(a) patch: `templatekit.patch_template(template, train_roles=("justice_william_h_rehnquist",))` moves the
    `{% generation %}` tags to his turns (verified: renders byte-identically), then TRL trains with
    `SFTConfig(assistant_only_loss=True)` on the `messages` as they are.
(b) unsloth: conversations rendered to text, `SFTTrainer`, then the drop-in, called as an Unsloth user calls
    Unsloth's own: `train_on_responses_only(trainer, instruction_part="<|eot_id|>",
    response_part="<|start_header_id|>justice_william_h_rehnquist<|end_header_id|>")`.

(a) trains his reply and the `<|eot_id|>` that ends it: not his header, not the "\\n\\n" after it, nothing of
counsel or of the other justices. (b) gives Unsloth's labels exactly (unsloth_zoo 2026.10.9): the same, plus the
"\\n\\n" after his header, because Unsloth's response starts right after the `response_part` as written (put
the "\\n\\n" in the part to leave it out); his `<|eot_id|>` is trained, as Unsloth trains the tokenizer's EOS.
The last line compares the two ways token by token.
"""

from __future__ import annotations

import argparse
import random

from _common import (
    LLAMA3_TOKENIZER,
    TRAINING,
    chat_text,
    config_model,
    offline_llama3_tokenizer,
    report_labels,
    require,
    sft_config,
    train_and_report,
)

JUSTICE = "justice_william_h_rehnquist"
OTHER_JUSTICES = ("justice_byron_r_white", "justice_thurgood_marshall", "justice_sandra_day_oconnor")
TOPICS = ("the standing of the petitioner", "the Commerce Clause", "the state's interest", "the prior holding")


def court_arguments(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Oral arguments: counsel states a point, a justice asks about it; Rehnquist and another justice each ask."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        messages = [{"role": "system", "content": f"Oral argument in No. {rng.randint(70, 99)}-{rng.randint(1, 999)}."}]
        speakers = [JUSTICE, rng.choice(OTHER_JUSTICES), rng.choice((JUSTICE, *OTHER_JUSTICES))]
        rng.shuffle(speakers)
        for speaker, topic in zip(speakers, rng.sample(TOPICS, len(speakers))):
            messages.append({"role": "counsel", "content": f"Mr. Chief Justice, may it please the Court: {topic}."})
            question = f"Counsel, what authority supports {topic}?" if speaker == JUSTICE else f"And {topic}, then?"
            messages.append({"role": speaker, "content": question})
        rows.append(messages)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train only justice_william_h_rehnquist's turns (two ways).")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU, a few steps (CI)")
    parser.add_argument("--way", choices=("patch", "unsloth", "both"), default="both")
    parser.add_argument("--last-response-only", action="store_true", help="train only his last reply per row")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 3 with --tiny, else 300)")
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--output", default="custom-roles-output")
    args = parser.parse_args(argv)
    require(TRAINING, LLAMA3_TOKENIZER)

    from datasets import Dataset
    from trl import SFTTrainer

    import templatekit
    from templatekit.integrations.unsloth import train_on_responses_only

    # The library's Llama 3 template: <|start_header_id|>ROLE<|end_header_id|>\n\n CONTENT <|eot_id|> for any role.
    template = templatekit.get_template("llama3")
    count = min(args.conversations, 16) if args.tiny else args.conversations
    arguments = court_arguments(count)
    labels = {}
    print("speakers of example 0:", ", ".join(message["role"] for message in arguments[0]))

    if args.way in ("patch", "both"):
        print("== (a) patch_template(train_roles=...) + SFTConfig(assistant_only_loss=True)", flush=True)
        # The library template's tags train `assistant`; retag=True replaces them with tags on the justice's turns.
        patched = templatekit.patch_template(
            template, train_roles=(JUSTICE,), only_last_turn=args.last_response_only, retag=True
        )
        print(f"template {patched.status}: {patched.report.summary()}", flush=True)
        # TRL then warns that the end-of-turn token is not trained: its check renders an `assistant` turn, which
        # is (rightly) untrained here. The trained text printed below ends with the justice's <|eot_id|>.
        tokenizer = offline_llama3_tokenizer(patched.template)
        config = sft_config(f"{args.output}/patch", tiny=args.tiny, steps=args.steps, assistant_only_loss=True)
        data = Dataset.from_dict({"messages": arguments})
        trainer = SFTTrainer(
            model=config_model(tokenizer, tiny=args.tiny), args=config, train_dataset=data, processing_class=tokenizer
        )
        report_labels(trainer, tokenizer)
        labels["patch"] = trainer.train_dataset["labels"]
        train_and_report(trainer)

    if args.way in ("unsloth", "both"):
        print("== (b) text dataset + train_on_responses_only(instruction_part, response_part)", flush=True)
        tokenizer = offline_llama3_tokenizer(template)  # the template only renders the text here
        data = Dataset.from_dict({"text": [chat_text(tokenizer, messages) for messages in arguments]})
        config = sft_config(f"{args.output}/unsloth", tiny=args.tiny, steps=args.steps, dataset_text_field="text")
        trainer = SFTTrainer(
            model=config_model(tokenizer, tiny=args.tiny), args=config, train_dataset=data, processing_class=tokenizer
        )
        trainer = train_on_responses_only(
            trainer,
            instruction_part="<|eot_id|>",
            response_part=f"<|start_header_id|>{JUSTICE}<|end_header_id|>",
            last_response_only=args.last_response_only,
        )
        report_labels(trainer, tokenizer)
        labels["unsloth"] = trainer.train_dataset["labels"]
        train_and_report(trainer)

    if len(labels) == 2:
        # Same rows, same ids either way; the labels differ only where one way trains a token the other does not.
        ids = trainer.train_dataset["input_ids"]
        differ = {
            tokenizer.decode([row[i]])
            for row, a, b in zip(ids, labels["patch"], labels["unsloth"])
            for i in range(len(row))
            if a[i] != b[i]
        }
        print(f"the two ways' labels differ on all {count} rows only at: {sorted(differ)!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
