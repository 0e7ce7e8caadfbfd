"""`templatekit patch org/model` against a loopback stand-in Hub (tests/hub_server.py) set as HF_ENDPOINT.

The repos hold real corpus templates. The Hugging Face cache lives in tmp_path, and every request the server
receives is recorded, so the tests can say exactly what was fetched: only template files, never weights; nothing
the second time; nothing at all offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _corpus import patched
from _paths import REPO_ROOT, corpus_file
from hub_server import StandInHub

import templatekit
from templatekit import cli
from templatekit.errors import TemplateSourceError
from templatekit.sources import NoChatTemplateError, load_templates, source_kind
from templatekit.sources.hub import hub_settings, load_hub_templates

QWEN = "trl/qwen2_5.jinja"
LLAMA = "trl/llama3_2.jinja"
TOKEN = "hf_stand_in_secret"


def text_of(name: str) -> str:
    return corpus_file(name).read_text(encoding="utf-8")


def tokenizer_config(template: str | None, **extra: object) -> str:
    data: dict[str, object] = {"add_bos_token": False, "eos_token": "<|im_end|>", "model_max_length": 32768}
    if template is not None:
        data["chat_template"] = template
    data.update(extra)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    """A running stand-in Hub with a few repos, and the environment pointing at it with an empty cache."""
    from huggingface_hub import constants

    with StandInHub() as server:
        repo = server.repo("org/qwen")
        weights = {"model.safetensors": b"\0" * 4096, "config.json": '{"model_type": "qwen2"}'}
        repo.commit({"tokenizer_config.json": tokenizer_config(text_of(QWEN)), **weights}, ref="v1")
        repo.commit({"tokenizer_config.json": tokenizer_config(text_of(LLAMA)), **weights})  # main moves on

        server.repo("org/multi").commit(
            {
                "chat_template.jinja": text_of(QWEN),
                "additional_chat_templates/tool_use.jinja": text_of(LLAMA),
                "tokenizer_config.json": tokenizer_config(None),
                "model-00001-of-00002.safetensors": b"\0" * 1024,
            }
        )
        server.repo("org/processor").commit({"chat_template.json": json.dumps({"chat_template": text_of(QWEN)})})
        server.repo("org/base").commit({"tokenizer_config.json": tokenizer_config(None), "config.json": "{}"})
        server.repo("org/weights-only").commit({"config.json": "{}", "model.safetensors": b"\0" * 64})
        private = server.repo("org/private", private_token=TOKEN)
        private.commit({"tokenizer_config.json": tokenizer_config(text_of(QWEN))})
        server.repo("org/gated", gated_token=TOKEN).commit({"chat_template.jinja": text_of(QWEN)})

        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        unset = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE")
        for name in unset:
            monkeypatch.delenv(name, raising=False)
        # huggingface_hub read these at import time, from whatever environment the test run started in: a login
        # token on this machine or a global HF_HUB_OFFLINE must not leak into the stand-in's answers.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        yield server


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ downloading


@pytest.mark.slow
def test_patch_hub_id_downloads_only_template_files(hub: StandInHub, capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "patch", "org/qwen")
    assert code == 0, err
    assert out == patched(LLAMA).template  # main is the second commit
    assert "org/qwen/tokenizer_config.json: patched" in err
    fetched = {path.rsplit("/", 1)[-1] for _, path in hub.file_requests()}
    assert fetched == {"tokenizer_config.json"}  # never config.json, never weights
    assert not any("safetensors" in path for _, path in hub.requests)
    cached = list((tmp_path / "hf" / "hub").glob("models--org--qwen/snapshots/*/tokenizer_config.json"))
    assert len(cached) == 1  # the shared Hugging Face cache layout, under HF_HUB_CACHE


def test_second_run_is_served_from_the_cache(hub: StandInHub, capsys) -> None:
    first = run(capsys, "patch", "org/qwen")
    assert first[0] == 0 and hub.file_requests()
    hub.requests.clear()
    second = run(capsys, "patch", "org/qwen")
    assert second[:2] == first[:2]
    assert hub.file_requests() == []  # no file fetched again, not even a HEAD for its metadata
    assert [path for _, path in hub.requests] == ["/api/models/org/qwen/revision/main"]  # only "where is main now"


def test_pinned_revision(hub: StandInHub, capsys) -> None:
    qwen = patched(QWEN).template
    code, out, err = run(capsys, "patch", "org/qwen", "--revision", "v1")
    assert code == 0, err
    assert out == qwen
    assert "org/qwen@v1/tokenizer_config.json: patched" in err
    first_commit = hub.repos["org/qwen"].refs["v1"]
    assert first_commit != hub.repos["org/qwen"].refs["main"]
    code, out, err = run(capsys, "patch", "org/qwen", "--revision", first_commit)
    assert code == 0, err
    assert out == qwen
    assert all(first_commit in path for _, path in hub.file_requests())


@pytest.mark.slow
def test_named_templates_are_each_loaded_and_patched(hub: StandInHub, capsys, tmp_path: Path) -> None:
    templates = load_templates("org/multi")
    assert [(t.name, t.text) for t in templates] == [("default", text_of(QWEN)), ("tool_use", text_of(LLAMA))]
    assert templates[1].label == "org/multi/additional_chat_templates/tool_use.jinja"
    assert not any("safetensors" in path for _, path in hub.requests)

    code, _, err = run(capsys, "patch", "org/multi")
    assert code == 2 and "holds 2 templates (default, tool_use)" in err
    out_dir = tmp_path / "patched"
    code, _, err = run(capsys, "patch", "org/multi", "-o", out_dir, "--mkdir")
    assert code == 0, err
    assert (out_dir / "chat_template.jinja").read_text(encoding="utf-8") == templatekit.patch_template(
        text_of(QWEN)
    ).template
    assert (out_dir / "additional_chat_templates" / "tool_use.jinja").read_text(encoding="utf-8") == patched(
        LLAMA
    ).template
    code, out, err = run(capsys, "patch", "org/multi", "--name", "tool_use", "--stdout")
    assert code == 0, err
    assert out == patched(LLAMA).template


def test_processor_chat_template_json(hub: StandInHub) -> None:
    [template] = load_hub_templates("org/processor")
    assert (template.name, template.text, template.kind) == ("default", text_of(QWEN), "chat_template_json")


# --------------------------------------------------------------------------------------------------- offline


def test_offline_mode_is_served_from_the_cache(hub: StandInHub, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    online = run(capsys, "patch", "org/qwen", "--revision", "v1")
    assert online[0] == 0
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_settings().offline
    offline = run(capsys, "patch", "org/qwen", "--revision", "v1")
    assert offline[:2] == online[:2]
    assert hub.requests == []  # not one request

    code, out, err = run(capsys, "patch", "org/multi")  # never fetched: nothing to serve it from
    assert code == 2 and out == ""
    assert "org/multi: offline (HF_HUB_OFFLINE is set)" in err and "not in the Hugging Face cache" in err
    code, _, err = run(capsys, "patch", "org/qwen")  # v1 is cached, main is not
    assert code == 2 and "offline" in err
    assert hub.requests == []


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_repo_is_a_clear_404(hub: StandInHub, capsys) -> None:
    code, out, err = run(capsys, "patch", "org/missing")
    assert code == 2 and out == ""
    assert f"error: org/missing: no such repo on {hub.url} (HTTP 404" in err
    assert "Traceback" not in err


def test_missing_revision(hub: StandInHub) -> None:
    with pytest.raises(TemplateSourceError, match="no revision 'v9'") as info:
        load_hub_templates("org/qwen", revision="v9")
    assert info.value.source == "org/qwen@v9"


def test_private_repo_needs_a_token(hub: StandInHub, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, "patch", "org/private")
    assert code == 2 and out == ""
    assert "org/private: not authorised (HTTP 401)" in err
    assert "hf auth login" in err and "HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # read when the request is made, as huggingface_hub does
    code, out, err = run(capsys, "patch", "org/private")
    assert code == 0, err
    assert out == patched(QWEN).template


def test_gated_repo(hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TemplateSourceError, match="gated repo, it needs a token") as info:
        load_hub_templates("org/gated")
    assert "HF_TOKEN" in str(info.value)
    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")
    with pytest.raises(TemplateSourceError, match="gated repo, you have not been granted access"):
        load_hub_templates("org/gated")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert load_hub_templates("org/gated")[0].text == text_of(QWEN)


def test_repo_without_a_chat_template(hub: StandInHub, capsys) -> None:
    with pytest.raises(NoChatTemplateError, match="has no chat template") as info:
        load_hub_templates("org/base")
    assert info.value.source == "org/base"
    assert "tokenizer_config.json holds none" in info.value.message
    code, out, err = run(capsys, "patch", "org/base")
    assert code == 2 and out == "" and "org/base: the repo has no chat template" in err

    code, out, err = run(capsys, "patch", "org/weights-only")
    assert code == 2 and out == ""
    assert "org/weights-only: the repo has no chat template (no tokenizer_config.json" in err
    assert "No files matched" not in err  # huggingface_hub's own warning is replaced by ours
    assert not any("safetensors" in path for _, path in hub.requests)


def test_unreachable_hub(hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with StandInHub() as gone:
        url = gone.url
    monkeypatch.setenv("HF_ENDPOINT", url)  # a port nobody listens on any more
    with pytest.raises(TemplateSourceError, match=f"cannot reach {url}"):
        load_hub_templates("org/qwen")


def test_in_place_on_a_hub_id_is_a_usage_error(hub: StandInHub, capsys) -> None:
    code, out, err = run(capsys, "patch", "org/qwen", "--in-place")
    assert code == 2 and out == ""
    assert "--in-place updates a local model folder or file" in err and "Hub id" in err
    assert hub.requests == []  # refused before anything is fetched


def test_revision_on_a_local_source_is_a_usage_error(capsys) -> None:
    code, _, err = run(capsys, "patch", corpus_file(QWEN), "--revision", "main")
    assert code == 2 and "--revision applies only to a Hugging Face Hub id" in err


def test_hub_id_and_local_paths_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert source_kind("org/qwen") == "hub"
    (tmp_path / "org" / "qwen").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert source_kind("org/qwen") == "folder"  # a local folder of that name wins, as in transformers


# ------------------------------------------------------------------------------- the real command, real env


@pytest.mark.subprocess
def test_command_line_reads_the_environment_at_start(hub: StandInHub, tmp_path: Path) -> None:
    """A fresh process: huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE at import, as for a user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "home"), HF_HUB_DISABLE_TELEMETRY="1")
    target = tmp_path / "out.jinja"

    def patch(**extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "templatekit", "patch", "org/qwen", "-o", str(target)]
        return subprocess.run(
            command, env={**env, **extra}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
        )

    result = patch()
    assert result.returncode == 0, result.stderr
    assert target.read_text(encoding="utf-8") == patched(LLAMA).template
    assert list((tmp_path / "home" / "hub").glob("models--org--qwen/snapshots/*/tokenizer_config.json"))
    target.unlink()
    hub.requests.clear()
    result = patch(HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    assert target.is_file() and hub.requests == []
