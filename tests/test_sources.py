"""Loading templates from files, configs and folders; atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from _paths import corpus_dir, corpus_file
from hypothesis import given, settings
from hypothesis import strategies as st

from templatekit import sources
from templatekit.errors import TemplateSourceError
from templatekit.sources import (
    LoadedTemplate,
    NoChatTemplateError,
    atomic,
    find_template_files,
    load_templates,
    register_loader,
    source_kind,
    write_text_atomic,
)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ .jinja files


def test_jinja_file_from_corpus_loads_exactly() -> None:
    path = corpus_file("trl/qwen2_5.jinja")
    [template] = load_templates(path)
    assert template == LoadedTemplate("default", path.read_bytes().decode("utf-8"), path, "jinja")
    assert template.label == str(path)


def test_jinja_file_keeps_crlf_and_bom_bytes(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jinja"
    path.write_bytes(b"\xef\xbb\xbf{{ a }}\r\n{{ b }}\r\n")
    [template] = load_templates(str(path))
    assert template.text == "\ufeff{{ a }}\r\n{{ b }}\r\n"


def test_every_corpus_template_loads() -> None:
    files = sorted(corpus_dir().glob("*/*.jinja"))
    assert files, f"no corpus templates under {corpus_dir()}"
    for path in files:
        [template] = load_templates(path)
        assert template.text.strip(), path
        assert template.kind == "jinja"


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jinja"
    with pytest.raises(TemplateSourceError) as info:
        load_templates(missing)
    assert info.value.source == str(missing)
    assert str(info.value).startswith(f"{missing}: ")
    assert "no such file" in str(info.value)


def test_non_utf8_names_byte_offset_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jinja"
    path.write_bytes(b"{{ a }}\n{{ 'caf\xe9' }}\n")
    with pytest.raises(TemplateSourceError) as info:
        load_templates(path)
    error = info.value
    assert (error.source, error.line, error.column) == (str(path), 2, 8)
    assert "0xe9" in error.message and "offset 15" in error.message
    assert str(error).startswith(f"{path}:2:8: ")


@pytest.mark.parametrize("text", ["", "   \n\t\n"])
def test_empty_template_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.jinja"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TemplateSourceError, match="empty chat template") as info:
        load_templates(path)
    assert info.value.source == str(path)


def test_unknown_suffix_is_read_as_jinja(tmp_path: Path) -> None:
    path = tmp_path / "template.txt"
    path.write_text(CHATML, encoding="utf-8")
    assert load_templates(path)[0].text == CHATML


# ---------------------------------------------------------------------------------------- tokenizer_config.json


def test_tokenizer_config_with_one_template(tmp_path: Path) -> None:
    path = write_json(tmp_path / "tokenizer_config.json", {"model_max_length": 10, "chat_template": CHATML})
    [template] = load_templates(path)
    assert (template.name, template.text, template.origin, template.kind) == (
        "default",
        CHATML,
        path,
        "tokenizer_config",
    )
    assert template.label == str(path)


def test_tokenizer_config_with_named_templates_from_corpus(tmp_path: Path) -> None:
    default = corpus_file("trl/qwen2_5.jinja").read_text(encoding="utf-8")
    tool_use = corpus_file("trl/llama3_1.jinja").read_text(encoding="utf-8")
    path = write_json(
        tmp_path / "tokenizer_config.json",
        {"chat_template": [{"name": "default", "template": default}, {"name": "tool_use", "template": tool_use}]},
    )
    templates = load_templates(path)
    assert [(t.name, t.text) for t in templates] == [("default", default), ("tool_use", tool_use)]
    assert [t.label for t in templates] == [str(path), f"{path}#tool_use"]


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer_config.json"
    path.write_text('{\n  "chat_template": "x",\n  oops\n}\n', encoding="utf-8")
    with pytest.raises(TemplateSourceError, match="invalid JSON") as info:
        load_templates(path)
    assert (info.value.source, info.value.line, info.value.column) == (str(path), 3, 3)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"bos_token": "<s>"}, NoChatTemplateError, "no chat template"),
        ({"chat_template": None}, NoChatTemplateError, "no chat template"),
        ({"chat_template": []}, NoChatTemplateError, "empty list"),
        ({"chat_template": ""}, TemplateSourceError, "empty chat template"),
        ({"chat_template": [{"name": "rag", "template": " "}]}, TemplateSourceError, "empty chat template 'rag'"),
        ({"chat_template": 3}, TemplateSourceError, "not int"),
        ({"chat_template": [{"template": "x"}]}, TemplateSourceError, r"\[0\] must be an object"),
        ({"chat_template": [{"name": "a", "template": 1}]}, TemplateSourceError, "'a' is not a string"),
        (
            {"chat_template": [{"name": "a", "template": "x"}, {"name": "a", "template": "y"}]},
            TemplateSourceError,
            "appears twice",
        ),
        (["chat_template"], TemplateSourceError, "expected a JSON object"),
    ],
)
def test_bad_tokenizer_configs(tmp_path: Path, data: object, error: type, message: str) -> None:
    path = write_json(tmp_path / "tokenizer_config.json", data)
    with pytest.raises(error, match=message) as info:
        load_templates(path)
    assert info.value.source == str(path)


def test_any_json_name_is_read_as_a_tokenizer_config(tmp_path: Path) -> None:
    path = write_json(tmp_path / "my_config.json", {"chat_template": CHATML})
    assert load_templates(path)[0].kind == "tokenizer_config"


def test_processor_chat_template_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "chat_template.json", {"chat_template": CHATML})
    [template] = load_templates(path)
    assert (template.name, template.text, template.kind) == ("default", CHATML, "chat_template_json")


# ------------------------------------------------------------------------------------------------ model folders


def test_folder_prefers_chat_template_jinja_and_adds_additional_templates(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools }}", encoding="utf-8")
    write_json(tmp_path / "tokenizer_config.json", {"chat_template": "{{ ignored }}"})
    templates = load_templates(tmp_path)
    assert [(t.name, t.text, t.kind) for t in templates] == [
        ("default", CHATML, "jinja"),
        ("tool_use", "{{ tools }}", "jinja"),
    ]
    assert templates[1].origin == tmp_path / "additional_chat_templates" / "tool_use.jinja"


def test_folder_falls_back_to_tokenizer_config(tmp_path: Path) -> None:
    write_json(tmp_path / "tokenizer_config.json", {"chat_template": CHATML})
    write_json(tmp_path / "chat_template.json", {"chat_template": "{{ processor }}"})
    [template] = load_templates(str(tmp_path))
    assert (template.text, template.origin) == (CHATML, tmp_path / "tokenizer_config.json")


def test_folder_falls_back_to_chat_template_json(tmp_path: Path) -> None:
    write_json(tmp_path / "tokenizer_config.json", {"bos_token": "<s>"})
    write_json(tmp_path / "chat_template.json", {"chat_template": CHATML})
    [template] = load_templates(tmp_path)
    assert (template.text, template.kind) == (CHATML, "chat_template_json")


def test_folder_without_template(tmp_path: Path) -> None:
    write_json(tmp_path / "tokenizer_config.json", {"bos_token": "<s>"})
    with pytest.raises(NoChatTemplateError, match="no chat template found") as info:
        load_templates(tmp_path)
    assert info.value.source == str(tmp_path)


def test_folder_with_broken_config_reports_it(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(TemplateSourceError, match="invalid JSON") as info:
        load_templates(tmp_path)
    assert info.value.source == str(tmp_path / "tokenizer_config.json")


# ------------------------------------------------------------------------------------------ dispatch by kind


def test_source_kinds(tmp_path: Path) -> None:
    assert source_kind(tmp_path) == "folder"
    assert source_kind("Qwen/Qwen2.5-7B-Instruct") == "hub"
    assert source_kind("model.Q4_K_M.gguf") == "gguf"
    assert source_kind("missing/template.jinja") == "jinja"
    assert source_kind(tmp_path / "chat_template.json") == "chat_template_json"
    assert source_kind(tmp_path / "tokenizer_config.json") == "tokenizer_config"


def test_a_revision_is_refused_for_local_sources(tmp_path: Path) -> None:
    path = tmp_path / "chat_template.jinja"
    path.write_text(CHATML, encoding="utf-8")
    with pytest.raises(TemplateSourceError, match="revision applies only to a Hugging Face Hub id") as info:
        load_templates(path, revision="main")
    assert info.value.source == str(path)


def test_labels_prefer_the_display_name() -> None:
    config = LoadedTemplate(
        "rag",
        "{{ x }}",
        Path("/cache/snap/tokenizer_config.json"),
        "tokenizer_config",
        display="org/model@main/tokenizer_config.json",
    )
    assert config.label == "org/model@main/tokenizer_config.json#rag"
    assert LoadedTemplate("tool_use", "{{ x }}", Path("m.gguf"), "gguf").label == "m.gguf#tool_use"


def test_missing_jinja_path_is_not_taken_for_a_hub_id() -> None:
    with pytest.raises(TemplateSourceError, match="no such file"):
        load_templates("missing/template.jinja")


def test_register_loader_plugs_in_a_new_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sources.LOADERS, "gguf", sources.LOADERS["gguf"])  # restored after the test
    register_loader("gguf", lambda source: [LoadedTemplate("default", "{{ gguf }}", Path(source), "gguf")])
    assert load_templates("x.gguf")[0].text == "{{ gguf }}"


# ------------------------------------------------------------------------------------------ finding templates


def test_find_template_files(tmp_path: Path) -> None:
    (tmp_path / "b" / "model").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for name in ("b/model/tokenizer_config.json", "b/model/chat_template.json", "a.jinja", ".git/x.jinja"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    (tmp_path / "b" / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "b" / "config.json").write_text("{}", encoding="utf-8")
    extra = tmp_path / "b" / "notes.txt"
    assert find_template_files([tmp_path, extra]) == [
        tmp_path / "a.jinja",
        tmp_path / "b" / "model" / "chat_template.json",
        tmp_path / "b" / "model" / "tokenizer_config.json",
        extra,
    ]
    with pytest.raises(TemplateSourceError, match="no such file or folder"):
        find_template_files([tmp_path / "missing"])


def test_find_template_files_in_corpus() -> None:
    assert corpus_dir().is_dir(), f"no corpus under {corpus_dir()}"
    assert len(find_template_files([corpus_dir()])) == len(list(corpus_dir().rglob("*.jinja")))


# --------------------------------------------------------------------------------------------- atomic writes


def test_write_text_atomic_writes_exact_text_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jinja"
    write_text_atomic(target, "a\r\nb\n\u00e9")
    assert target.read_bytes() == "a\r\nb\n\u00e9".encode()
    assert os.listdir(tmp_path) == ["out.jinja"]


def test_write_text_atomic_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.jinja"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o640)
    write_text_atomic(str(target), "new")
    assert target.read_text(encoding="utf-8") == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_write_text_atomic_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.jinja"
    target.write_text("old", encoding="utf-8")

    def broken_replace(src: str, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(TemplateSourceError, match="out.jinja: cannot write: disk on fire"):
        write_text_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["out.jinja"]


@settings(max_examples=50, deadline=None)
@given(
    names=st.lists(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), min_size=1, max_size=4, unique=True),
    body=st.text(st.characters(exclude_categories=("Cs",)), min_size=1).filter(str.strip),
)
def test_tokenizer_config_round_trip(tmp_path_factory: pytest.TempPathFactory, names: list[str], body: str) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    entries = [{"name": name, "template": f"{name}:{body}"} for name in names]
    path = folder / "tokenizer_config.json"
    write_text_atomic(path, json.dumps({"chat_template": entries}, ensure_ascii=False))
    assert [(t.name, t.text) for t in load_templates(path)] == [(e["name"], e["template"]) for e in entries]
