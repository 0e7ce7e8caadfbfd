"""A write cut short at any step harms nothing (issue 21, item 2).

`patch --in-place` (two files of a model folder) and `patch -o NEW.gguf` run again and again in a capped child
process, killed at step 1, 2, 3, … of their writes (`TEMPLATEKIT_KILL_AT_STEP`, read by
`templatekit.sources.atomic.crash_point`) until a run gets through. After each SIGKILL every file holds its old
bytes or its new ones, whole (a GGUF file reads back with the new template, or is not there); the next run
finishes the job and removes what the killed one left. After a SIGTERM (or Ctrl-C) at any step the run says so in
one line and the folder is byte-identical to before: no backup, no temporary file.

A read-only file system and a full disk are real here: a tmpfs mounted in a mount namespace of its own
(`unshare -rm`), where the CLI runs and the folder is listed before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _gguf import make_gguf
from _harness import cli_in_child
from _paths import REPO_ROOT, corpus_file

import templatekit
from templatekit.sources import TEMPORARY_SUFFIX, load_templates

QWEN = corpus_file("trl/qwen2_5.jinja")
# The model folder's second template. The tests below run the CLI on the folder some fifty times, and each run
# patches both templates: a small one keeps a run short (Llama 3.2's took 0.35 s a run, this 0.04 s). The write
# steps, which is what is killed, are the same whatever the templates hold.
TOOL_USE = corpus_file("unsloth/mistral.jinja")
MAX_STEPS = 60  # far more than a run takes: a run that never gets through fails the test
pytestmark = pytest.mark.subprocess  # the CLI in child processes, killed at every step


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def model_folder(root: Path) -> Path:
    folder = root / "model"
    (folder / "additional_chat_templates").mkdir(parents=True)
    (folder / "chat_template.jinja").write_text(text(QWEN), encoding="utf-8")
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text(text(TOOL_USE), encoding="utf-8")
    return folder


def expected_in_place() -> dict[str, bytes]:
    return {
        "chat_template.jinja": templatekit.patch_template(text(QWEN)).template.encode(),
        "additional_chat_templates/tool_use.jinja": templatekit.patch_template(text(TOOL_USE)).template.encode(),
    }


def test_sigkill_at_every_step_of_in_place_leaves_each_file_old_or_new(tmp_path: Path) -> None:
    old, new = files(model_folder(tmp_path / "pristine")), expected_in_place()
    for step in range(1, MAX_STEPS):
        folder = tmp_path / f"step{step}"
        shutil.copytree(tmp_path / "pristine", folder)
        run = cli_in_child("patch", folder / "model", "--in-place", env={"TEMPLATEKIT_KILL_AT_STEP": str(step)})
        after = files(folder / "model")
        for name in old:
            assert after[name] in (old[name], new[name]), (step, name)  # never half written
        for name, content in after.items():
            if name.endswith((".bak", ".bak.1")):
                assert content == old[name.rsplit(".bak", 1)[0]], (step, name)  # a backup is whole
            elif name not in old:
                assert name.endswith(TEMPORARY_SUFFIX), (step, name)  # only temporaries are left besides
        rerun = cli_in_child("patch", folder / "model", "--in-place")
        assert rerun.code == 0, (step, rerun.err)
        final = files(folder / "model")
        assert {name: final[name] for name in old} == new, step
        assert not [name for name in final if name.endswith(TEMPORARY_SUFFIX)], (step, list(final))
        if run.code == 0:  # got through: every step was tried
            assert after == {**new, **{f"{name}.bak": content for name, content in old.items()}}
            break
        assert run.code == -9, (step, run)
    else:
        pytest.fail(f"patch --in-place took more than {MAX_STEPS} steps")
    assert step > 8  # two backups and two replacements, each in several steps


@pytest.mark.parametrize("signal_name", ["TERM", "INT"])
def test_sigterm_or_ctrl_c_at_every_step_of_in_place_leaves_the_folder_byte_identical(
    tmp_path: Path, signal_name: str
) -> None:
    old = files(model_folder(tmp_path / "pristine"))
    for step in range(1, MAX_STEPS):
        folder = tmp_path / f"step{step}"
        shutil.copytree(tmp_path / "pristine", folder)
        env = {"TEMPLATEKIT_KILL_AT_STEP": f"{step}:{signal_name}"}
        run = cli_in_child("patch", folder / "model", "--in-place", env=env)
        if run.code == 0:
            break
        assert run.code == 128 + {"TERM": 15, "INT": 2}[signal_name], (step, run)
        assert "Traceback" not in run.err
        assert run.err.strip().splitlines()[-1].startswith(("terminated", "interrupted")), run.err
        assert files(folder / "model") == old, step  # no backup, no temporary file, nothing replaced
    else:
        pytest.fail(f"patch --in-place took more than {MAX_STEPS} steps")


def test_sigkill_at_every_step_of_a_new_gguf_leaves_it_whole_or_absent(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "model.gguf", {"default": text(QWEN)})
    original = source.read_bytes()
    patched = templatekit.patch_template(text(QWEN)).template
    for step in range(1, MAX_STEPS):
        target = tmp_path / f"step{step}" / "new.gguf"
        target.parent.mkdir()
        run = cli_in_child("patch", source, "-o", target, env={"TEMPLATEKIT_KILL_AT_STEP": str(step)})
        assert source.read_bytes() == original
        if target.exists():
            [loaded] = load_templates(target)
            assert loaded.text == patched, step
        assert all(p.name == "new.gguf" or p.name.endswith(TEMPORARY_SUFFIX) for p in target.parent.iterdir())
        rerun = cli_in_child("patch", source, "-o", target)
        assert rerun.code == 0, (step, rerun.err)
        assert [p.name for p in target.parent.iterdir()] == ["new.gguf"], step  # the next run cleaned up
        if run.code == 0:
            break
        assert run.code == -9, (step, run)
    else:
        pytest.fail(f"patch -o NEW.gguf took more than {MAX_STEPS} steps")
    assert step >= 4


# ---------------------------------------------------------------------------------- real file systems (tmpfs)

_IN_NAMESPACE = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
mount = spec["mount"]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + spec["size"], "tmpfs", mount], check=True)
for name, content in spec["files"].items():
    os.makedirs(os.path.dirname(os.path.join(mount, name)), exist_ok=True)
    with open(os.path.join(mount, name), "w", encoding="utf-8") as handle:
        handle.write(content)
if spec["fill"]:  # to the last byte: unbuffered writes until the file system says it is full
    filler = os.open(os.path.join(mount, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(filler, b"x" * 512):
            pass
    except OSError:
        pass
    os.close(filler)
if spec["read_only"]:
    subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
def listing():
    found = {}
    for root, _, names in os.walk(mount):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                found[os.path.relpath(os.path.join(root, name), mount)] = handle.read().hex()
    return found
before = listing()
run = subprocess.run([sys.executable, "-m", "templatekit", *spec["argv"]], capture_output=True, text=True,
                     cwd=mount, timeout=120)
print(json.dumps({"code": run.returncode, "err": run.stderr, "before": before, "after": listing()}))
"""


def in_tmpfs(tmp_path: Path, argv: list[str], files: dict[str, str], *, fill=False, read_only=False) -> dict:
    """Run `templatekit ARGV` in a tmpfs of its own (`files` in it first), filled up or read-only."""
    unshare = shutil.which("unshare")
    probe = [unshare, "-rm", "true"] if unshare else None
    if probe is None or subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        pytest.skip("needs `unshare -rm` (a mount namespace of its own) to mount a tmpfs")
    mount = tmp_path / "mnt"
    mount.mkdir()
    spec = {"mount": str(mount), "size": "256k", "files": files, "fill": fill, "read_only": read_only, "argv": argv}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [unshare, "-rm", sys.executable, "-c", _IN_NAMESPACE, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _single_error_line(result: dict) -> str:
    lines = [line for line in result["err"].splitlines() if line.strip()]
    assert result["code"] == 2 and "Traceback" not in result["err"] and len(lines) == 1, result["err"]
    return lines[0]


@pytest.mark.parametrize("argv", [["patch", "t.jinja", "-o", "out.jinja"], ["patch", ".", "--in-place"]])
def test_a_read_only_file_system_is_one_line_naming_the_path(tmp_path: Path, argv: list[str]) -> None:
    files_in = {"t.jinja": text(QWEN), "chat_template.jinja": text(QWEN)}
    result = in_tmpfs(tmp_path, argv, files_in, read_only=True)
    line = _single_error_line(result)
    assert "read-only file system" in line.lower(), line
    assert line.startswith("error: out.jinja:" if "-o" in argv else "error: chat_template.jinja:"), line
    assert result["after"] == result["before"]


@pytest.mark.parametrize("argv", [["patch", "t.jinja", "-o", "out.jinja"], ["patch", ".", "--in-place"]])
def test_a_full_disk_is_one_line_naming_the_path_and_leaves_nothing(tmp_path: Path, argv: list[str]) -> None:
    files_in = {"t.jinja": text(QWEN), "chat_template.jinja": text(QWEN)}
    result = in_tmpfs(tmp_path, argv, files_in, fill=True)
    line = _single_error_line(result)
    assert "No space left on device" in line, line
    assert line.startswith("error: out.jinja:" if "-o" in argv else "error: chat_template.jinja:"), line
    assert result["after"] == result["before"]  # no temporary file, no backup, the original untouched
