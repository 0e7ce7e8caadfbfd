"""GGUF files as sources: read the templates, patch, write a NEW GGUF file, read it back and verify it.

The GGUF files are written here with the `gguf` package's own `GGUFWriter`, holding real corpus templates and a
few tensors (float and quantised), so the round trip is checked against an independent writer and reader.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from _cli import run
from _corpus import patched
from _gguf import make_gguf
from _paths import corpus_file

import templatekit
from templatekit.errors import TemplateSourceError
from templatekit.sources import NoChatTemplateError, atomic, load_templates
from templatekit.sources.gguf import read_gguf_templates, template_key, write_gguf_templates

QWEN = "trl/qwen2_5.jinja"
LLAMA = "trl/llama3_2.jinja"


def text_of(name: str) -> str:
    return corpus_file(name).read_text(encoding="utf-8")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_except_templates(before: Path, after: Path, changed: set[str]) -> None:
    """Every metadata entry but `changed` and every tensor (description and data) read back identical."""
    old, new = gguf.GGUFReader(before), gguf.GGUFReader(after)
    assert list(new.fields) == list(old.fields)
    for key, field in old.fields.items():
        if key in changed or key.startswith("GGUF."):
            continue
        assert new.fields[key].types == field.types, key
        assert new.fields[key].contents() == field.contents(), key
    assert new.fields["GGUF.tensor_count"].contents() == old.fields["GGUF.tensor_count"].contents()
    assert new.alignment == old.alignment and new.data_offset % new.alignment == 0
    assert [(t.name, t.tensor_type, t.shape.tolist(), t.n_bytes) for t in new.tensors] == [
        (t.name, t.tensor_type, t.shape.tolist(), t.n_bytes) for t in old.tensors
    ]
    for old_tensor, new_tensor in zip(old.tensors, new.tensors):
        assert np.array_equal(new_tensor.data, old_tensor.data), old_tensor.name


# ------------------------------------------------------------------------------------------------------ reading


def test_reads_default_and_named_templates(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "model.gguf", {"default": text_of(QWEN), "tool_use": text_of(LLAMA)})
    templates = load_templates(path)
    assert [(t.name, t.text, t.kind, t.origin) for t in templates] == [
        ("default", text_of(QWEN), "gguf", path),
        ("tool_use", text_of(LLAMA), "gguf", path),
    ]
    assert templates[1].label == f"{path}#tool_use"


def test_gguf_without_template(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "base.gguf", None)
    with pytest.raises(NoChatTemplateError, match="no chat template") as info:
        read_gguf_templates(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize(("content", "message"), [(b"GGML" + b"\0" * 60, "magic"), (b"", "not a readable GGUF")])
def test_not_a_gguf_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(TemplateSourceError, match=message) as info:
        load_templates(path)
    assert info.value.source == str(path)


def test_truncated_gguf_file(tmp_path: Path) -> None:
    whole = make_gguf(tmp_path / "whole.gguf", {"default": text_of(QWEN)}).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:200])  # inside the metadata
    with pytest.raises(TemplateSourceError, match="not a readable GGUF file") as info:
        load_templates(cut)
    assert info.value.source == str(cut)


# ------------------------------------------------------------------------------------------------- round trip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("endian", "alignment"), [(gguf.GGUFEndian.LITTLE, None), (gguf.GGUFEndian.BIG, None), (gguf.GGUFEndian.LITTLE, 64)]
)
def test_patch_writes_a_new_verified_gguf(tmp_path: Path, capsys, endian: gguf.GGUFEndian, alignment) -> None:
    source = make_gguf(
        tmp_path / "model.gguf",
        {"default": text_of(QWEN), "tool_use": text_of(LLAMA)},
        endian=endian,
        alignment=alignment,
    )
    before = digest(source)
    target = tmp_path / "model.patched.gguf"
    code, _, err = run(capsys, "patch", source, "-o", target)
    assert code == 0, err
    assert f"wrote {target}" in err
    assert digest(source) == before  # the input is never modified

    expected = {name: patched(corpus).template for name, corpus in (("default", QWEN), ("tool_use", LLAMA))}
    written = read_gguf_templates(target)
    assert {t.name: t.text for t in written} == expected
    for template in written:
        report = templatekit.check_template(template.text)
        assert report.ok, report.reasons
    assert_same_except_templates(source, target, {template_key("default"), template_key("tool_use")})

    code, out, _ = run(capsys, "check", target)  # the new file passes the CI check as it is
    assert code == 0, out
    assert out.count(": ok") == 2


def test_one_named_template_patched_the_other_kept(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "model.gguf", {"default": text_of(QWEN), "tool_use": text_of(LLAMA)})
    target = tmp_path / "new.gguf"
    tool_use = patched(LLAMA).template
    write_gguf_templates(source, target, {"tool_use": tool_use})
    assert {t.name: t.text for t in read_gguf_templates(target)} == {"default": text_of(QWEN), "tool_use": tool_use}
    assert_same_except_templates(source, target, {template_key("tool_use")})


@pytest.mark.slow
def test_gguf_templates_to_jinja_files(tmp_path: Path, capsys) -> None:
    source = make_gguf(tmp_path / "model.gguf", {"default": text_of(QWEN), "tool_use": text_of(LLAMA)})
    out_dir = tmp_path / "templates"
    code, _, err = run(capsys, "patch", source, "-o", out_dir, "--mkdir")
    assert code == 0, err
    assert (out_dir / "chat_template.jinja").read_text(encoding="utf-8") == templatekit.patch_template(
        text_of(QWEN)
    ).template
    code, out, err = run(capsys, "patch", source, "--name", "tool_use")
    assert code == 0, err
    assert out == patched(LLAMA).template


# ----------------------------------------------------------------------------------------- refusals and safety


def test_in_place_on_gguf_is_a_usage_error(tmp_path: Path, capsys) -> None:
    source = make_gguf(tmp_path / "model.gguf", {"default": text_of(QWEN)})
    before = digest(source)
    code, out, err = run(capsys, "patch", source, "--in-place")
    assert code == 2 and out == ""
    assert "--in-place never modifies a GGUF file" in err and "-o NEW.gguf" in err
    assert digest(source) == before


def test_writing_over_the_input_gguf_is_refused(tmp_path: Path, capsys) -> None:
    source = make_gguf(tmp_path / "model.gguf", {"default": text_of(QWEN)})
    before = digest(source)
    code, _, err = run(capsys, "patch", source, "-o", source, "--force")
    assert code == 2 and "refusing to overwrite the input GGUF file" in err
    assert digest(source) == before
    assert sorted(os.listdir(tmp_path)) == ["model.gguf"]


def test_gguf_output_needs_a_gguf_source(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "patch", corpus_file(QWEN), "-o", tmp_path / "x.gguf")
    assert code == 2 and "a GGUF file can only be written from a GGUF source" in err
    assert not (tmp_path / "x.gguf").exists()


def test_interrupted_gguf_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_gguf(tmp_path / "model.gguf", {"default": text_of(QWEN)})
    target = tmp_path / "new.gguf"
    target.write_bytes(b"an older file the user keeps")

    def broken_replace(src: str, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(TemplateSourceError, match="new.gguf: cannot write: disk on fire"):
        write_gguf_templates(source, target, {"default": patched(QWEN).template})
    assert target.read_bytes() == b"an older file the user keeps"
    assert sorted(os.listdir(tmp_path)) == ["model.gguf", "new.gguf"]  # no temporary file left


def test_unknown_template_name_is_refused(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "model.gguf", {"default": text_of(QWEN)})
    with pytest.raises(TemplateSourceError, match="no chat template named 'rag'"):
        write_gguf_templates(source, tmp_path / "new.gguf", {"rag": "{{ x }}"})
    assert not (tmp_path / "new.gguf").exists()


def test_a_copy_that_does_not_read_back_identically_is_not_written(tmp_path: Path, monkeypatch) -> None:
    """Simulate a bad copy (one flipped byte in the tensor data): the read-back check refuses it."""
    from templatekit.sources import gguf as gguf_file

    real_copy = gguf_file._copy_rest

    def flipping_copy(src, dst) -> None:
        real_copy(src, dst)
        src.seek(-1, os.SEEK_END)
        last = src.read(1)[0]
        dst.seek(-1, os.SEEK_END)
        dst.write(bytes([last ^ 0xFF]))

    monkeypatch.setattr(gguf_file, "_copy_rest", flipping_copy)
    source = make_gguf(tmp_path / "model.gguf", {"default": text_of(QWEN)})
    with pytest.raises(TemplateSourceError, match="does not read back as expected: tensor data changed"):
        write_gguf_templates(source, tmp_path / "new.gguf", {"default": text_of(QWEN) + "{# changed #}"})
    assert sorted(os.listdir(tmp_path)) == ["model.gguf"]
