"""`templatekit patch FOLDER --in-place`: only the template changes, a backup is kept, a failed write loses nothing."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
from _corpus import patched as corpus_patch
from _paths import corpus_file
from hypothesis import given, settings
from hypothesis import strategies as st

import templatekit
from templatekit import cli, sources
from templatekit.errors import PatchError, TemplateSourceError
from templatekit.sources import atomic
from templatekit.sources.in_place import update_in_place
from templatekit.sources.json_positions import replace_json_string

QWEN = "trl/qwen2_5.jinja"
LLAMA = "trl/llama3_2.jinja"


def text_of(name: str) -> str:
    return corpus_file(name).read_text(encoding="utf-8")


def patched(name: str) -> str:
    return corpus_patch(name).template


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tokenizer_config(template: object) -> dict[str, object]:
    """A realistic tokenizer_config.json: nested objects, non-ASCII text, nulls, numbers, the template in between."""
    return {
        "add_bos_token": False,
        "added_tokens_decoder": {
            "151643": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "special": True},
            "151645": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "special": True},
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 131072,
        "split_special_tokens": False,
        "note": "r\u00e9sum\u00e9 \u2014 \u4e2d\u6587",
    }


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- tokenizer_config.json


@pytest.mark.parametrize(
    "style",
    [
        {"indent": 2, "ensure_ascii": False},  # how transformers saves it
        {"indent": 4, "ensure_ascii": True},
        {"indent": "\t", "ensure_ascii": False},
        {"separators": (",", ":"), "ensure_ascii": True},  # minified
    ],
)
def test_in_place_changes_only_the_template_in_tokenizer_config(tmp_path: Path, capsys, style: dict) -> None:
    config = tmp_path / "tokenizer_config.json"
    original_data = tokenizer_config(text_of(QWEN))
    original = json.dumps(original_data, **style) + "\n"
    config.write_text(original, encoding="utf-8")
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}', encoding="utf-8")
    others = {k: v for k, v in files_in(tmp_path).items() if k != "tokenizer_config.json"}

    code, _, err = run(capsys, "patch", tmp_path, "--in-place")
    assert code == 0, err
    new = config.read_text(encoding="utf-8")
    # as data: the template is the patched one and every other key and value is the same, in the same order
    assert json.loads(new) == {**original_data, "chat_template": patched(QWEN)}
    assert list(json.loads(new)) == list(original_data)
    # as text: everything but the template's string literal is byte for byte the same (indentation, escapes)
    literal = json.dumps(text_of(QWEN), ensure_ascii=style["ensure_ascii"])
    new_literal = json.dumps(patched(QWEN), ensure_ascii=style["ensure_ascii"])
    assert new.replace(new_literal, "<T>") == original.replace(literal, "<T>")

    backup = tmp_path / "tokenizer_config.json.bak"
    assert backup.read_text(encoding="utf-8") == original
    assert f"updated {config} (backup: {backup})" in err
    assert {k: v for k, v in files_in(tmp_path).items() if k.startswith("config")} == others


def test_named_templates_in_one_config_are_all_updated(tmp_path: Path, capsys) -> None:
    config = tmp_path / "tokenizer_config.json"
    entries = [{"name": "default", "template": text_of(QWEN)}, {"name": "tool_use", "template": text_of(LLAMA)}]
    config.write_text(json.dumps(tokenizer_config(entries), indent=2, ensure_ascii=False), encoding="utf-8")
    code, _, err = run(capsys, "patch", config, "--in-place")
    assert code == 0, err
    data = json.loads(config.read_text(encoding="utf-8"))
    assert data["chat_template"] == [
        {"name": "default", "template": patched(QWEN)},
        {"name": "tool_use", "template": patched(LLAMA)},
    ]
    assert data == {**tokenizer_config(entries), "chat_template": data["chat_template"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer_config.json", "tokenizer_config.json.bak"]


def test_processor_chat_template_json(tmp_path: Path, capsys) -> None:
    target = tmp_path / "chat_template.json"
    target.write_text(json.dumps({"chat_template": text_of(QWEN)}, indent=2), encoding="utf-8")
    code, _, err = run(capsys, "patch", tmp_path, "--in-place")
    assert code == 0, err
    assert json.loads(target.read_text(encoding="utf-8")) == {"chat_template": patched(QWEN)}


# ---------------------------------------------------------------------------------------- chat_template.jinja


@pytest.mark.slow
def test_chat_template_jinja_wins_over_the_config(tmp_path: Path, capsys) -> None:
    """transformers reads chat_template.jinja first, so that is the file updated; the config is left alone."""
    (tmp_path / "chat_template.jinja").write_text(text_of(QWEN), encoding="utf-8")
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "tool_use.jinja").write_text(text_of(LLAMA), encoding="utf-8")
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps(tokenizer_config("{{ stale }}"), indent=2), encoding="utf-8")
    config_bytes = config.read_bytes()
    (tmp_path / "chat_template.jinja").chmod(0o640)

    code, _, err = run(capsys, "patch", tmp_path, "--in-place")
    assert code == 0, err
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == patched(QWEN)
    assert (tmp_path / "additional_chat_templates" / "tool_use.jinja").read_text(encoding="utf-8") == patched(LLAMA)
    assert (tmp_path / "chat_template.jinja.bak").read_text(encoding="utf-8") == text_of(QWEN)
    assert (tmp_path / "additional_chat_templates" / "tool_use.jinja.bak").read_text(encoding="utf-8") == text_of(LLAMA)
    assert config.read_bytes() == config_bytes
    assert stat.S_IMODE((tmp_path / "chat_template.jinja").stat().st_mode) == 0o640
    code, out, _ = run(capsys, "check", tmp_path)  # the folder now passes the CI check
    assert code == 0, out


# ------------------------------------------------------------------------------------------------- backups


def test_an_older_backup_is_never_overwritten(tmp_path: Path, capsys) -> None:
    template = tmp_path / "chat_template.jinja"
    template.write_text(text_of(QWEN), encoding="utf-8")
    older = tmp_path / "chat_template.jinja.bak"
    older.write_text("a backup the user made last week", encoding="utf-8")
    code, _, err = run(capsys, "patch", tmp_path, "--in-place")
    assert code == 0, err
    assert older.read_text(encoding="utf-8") == "a backup the user made last week"
    assert (tmp_path / "chat_template.jinja.bak.1").read_text(encoding="utf-8") == text_of(QWEN)
    assert "backup: " + str(tmp_path / "chat_template.jinja.bak.1") in err

    # A second run finds the template already tagged: nothing is written and no further backup appears.
    before = files_in(tmp_path)
    code, _, err = run(capsys, "patch", tmp_path, "--in-place")
    assert code == 0, err
    assert "already tagged" in err and "unchanged" in err
    assert files_in(tmp_path) == before


# ------------------------------------------------------------------------------------------ interrupted writes


def fail_replacing(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Make the final rename onto `target` fail with an I/O error, as a failing disk would; others still work."""
    real_replace = os.replace

    def replace(src, dst) -> None:
        if Path(dst) == target:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_failed_rename_leaves_the_original_intact(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps(tokenizer_config(text_of(QWEN)), indent=2), encoding="utf-8")
    original = config.read_bytes()
    fail_replacing(monkeypatch, config)
    code, out, err = run(capsys, "patch", tmp_path, "--in-place")
    assert code == 2 and out == ""
    assert f"error: {config}: cannot write: Input/output error; nothing was changed" in err
    assert config.read_bytes() == original
    assert os.listdir(tmp_path) == ["tokenizer_config.json"]  # no backup, no temporary file left behind


def test_disk_full_midway_through_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new content is half written when the disk fills up: the original file never sees any of it."""
    template = tmp_path / "chat_template.jinja"
    template.write_text(text_of(QWEN), encoding="utf-8")
    original = template.read_bytes()
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle) -> None:
            self.handle = handle

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def write(self, data: bytes) -> int:
            if not data.startswith(original):  # the backup goes through; the new template fills the disk
                self.handle.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name: str):
            return getattr(self.handle, name)

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    [loaded] = sources.load_templates(tmp_path)
    with pytest.raises(TemplateSourceError, match="chat_template.jinja: cannot write: No space left"):
        update_in_place([loaded], [patched(QWEN)])
    assert template.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["chat_template.jinja"]  # the backup of a change not made is gone


def test_second_file_failing_puts_the_first_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chat_template.jinja").write_text(text_of(QWEN), encoding="utf-8")
    (tmp_path / "additional_chat_templates").mkdir()
    tool_use = tmp_path / "additional_chat_templates" / "tool_use.jinja"
    tool_use.write_text(text_of(LLAMA), encoding="utf-8")
    fail_replacing(monkeypatch, tool_use)
    templates = sources.load_templates(tmp_path)
    before = files_in(tmp_path)
    with pytest.raises(TemplateSourceError, match="tool_use.jinja: cannot write"):
        update_in_place(templates, [patched(QWEN), patched(LLAMA)])
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == text_of(QWEN)  # rolled back
    assert tool_use.read_text(encoding="utf-8") == text_of(LLAMA)
    assert files_in(tmp_path) == before  # byte-identical: no backup, no temporary file


def test_patch_failure_writes_nothing(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot_patch(template: str, **options: object) -> None:
        raise PatchError(["assistant content is emitted inside a macro the patcher cannot split"])

    (tmp_path / "chat_template.jinja").write_text(text_of(QWEN), encoding="utf-8")
    before = files_in(tmp_path)
    monkeypatch.setattr(templatekit, "patch_template", cannot_patch)
    code, _, err = run(capsys, "patch", tmp_path, "--in-place")
    assert code == 1 and "nothing written" in err
    assert files_in(tmp_path) == before


# --------------------------------------------------------------------------------------------------- usage


@pytest.mark.parametrize("extra", [["-o", "out.jinja"], ["--stdout"]])
def test_in_place_excludes_other_outputs(tmp_path: Path, capsys, extra: list[str]) -> None:
    (tmp_path / "chat_template.jinja").write_text(text_of(QWEN), encoding="utf-8")
    code, _, err = run(capsys, "patch", tmp_path, "--in-place", *extra)
    assert code == 2 and "not allowed with argument" in err


def test_stdout_prints_the_template(capsys) -> None:
    code, out, err = run(capsys, "patch", corpus_file(QWEN), "--stdout")
    assert code == 0, err
    assert out == patched(QWEN)


# ------------------------------------------------------------------------------------------ the JSON splice


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    before=st.dictionaries(st.text(), json_values, max_size=4),
    after=st.dictionaries(st.text(), json_values, max_size=4),
    old=st.text(),
    new=st.text(),
    indent=st.sampled_from([None, 0, 1, 2, 4, "\t"]),
    ensure_ascii=st.booleans(),
)
def test_splice_changes_exactly_the_template(before, after, old, new, indent, ensure_ascii) -> None:
    data = {k: v for k, v in before.items() if k != "chat_template"}
    data["chat_template"] = old
    data.update({k: v for k, v in after.items() if k != "chat_template"})
    text = json.dumps(data, indent=indent, ensure_ascii=ensure_ascii)
    result = replace_json_string(text, ["chat_template"], new)
    assert json.loads(result) == {**data, "chat_template": new}
    start = text.index(json.dumps(old, ensure_ascii=ensure_ascii), text.index('"chat_template":'))
    assert result[:start] == text[:start]  # every character before the literal is untouched …
    old_end = start + len(json.dumps(old, ensure_ascii=ensure_ascii))
    assert result.endswith(text[old_end:])  # … and every character after it


def test_splice_takes_the_key_json_keeps_when_it_is_duplicated() -> None:
    text = '{"chat_template": "first", "x": [1, {"chat_template": "nested"}], "chat_template": "last"}'
    result = replace_json_string(text, ["chat_template"], "new")
    assert result == '{"chat_template": "first", "x": [1, {"chat_template": "nested"}], "chat_template": "new"}'
    assert json.loads(result)["chat_template"] == "new"
