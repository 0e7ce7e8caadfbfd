"""GGUF files written with the `gguf` package's own writer, for the tests of GGUF sources and of strip."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def make_gguf(
    path: Path,
    templates: dict[str, str] | None,
    *,
    endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
    alignment: int | None = None,
) -> Path:
    """A small but complete GGUF file: typical metadata of every kind, the templates, and three tensors."""
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_name("stand-in")
    writer.add_context_length(4096)
    writer.add_block_count(2)
    writer.add_rope_freq_base(500000.0)
    writer.add_bool("general.stand_in", True)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<|begin_of_text|>", "<|eot_id|>", "hello", "\u00e9t\u00e9"])
    writer.add_token_types([3, 3, 1, 1])
    writer.add_token_scores([0.0, 0.0, -1.5, -2.25])
    writer.add_eos_token_id(1)
    if templates:
        writer.add_chat_template([{"name": name, "template": text} for name, text in templates.items()])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((4, 32), dtype=np.float32))
    writer.add_tensor("output_norm.weight", rng.standard_normal(32).astype(np.float16))
    quantised = gguf.quants.quantize(rng.standard_normal((2, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
